//! Command-line settings of `infrawatch-loadgen`, and their checks (pure: no file
//! or socket is touched here).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::profile::DEFAULT_SERIES;

/// Simulates many infrawatch agents against one or more aggregators and reports
/// acknowledged samples per second, acknowledgement latency (received and
/// durable), whether every batch sent was acknowledged durable, errors, bytes per
/// sample and (with --change-every-ms) how long a health change takes to reach
/// event subscribers and REST queries.
///
/// Each agent has its own client certificate from the development CA in
/// --pki-dir (created there if missing; reruns reuse them; point the aggregator's
/// [grpc.tls] at the same directory's ca.pem, server.pem and server-key.pem).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "infrawatch-loadgen", version)]
pub struct Args {
    /// Simulated agents.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Aggregator gRPC endpoint, e.g. https://127.0.0.1:7443; repeat for several
    /// (agents are assigned round robin).
    #[arg(long = "endpoint")]
    pub endpoints: Vec<String>,
    /// Directory of the development PKI (CA, server and one client certificate
    /// per agent).
    #[arg(long, default_value = "target/loadgen-pki")]
    pub pki_dir: PathBuf,
    /// Only create the certificates for --agents agents, then exit.
    #[arg(long)]
    pub certs_only: bool,
    /// Identity prefix: agent i is `<prefix>-<i, 5 digits>`.
    #[arg(long, default_value = "loadgen")]
    pub identity_prefix: String,
    /// Name the aggregator's certificate is checked against.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Series per agent (one sample each per batch).
    #[arg(long, default_value_t = DEFAULT_SERIES)]
    pub series: usize,
    /// Milliseconds between two batches of one agent.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Step through these intervals (ms, comma-separated), one stage each, instead
    /// of one stage at --interval-ms; stops after the first stage that fails.
    #[arg(long, value_delimiter = ',')]
    pub ramp_intervals_ms: Vec<u64>,
    /// Seconds measured per ramp stage.
    #[arg(long, default_value_t = 20)]
    pub stage_s: u64,
    /// Seconds measured without a ramp.
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// Seconds each stage runs before it is measured (the aggregator settles).
    #[arg(long, default_value_t = 3)]
    pub settle_s: u64,
    /// A stage fails when acknowledgement p99 exceeds this (ms).
    #[arg(long, default_value_t = 1000)]
    pub max_ack_p99_ms: u64,
    /// Keep stepping after a stage failed.
    #[arg(long)]
    pub no_stop_on_failure: bool,
    /// Every this many ms, make the TCP probe of one agent fail for one batch and
    /// recover in the next, and time both changes to each observer (0: off).
    #[arg(long, default_value_t = 0)]
    pub change_every_ms: u64,
    /// Do not watch changes over gRPC `EventService.WatchEvents`.
    #[arg(long)]
    pub no_grpc_watch: bool,
    /// NATS server the aggregator's NATS sink publishes to: time changes to a
    /// JetStream consumer.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// JetStream stream of the NATS sink.
    #[arg(long, default_value = "INFRAWATCH_STATUS")]
    pub nats_stream: String,
    /// Subject prefix of the NATS sink.
    #[arg(long, default_value = "infrawatch.status")]
    pub nats_subject_prefix: String,
    /// REST address (host:port) of each aggregator, in --endpoint order: polls the
    /// changed resource until its health shows, and scrapes /metrics per stage.
    #[arg(long = "rest")]
    pub rest: Vec<SocketAddr>,
    /// Process id of the aggregator (one, on this machine): its CPU time and
    /// memory go into the report.
    #[arg(long)]
    pub aggregator_pid: Option<u32>,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// New connections (TLS handshakes) started per second at most.
    #[arg(long, default_value_t = 500)]
    pub connect_rate: u64,
    /// Connections being set up at once at most.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds to wait for every agent to connect before measuring anyway.
    #[arg(long, default_value_t = 180)]
    pub connect_timeout_s: u64,
    /// Batches per agent not yet acknowledged at any level (received or
    /// durable), at most; a batch due while the window is full is skipped and
    /// counted (the aggregator is behind).
    #[arg(long, default_value_t = 16)]
    pub max_in_flight: usize,
    /// A batch without any acknowledgement this long ends the stream (counted as
    /// ack_timeout).
    #[arg(long, default_value_t = 30)]
    pub ack_timeout_s: u64,
    /// After the last stage, seconds to wait at most for the durable
    /// acknowledgements still due (the aggregator commits received batches at
    /// its flush interval, up to 60 s); then the summary says whether every batch
    /// sent was acknowledged durable. 0: do not wait.
    #[arg(long, default_value_t = 75)]
    pub durable_wait_s: u64,
    /// Seconds between progress lines on stderr.
    #[arg(long, default_value_t = 5)]
    pub report_s: u64,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// The stage intervals: the ramp, or --interval-ms alone.
    pub fn stages(&self) -> Vec<u64> {
        if self.ramp_intervals_ms.is_empty() {
            vec![self.interval_ms]
        } else {
            self.ramp_intervals_ms.clone()
        }
    }

    /// Seconds measured per stage.
    pub fn stage_seconds(&self) -> u64 {
        if self.ramp_intervals_ms.is_empty() {
            self.duration_s
        } else {
            self.stage_s
        }
    }

    /// Every problem with the settings.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.agents == 0 {
            p.push("--agents must be at least 1".into());
        }
        if self.agents > 99_999 {
            p.push("--agents must be at most 99,999".into());
        }
        if !self.certs_only && self.endpoints.is_empty() {
            p.push("give at least one --endpoint".into());
        }
        for e in &self.endpoints {
            if !(e.starts_with("https://") || e.starts_with("http://")) {
                p.push(format!("--endpoint {e:?} must be an https:// URL"));
            }
        }
        if self.series == 0 || self.series > 100_000 {
            p.push("--series must be 1 to 100,000".into());
        }
        if self.stages().contains(&0) {
            p.push("intervals must be at least 1 ms".into());
        }
        if self.stage_seconds() == 0 {
            p.push("the measured time must be at least 1 s".into());
        }
        if self.workers == 0 || self.connect_rate == 0 || self.connect_concurrency == 0 {
            p.push("--workers, --connect-rate and --connect-concurrency must be at least 1".into());
        }
        if self.max_in_flight == 0 {
            p.push("--max-in-flight must be at least 1".into());
        }
        if self.report_s == 0 {
            p.push("--report-s must be at least 1".into());
        }
        if !self.rest.is_empty() && self.rest.len() != self.endpoints.len() {
            p.push("give one --rest per --endpoint, in the same order".into());
        }
        if !infrawatch_common::certs::is_valid_identity(&format!("{}-00000", self.identity_prefix))
        {
            p.push(format!(
                "--identity-prefix {:?} does not make valid identities",
                self.identity_prefix
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn settings_are_checked_together() {
        let a = Args::parse_from([
            "loadgen",
            "--agents",
            "0",
            "--endpoint",
            "127.0.0.1:1",
            "--rest",
            "127.0.0.1:2",
            "--rest",
            "127.0.0.1:3",
            "--ramp-intervals-ms",
            "1000,0",
        ]);
        let p = a.problems();
        assert_eq!(p.len(), 4, "{p:?}");
        let ok = Args::parse_from(["loadgen", "--endpoint", "https://127.0.0.1:1"]);
        assert!(ok.problems().is_empty());
        assert_eq!(ok.stages(), vec![1000]);
        let ramp = Args::parse_from([
            "loadgen",
            "--endpoint",
            "https://127.0.0.1:1",
            "--ramp-intervals-ms",
            "2000,1000",
        ]);
        assert_eq!(
            (ramp.stages(), ramp.stage_seconds()),
            (vec![2000, 1000], 20)
        );
    }
}
