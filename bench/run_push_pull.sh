#!/usr/bin/env bash
# Push/pull throughput of ps-server on loopback, next to raw loopback TCP (iperf3) measured in the
# same run. Usage: bench/run_push_pull.sh [BUILD_DIR] [SECONDS_PER_PHASE]
# Prints a markdown table; bench/results/push_pull.md holds a committed run.
set -euo pipefail
build=${1:-build}
seconds=${2:-5}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

command -v iperf3 >/dev/null || { echo "iperf3 missing: run deploy/install-deps.sh" >&2; exit 1; }
iperf3 -s -B 127.0.0.1 -p 5299 -1 >/dev/null 2>&1 &
sleep 0.5
iperf3 -c 127.0.0.1 -p 5299 -t "$seconds" -J >"$work/iperf.json"
tcp_gbs=$(python3 -c "import json,sys; d=json.load(open('$work/iperf.json')); print(d['end']['sum_received']['bits_per_second']/8e9)")
echo "raw loopback TCP (iperf3, 1 stream, ${seconds}s): $(printf %.2f "$tcp_gbs") GB/s" >&2

echo "| floats | clients | push GB/s absorbed | push / TCP | pull GB/s served | pull / TCP |"
echo "|---:|---:|---:|---:|---:|---:|"
for floats in 1000000 10000000; do
  # Softmax with 10 classes: 10 * dim + 10 parameters.
  dim=$(( (floats - 10) / 10 ))
  for clients in 1 4; do
    rm -f "$work/port"
    "$build/server/ps-server" --listen=127.0.0.1:0 --port_file="$work/port" --mode=async \
      --num_workers="$clients" --local_steps=1 --input_dim="$dim" --max_staleness=1e12 \
      --threads=2 >"$work/server.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
    "$build/bench/ps_push_pull_bench" --server="127.0.0.1:$(cat "$work/port")" \
      --clients="$clients" --duration="${seconds}s" >"$work/bench.json"
    kill -TERM "$server"; wait "$server" || true
    python3 - "$work/bench.json" "$tcp_gbs" "$floats" "$clients" <<'PY'
import json, sys
rows = {json.loads(l)["phase"]: json.loads(l) for l in open(sys.argv[1]) if l.strip()}
tcp = float(sys.argv[2])
push, pull = rows["push"]["gbytes_per_s"], rows["pull"]["gbytes_per_s"]
print(f"| {int(sys.argv[3]):,} | {sys.argv[4]} | {push:.2f} | {push / tcp:.2f} | {pull:.2f} | {pull / tcp:.2f} |")
PY
  done
done
