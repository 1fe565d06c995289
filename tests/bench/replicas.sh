#!/usr/bin/env bash
# One, two and three aggregator replicas on one PostgreSQL database, side by
# side under the same load: infrawatch-loadgen with 1,000 agents spread round
# robin over the replicas' endpoints, stepping the interval down. For each
# replica count: the highest stage that passed (samples/s acknowledged, ack
# latency), the aggregators' CPU together (from /proc), and whether every batch
# became durable. On a 2-core machine this shows the cost of coordination
# (sessions, leases, conflicts, the sequencer), not scaling: the replicas and
# the load generator share the same two cores.
#
#   tests/bench/replicas.sh                           (about 10 minutes)
#   REPLICAS_BENCH_COUNTS="1 3" REPLICAS_BENCH_RAMP=1000,500 tests/bench/replicas.sh
#
# JSON of every run in target/bench-replicas/<time>/. Everything on loopback.
set -euo pipefail
cd "$(dirname "$0")/../.."

agents=${REPLICAS_BENCH_AGENTS:-1000}
counts=${REPLICAS_BENCH_COUNTS:-1 2 3}
ramp=${REPLICAS_BENCH_RAMP:-1000,500,250}
stage_s=${REPLICAS_BENCH_STAGE_S:-15}
pg_admin=${REPLICAS_BENCH_PG:-postgres://postgres@127.0.0.1:5432/postgres}

cargo build --release --workspace --bins -q
.ci/ensure-services
out=target/bench-replicas/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
pki=target/loadgen-pki
loadgen=target/release/infrawatch-loadgen
work=$(mktemp -d)
pids=()
db=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$db" ] && psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
. tests/bench/free-port.sh
. tests/bench/aggregator-config.sh
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }

"$loadgen" --certs-only --agents "$agents" --pki-dir "$pki"
ulimit -n "$(ulimit -Hn)"
hz=$(getconf CLK_TCK)
echo "| replicas | highest stage passed (acked samples/s) | ack p50 / p99 | aggregator cores | durable |"
echo "| --- | --- | --- | --- | --- |"

for n in $counts; do
  db="iw_replbench_$$_$n"
  psql "$pg_admin" -qc "CREATE DATABASE $db" >/dev/null
  url="${pg_admin%/*}/$db"
  endpoints=(); rests=(); aggs=()
  for i in $(seq 1 "$n"); do
    grpc=$(free_port); rest=$(free_port "$grpc")
    {
      aggregator_config "$grpc" "$rest" "$url" "$PWD/$pki"
      printf '[cluster]\nreplica_id = "bench-%s-%s"\n' "$n" "$i"
    } > "$work/agg-$n-$i.toml"
    RUST_LOG=warn target/release/infrawatch-aggregator --config "$work/agg-$n-$i.toml" > "$out/aggregator-$n-$i.log" 2>&1 &
    aggs+=($!); pids+=($!)
    endpoints+=(--endpoint "https://127.0.0.1:$grpc")
    rests+=(--rest "127.0.0.1:$rest")
    for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$rest/readyz" >/dev/null && break; sleep 0.1; done
  done
  echo "== $n replica(s): $agents agents, ramp $ramp ms" >&2
  before=$(cpu_ticks "${aggs[@]}"); started=$(date +%s.%N)
  "$loadgen" --agents "$agents" --pki-dir "$pki" "${endpoints[@]}" "${rests[@]}" \
    --ramp-intervals-ms "$ramp" --stage-s "$stage_s" --settle-s 3 --json \
    > "$out/replicas-$n.json" 2> "$out/loadgen-$n.log" || echo "loadgen failed: see $out/loadgen-$n.log" >&2
  after=$(cpu_ticks "${aggs[@]}"); ended=$(date +%s.%N)
  python3 - "$out/replicas-$n.json" "$n" "$before" "$after" "$hz" "$started" "$ended" <<'PY'
import json, sys
path, n, before, after, hz, started, ended = sys.argv[1:8]
try:
    r = json.load(open(path))
except (OSError, ValueError):
    print(f"| {n} | run failed | | | |"); sys.exit(0)
best = next((s for s in r["stages"] if s["interval_ms"] == (r.get("best_passing_stage") or {}).get("interval_ms")), None)
failed = next((s for s in r["stages"] if not s["passed"]), None)
cores = (int(after) - int(before)) / int(hz) / (float(ended) - float(started))
d = r.get("durable") or {}
if best:
    a = best["ack_latency"]
    text = (f"| {n} | {best['acked_samples_per_s']:,.0f} at {best['interval_ms']} ms | "
            f"{a['p50_ms']:.1f} / {a['p99_ms']:.1f} ms | ")
else:
    text = "| {n} | none passed | - | "
text += f"{cores:.2f} (whole run) | {'all durable' if d.get('all_batches_durable') else 'NOT all durable'} |"
if failed:
    text += f" next ({failed['interval_ms']} ms) failed: {failed['failure']}"
print(text)
PY
  for p in "${aggs[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${aggs[@]}"; do wait "$p" 2>/dev/null || true; done
  psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
  db=""
done
