#!/usr/bin/env bash
# The whole system under load: the release aggregator (SQLite, then PostgreSQL on
# a fresh database), a nats-server as its event sink, and infrawatch-loadgen
# simulating 1,000 and then 10,000 agents, each with its own client certificate
# and 120 series. Three runs per database, each on a fresh aggregator and
# database:
#
#   latency  1,000 agents x 1 Hz for 20 s: send-to-ack latency, and one TCP probe
#            change every 200 ms timed to the gRPC event watch (the in-process
#            bus), a JetStream consumer of the NATS sink and a REST query;
#   small    1,000 agents, the interval between batches stepped down until a
#   large    stage fails (10,000 agents): errors, samples skipped because the
#            aggregator fell behind, fewer samples acknowledged than offered, or
#            acknowledgement p99 above 1 s.
#
#   tests/bench/system.sh          (about 12 minutes after the release build)
#
# Knobs (environment): SYSTEM_BENCH_SMALL (1000 agents), SYSTEM_BENCH_LARGE
# (10000), SYSTEM_BENCH_STAGE_S (15), SYSTEM_BENCH_BACKENDS ("sqlite postgres";
# also "postgres-unix": the same server through /var/run/postgresql),
# SYSTEM_BENCH_SMALL_RAMP (ms, "8000,4000,2000,1000,500,250,125"),
# SYSTEM_BENCH_LARGE_RAMP ("120000,60000,30000,10000,5000,2000,1000"),
# SYSTEM_BENCH_RUNS ("latency small large"), SYSTEM_BENCH_PG (admin URL,
# postgres://postgres@127.0.0.1:5432/postgres). Everything runs on loopback.
# Prints one Markdown table; the JSON of every run stays in target/bench-system/.
set -euo pipefail
cd "$(dirname "$0")/../.."

small=${SYSTEM_BENCH_SMALL:-1000}
large=${SYSTEM_BENCH_LARGE:-10000}
stage_s=${SYSTEM_BENCH_STAGE_S:-15}
backends=${SYSTEM_BENCH_BACKENDS:-sqlite postgres}
small_ramp=${SYSTEM_BENCH_SMALL_RAMP:-8000,4000,2000,1000,500,250,125}
large_ramp=${SYSTEM_BENCH_LARGE_RAMP:-120000,60000,30000,10000,5000,2000,1000}
pg_admin=${SYSTEM_BENCH_PG:-postgres://postgres@127.0.0.1:5432/postgres}
runs=" ${SYSTEM_BENCH_RUNS:-latency small large} "

nats_bin=${INFRAWATCH_TEST_TOOLS:-target/test-tools/venv}/bin/nats-server
[ -x "$nats_bin" ] || .ci/ensure-deps
cargo build --release --workspace --bins -q
if [[ " $backends " == *" postgres"* ]]; then
  .ci/ensure-services
fi

out=target/bench-system/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
pki=target/loadgen-pki
loadgen=target/release/infrawatch-loadgen
work=$(mktemp -d)
pids=()
databases=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for db in "${databases[@]}"; do
    psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

. tests/bench/free-port.sh
. tests/bench/aggregator-config.sh

# Certificates for every agent, cached across runs.
"$loadgen" --certs-only --agents "$large" --pki-dir "$pki"
# 10,000 TLS connections need as many descriptors in the aggregator.
ulimit -n "$(ulimit -Hn)"

nats_port=$(free_port)
printf 'listen: "127.0.0.1:%s"\njetstream { store_dir: "%s" }\n' "$nats_port" "$work/nats" > "$work/nats.conf"
"$nats_bin" -c "$work/nats.conf" > "$out/nats.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done

run_case() { # backend run agents loadgen-arguments...
  local backend=$1 run=$2 agents=$3 name="$1-$2"
  shift 3
  local grpc rest url stream agg db=""
  grpc=$(free_port "$nats_port"); rest=$(free_port "$nats_port" "$grpc")
  stream="IW_SYSBENCH_$(echo "$name" | tr 'a-z-' 'A-Z_')"
  if [[ "$backend" == postgres* ]]; then
    db="iw_sysbench_$$_${backend//-/_}_$run"
    psql "$pg_admin" -qc "CREATE DATABASE $db" >/dev/null
    databases+=("$db")
    url="${pg_admin%/*}/$db"
    # postgres-unix: the same server through its Unix socket (no TCP, no Nagle).
    [ "$backend" = postgres-unix ] && url="postgres://postgres@localhost/$db?host=/var/run/postgresql"
  else
    url="sqlite://$work/$name.db"
  fi
  {
    aggregator_config "$grpc" "$rest" "$url" "$PWD/$pki"
    cat <<TOML
[events.nats]
url = "nats://127.0.0.1:$nats_port"
stream = "$stream"
subject_prefix = "iwbench.$backend.$run"
TOML
  } > "$work/$name.toml"
  RUST_LOG=warn target/release/infrawatch-aggregator --config "$work/$name.toml" > "$out/aggregator-$name.log" 2>&1 &
  agg=$!; pids+=($agg)
  for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$rest/readyz" >/dev/null && break; sleep 0.1; done
  echo "== $name: $agents agents, $*" >&2
  "$loadgen" --agents "$agents" --pki-dir "$pki" \
    --endpoint "https://127.0.0.1:$grpc" --rest "127.0.0.1:$rest" --aggregator-pid "$agg" \
    --nats-url "nats://127.0.0.1:$nats_port" --nats-stream "$stream" \
    --nats-subject-prefix "iwbench.$backend.$run" --settle-s 3 --change-every-ms 200 "$@" \
    --json > "$out/$name.json" 2> "$out/loadgen-$name.log" || echo "loadgen failed: see $out/loadgen-$name.log" >&2
  grep -E '^connected ' "$out/loadgen-$name.log" >&2 || true
  grep -E '^stage [0-9]+ \([0-9]+ ms\): [0-9]' "$out/loadgen-$name.log" >&2 || true
  kill "$agg" 2>/dev/null || true
  wait "$agg" 2>/dev/null || true
  if [ -n "$db" ]; then
    psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
  fi
}

for backend in $backends; do
  if [[ $runs == *" latency "* ]]; then
    run_case "$backend" latency "$small" --interval-ms 1000 --duration-s 20 --max-ack-p99-ms 60000
  fi
  if [[ $runs == *" small "* ]]; then
    run_case "$backend" small "$small" --ramp-intervals-ms "$small_ramp" --stage-s "$stage_s"
  fi
  if [[ $runs == *" large "* ]]; then
    run_case "$backend" large "$large" --ramp-intervals-ms "$large_ramp" --stage-s "$stage_s"
  fi
done

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
python3 - "$out" "$cpu" "$(nproc)" "$small" "$large" "$backends" <<'PY'
import json, os, sys
out, cpu, cores, small, large, backends = sys.argv[1:7]
small, large, backends = int(small), int(large), backends.split()
label = {"sqlite": "SQLite", "postgres": "PostgreSQL (TCP)", "postgres-unix": "PostgreSQL (Unix socket)"}

def load(b, run):
    try:
        with open(os.path.join(out, f"{b}-{run}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None

runs = {b: {r: load(b, r) for r in ("latency", "small", "large")} for b in backends}

def lat(h):
    if not h or not h.get("count"):
        return "-"
    f = lambda v: "-" if v is None else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")
    return f"{f(h['p50_ms'])} / {f(h['p99_ms'])} / {f(h['p999_ms'])} ms"

def best(r):
    return None if not r else next((s for s in r["stages"]
        if s["interval_ms"] == (r.get("best_passing_stage") or {}).get("interval_ms")), None)

def ingest(r):
    if not r:
        return "run failed"
    b = best(r)
    failed = next((s for s in r["stages"] if not s["passed"]), None)
    why = (f"; next ({failed['interval_ms']} ms, {failed['offered_samples_per_s']:,.0f}/s offered) "
           f"failed: {failed['failure']}") if failed else "; every stage passed"
    if not b:
        return "none passed" + why
    return f"{b['acked_samples_per_s']:,.0f} at {b['interval_ms']} ms" + why

def per_core(r):
    b = best(r)
    if not b or not b["aggregator"].get("samples_per_core_s"):
        return "-"
    return f"{b['aggregator']['samples_per_core_s']:,.0f} ({b['aggregator']['cores']:.2f} cores busy)"

def rows(s):
    if not s:
        return "-"
    a = s["aggregator"]
    rs = a.get("rows_per_s") or {}
    state = sum(rs.get(k, 0) for k in ("resources", "history", "events"))
    share = a.get("db_share_of_writer")
    busy = a.get("writer_busy_seconds")
    text = (f"state {state:,.0f}/s + cursors {rs.get('cursors', 0):,.0f}/s, rollups {rs.get('rollups', 0):,.0f}/s"
            f" in {a.get('commits_per_s') or 0:.0f} commits/s")
    if share is not None and busy is not None:
        text += f"; commits {share*100:.0f} % of writer time, writer busy {busy / s['seconds'] * 100:.0f} % of wall"
    stale = a.get("resources_marked_stale")
    if stale:
        text += f"; {stale:,.0f} resources marked stale (UNKNOWN) by the sweep"
    return text

def rss(r):
    if not r:
        return "-"
    m = r["aggregator_rss"]
    mib = lambda v: "-" if v is None else f"{v/2**20:,.0f} MiB"
    per = m.get("per_connected_agent_bytes")
    return (f"idle {mib(m['idle_bytes'])}; {r['connect']['connected']:,} connected {mib(m['connected_bytes'])} = "
            f"{'-' if per is None else f'{per/1024:.0f} KiB'} per agent; end of run {mib(m['end_bytes'])}")

def change(r, key):
    s = r["stages"][0] if r and r["stages"] else None
    if not s:
        return "-"
    c = s["change_to_observer"][key]
    return lat(c) + f" (n={c['count']}" + (f", {c['missed']} missed" if c.get("missed") else "") + ")"

table = []
def row(name, f):
    table.append([name] + [f(runs[b]) for b in backends])

row(f"ingest, {small:,} agents: highest sustained samples/s", lambda r: ingest(r["small"]))
row("  per aggregator core used", lambda r: per_core(r["small"]))
row(f"ingest, {large:,} agents: highest sustained samples/s", lambda r: ingest(r["large"]))
row("  per aggregator core used", lambda r: per_core(r["large"]))
row(f"aggregator RSS, {large:,} agents (connected = Hello + first batch)", lambda r: rss(r["large"]))
row(f"time to connect {large:,} agents (500 handshakes/s at most)", lambda r: "-" if not r["large"] else f"{r['large']['connect']['seconds']:.0f} s")
row(f"ingest → ack p50 / p99 / p99.9, {small:,} agents × 1 Hz", lambda r: lat(r["latency"]["stages"][0]["ack_latency"]) if r["latency"] and r["latency"]["stages"] else "-")
row("change → event, gRPC WatchEvents (in-process bus)", lambda r: change(r["latency"], "grpc_watch"))
row("change → event, NATS JetStream consumer", lambda r: change(r["latency"], "nats_jetstream"))
row("change → visible in a REST query", lambda r: change(r["latency"], "rest_query"))
def light(r):
    s = r["stages"][0] if r and r["stages"] else None
    if not s:
        return "-"
    c = s["change_to_observer"]
    return (f"{s['interval_ms']} ms interval: ack {lat(s['ack_latency'])}; change → gRPC {lat(c['grpc_watch'])}, "
            f"NATS {lat(c['nats_jetstream'])}, REST {lat(c['rest_query'])}")
row(f"the same at the lightest stage of {small:,} agents", lambda r: light(r["small"]))
row(f"database, {small:,} agents × 1 Hz", lambda r: rows(r["latency"]["stages"][0] if r["latency"] and r["latency"]["stages"] else None))
row(f"database, highest sustained stage of {large:,} agents", lambda r: rows(best(r["large"])))
row("bytes per sample on the wire (encoded Batch / samples)", lambda r: "-" if not r["latency"] or r["latency"].get("bytes_per_sample") is None else f"{r['latency']['bytes_per_sample']:.1f}")
row(f"load generator CPU during the {large:,}-agent run", lambda r: "-" if not r["large"] or r["large"].get("loadgen_cores") is None else f"{r['large']['loadgen_cores']:.2f} cores")

print(f"\nSystem benchmark: {cpu}, {cores} cores; JSON of every run in {out}\n")
print("| figure | " + " | ".join(label.get(b, b) for b in backends) + " |")
print("| --- | " + " | ".join("---" for _ in backends) + " |")
for r in table:
    print("| " + " | ".join(str(c) for c in r) + " |")
PY
