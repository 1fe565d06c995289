#!/usr/bin/env bash
# The aggregator's Kubernetes source at scale: `kube-bench` fills the fake
# Kubernetes API server with a cluster (default 5,000 nodes, 50,000 pods in 500
# namespaces, one Deployment, ReplicaSet, Service and EndpointSlice per 10
# pods), runs the release aggregator without a cluster (baseline memory) and
# then with it (SQLite), and measures the initial sync, the memory of the
# Kubernetes model, and change -> event latency while pods' readiness flips at
# 500 changes per second for 60 s (each with its EndpointSlice).
#
#   tests/bench/kubernetes.sh                      # the issue's size
#   KUBE_BENCH_SIZES="500:5000 5000:50000" tests/bench/kubernetes.sh
#   KUBE_BENCH_PERF=1 tests/bench/kubernetes.sh    # and perf profiles of both phases
#   KUBE_BENCH_HEAPTRACK=1 tests/bench/kubernetes.sh   # and a heap profile (glibc build)
#
# Knobs (environment): KUBE_BENCH_SIZES (NODES:PODS pairs, "5000:50000"),
# KUBE_BENCH_RATE (500), KUBE_BENCH_DURATION_S (60), KUBE_BENCH_ARGS (more
# kube-bench arguments, e.g. --postgres). Output in target/bench-kubernetes/<time>/:
# the JSON and log of each size, perf reports, heaptrack's summary. Everything
# runs on loopback.
set -euo pipefail
cd "$(dirname "$0")/../.."

sizes=${KUBE_BENCH_SIZES:-5000:50000}
rate=${KUBE_BENCH_RATE:-500}
duration=${KUBE_BENCH_DURATION_S:-60}
extra=${KUBE_BENCH_ARGS:-}

cargo build --release --workspace --bins -q
out=target/bench-kubernetes/$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
ulimit -n "$(ulimit -Hn)"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/^Mem:/ {print $2}') GiB"
for size in $sizes; do
  nodes=${size%%:*}; pods=${size##*:}
  tag="${nodes}n-${pods}p"
  args=(--nodes "$nodes" --pods "$pods" --rate "$rate" --duration-s "$duration" --json)
  if [ -n "${KUBE_BENCH_PERF:-}" ]; then
    command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }
    args+=(--perf-dir "$out/perf-$tag")
  fi
  # shellcheck disable=SC2206
  args+=($extra)
  echo "== $nodes nodes, $pods pods"
  target/release/kube-bench "${args[@]}" > "$out/$tag.json" 2> >(tee "$out/$tag.log" >&2)
  python3 - "$out/$tag.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
mib = lambda b: b / 1048576 if b is not None else float("nan")
s, c = r["sync"], r.get("changes") or {}
print(f"baseline RSS {mib((r['baseline'] or {}).get('rss_bytes')):.1f} MiB; after sync {mib(s['after']['rss_bytes']):.1f} MiB; "
      f"model {mib(r['model_rss_bytes']):.1f} MiB ({r['model_bytes_per_pod'] or 0:.0f} B/pod); peak {mib(s['peak_rss_bytes']):.1f} MiB")
print(f"sync: cached {s['objects_cached_seconds'] or float('nan'):.1f} s, in the model {s['resources_in_model_seconds']:.1f} s, "
      f"{s['cpu_seconds']:.1f} CPU s, {s['lists'] - s['kinds']:.0f} relists, leadership lost {s['leader_losses']} times")
if c:
    l = c["change_to_event_ms"]
    print(f"changes: {c['applied']} at {c['applied'] / c['seconds']:.0f}/s, missed {c['missed']}; "
          f"change -> event p50/p95/p99/max {l['p50']:.1f}/{l['p95']:.1f}/{l['p99']:.1f}/{l['max']:.1f} ms; "
          f"{c['events_per_second']:.0f} events/s; {c['aggregator_cores']:.2f} cores")
for k, t in r["targets"].items():
    print(("MET    " if t["met"] else "MISSED ") + t["what"])
PY
  if [ -n "${KUBE_BENCH_PERF:-}" ]; then
    for phase in sync changes; do
      data="$out/perf-$tag/$phase.data"
      [ -f "$data" ] || continue
      perf report -i "$data" --no-children --sort symbol --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -60 > "$out/perf-$tag/$phase-self.txt" || true
      perf report -i "$data" --children --sort symbol --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -80 > "$out/perf-$tag/$phase-children.txt" || true
      echo "perf ($phase): $out/perf-$tag/$phase-self.txt, $phase-children.txt"
    done
  fi
done

if [ -n "${KUBE_BENCH_HEAPTRACK:-}" ]; then
  command -v heaptrack >/dev/null || { echo "heaptrack is not installed" >&2; exit 1; }
  # heaptrack sees malloc only: the aggregator under it uses the system allocator.
  cargo build --release --workspace --bins --no-default-features -q
  cp target/release/infrawatch-aggregator "$out/infrawatch-aggregator-glibc"
  cargo build --release --workspace --bins -q
  size=${sizes##* }; nodes=${size%%:*}; pods=${size##*:}
  # Killed (SIGKILL) after the sync and 10 s idle: what heaptrack reports as
  # leaked is what the aggregator held then; the peak is the sync's.
  # shellcheck disable=SC2086
  target/release/kube-bench --nodes "$nodes" --pods "$pods" --duration-s 0 --no-baseline --json \
    --settle-s 10 --sigkill --aggregator-bin "$out/infrawatch-aggregator-glibc" \
    --wrap "heaptrack -o $out/heaptrack" $extra > "$out/heaptrack-run.json" 2> "$out/heaptrack-run.log"
  data=$(ls "$out"/heaptrack*.zst "$out"/heaptrack*.gz 2>/dev/null | head -n1 || true)
  heaptrack_print --print-peaks 1 --print-allocators 0 --print-temporary 0 --print-leaks 0 \
    --peak-limit 30 --sub-peak-limit 5 "$data" > "$out/heap-peak.txt" 2>/dev/null || true
  heaptrack_print --print-peaks 0 --print-allocators 0 --print-temporary 0 --print-leaks 1 \
    --peak-limit 30 --sub-peak-limit 5 "$data" > "$out/heap-live.txt" 2>/dev/null || true
  grep -E "peak heap memory consumption|peak RSS|total memory leaked" "$out/heap-peak.txt" || true
  echo "heaptrack: $out/heap-peak.txt (the sync's peak), $out/heap-live.txt (live after the sync, as leaked)"
fi
echo "output: $out"
