//! The network front of the aggregator: the mTLS gRPC server (agent stream, query
//! service, standard health service, reflection) and the REST server. Each
//! service admits the roles it serves (agents report; readers and admins query
//! and read events); health and reflection are open to any client certificate.

pub mod connections;
pub mod events;
pub mod http;
pub mod message_frames;
pub mod query;
pub mod rest;
pub mod rest_events;

use crate::auth::grpc::RoleGate;
use crate::sources::agent::stream::AgentSource;
use std::net::SocketAddr;
use std::sync::Arc;

use infrawatch_common::role::Role;
use infrawatch_common::tls::identity_from_der;
use infrawatch_common::tls_reload::ReloadingTls;
use infrawatch_proto::v1::agent_service_server::AgentServiceServer;
use infrawatch_proto::v1::event_service_server::EventServiceServer;
use infrawatch_proto::v1::query_service_server::QueryServiceServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
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
    tls: Arc<ReloadingTls>,
    ingest: AgentSource,
    query: query::QueryApi,
    events: events::EventApi,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AgentServiceServer<AgentSource>>()
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
    let (connections_tx, connections) = mpsc::channel(64);
    let limiter = connections::ConnectionLimiter::new(config.max_connections_per_identity);
    let acceptor = tokio::spawn(accept_tls(
        listener,
        tls,
        limiter,
        connections_tx,
        shutdown.clone(),
    ));
    Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(message_frames::SplitMessagePrefixes::new(
            InterceptedService::new(
                AgentServiceServer::new(ingest)
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
                RoleGate::new(&config.trust_domain, Role::may_report, "report resources"),
            ),
        ))
        .add_service(InterceptedService::new(
            QueryServiceServer::new(query)
                .max_decoding_message_size(64 * 1024)
                .max_encoding_message_size(max * 4),
            RoleGate::new(&config.trust_domain, Role::may_read, "query the model"),
        ))
        .add_service(InterceptedService::new(
            EventServiceServer::new(events)
                .max_decoding_message_size(64 * 1024)
                .max_encoding_message_size(max),
            RoleGate::new(&config.trust_domain, Role::may_read, "read events"),
        ))
        .serve_with_incoming_shutdown(ReceiverStream::new(connections), shutdown.cancelled_owned())
        .await?;
    acceptor.abort();
    Ok(())
}

/// How long a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

type TlsConnection = Result<
    connections::Counted<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    std::io::Error,
>;

/// Accepts TCP connections and completes their TLS handshakes with the material
/// current at that moment (so rotated certificates and CAs apply to every new
/// connection while established ones keep theirs), handing finished connections
/// to the gRPC server. A failed handshake (unknown CA, expired certificate, no
/// certificate) closes only that connection, and so does a connection over the
/// limit of connections per client identity and address.
async fn accept_tls(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    limiter: Arc<connections::ConnectionLimiter>,
    connections: mpsc::Sender<TlsConnection>,
    shutdown: CancellationToken,
) {
    let mut cached: Option<(u64, tokio_rustls::TlsAcceptor)> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "Cannot accept a connection.");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (material, version) = tls.current();
        let acceptor = match &cached {
            Some((v, a)) if *v == version => a.clone(),
            _ => match material.rustls_server_config() {
                Ok(config) => {
                    let a = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                    cached = Some((version, a.clone()));
                    a
                }
                Err(e) => match &cached {
                    Some((_, a)) => {
                        tracing::warn!(
                            error = &e as &dyn std::error::Error,
                            "New TLS material unusable; keeping the previous."
                        );
                        a.clone()
                    }
                    None => {
                        tracing::error!(
                            error = &e as &dyn std::error::Error,
                            "No usable TLS material; refusing connections."
                        );
                        continue;
                    }
                },
            },
        };
        let _ = tcp.set_nodelay(true);
        let connections = connections.clone();
        let limiter = limiter.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let identity = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|leaf| identity_from_der(leaf.as_ref()).ok())
                        .unwrap_or_default();
                    match limiter.admit(&identity, peer.ip()) {
                        Some(ticket) => {
                            let _ = connections
                                .send(Ok(connections::Counted::new(stream, ticket)))
                                .await;
                        }
                        None => {
                            metrics::counter!(crate::telemetry::TLS_REFUSED, "reason" => "connections_per_identity")
                                .increment(1);
                            if limiter.should_warn(infrawatch_common::time::now_unix_ms()) {
                                tracing::warn!(
                                    %peer,
                                    identity,
                                    limit = limiter.limit(),
                                    "Connection closed: this identity already has the most connections allowed from its address (grpc.max_connections_per_identity; refusals are counted in infrawatch_aggregator_tls_refused_total and logged at most every 10 s)."
                                );
                            }
                        }
                    }
                }
                Ok(Err(e)) => {
                    metrics::counter!(crate::telemetry::TLS_REFUSED, "reason" => "handshake")
                        .increment(1);
                    tracing::info!(%peer, error = %e, "TLS handshake refused.");
                }
                Err(_) => {
                    metrics::counter!(crate::telemetry::TLS_REFUSED, "reason" => "timeout")
                        .increment(1);
                    tracing::info!(%peer, "TLS handshake timed out.");
                }
            }
        });
    }
}

/// Serves REST on `listener` until `shutdown`.
pub async fn serve_rest(
    listener: TcpListener,
    state: rest::RestState,
    header_read_timeout: std::time::Duration,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    http::serve(listener, rest::router(state), header_read_timeout, shutdown)
        .await
        .map_err(ServeError::Rest)
}
