#!/usr/bin/env bash
# Where the aggregator's memory goes with many agents connected: a release
# aggregator (SQLite) under heaptrack, infrawatch-loadgen connecting N agents
# (default 1,000, 120 series each) and streaming for a while, then the
# aggregator stopped and heaptrack's peak allocations printed by call site,
# with RSS per connected agent from the load generator's report.
#
#   tests/bench/memory.sh                 # 1,000 agents, 30 s interval, 90 s
#   MEMORY_BENCH_AGENTS=2000 MEMORY_BENCH_INTERVAL_MS=10000 tests/bench/memory.sh
#
# Output in target/bench-memory/<time>/: the loadgen JSON, heaptrack's data file
# and its printed summary (peak.txt). Everything runs on loopback.
set -euo pipefail
cd "$(dirname "$0")/../.."

agents=${MEMORY_BENCH_AGENTS:-1000}
interval=${MEMORY_BENCH_INTERVAL_MS:-30000}
duration=${MEMORY_BENCH_DURATION_S:-90}

command -v heaptrack >/dev/null || {
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get install -y -qq heaptrack >/dev/null
}
out=target/bench-memory/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
# heaptrack sees malloc only: the aggregator under it is built with the system
# allocator (mimalloc, the default feature, would hide every allocation).
cargo build --release -p infrawatch-aggregator --no-default-features --bin infrawatch-aggregator -q
cp target/release/infrawatch-aggregator "$out/infrawatch-aggregator-glibc"
cargo build --release --workspace --bins -q
pki=target/loadgen-pki
loadgen=target/release/infrawatch-loadgen
work=$(mktemp -d)
agg=""
cleanup() {
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
RUST_LOG=warn heaptrack -o "$out/heaptrack" "$out/infrawatch-aggregator-glibc" --config "$work/aggregator.toml" \
  > "$out/aggregator.log" 2>&1 &
agg=$!
for _ in $(seq 1 600); do curl -fs "http://127.0.0.1:$rest/readyz" >/dev/null && break; sleep 0.1; done
pid=$(pgrep -f "infrawatch-aggregator-glibc --config $work/aggregator.toml" | grep -v "^$agg$" | head -n1 || echo "$agg")
"$loadgen" --agents "$agents" --pki-dir "$pki" --endpoint "https://127.0.0.1:$grpc" \
  --rest "127.0.0.1:$rest" --aggregator-pid "$pid" --interval-ms "$interval" \
  --duration-s "$duration" --durable-wait-s 0 --json > "$out/loadgen.json" 2> "$out/loadgen.log" || true
grep -E '^connected ' "$out/loadgen.log" || true
kill -TERM "$pid" 2>/dev/null || true
wait "$agg" 2>/dev/null || true
agg=""
data=$(ls "$out"/heaptrack*.zst "$out"/heaptrack*.gz 2>/dev/null | head -n1 || true)
heaptrack_print --print-peaks 1 --print-allocators 0 --print-temporary 0 --print-leaks 0 \
  --peak-limit 25 --sub-peak-limit 4 "$data" > "$out/peak.txt" 2>/dev/null || true
python3 - "$out/loadgen.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = r.get("aggregator_rss") or {}
print(json.dumps(m, indent=1))
PY
grep -E "^PEAK MEMORY|peak heap memory consumption" -A2 "$out/peak.txt" | head -20
echo "heaptrack summary: $out/peak.txt"
