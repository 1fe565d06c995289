//! The agent's transport against a scripted aggregator (mTLS gRPC on loopback):
//! received acks free the in-flight window but not the disk buffer, durable acks
//! free the buffer, a broken stream resends from the oldest batch not durable,
//! and an aggregator that sends only durable acks still drives the window.

use std::sync::Arc;
use std::time::Duration;

use infrawatch_agent::buffer::{BufferConfig, DiskBuffer};
use infrawatch_agent::config::AggregatorConfig;
use infrawatch_agent::transport::Transport;
use infrawatch_common::certs::DevPki;
use infrawatch_common::tls::TlsMaterial;
use infrawatch_common::tls_reload::ReloadingTls;
use infrawatch_proto::v1::agent_message::Body as AgentBody;
use infrawatch_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use infrawatch_proto::v1::aggregator_message::Body as AggregatorBody;
use infrawatch_proto::v1::{
    Ack, AckLevel, AgentMessage, AggregatorMessage, Batch, Hello, SampleColumns,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

type Outbound = mpsc::Sender<Result<AggregatorMessage, Status>>;

/// What the scripted aggregator shows the test of one stream.
struct Opened {
    hello: Hello,
    /// Seqs of the batches as they arrive.
    batches: mpsc::Receiver<u64>,
    /// Messages to the agent.
    out: Outbound,
}

/// Hands every stream to the test, which answers it by hand.
struct Scripted {
    streams: mpsc::Sender<Opened>,
}

#[tonic::async_trait]
impl AgentService for Scripted {
    type ReportStream = ReceiverStream<Result<AggregatorMessage, Status>>;

    async fn report(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let mut inbound = request.into_inner();
        let Some(AgentMessage {
            body: Some(AgentBody::Hello(hello)),
        }) = inbound.message().await?
        else {
            return Err(Status::invalid_argument("hello first"));
        };
        let (out, rx) = mpsc::channel(64);
        let (seen_tx, batches) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(AgentBody::Batch(b)) = m.body
                    && seen_tx.send(b.seq).await.is_err()
                {
                    return;
                }
            }
        });
        let _ = self
            .streams
            .send(Opened {
                hello,
                batches,
                out,
            })
            .await;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn batch(seq: u64) -> Batch {
    Batch {
        seq,
        base_time_unix_ms: infrawatch_common::time::now_unix_ms(),
        samples: Some(SampleColumns {
            series: vec![0; 3],
            time_offset_ms: vec![0, 1, 2],
            values: vec![1.0; 3],
        }),
        ..Default::default()
    }
}

fn ack(seq: u64, level: AckLevel) -> Result<AggregatorMessage, Status> {
    Ok(AggregatorMessage {
        body: Some(AggregatorBody::Ack(Ack {
            seq,
            level: level as i32,
            ..Ack::default()
        })),
    })
}

/// The next batch seq of stream `s`, within a few seconds.
async fn next(s: &mut Opened) -> u64 {
    match tokio::time::timeout(Duration::from_secs(10), s.batches.recv()).await {
        Ok(Some(seq)) => seq,
        Ok(None) => panic!("the stream ended"),
        Err(_) => panic!("no batch within 10 s"),
    }
}

/// No batch arrives on `s` for a while (the window is full).
async fn quiet(s: &mut Opened) {
    let got = tokio::time::timeout(Duration::from_millis(300), s.batches.recv()).await;
    assert!(got.is_err(), "unexpected batch {got:?}");
}

/// Waits until `f` holds (the agent applies acks asynchronously).
async fn until(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn received_acks_move_the_window_and_durable_acks_free_the_buffer() {
    infrawatch_common::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = DevPki::new(dir.path().join("pki"));
    let ca = pki.ensure_ca().unwrap();
    pki.ensure_server(&ca, &[]).unwrap();
    pki.ensure_client(&ca, "agent-1", infrawatch_common::role::Role::Agent)
        .unwrap();
    let server_tls = TlsMaterial::load(&pki.tls_files("server")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (streams_tx, mut streams) = mpsc::channel(4);
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(server_tls.server_config())
            .unwrap()
            .add_service(AgentServiceServer::new(Scripted {
                streams: streams_tx,
            }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let pending = DiskBuffer::open(&dir.path().join("buffer"), BufferConfig::default()).unwrap();
    for seq in 1..=6 {
        pending.push(batch(seq));
    }
    let files = pki.tls_files("agent-1");
    let config = AggregatorConfig {
        endpoints: vec![format!("https://{addr}")],
        tls: files.clone(),
        max_in_flight_batches: 2,
        backoff_initial_ms: 10,
        backoff_max_ms: 50,
        ..AggregatorConfig::default()
    };
    let hello = Hello {
        agent_name: "agent-1".into(),
        features: infrawatch_common::ack::agent_features(),
        ..Hello::default()
    };
    let transport = Transport::new(
        config,
        Arc::new(ReloadingTls::load(&files).unwrap()),
        hello,
        pending.clone(),
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(transport.run(stop.clone(), CancellationToken::new()));

    // Stream 1, an aggregator with two-level acks.
    let mut s = streams.recv().await.unwrap();
    assert_eq!(s.hello.features, vec!["ack.received".to_string()]);
    assert_eq!((next(&mut s).await, next(&mut s).await), (1, 2));
    quiet(&mut s).await;
    // One cumulative received ack frees both places; nothing leaves the buffer.
    s.out.send(ack(2, AckLevel::Received)).await.unwrap();
    assert_eq!((next(&mut s).await, next(&mut s).await), (3, 4));
    quiet(&mut s).await;
    assert_eq!(pending.len(), 6);
    // A durable ack frees the buffer, not the window (3 and 4 are in flight).
    s.out.send(ack(1, AckLevel::Durable)).await.unwrap();
    until("batch 1 freed", || pending.len() == 5).await;
    quiet(&mut s).await;
    // A duplicate changes nothing; a durable ack ahead of received frees both.
    s.out.send(ack(2, AckLevel::Received)).await.unwrap();
    quiet(&mut s).await;
    s.out.send(ack(3, AckLevel::Durable)).await.unwrap();
    assert_eq!(next(&mut s).await, 5);
    quiet(&mut s).await;
    until("batches 2 and 3 freed", || pending.len() == 3).await;
    // 4 and 5 are received, not durable, when the stream breaks.
    s.out.send(ack(5, AckLevel::Received)).await.unwrap();
    assert_eq!(next(&mut s).await, 6);
    s.out.send(Err(Status::unavailable("gone"))).await.unwrap();

    // Stream 2, an aggregator that sends only durable acks: everything not
    // durable comes again, oldest first, and each durable ack frees its place.
    let mut s = streams.recv().await.unwrap();
    assert_eq!((next(&mut s).await, next(&mut s).await), (4, 5));
    quiet(&mut s).await;
    s.out.send(ack(4, AckLevel::Durable)).await.unwrap();
    assert_eq!(next(&mut s).await, 6);
    s.out.send(ack(6, AckLevel::Durable)).await.unwrap();
    until("buffer empty", || pending.is_empty()).await;
    pending.push(batch(7));
    assert_eq!(next(&mut s).await, 7);

    stop.cancel();
    task.await.unwrap();
}
