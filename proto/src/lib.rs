//! The `infrawatch.v1` wire contract: the agent stream, the resource model, the
//! query service and the `InfrastructureStatusUpdatedEvent`, generated from the
//! `.proto` files in `proto/infrawatch/v1/` by `build.rs`.

pub mod codec;

/// Generated messages and services of package `infrawatch.v1`.
pub mod v1 {
    #![allow(clippy::all, unreachable_pub, missing_docs)]
    tonic::include_proto!("infrawatch.v1");
}

/// Encoded `FileDescriptorSet` of every infrawatch proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("infrawatch_descriptor");
