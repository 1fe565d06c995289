//! The network front of the aggregator: the mTLS gRPC server (agent stream, query
//! service, standard health service, reflection) and the REST server.

pub mod events;
pub mod ingest;
pub mod query;
pub mod rest;
pub mod rest_events;

use std::net::SocketAddr;

use infrawatch_common::tls::TlsMaterial;
use infrawatch_proto::v1::agent_service_server::AgentServiceServer;
use infrawatch_proto::v1::event_service_server::EventServiceServer;
use infrawatch_proto::v1::query_service_server::QueryServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::config::GrpcConfig;

/// Errors starting or running a listener.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed")]
    Grpc(#[from] tonic::transport::Error),
    /// Reflection could not be built.
    #[error("gRPC reflection set-up failed")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The REST server failed.
    #[error("REST server failed")]
    Rest(#[source] std::io::Error),
}

/// Binds `addr`, with a clear error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves gRPC on `listener` until `shutdown`.
pub async fn serve_grpc(
    listener: TcpListener,
    config: &GrpcConfig,
    tls: &TlsMaterial,
    ingest: ingest::IngestService,
    query: query::QueryApi,
    events: events::EventApi,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AgentServiceServer<ingest::IngestService>>()
        .await;
    health
        .set_serving::<QueryServiceServer<query::QueryApi>>()
        .await;
    health
        .set_serving::<EventServiceServer<events::EventApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(infrawatch_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let max = config.max_message_bytes;
    Server::builder()
        .tls_config(tls.server_config())?
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            AgentServiceServer::new(ingest)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            QueryServiceServer::new(query)
                .max_decoding_message_size(64 * 1024)
                .max_encoding_message_size(max * 4),
        )
        .add_service(
            EventServiceServer::new(events)
                .max_decoding_message_size(64 * 1024)
                .max_encoding_message_size(max),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// Serves REST on `listener` until `shutdown`.
pub async fn serve_rest(
    listener: TcpListener,
    state: rest::RestState,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    axum::serve(listener, rest::router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(ServeError::Rest)
}
