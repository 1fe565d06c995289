#!/usr/bin/env bash
# Measures the whole agent against Debian's prometheus-node-exporter, side by side
# on this machine: CPU time per minute, memory and series (the host's and its
# parts'), with the agent running every collector every second and node_exporter
# scraped once a second.
#
#   tests/bench/agent-cost.sh [SECONDS]     (default 60; needs root for apt-get)
#
# AGENT_BIN=<path> runs another agent build (to compare two builds one after
# the other on the same machine).
#
# Everything runs on loopback. Prints a table; BENCHMARKS.md keeps the figures.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-60}

if ! command -v prometheus-node-exporter >/dev/null 2>&1; then
  apt-get install -y -qq prometheus-node-exporter >/dev/null
fi
[ -n "${NO_BUILD:-}" ] || cargo build --release --workspace --bins -q

work=$(mktemp -d)
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"
  for cg in "${cgroups[@]}"; do rmdir "$cg" 2>/dev/null || true; done
}
cgroups=()
pids=()
trap cleanup EXIT

. tests/bench/free-port.sh
grpc=$(free_port); rest=$(free_port "$grpc"); nodeexp=$(free_port "$grpc" "$rest")
agent_metrics=$(free_port "$grpc" "$rest" "$nodeexp")
target/release/infrawatch certs --dir "$work/tls" --agent agent-bench >/dev/null 2>&1

cat > "$work/aggregator.toml" <<TOML
[grpc]
listen = "127.0.0.1:$grpc"
[grpc.tls]
ca = "$work/tls/ca.pem"
cert = "$work/tls/server.pem"
key = "$work/tls/server-key.pem"
[rest]
listen = "127.0.0.1:$rest"
[storage]
url = "sqlite://$work/iw.db"
TOML
cat > "$work/agent.toml" <<TOML
state_dir = "$work/agent"
metrics_listen = "127.0.0.1:$agent_metrics"
[aggregator]
endpoints = ["https://127.0.0.1:$grpc"]
[aggregator.tls]
ca = "$work/tls/ca.pem"
cert = "$work/tls/agent-bench.pem"
key = "$work/tls/agent-bench-key.pem"
[collectors.host]
interval_ms = 1000
deadline_ms = 500
[collectors.disk]
interval_ms = 1000
deadline_ms = 500
[collectors.filesystem]
interval_ms = 1000
deadline_ms = 500
[collectors.network]
interval_ms = 1000
deadline_ms = 500
[collectors.pressure]
interval_ms = 1000
deadline_ms = 500
[collectors.kernel]
interval_ms = 1000
deadline_ms = 500
[collectors.agent]
interval_ms = 1000
deadline_ms = 500
TOML

target/release/infrawatch-aggregator --config "$work/aggregator.toml" >"$work/aggregator.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$rest/readyz" >/dev/null && break; sleep 0.1; done
"${AGENT_BIN:-target/release/infrawatch-agent}" --config "$work/agent.toml" >"$work/agent.log" 2>&1 & agent=$!; pids+=($agent)
prometheus-node-exporter --web.listen-address="127.0.0.1:$nodeexp" >"$work/node-exporter.log" 2>&1 & nexp=$!; pids+=($nexp)
sleep 5

# CPU time in ms: from a cpuacct cgroup of the process's own where this machine
# lets us make one (nanosecond accounting of every thread), else utime + stime
# from /proc/<pid>/stat (10 ms ticks).
cg_root=/sys/fs/cgroup/cpuacct
track() {
  local cg="$cg_root/iw-agent-cost-$$-$2"
  if mkdir "$cg" 2>/dev/null && echo "$1" > "$cg/cgroup.procs" 2>/dev/null; then
    cgroups+=("$cg")
  fi
}
cpu_ms() {
  local cg="$cg_root/iw-agent-cost-$$-$2"
  if [ -r "$cg/cpuacct.usage" ]; then
    echo $(( $(cat "$cg/cpuacct.usage") / 1000000 ))
  else
    awk '{print ($14 + $15) * 10}' "/proc/$1/stat"
  fi
}
track "$agent" agent
track "$nexp" node_exporter
accounting=$([ ${#cgroups[@]} -eq 2 ] && echo "cpuacct cgroups" || echo "/proc/<pid>/stat ticks")
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

a0=$(cpu_ms "$agent" agent); n0=$(cpu_ms "$nexp" node_exporter)
series=0; nexp_own=0
for _ in $(seq 1 "$secs"); do
  scrape=$(curl -fs "http://127.0.0.1:$nodeexp/metrics" | grep -v '^#' || true)
  series=$(grep -c . <<<"$scrape" || true)
  # node_exporter's own series: Go runtime, process, HTTP handler, per-collector scrape figures.
  nexp_own=$(grep -cE '^(go_|process_|promhttp_|node_scrape_|node_exporter_|node_textfile_)' <<<"$scrape" || true)
  sleep 1
done
a1=$(cpu_ms "$agent" agent); n1=$(cpu_ms "$nexp" node_exporter)

agent_ms_per_min=$(( (a1 - a0) * 60 / secs ))
nexp_ms_per_min=$(( (n1 - n0) * 60 / secs ))
# The host's series and those of its parts (filesystems, disks, interfaces).
agent_series=$(python3 - "http://127.0.0.1:$rest/api/v1/resources/host/$(cat /etc/machine-id)" <<'PY'
import json, sys, urllib.request
def get(url):
    with urllib.request.urlopen(url) as r:
        return json.load(r)
host = get(sys.argv[1])
base = sys.argv[1].split("/api/v1/resources/")[0] + "/api/v1/resources/"
own = get(base + "agent/" + host["id"].split("/", 1)[1])
print(len(host["latest"]) + sum(len(get(base + p["id"])["latest"]) for p in host.get("parts", [])),
      len(own["latest"]))
PY
)
agent_own=${agent_series#* }; agent_series=${agent_series% *}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; window ${secs}s; CPU time from $accounting"
printf '%-34s %14s %12s %12s %10s %10s\n' "process" "CPU ms/minute" "RSS MiB" "peak MiB" "host" "own"
printf '%-34s %14s %12s %12s %10s %10s\n' "infrawatch-agent (1 s, all)" "$agent_ms_per_min" \
  "$(( $(rss_kb "$agent") / 1024 ))" "$(( $(hwm_kb "$agent") / 1024 ))" "$agent_series" "$agent_own"
printf '%-34s %14s %12s %12s %10s %10s\n' "node_exporter (scraped every 1 s)" "$nexp_ms_per_min" \
  "$(( $(rss_kb "$nexp") / 1024 ))" "$(( $(hwm_kb "$nexp") / 1024 ))" "$(( series - nexp_own ))" "$nexp_own"
echo "series: host = the host's and its parts' (filesystems, disks, interfaces); own = the"
echo "process's figures about itself (agent resource; node_exporter's go_, process_, promhttp_, node_scrape_)"
if [ "$nexp_ms_per_min" -gt 0 ]; then
  python3 -c "print(f'agent / node_exporter CPU: {$agent_ms_per_min / $nexp_ms_per_min:.3f}')"
fi
