#!/usr/bin/env bash
# End-to-end with the real binaries as separate processes on loopback: ps-server and three
# ps-worker processes train softmax regression on a Fashion-MNIST subset (sync and async), the
# server exits by itself when the workers are done (--exit_when_done), and both write JSON
# summaries that must agree, and learning curves (--eval_log). Also: bad flags exit 2 with a
# message, --help lists the flags.
# Usage: processes_test.sh BUILD_DIR
set -euo pipefail
build=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
server="$build/server/ps-server"
worker="$build/worker/ps-worker"
data=/usr/share/datasets/fashion-mnist

fail() { echo "FAIL: $*" >&2; exit 1; }

# Flags: errors name the flag, --help explains them.
if "$server" --mode=bogus >"$work/out" 2>&1; then fail "--mode=bogus was accepted"; fi
grep -q -- "'bogus' is not one of: sync, async" "$work/out" || fail "no clear error: $(cat "$work/out")"
"$server" --help >"$work/help" 2>&1 || true
for flag in listen mode num_workers local_steps staleness_exponent summary_json; do
  grep -q -- "--$flag" "$work/help" || fail "--help does not explain --$flag"
done
"$worker" --help >"$work/help" 2>&1 || true
grep -q -- "--servers" "$work/help" || fail "ps-worker --help does not explain --servers"
if "$worker" --servers=127.0.0.1:1 --data_dir=/nonexistent --retry_budget=0s --rpc_timeout=1s \
    >"$work/out" 2>&1; then
  fail "a worker without a server succeeded"
fi

[ -f "$data/train-images-idx3-ubyte.gz" ] || { echo "SKIP: dataset-fashion-mnist not installed"; exit 0; }

for mode in sync async; do
  rm -f "$work/port"
  "$server" --listen=127.0.0.1:0 --port_file="$work/port" --mode="$mode" --num_workers=3 \
    --local_steps=8 --epochs=4 --learning_rate=0.2 --lr_schedule=cosine --eval_every=20 \
    --exit_when_done --summary_json="$work/server-$mode.json" >"$work/server-$mode.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
  [ -s "$work/port" ] || fail "server did not start: $(cat "$work/server-$mode.log")"
  pids=()
  for k in 0 1 2; do
    "$worker" --servers="127.0.0.1:$(cat "$work/port")" --name="w$k" --train_limit=15000 \
      --test_limit=2000 --summary_json="$work/worker-$mode-$k.json" \
      --eval_log="$work/eval-$mode-$k.jsonl" >"$work/worker-$mode-$k.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || fail "a $mode worker failed: $(tail -5 "$work"/worker-$mode-*.log)"; done
  # The server must stop on its own once every worker left.
  for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$server_pid" 2>/dev/null && fail "$mode server still running after all workers left"
  wait "$server_pid" || fail "$mode server exited non-zero: $(tail -5 "$work/server-$mode.log")"

  python3 - "$work" "$mode" <<'PY' || fail "$mode summaries are wrong"
import json, sys
work, mode = sys.argv[1], sys.argv[2]
server = json.load(open(f"{work}/server-{mode}.json"))
workers = [json.load(open(f"{work}/worker-{mode}-{k}.json")) for k in range(3)]
assert server["mode"] == mode and server["K"] == 3 and server["H"] == 8, server
assert server["stop_reason"] == "training done", server
rounds = workers[0]["rounds"]  # 4 epochs * 15000 / (3 * 8 * 32) = 78.1 -> 79
assert rounds == 79 and all(w["rounds"] == rounds for w in workers), workers
if mode == "sync":
    assert server["rounds"] == rounds and server["version"] == rounds + 1, server
    assert len({w["test_accuracy"] for w in workers}) == 1, "sync workers must end on one model"
else:
    assert server["updates_applied"] + server["updates_refused_stale"] == 3 * rounds, server
# --eval_log: every eval_every = 20 rounds and at the end, in order; the last is the summary's.
for k, w in enumerate(workers):
    curve = [json.loads(l) for l in open(f"{work}/eval-{mode}-{k}.jsonl")]
    assert [c["round"] for c in curve] == [20, 40, 60, 79], curve
    for a, b in zip(curve, curve[1:]):
        assert b["elapsed_s"] > a["elapsed_s"] and b["bytes_sent"] > a["bytes_sent"], (a, b)
        assert b["eval_s"] > a["eval_s"] and b["train_start_s"] == a["train_start_s"], (a, b)
        assert a["train_start_s"] + a["eval_s"] < a["elapsed_s"], a
    assert curve[-1]["test_accuracy"] == w["test_accuracy"], (curve[-1], w)
    assert curve[-1]["bytes_sent"] <= w["bytes_sent"], (curve[-1], w)
best = max(w["test_accuracy"] for w in workers)
assert best >= 0.80, f"test accuracy {best}"
sent = sum(w["bytes_sent"] for w in workers)
# The server counts what it received; the workers what they sent: the same messages.
assert sent == server["bytes_received"], (sent, server["bytes_received"])
assert sent >= 3 * rounds * 7850 * 4, sent
print(f"{mode}: {rounds} rounds, best worker test accuracy {best:.4f}, {sent / 1e6:.1f} MB sent")
PY
done

# The README's commands as written (issue 10, item 12). "Running a server and workers by hand":
# its code block, run with this build, a free port and 1 epoch; `wait` must return.
mkdir "$work/readme"
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
/usr/bin/python3 - "$build" "$port" "$(dirname "$0")/../README.md" >"$work/readme/run.sh" <<'PY'
import re, sys
build, port, readme = sys.argv[1:]
text = open(readme).read()
section = text[text.index("## Running a server and workers by hand"):]
block = re.search(r"```\n(.*?)```", section, re.S).group(1)
block = block.replace("build/", build + "/").replace("50051", port).replace("--epochs=10", "--epochs=1")
print(block)
PY
(cd "$work/readme" && timeout 180 bash run.sh >run.log 2>&1) || fail "the README's by-hand commands failed: $(tail -5 "$work/readme/run.log")"
for f in server worker-0 worker-1 worker-2; do
  [ -s "$work/readme/$f.json" ] || fail "the README's by-hand commands wrote no $f.json"
done
# "Workers on other machines": a non-loopback address needs TLS or --allow_plaintext, as it says.
if "$server" --listen=0.0.0.0:0 --num_workers=1 >"$work/out" 2>&1; then
  fail "a plaintext non-loopback listen address was accepted"
fi
grep -q -- "--allow_plaintext" "$work/out" || fail "the refusal does not name --allow_plaintext: $(cat "$work/out")"
echo "PASS"
