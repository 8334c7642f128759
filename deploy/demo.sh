#!/usr/bin/env bash
# The demo: one ps-server and four ps-worker processes on loopback train softmax regression on the
# full Fashion-MNIST with asynchronous Local SGD (H = 8), compressed both ways (DQ-SGD bit widths
# with error feedback on the updates, 2-bit quantized deltas of the broadcast model on the pulls),
# then the final model is evaluated on the 10,000 test images.
# Usage: deploy/demo.sh [BUILD_DIR]. DEMO_FP32=1 runs the same job uncompressed; DEMO_QUIET=1
# keeps worker 0 quiet too.
# Logs and JSON summaries go to BUILD_DIR/demo/.
set -euo pipefail

build=${1:-build}
out="$build/demo"
workers=${DEMO_WORKERS:-4}
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.log "$out/port"

server_pid=
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill -TERM "$server_pid"; fi
}
trap cleanup EXIT

compression=(--update_encoding=qsgd --bits_policy=dqsgd --min_bits=2 --max_bits=8 --dq_beta=4
             --error_feedback --pull_encoding=qsgd --pull_bits=2)
if [ "${DEMO_FP32:-0}" = 1 ]; then compression=(--update_encoding=fp32 --pull_encoding=fp32); fi
# DEMO_FLAGS: more ps-server flags, after the ones above, so they win (bench/compression_table.sh).
read -r -a extra_flags <<<"${DEMO_FLAGS:-}"

start=$(date +%s.%N)
"$build/server/ps-server" \
  --listen=127.0.0.1:0 --port_file="$out/port" \
  --mode=async --update=delta --num_workers="$workers" --local_steps=8 \
  --model=softmax --input_dim=784 --num_classes=10 \
  --learning_rate=0.2 --lr_schedule=cosine --batch_size=32 --epochs=30 --eval_every=100 \
  --max_staleness=4 --staleness_exponent=0.5 "${compression[@]}" ${extra_flags[@]+"${extra_flags[@]}"} \
  --summary_json="$out/server.json" >"$out/server.log" 2>&1 &
server_pid=$!

for _ in $(seq 100); do [ -s "$out/port" ] && break; sleep 0.1; done
if [ ! -s "$out/port" ]; then
  echo "demo: the server did not start; see $out/server.log" >&2
  cat "$out/server.log" >&2
  exit 1
fi
address="127.0.0.1:$(cat "$out/port")"
echo "demo: ps-server on $address (log: $out/server.log); starting $workers workers"

pids=()
for k in $(seq 0 $((workers - 1))); do
  if [ "$k" -eq 0 ] && [ "${DEMO_QUIET:-0}" != 1 ]; then
    # Worker 0 shows its progress here; the others write to their logs.
    "$build/worker/ps-worker" --servers="$address" --rank="$k" --name="worker-$k" \
      --summary_json="$out/worker-$k.json" 2> >(tee "$out/worker-$k.log" >&2) &
  else
    "$build/worker/ps-worker" --servers="$address" --rank="$k" --name="worker-$k" \
      --summary_json="$out/worker-$k.json" >"$out/worker-$k.log" 2>&1 &
  fi
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
if [ "$failed" -ne 0 ]; then
  echo "demo: a worker failed; see $out/worker-*.log" >&2
  exit 1
fi

# The trained model is the server's once every worker is done.
"$build/worker/ps-worker" --servers="$address" --evaluate_only --quiet \
  --summary_json="$out/final.json" >/dev/null
kill -TERM "$server_pid"
wait "$server_pid" || true
server_pid=
end=$(date +%s.%N)

python3 - "$out" "$start" "$end" <<'PY'
import json, sys
out, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
server = json.load(open(f"{out}/server.json"))
final = json.load(open(f"{out}/final.json"))
up, up_raw = server['bytes_received'], server['raw_bytes_received']
down, down_raw = server['bytes_sent'], server['raw_bytes_sent']
print(f"demo: {server['mode']} Local SGD, K={server['K']}, H={server['H']}, "
      f"updates {server['update_encoding']} ({server['bits_policy']} bits), pulls {server['pull_encoding']}"
      + (f" (dqsgd bits, mean {server['mean_pull_bits']:.1f})" if server['pull_bits_policy'] == 'dqsgd' else "") + "; "
      f"{server['updates_applied']} updates applied ({server['updates_refused_stale']} refused as stale)")
print(f"demo: bytes up {up / 1e6:.1f} MB (fp32 would be {up_raw / 1e6:.1f} MB, {up_raw / up:.1f}x less), "
      f"down {down / 1e6:.1f} MB (fp32 {down_raw / 1e6:.1f} MB, {down_raw / down:.1f}x less), "
      f"total {(up_raw + down_raw) / (up + down):.1f}x less")
print(f"demo: test accuracy {final['test_accuracy']:.4f} (target 0.84), wall time {end - start:.1f} s")
PY
