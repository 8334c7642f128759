#!/usr/bin/python3
"""Backup workers (Chen et al. 2016, "Revisiting distributed synchronous SGD";
docs/reproduction.md, section 4).

K = 4 ps-worker processes run synchronous SGD (a gradient every step, the paper's setting) on
Fashion-MNIST with softmax against a real ps-server; one of them is made a straggler with
`ps-worker --step_delay` (a sleep after every step). Time to a target test accuracy, measured on
worker 0 (evaluation excluded), for: sync, sync with 1 backup worker, sync with a round deadline,
async, and sync without the straggler as the reference. Each is repeated; medians and ranges.

  experiments/backup.py    (about 3 minutes here; run it on an idle machine: it measures time)
"""
import argparse
import os
import statistics
import time

import runner

K, BATCH, ROUNDS, TARGET, DELAY, REPEATS = 4, 32, 468, 0.80, "10ms", 3
COMMON = ["--mode=sync", "--update=gradient", "--model=softmax", "--batch_size=%d" % BATCH,
          "--rounds=%d" % ROUNDS, "--server_learning_rate=0.2", "--eval_every=10",
          "--update_encoding=fp32", "--pull_encoding=fp32"]
CONFIGS = [
    ("no straggler (reference)", [], False),
    ("sync", [], True),
    ("sync, 1 backup worker", ["--backup_workers=1"], True),
    ("sync, round deadline 3 ms", ["--round_deadline=3ms", "--min_quorum=3"], True),
    # Async applies each gradient alone (not a mean of K): a K times smaller step is the same.
    ("async", ["--mode=async", "--server_learning_rate=0.05"], True),
]


def run(label, flags, straggler):
    slow = (lambda rank: ["--step_delay=" + DELAY] if rank == K - 1 else []) if straggler else None
    result = runner.job(COMMON + flags, K, per_worker_flags=slow)
    points = runner.curve(result, config=label)
    hit = runner.first_reaching(points, TARGET)
    return points, {"config": label, "seconds_to_target": hit["train_s"] if hit else None,
                    "rounds_to_target": hit["round"] if hit else None,
                    "final_accuracy": result["workers"][0]["test_accuracy"],
                    "updates_late_dropped": result["server"].get("updates_late_dropped", 0),
                    "updates_refused_stale": result["server"].get("updates_refused_stale", 0)}


def summarize(finals):
    rows = []
    for label, _, _ in CONFIGS:
        runs = [f for f in finals if f["config"] == label]
        times = [f["seconds_to_target"] for f in runs if f["seconds_to_target"] is not None]
        rows.append({"config": label, "runs": len(runs), "reached": len(times),
                     "median_s": statistics.median(times) if times else None,
                     "min_s": min(times) if times else None, "max_s": max(times) if times else None,
                     "median_rounds": statistics.median(
                         f["rounds_to_target"] for f in runs if f["rounds_to_target"])
                     if times else None,
                     "median_final_accuracy": statistics.median(f["final_accuracy"] for f in runs)})
    return rows


def plot(curves, rows, path):
    plt = runner.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, (label, _, _) in enumerate(CONFIGS):
        pts = [c for c in curves if c["config"] == label and c["repeat"] == 0]
        left.plot([c["train_s"] for c in pts], [c["test_accuracy"] for c in pts], "-",
                  color="C%d" % i, label=label)
    left.axhline(TARGET, color="grey", linestyle=":", label="target %.2f" % TARGET)
    left.set_xlabel("training seconds on worker 0 (evaluation excluded)")
    left.set_ylabel("test accuracy")
    left.set_ylim(0.6, 0.86)
    left.set_title("learning curves (first repetition)", fontsize=10)
    left.legend()
    labels = [r["config"] for r in rows]
    medians = [r["median_s"] or 0 for r in rows]
    errors = [[(r["median_s"] or 0) - (r["min_s"] or 0) for r in rows],
              [(r["max_s"] or 0) - (r["median_s"] or 0) for r in rows]]
    right.barh(labels, medians, xerr=errors, color=["C%d" % i for i in range(len(rows))])
    right.invert_yaxis()
    right.set_xlabel("seconds to test accuracy %.2f (median of %d, range)" % (TARGET, REPEATS))
    right.set_title("time to target", fontsize=10)
    fig.suptitle("One straggler (%s sleep per step) among K=%d sync SGD workers, softmax on "
                 "Fashion-MNIST (real ps-server)" % (DELAY, K))
    runner.save_figure(fig, path)


def main():
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    out = runner.results_dir("backup")
    progress = runner.Progress("backup", REPEATS * len(CONFIGS))
    started, curves, finals = time.time(), [], []
    for repeat in range(REPEATS):  # interleaved, so a slow moment of the machine hits all alike
        for label, flags, straggler in CONFIGS:
            points, final = run(label, flags, straggler)
            curves += [dict(p, repeat=repeat) for p in points]
            finals.append(dict(final, repeat=repeat))
            progress.step("%s #%d: %s s to %.2f" % (label, repeat + 1, final["seconds_to_target"],
                                                     TARGET))
    rows = summarize(finals)
    runner.write_csv(os.path.join(out, "runs.csv"), finals)
    runner.write_csv(os.path.join(out, "results.csv"), rows)
    runner.write_csv(os.path.join(out, "curves.csv"), curves)
    plot(curves, rows, os.path.join(out, "backup.png"))
    runner.write_json(os.path.join(out, "summary.json"), {
        "K": K, "batch": BATCH, "rounds": ROUNDS, "target": TARGET, "step_delay": DELAY,
        "repeats": REPEATS, "machine": runner.machine(), "wall_time_s": time.time() - started})
    progress.note("results in %s (%.0f s)" % (out, time.time() - started))


if __name__ == "__main__":
    main()
