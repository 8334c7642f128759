#!/usr/bin/env bash
# Bytes per direction and final test accuracy on the demo task (async Local SGD, K = 4, H = 8,
# softmax regression on the full Fashion-MNIST) for fp32, fixed 2/4/8-bit QSGD and DQ-SGD, with
# and without error feedback. Pulls use the same fixed bits as the updates (4 for DQ-SGD rows).
# Usage: bench/compression_table.sh [BUILD_DIR]. Writes bench/results/compression.md and, when
# python3-matplotlib is installed, bench/results/compression.png.
set -euo pipefail
build=${1:-build}
results=bench/results
rows="$build/compression_rows.jsonl"
: >"$rows"

run() {  # label, server flags
  echo "compression_table: $1" >&2
  DEMO_QUIET=1 DEMO_FLAGS="$2" ./deploy/demo.sh "$build" >/dev/null 2>&1 ||
    { echo "run '$1' failed; see $build/demo/" >&2; exit 1; }
  python3 - "$1" "$build/demo" >>"$rows" <<'PY'
import json, sys
label, out = sys.argv[1], sys.argv[2]
s = json.load(open(f"{out}/server.json")); f = json.load(open(f"{out}/final.json"))
print(json.dumps({"config": label, "up": s["bytes_received"], "up_raw": s["raw_bytes_received"],
                  "down": s["bytes_sent"], "down_raw": s["raw_bytes_sent"],
                  "accuracy": f["test_accuracy"], "stale": s["updates_refused_stale"]}))
PY
}

run "fp32" "--update_encoding=fp32 --pull_encoding=fp32"
for ef in true false; do
  for bits in 2 4 8; do
    run "QSGD $bits bits, EF $ef" "--update_encoding=qsgd --bits_policy=fixed --bits=$bits --error_feedback=$ef --pull_encoding=qsgd --pull_bits=$bits"
  done
  run "DQ-SGD, EF $ef" "--update_encoding=qsgd --bits_policy=dqsgd --error_feedback=$ef --pull_encoding=qsgd --pull_bits=4"
done

/usr/bin/python3 - "$rows" "$results" <<'PY'
import json, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1])]
out = sys.argv[2]
base = rows[0]
lines = ["| configuration | up MB | up vs fp32 | down MB | down vs fp32 | test accuracy | vs fp32 (points) |",
         "|---|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    lines.append(f"| {r['config']} | {r['up'] / 1e6:.1f} | {r['up_raw'] / r['up']:.1f}x less | "
                 f"{r['down'] / 1e6:.1f} | {r['down_raw'] / r['down']:.1f}x less | {r['accuracy']:.4f} | "
                 f"{100 * (r['accuracy'] - base['accuracy']):+.2f} |")
table = "\n".join(lines)
print(table)
open(f"{out}/compression.md", "w").write(f"""# Compression on the demo task

Command: `bench/compression_table.sh build` (each row is one `deploy/demo.sh` run with the flags of the
row: async Local SGD, K = 4, H = 8, softmax regression, full Fashion-MNIST, 30 epochs, test accuracy
of the final server model on all 10,000 test images). Bytes are serialized gRPC messages counted by
the server; "vs fp32" divides what fp32 messages would have taken by what was sent. Pulls carry
quantized deltas of the broadcast model with the row's bits (4 for the DQ-SGD rows); in async mode a
worker is about K versions behind, so a pull carries a chain of about K deltas.

Machine: 2 vCPU AMD EPYC VM, Debian 12, {datetime.date.today()}. One run per row: differences of
about 0.1 point are within run-to-run noise (async arrival order varies).

{table}
""")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        total = (r["up"] + r["down"]) / 1e6
        ax.scatter(total, 100 * r["accuracy"], s=40)
        ax.annotate(r["config"], (total, 100 * r["accuracy"]), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("bytes on the wire, both directions (MB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST softmax, async Local SGD K=4 H=8")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(f"{out}/compression.png", dpi=120)
except ImportError:
    print("matplotlib not installed: no plot", file=sys.stderr)
PY
