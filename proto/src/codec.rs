//! The gRPC codec of every infrawatch service: prost, with small first encode
//! and decode buffers.
//!
//! tonic's default codec gives every stream an 8 KiB encode buffer and an 8 KiB
//! decode buffer for its whole life. An aggregator holds one agent stream per
//! agent; what it sends on it are acknowledgements of a few dozen bytes, and what
//! it receives are batches of a few KiB. With 10,000 agents the defaults keep
//! about 80 MB of encode buffers that are never filled, and decode buffers a few
//! KiB larger than the batches. Both buffers still grow to whatever a message
//! needs (a large query answer, a large batch) and keep that size.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// First size of a stream's encode buffer.
pub const ENCODE_BUFFER_BYTES: usize = 512;

/// First size of a stream's decode buffer: it grows to the largest message
/// (with the start of the next one) on the first that does not fit.
pub const DECODE_BUFFER_BYTES: usize = 1024;

/// tonic's own threshold for yielding a full buffer to the transport.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// [`ProstCodec`] with an [`ENCODE_BUFFER_BYTES`] first encode buffer and a
/// [`DECODE_BUFFER_BYTES`] first decode buffer.
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
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(
            DECODE_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        ))
    }
}
