//! The gRPC codec of every infrawatch service: prost, with a small first encode
//! buffer.
//!
//! tonic's default codec gives every stream an 8 KiB encode buffer for its
//! whole life. An aggregator holds one agent stream per agent, and what it sends
//! on it are acknowledgements of a few dozen bytes, so with 10,000 agents the
//! defaults keep about 80 MB of buffers that are never filled. The buffer still
//! grows to whatever a message needs (a large query answer), and the decode side
//! keeps tonic's defaults.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// First size of a stream's encode buffer.
pub const ENCODE_BUFFER_BYTES: usize = 512;

/// tonic's own threshold for yielding a full buffer to the transport.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// [`ProstCodec`] with a [`ENCODE_BUFFER_BYTES`] first encode buffer.
#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(
            ENCODE_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}
