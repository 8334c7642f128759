#!/usr/bin/python3
"""SlowMo / DiLoCo outer momentum (Wang et al. 2020) against plain averaging
(docs/reproduction.md, section 3).

K = 4 workers run Local SGD on Fashion-MNIST: ps-worker processes with the MLP (inner SGD), and
the PyTorch CNN of examples/torch_cnn.py (inner Adam). The real ps-server applies each round's
average change as plain averaging, SlowMo (outer momentum) or Nesterov (DiLoCo's outer
optimizer), at H in {8, 32, 128}, for the same number of local steps per worker. fp32 both ways,
so bytes are proportional to rounds.

  experiments/slowmo.py    (about 25 minutes here)
"""
import argparse
import os
import time

import cnn
import runner

K, BATCH, LR = 4, 32, 0.3
STEPS = {"mlp": 1408, "cnn": 1024}  # per worker, multiples of 128 (the MLP: 3 epochs)
HS = [8, 32, 128]
OUTER = ["average", "slowmo", "nesterov"]
OUTER_FLAGS = ["--outer_lr=-1", "--outer_momentum=-1"]  # each rule's defaults (README)


def run(model, outer, h):
    if model == "cnn":
        return run_cnn(outer, h)
    rounds = STEPS["mlp"] // h
    result = runner.job(["--mode=sync", "--update=delta", "--model=mlp", "--hidden_units=128",
                         "--batch_size=%d" % BATCH, "--learning_rate=%g" % LR,
                         "--local_steps=%d" % h, "--rounds=%d" % rounds,
                         "--eval_every=%d" % max(1, rounds // 24), "--update_encoding=fp32",
                         "--pull_encoding=fp32", "--outer_optimizer=" + outer] + OUTER_FLAGS, K)
    w = result["workers"][0]
    final = {"model": "mlp", "outer": outer, "H": h, "rounds": w["rounds"],
             "final_accuracy": w["test_accuracy"],
             "bytes_sent": w["bytes_sent"] - w["upload_bytes_sent"],
             "wall_time_s": w["wall_time_s"]}
    return runner.curve(result, model="mlp", outer=outer, H=h), final


def run_cnn(outer, h):
    curve, summary = cnn.run(h, STEPS["cnn"], ["--outer_optimizer=" + outer,
                                               "--update_encoding=fp32", "--pull_encoding=fp32"]
                             + OUTER_FLAGS)
    upload = summary["workers"][0]["upload_bytes_sent"]
    rows = [dict(point, model="cnn", outer=outer, H=h, bytes_sent=point["bytes_sent"] - upload)
            for point in curve]
    w = summary["workers"][0]
    final = {"model": "cnn", "outer": outer, "H": h, "rounds": w["rounds"],
             "final_accuracy": summary["test_accuracy"], "bytes_sent": w["bytes_sent"] - upload,
             "wall_time_s": summary["wall_seconds"]}
    return rows, final


def plot(curves, model, path):
    plt = runner.pyplot()
    from matplotlib.ticker import NullFormatter
    curves = [c for c in curves if c["model"] == model]
    fig, axes = plt.subplots(2, len(HS), figsize=(13, 7.5), sharey=True)
    for col, h in enumerate(HS):
        for outer, colour in zip(OUTER, ("C0", "C1", "C2")):
            pts = [c for c in curves if c["H"] == h and c["outer"] == outer]
            axes[0][col].plot([c["round"] for c in pts], [c["test_accuracy"] for c in pts], "o-",
                              color=colour, markersize=3, label=outer)
            axes[1][col].plot([c["bytes_sent"] / 1e6 for c in pts],
                              [c["test_accuracy"] for c in pts], "o-", color=colour,
                              markersize=3, label=outer)
        axes[0][col].set_title("H = %d (%d rounds)" % (h, STEPS[model] // h), fontsize=10)
        axes[0][col].set_xlabel("rounds")
        axes[1][col].set_xlabel("MB pushed per worker (fp32; pulls are the same size)")
        axes[1][col].set_xscale("log")
        axes[1][col].xaxis.set_minor_formatter(NullFormatter())  # no crowded 3x10^0 labels
    for row in axes:
        row[0].set_ylabel("test accuracy")
        row[0].set_ylim(0.6, 0.92)
        row[0].legend()
    inner = ("inner SGD lr %g" % LR if model == "mlp"
             else "inner Adam lr 1e-3, test on %d images" % cnn.TEST_LIMIT)
    fig.suptitle("Outer optimizers on the server: %s on Fashion-MNIST, K=%d, %d local steps per "
                 "worker, %s (real ps-server)" % (model.upper(), K, STEPS[model], inner),
                 fontsize=10)
    runner.save_figure(fig, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(STEPS), help="comma-separated: mlp, cnn")
    models = parser.parse_args().models.split(",")
    out = runner.results_dir("slowmo")
    progress = runner.Progress("slowmo", len(models) * len(HS) * len(OUTER))
    started, curves, finals = time.time(), [], []
    for model in models:
        for h in HS:
            for outer in OUTER:
                curve, final = run(model, outer, h)
                curves += curve
                finals.append(final)
                progress.step("%s H=%d %s: accuracy %.4f after %d rounds" % (
                    model, h, outer, final["final_accuracy"], final["rounds"]))
        # Written after each model, so that a cut-off run keeps what it finished.
        runner.write_csv(os.path.join(out, "curves.csv"), curves)
        runner.write_csv(os.path.join(out, "results.csv"), finals)
        plot(curves, model, os.path.join(out, "slowmo_%s.png" % model))
    runner.write_json(os.path.join(out, "summary.json"), {
        "K": K, "mlp": {"batch": BATCH, "inner_lr": LR},
        "cnn": {"batch": cnn.BATCH, "inner": "Adam 1e-3", "test_images": cnn.TEST_LIMIT},
        "steps_per_worker": STEPS, "machine": runner.machine(),
        "wall_time_s": time.time() - started})
    progress.note("results in %s (%.0f s)" % (out, time.time() - started))


if __name__ == "__main__":
    main()
