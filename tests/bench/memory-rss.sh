#!/usr/bin/env bash
# The aggregator's resident memory with many agents connected, the figure of
# the memory target (10,000 agents of 120 series in at most 1 GiB): a release
# aggregator on SQLite (mimalloc, as shipped), infrawatch-loadgen connecting N
# agents that send a batch every interval, RSS sampled every 0.5 s.
#
#   tests/bench/memory-rss.sh                      # 10,000 agents, 120 s interval, 130 s
#   MEMORY_BENCH_AGENTS=2000 tests/bench/memory-rss.sh
#   AGG_BIN=/path/to/other/infrawatch-aggregator NO_BUILD=1 tests/bench/memory-rss.sh
#
# 130 s covers every agent's first batch, two rollup flushes (every 60 s) and
# a second batch from every agent. Output in target/bench-memory-rss/<time>/:
# the loadgen JSON (aggregator_rss: idle, connected, end, peak = VmHWM),
# rss.tsv (seconds, RSS in KiB) and the aggregator's log. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."

agents=${MEMORY_BENCH_AGENTS:-10000}
interval=${MEMORY_BENCH_INTERVAL_MS:-120000}
duration=${MEMORY_BENCH_DURATION_S:-130}
[ "${NO_BUILD:-0}" = 1 ] || cargo build --release --workspace --bins -q
agg_bin=${AGG_BIN:-target/release/infrawatch-aggregator}
loadgen=target/release/infrawatch-loadgen
out=target/bench-memory-rss/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
pki=target/loadgen-pki
work=$(mktemp -d)
agg=""
sampler=""
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
  [ -n "$agg" ] && kill "$agg" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
. tests/bench/free-port.sh
. tests/bench/aggregator-config.sh

"$loadgen" --certs-only --agents "$agents" --pki-dir "$pki"
ulimit -n "$(ulimit -Hn)"
grpc=$(free_port); rest=$(free_port "$grpc")
aggregator_config "$grpc" "$rest" "sqlite://$work/iw.db" "$PWD/$pki" > "$work/aggregator.toml"
RUST_LOG=warn "$agg_bin" --config "$work/aggregator.toml" > "$out/aggregator.log" 2>&1 &
agg=$!
for _ in $(seq 1 600); do curl -fs "http://127.0.0.1:$rest/readyz" >/dev/null && break; sleep 0.1; done
(
  start=$(date +%s%N)
  while kill -0 "$agg" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$agg/status" 2>/dev/null || true)
    tenths=$(( ($(date +%s%N) - start) / 100000000 ))
    [ -n "$rss" ] && printf '%d.%d\t%s\n' $((tenths / 10)) $((tenths % 10)) "$rss"
    sleep 0.5
  done
) > "$out/rss.tsv" &
sampler=$!
"$loadgen" --agents "$agents" --pki-dir "$pki" --endpoint "https://127.0.0.1:$grpc" \
  --rest "127.0.0.1:$rest" --aggregator-pid "$agg" --interval-ms "$interval" \
  --duration-s "$duration" --durable-wait-s 0 --json > "$out/loadgen.json" 2> "$out/loadgen.log" || true
kill "$sampler" 2>/dev/null || true
sampler=""
grep -E '^connected |aggregator RSS' "$out/loadgen.log" || true
python3 - "$out/loadgen.json" "$out/rss.tsv" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["aggregator_rss"]
mib = lambda b: f"{b / 2**20:,.1f} MiB" if b else "-"
rows = [l.split("\t") for l in open(sys.argv[2]) if "\t" in l]
# While the agents were connected (the sampler stops with the load generator).
late = [int(kib) for t, kib in rows if float(t) > 70]
print(f"idle {mib(r['idle_bytes'])}, connected {mib(r['connected_bytes'])}, "
      f"end {mib(r['end_bytes'])}, peak (VmHWM) {mib(r['peak_bytes'])}, "
      f"per agent {r['per_connected_agent_bytes'] / 1024:.1f} KiB" if r['per_connected_agent_bytes'] else "no figures")
if late:
    print(f"after 70 s (the flushes): {min(late) / 1024:,.0f}-{max(late) / 1024:,.0f} MiB")
PY
echo "output: $out"
