#!/usr/bin/python3
"""Local SGD against minibatch SGD with heterogeneous data (Woodworth et al. 2020;
docs/reproduction.md, section 5).

K = 4 ps-worker processes on Fashion-MNIST, with IID shards or label-sorted ones (each worker
holds about 2.5 of the 10 classes). At the same number of communication rounds R and the same
samples per round: Local SGD runs H = 8 local steps of batch 32 between rounds; minibatch SGD
sends one gradient of batch 8 x 32 = 256 per round, which the real ps-server averages and
applies. Each method gets its best step size from a small sweep (as the paper compares them).

  experiments/hetero.py    (about 12 minutes here)
"""
import argparse
import os
import time

import runner

K, H, BATCH, ROUNDS = 4, 8, 32, 200
MODELS = {"softmax": ["--model=softmax"], "mlp": ["--model=mlp", "--hidden_units=128"]}
PARTITIONS = ["iid", "label_sorted"]
METHODS = {
    "local SGD": (["--update=delta", "--local_steps=%d" % H, "--batch_size=%d" % BATCH],
                  "--learning_rate", [0.05, 0.1, 0.2, 0.4, 0.8]),
    "minibatch SGD": (["--update=gradient", "--batch_size=%d" % (H * BATCH)],
                      "--server_learning_rate", [0.2, 0.5, 1.0, 2.0, 4.0]),
}


def run(model, partition, method, lr):
    flags, lr_flag, _ = METHODS[method]
    result = runner.job(["--mode=sync", "--rounds=%d" % ROUNDS, "--eval_every=10",
                         "--partition=" + partition, "--update_encoding=fp32",
                         "--pull_encoding=fp32", "%s=%g" % (lr_flag, lr)]
                        + MODELS[model] + flags, K)
    labels = dict(model=model, partition=partition, method=method, lr=lr)
    final = dict(labels, final_accuracy=result["workers"][0]["test_accuracy"])
    return runner.curve(result, **labels), final


def best_runs(finals):
    """Per (model, partition, method), the step size with the best final accuracy."""
    best = {}
    for f in finals:
        key = (f["model"], f["partition"], f["method"])
        if key not in best or f["final_accuracy"] > best[key]["final_accuracy"]:
            best[key] = f
    return best


def plot(curves, best, path):
    plt = runner.pyplot()
    fig, axes = plt.subplots(1, len(MODELS), figsize=(12, 4.8))
    colours = {"local SGD": "C0", "minibatch SGD": "C3"}
    for ax, model in zip(axes, MODELS):
        for (m, partition, method), f in sorted(best.items()):
            if m != model:
                continue
            pts = [c for c in curves if (c["model"], c["partition"], c["method"], c["lr"]) ==
                   (model, partition, method, f["lr"])]
            ax.plot([c["round"] for c in pts], [c["test_accuracy"] for c in pts],
                    "-" if partition == "iid" else "--", color=colours[method],
                    label="%s, %s (lr %g)" % (method, partition, f["lr"]))
        ax.set_title("%s, K=%d, H=%d, b=%d (minibatch b=%d)" % (model, K, H, BATCH, H * BATCH),
                     fontsize=10)
        ax.set_xlabel("communication rounds")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0.4, 0.9)
        ax.legend()
    fig.suptitle("Local SGD against minibatch SGD, IID against label-sorted shards "
                 "(real ps-server)")
    runner.save_figure(fig, path)


def main():
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    out = runner.results_dir("hetero")
    todo = [(m, p, method, lr) for m in MODELS for p in PARTITIONS
            for method, (_, _, lrs) in METHODS.items() for lr in lrs]
    progress = runner.Progress("hetero", len(todo))
    started, curves, finals = time.time(), [], []
    for model, partition, method, lr in todo:
        curve, final = run(model, partition, method, lr)
        curves += curve
        finals.append(final)
        progress.step("%s %s %s lr=%g: accuracy %.4f" % (model, partition, method, lr,
                                                         final["final_accuracy"]))
    best = best_runs(finals)
    for f in finals:
        f["best_lr"] = best[(f["model"], f["partition"], f["method"])]["lr"] == f["lr"]
    runner.write_csv(os.path.join(out, "curves.csv"), curves)
    runner.write_csv(os.path.join(out, "results.csv"), finals)
    plot(curves, best, os.path.join(out, "hetero.png"))
    runner.write_json(os.path.join(out, "summary.json"), {
        "K": K, "H": H, "batch": BATCH, "rounds": ROUNDS, "machine": runner.machine(),
        "wall_time_s": time.time() - started})
    progress.note("results in %s (%.0f s)" % (out, time.time() - started))


if __name__ == "__main__":
    main()
