#!/usr/bin/python3
"""Bytes to accuracy with the server-side outer optimizer (docs/algorithms.md section 8).

The task: the MLP (784-128-10) on the full Fashion-MNIST, 4 workers, sync, the same data,
batch size, inner learning-rate schedule and evaluation cadence in every run. Configurations:
  - the reference: fp32 parallel SGD, every worker pushes a gradient every step
    (--update=gradient), and the server applies the same schedule;
  - Local SGD with H in {8, 32, 128}, each with plain averaging and with outer Nesterov
    (DiLoCo's lr 0.7, momentum 0.9), each in fp32, 4-bit and 2-bit QSGD both ways (updates with
    error feedback, pulls as quantized deltas of the broadcast model).
For each: the final test accuracy, and the bytes (up + down, all workers) sent until the first
evaluation at or above the reference's final accuracy minus 0.5 points, with their ratio to the
reference's. Bytes are serialized gRPC messages as the workers count them. Worker 0 logs every
evaluation with its own bytes so far, and the total is that times K (the workers are symmetric).

Usage: bench/outer_optimizer.py BUILD_DIR [--epochs E] [--only LABEL_SUBSTRING]
Writes bench/results/outer_optimizer.{md,json,png}. Runs on loopback, one configuration at a time.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from harness.procs import Proc, fail, read_port_file  # noqa: E402

K = 4
BATCH = 32
TRAIN = 60000
LR = 0.1
COMMON = ["--mode=sync", "--num_workers=%d" % K, "--model=mlp", "--hidden_units=128",
          "--learning_rate=%g" % LR, "--server_learning_rate=%g" % LR, "--lr_schedule=cosine",
          "--batch_size=%d" % BATCH, "--encodings=fp32,qsgd", "--exit_when_done"]
ENCODINGS = {
    "fp32": ["--update_encoding=fp32", "--pull_encoding=fp32"],
    "4-bit": ["--update_encoding=qsgd", "--bits=4", "--pull_encoding=qsgd", "--pull_bits=4"],
    "2-bit": ["--update_encoding=qsgd", "--bits=2", "--pull_encoding=qsgd", "--pull_bits=2"],
}
OUTER = {"average": ["--outer_optimizer=average"], "nesterov": ["--outer_optimizer=nesterov"]}


def configs():
    yield "reference: fp32 parallel SGD (gradient every step)", 1, ["--update=gradient"] + \
        ENCODINGS["fp32"]
    for h in (8, 32, 128):
        for outer, outer_flags in OUTER.items():
            for enc, enc_flags in ENCODINGS.items():
                yield ("Local SGD H=%d, %s, %s" % (h, outer, enc), h,
                       ["--update=delta", "--local_steps=%d" % h] + outer_flags + enc_flags)


def run(build, label, h, flags, epochs, work):
    """One run: the server and K workers; returns worker 0's evaluations and the summaries."""
    # Rounds rather than epochs: in gradient mode the server applies the cosine schedule and must
    # know the run's length.
    rounds = max(1, int(epochs * TRAIN / (K * h * BATCH)))
    eval_every = max(1, rounds // 20)
    os.makedirs(work)
    server = Proc([os.path.join(build, "server", "ps-server"), "--listen=127.0.0.1:0",
                   "--port_file=" + os.path.join(work, "port"), "--rounds=%d" % rounds,
                   "--eval_every=%d" % eval_every,
                   "--summary_json=" + os.path.join(work, "server.json")] + COMMON + flags,
                  os.path.join(work, "server.log"))
    port = read_port_file(os.path.join(work, "port"), server)
    workers = []
    for k in range(K):
        argv = [os.path.join(build, "worker", "ps-worker"), "--servers=127.0.0.1:%d" % port,
                "--rank=%d" % k, "--quiet", "--summary_json=" + os.path.join(work, "w%d.json" % k)]
        if k == 0:
            argv.append("--eval_log=" + os.path.join(work, "eval.jsonl"))
        workers.append(Proc(argv, os.path.join(work, "w%d.log" % k)))
    start = time.time()
    for k, w in enumerate(workers):
        if w.wait(3600, "worker %d of %s" % (k, label)) != 0:
            fail("worker %d of %s failed:\n%s" % (k, label, w.text()[-2000:]))
    server.wait(120, "server of " + label)
    evals = [json.loads(line) for line in open(os.path.join(work, "eval.jsonl"))]
    summaries = [json.load(open(os.path.join(work, "w%d.json" % k))) for k in range(K)]
    return {"label": label, "H": h, "flags": flags, "rounds": rounds,
            "wall_s": time.time() - start, "evals": evals,
            "final_accuracy": summaries[0]["test_accuracy"],
            "bytes_total": sum(s["bytes_sent"] + s["bytes_received"] for s in summaries)}


def bytes_to(result, target):
    """Bytes, all workers, up to the first evaluation at or above `target` (None: never)."""
    for e in result["evals"]:
        if e["test_accuracy"] >= target:
            return K * (e["bytes_sent"] + e["bytes_received"])
    return None


def write(results, epochs, out):
    ref = results[0]
    target = ref["final_accuracy"] - 0.005
    ref_bytes = bytes_to(ref, target)
    lines = ["| configuration | test accuracy | bytes to %.4f (MB) | fewer bytes than the reference |"
             % target, "|---|---:|---:|---:|"]
    for r in results:
        b = bytes_to(r, target)
        r["bytes_to_target"] = b
        lines.append("| %s | %.4f | %s | %s |" % (
            r["label"], r["final_accuracy"], "%.1f" % (b / 1e6) if b else "not reached",
            "%.0fx" % (ref_bytes / b) if b and ref_bytes else "-"))
    table = "\n".join(lines)
    print(table)
    json.dump({"target": target, "epochs": epochs, "results": results},
              open(os.path.join(out, "outer_optimizer.json"), "w"), indent=1)
    with open(os.path.join(out, "outer_optimizer.md"), "w") as f:
        f.write("""# Bytes to accuracy with the outer optimizer

Command: `/usr/bin/python3 bench/outer_optimizer.py build --epochs %g`. The MLP (784-128-10) on the
full Fashion-MNIST, K = %d workers, sync, batch %d, inner lr %g with a cosine schedule over %g
epochs, test accuracy on all 10,000 test images about 20 times per run. The target is the
reference's final accuracy minus 0.5 points: %.4f. Bytes are all workers' serialized gRPC
messages, up and down, until the first evaluation at or above the target. One run per row.

Machine: the 2-core VM (%s, %s), %s.

%s
""" % (epochs, K, BATCH, LR, epochs, target, platform.processor() or "x86-64",
            platform.platform(), datetime.date.today(), table))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    # One panel per H; colour = encoding, solid = outer Nesterov, dashed = plain averaging; the
    # reference in black in every panel.
    colours = {"fp32": "tab:blue", "4-bit": "tab:green", "2-bit": "tab:red"}
    hs = sorted({r["H"] for r in results[1:]})
    fig, axes = plt.subplots(1, len(hs), figsize=(15, 5), sharey=True)
    for ax, h in zip(axes, hs):
        for r in [ref] + [r for r in results[1:] if r["H"] == h]:
            xs = [K * (e["bytes_sent"] + e["bytes_received"]) / 1e6 for e in r["evals"]]
            ys = [e["test_accuracy"] for e in r["evals"]]
            if r is ref:
                ax.plot(xs, ys, "k-", linewidth=1.5, label="fp32 parallel SGD (reference)")
                continue
            enc = r["label"].rsplit(", ", 1)[1]
            outer = "nesterov" if "nesterov" in r["label"] else "average"
            ax.plot(xs, ys, color=colours[enc], linestyle="-" if outer == "nesterov" else "--",
                    linewidth=1.3, label="%s, %s" % (outer, enc))
        ax.axhline(target, color="grey", linestyle=":", label="target %.4f" % target)
        ax.set_xscale("log")
        ax.set_title("Local SGD, H = %d" % h)
        ax.set_xlabel("bytes up + down, all workers (MB)")
        ax.set_ylim(0.70, 0.90)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("MLP on Fashion-MNIST, K = %d, sync: test accuracy against bytes sent "
                 "(2-bit runs stay below 0.70)" % K)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "outer_optimizer.png"), dpi=110)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("build")
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--only", default="")
    parser.add_argument("--replot", action="store_true",
                        help="write the table and plot again from outer_optimizer.json")
    args = parser.parse_args()
    out = os.path.join(ROOT, "bench", "results")
    if args.replot:
        saved = json.load(open(os.path.join(out, "outer_optimizer.json")))
        write(saved["results"], saved["epochs"], out)
        return
    build = os.path.abspath(args.build)
    work = tempfile.mkdtemp(prefix="ps_outer_")
    results = []
    todo = [c for c in configs() if c[0].startswith("reference") or args.only in c[0]]
    for i, (label, h, flags) in enumerate(todo):
        print("[%d/%d] %s ..." % (i + 1, len(todo), label), file=sys.stderr, flush=True)
        results.append(run(build, label, h, flags, args.epochs, os.path.join(work, str(i))))
        print("    accuracy %.4f, %.1f MB in all, %.0f s" % (
            results[-1]["final_accuracy"], results[-1]["bytes_total"] / 1e6,
            results[-1]["wall_s"]), file=sys.stderr, flush=True)
    write(results, args.epochs, os.path.join(ROOT, "bench", "results"))
    print("results: bench/results/outer_optimizer.{md,json,png}; runs in " + work,
          file=sys.stderr)


if __name__ == "__main__":
    main()
