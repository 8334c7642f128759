#!/usr/bin/python3
"""DQ-SGD (Yan et al. 2021) against fixed-bit QSGD and fp32 (docs/reproduction.md, section 2).

K = 4 workers and a real ps-server on Fashion-MNIST: ps-worker processes with softmax and the
MLP, and the PyTorch CNN of examples/torch_cnn.py. First the paper's setting, parallel SGD with a
quantized gradient every step (no error feedback: the quantizers are unbiased, as in the paper),
then Local SGD with quantized deltas (H = 8 for the built-in models, H = 16 and inner Adam for
the CNN, with the project's default error feedback). Downlink in fp32 throughout,
so only the uplink differs. DQ-SGD's error budget --dq_beta is swept to draw its trade-off curve.

  experiments/dqsgd.py     (about 55 minutes here)
"""
import argparse
import os
import time

import cnn
import runner

K, BATCH, EPOCHS = 4, 32, 3
ROUNDS = EPOCHS * 60000 // (K * BATCH)
FIXED_BITS = [2, 4, 8]
DQ_BETAS = [0.5, 1, 2, 4, 8, 16]
CNN_BETAS, CNN_H, CNN_STEPS = [1, 4, 16], 16, 1024
CNN_SERVER_LR = 0.3  # parallel SGD of the CNN: beat 0.1 on fp32 over 257 rounds
JOBS = [("softmax", "gradient"), ("softmax", "local"), ("mlp", "gradient"), ("mlp", "local"),
        ("cnn", "gradient"), ("cnn", "local")]
MODELS = {"softmax": ["--model=softmax"], "mlp": ["--model=mlp", "--hidden_units=128"]}
# Step sizes: the project's default for softmax; for the MLP, 0.3 beat 0.1 on fp32 at K = 4.
SETTINGS = {
    "gradient": {"softmax": ["--server_learning_rate=0.2"], "mlp": ["--server_learning_rate=0.3"],
                 "common": ["--update=gradient", "--error_feedback=false", "--rounds=%d" % ROUNDS]},
    "local": {"softmax": ["--learning_rate=0.2"], "mlp": ["--learning_rate=0.3"],
              "common": ["--update=delta", "--local_steps=8", "--rounds=%d" % (ROUNDS // 8)]},
}


def methods(model="softmax"):
    """(label, server flags) of every compressor compared."""
    betas = CNN_BETAS if model == "cnn" else DQ_BETAS
    out = [("fp32", ["--update_encoding=fp32"])]
    out += [("qsgd %d-bit" % b, ["--update_encoding=qsgd", "--bits_policy=fixed", "--bits=%d" % b])
            for b in FIXED_BITS]
    out += [("dqsgd beta=%g" % beta, ["--update_encoding=qsgd", "--bits_policy=dqsgd",
                                      "--dq_beta=%g" % beta]) for beta in betas]
    return out


def run(model, kind, label, flags):
    if model == "cnn":
        return run_cnn(kind, label, flags)
    cfg = SETTINGS[kind]
    result = runner.job(["--mode=sync", "--batch_size=%d" % BATCH, "--pull_encoding=fp32",
                         "--eval_every=%d" % (25 if kind == "gradient" else 4)]
                        + MODELS[model] + cfg[model] + cfg["common"] + flags, K)
    w = result["workers"][0]
    curve = [{"model": model, "kind": kind, "method": label, "round": p["round"],
              "uplink_bits": 8 * p["bytes_sent"], "test_accuracy": p["test_accuracy"]}
             for p in runner.curve(result)]
    final = {"model": model, "kind": kind, "method": label, "final_accuracy": w["test_accuracy"],
             "uplink_bits": 8 * (w["bytes_sent"] - w["upload_bytes_sent"]),
             "mean_bits": w["mean_update_bits"],
             "uplink_compression": w["uplink_compression"], "wall_time_s": w["wall_time_s"]}
    return curve, final


def run_cnn(kind, label, flags):
    """The CNN, CNN_STEPS steps per worker. Local SGD: plain averaging on the server, so only
    the compressor differs. Parallel SGD: the server's SGD step, no error feedback."""
    if kind == "gradient":
        curve, summary = cnn.run(1, CNN_STEPS, ["--pull_encoding=fp32", "--error_feedback=false"]
                                 + flags, gradient_lr=CNN_SERVER_LR)
    else:
        curve, summary = cnn.run(CNN_H, CNN_STEPS, ["--outer_optimizer=average",
                                                    "--pull_encoding=fp32", "--error_feedback"]
                                 + flags)
    w = summary["workers"][0]
    upload = w["upload_bytes_sent"]
    rows = [{"model": "cnn", "kind": kind, "method": label, "round": p["round"],
             "uplink_bits": 8 * (p["bytes_sent"] - upload), "test_accuracy": p["test_accuracy"]}
            for p in curve]
    final = {"model": "cnn", "kind": kind, "method": label,
             "final_accuracy": summary["test_accuracy"],
             "uplink_bits": 8 * (w["bytes_sent"] - upload),
             "mean_bits": w["mean_update_bits"], "uplink_compression":
             summary["bytes_up_fp32"] / max(summary["bytes_up"], 1),
             "wall_time_s": summary["wall_seconds"]}
    return rows, final


def bits_to_target(curves, finals):
    """Per (model, kind): the target is the lowest final accuracy of all methods (all reach it);
    for each method, the uplink bits of its first evaluation at or above it."""
    for f in finals:
        group = [g for g in finals if g["model"] == f["model"] and g["kind"] == f["kind"]]
        f["target"] = min(g["final_accuracy"] for g in group)
        curve = [c for c in curves if (c["model"], c["kind"], c["method"]) ==
                 (f["model"], f["kind"], f["method"])]
        hit = runner.first_reaching(curve, f["target"])
        f["bits_to_target"] = hit["uplink_bits"] if hit else None
    return finals


def plot(curves, finals, model, path):
    plt = runner.pyplot()
    kinds = [kind for m, kind in JOBS if m == model]
    fig, axes = plt.subplots(2, len(kinds), figsize=(5.5 * len(kinds), 8.5), squeeze=False)
    labels = [label for label, _ in methods(model)]
    cmap = plt.get_cmap("tab10")
    style = {label: (cmap(i % 10), "-" if "dqsgd" in label else "--") for i, label in
             enumerate(labels)}
    for col, kind in enumerate(kinds):
        ax = axes[0][col]
        for label in labels:
            pts = [(c["uplink_bits"] / 1e6, c["test_accuracy"]) for c in curves
                   if (c["model"], c["kind"], c["method"]) == (model, kind, label)]
            if pts:
                ax.plot(*zip(*pts), style[label][1], color=style[label][0], label=label)
        ax.set_xscale("log")
        ax.set_ylim(bottom=0.6)
        ax.set_xlabel("uplink Mbit sent per worker (cumulative, log)")
        ax.set_ylabel("test accuracy")
        ax.set_title("%s: %s" % (model, "parallel SGD, quantized gradients" if kind == "gradient"
                                 else "Local SGD H=%d, quantized deltas" % (
                                     CNN_H if model == "cnn" else 8)), fontsize=10)
        ax.legend(ncol=2)
        ax = axes[1][col]
        group = [f for f in finals if f["model"] == model and f["kind"] == kind]
        dq = sorted(((f["uplink_bits"] / 1e6, f["final_accuracy"], f["method"]) for f in group
                     if "dqsgd" in f["method"]))
        ax.plot([d[0] for d in dq], [d[1] for d in dq], "o-", color="C0",
                label="dqsgd (beta sweep)")
        for x, y, m in dq:
            ax.annotate(m.split("=")[1], (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
        for f in group:
            if "dqsgd" not in f["method"]:
                ax.plot(f["uplink_bits"] / 1e6, f["final_accuracy"], "s", markersize=8,
                        label=f["method"])
        ax.set_xscale("log")
        ax.set_xlabel("uplink Mbit sent per worker (whole run, log)")
        ax.set_ylabel("final test accuracy")
        ax.set_title("trade-off: final accuracy against bits", fontsize=10)
        ax.legend()
    fig.suptitle("DQ-SGD against fixed-bit QSGD,%sK=%d, Fashion-MNIST (real ps-server)" % (
        "\n" if len(kinds) == 1 else " ", K))
    runner.save_figure(fig, path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", default="", help="only these MODEL:KIND jobs (comma-separated, e.g. "
                   "cnn:gradient), merged into the committed results in place of their old rows")
    args = p.parse_args()
    out = runner.results_dir("dqsgd")
    jobs = [tuple(j.split(":")) for j in args.jobs.split(",")] if args.jobs else JOBS
    unknown = set(jobs) - set(JOBS)
    if unknown:
        p.error("no such job: %s (the jobs: %s)" % (sorted(unknown), JOBS))
    todo = [(m, k, label, flags) for m, k in jobs for label, flags in methods(m)]
    progress = runner.Progress("dqsgd", len(todo))
    started, curves, finals = time.time(), [], []
    if args.jobs:  # keep the other jobs' rows
        keep = lambda rows: [r for r in rows if (r["model"], r["kind"]) not in jobs]
        curves = keep(runner.read_csv(os.path.join(out, "curves.csv")))
        finals = keep(runner.read_csv(os.path.join(out, "results.csv")))
    for model, kind, label, flags in todo:
        curve, final = run(model, kind, label, flags)
        curves += curve
        finals.append(final)
        progress.step("%s %s %s: accuracy %.4f, %.2f Mbit up, %.2f bits/coord" % (
            model, kind, label, final["final_accuracy"], final["uplink_bits"] / 1e6,
            final["mean_bits"]))
    order = {job: i for i, job in enumerate(JOBS)}  # the files list the jobs in JOBS order
    curves.sort(key=lambda r: order[(r["model"], r["kind"])])
    finals.sort(key=lambda r: order[(r["model"], r["kind"])])
    bits_to_target(curves, finals)
    runner.write_csv(os.path.join(out, "curves.csv"), curves)
    runner.write_csv(os.path.join(out, "results.csv"), finals)
    for model in sorted({m for m, _ in JOBS}):
        plot(curves, finals, model, os.path.join(out, "%s.png" % model))
    summary = {"K": K, "batch": BATCH, "epochs": EPOCHS, "rounds": ROUNDS,
               "machine": runner.machine(), "wall_time_s": time.time() - started}
    if args.jobs:  # the time of this run's jobs, beside the earlier runs'
        summary = runner.read_json(os.path.join(out, "summary.json"))
        summary.setdefault("reruns", []).append({"jobs": args.jobs, "machine": runner.machine(),
                                                 "wall_time_s": time.time() - started})
    runner.write_json(os.path.join(out, "summary.json"), summary)
    progress.note("results in %s (%.0f s)" % (out, time.time() - started))


if __name__ == "__main__":
    main()
