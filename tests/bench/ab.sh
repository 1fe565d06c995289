#!/usr/bin/env bash
# One aggregator binary under a fixed load, to compare two builds side by side:
#   tests/bench/ab.sh LABEL AGGREGATOR_BINARY sqlite|tcp
# 200 simulated agents x 120 series x 1 Hz for 20 s (after 3 s of settling), a probe
# change every 200 ms; SQLite in a fresh file or PostgreSQL at 127.0.0.1:5432 over
# TCP in a fresh database. Needs target/release/infrawatch-loadgen and the
# certificates of `infrawatch-loadgen --certs-only --pki-dir target/loadgen-pki`.
# Prints one line: acknowledged samples/s, ack p50/p99, commits/s, ms per commit,
# aggregator cores, change -> gRPC watch p50/p99 (ms).
set -euo pipefail
cd "$(dirname "$0")/../.."
pki=target/loadgen-pki; W="$PWD/target/bench-ab"; label=$1; bin=$2; mode=$3
mkdir -p "$W"
ulimit -n "$(ulimit -Hn)"
db=iw_ab2_$$
if [ $mode = tcp ]; then
  psql postgres://postgres@127.0.0.1:5432/postgres -qc "CREATE DATABASE $db"
  url="postgres://postgres@127.0.0.1:5432/$db"
else
  rm -rf $W/$label-db; mkdir -p $W/$label-db; url="sqlite://$W/$label-db/iw.db"
fi
cat > $W/$label.toml <<T
[grpc]
listen = "127.0.0.1:18443"
[grpc.tls]
ca = "$PWD/$pki/ca.pem"
cert = "$PWD/$pki/server.pem"
key = "$PWD/$pki/server-key.pem"
[rest]
listen = "127.0.0.1:18080"
[storage]
url = "$url"
T
RUST_LOG=warn $bin --config $W/$label.toml > $W/agg-$label.log 2>&1 & agg=$!
for _ in $(seq 100); do curl -fs http://127.0.0.1:18080/readyz >/dev/null && break; sleep 0.1; done
target/release/infrawatch-loadgen --agents 200 --pki-dir $pki --endpoint https://127.0.0.1:18443 --rest 127.0.0.1:18080 --aggregator-pid $agg --interval-ms 1000 --duration-s 20 --settle-s 3 --change-every-ms 200 --json > $W/$label.json 2> $W/lg-$label.log || true
kill $agg; wait $agg || true
[ $mode = tcp ] && psql postgres://postgres@127.0.0.1:5432/postgres -qc "DROP DATABASE $db WITH (FORCE)"
python3 -c "
import json; r=json.load(open('$W/$label.json')); s=r['stages'][0]; a=s['aggregator']
print('$label', 'acked/s %.0f'%s['acked_samples_per_s'], 'ack p50/p99 %.1f/%.1f ms'%(s['ack_latency']['p50_ms'], s['ack_latency']['p99_ms']), 'commits/s %.1f'%a['commits_per_s'], 'ms/commit %.2f'%(a['db_commit_seconds']/a['commits_per_s']/s['seconds']*1000), 'cores %.3f'%a['cores'], 'change->grpc p50/p99', s['change_to_observer']['grpc_watch']['p50_ms'], s['change_to_observer']['grpc_watch']['p99_ms'])"
