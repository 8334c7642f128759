#!/usr/bin/python3
"""Time to the demo's target behind 10 and 100 Mbit/s links, with and without Overlap-Local-SGD.

The demo's task (softmax regression on Fashion-MNIST, 4 workers, 0.84 test accuracy) as
bench/time_to_accuracy.py runs it (sync, H = 8, fp32 both ways, the same data, schedule and
evaluation cadence), with every worker's link limited to 10 Mbit/s, to 100 Mbit/s, or not at all,
each without and with `ps-worker --overlap` (its default pullback, 0.5). The goal: with overlap, within 1.25x
of the time with no link limit. Must run inside tests/netns_run.sh:
    make overlap-table
    (= tests/netns_run.sh /usr/bin/python3 bench/overlap.py build [--repeats N])
Writes bench/results/overlap.json, overlap.md and overlap.png.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from harness.netns import Network  # noqa: E402
from harness.procs import fail  # noqa: E402
from time_to_accuracy import (FP32, TARGET, WORKERS, machine, measure_link,  # noqa: E402
                              run_config, summarize)

H = 8
LINKS = ((None, "u"), (100, "w"), (10, "s"))  # Mbit/s (None: no limit), namespace prefix
MODES = (("blocking", []), ("overlap", ["--overlap"]))  # the default pullback, 0.5


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "overlap"))
    parser.add_argument("--step_delay_ms", type=float, default=0,
                        help="ps-worker --step_delay: computation made heavier, so that there is "
                        "something to hide communication behind")
    parser.add_argument("--from_json", action="store_true",
                        help="rewrite the table and plot from OUT.json's runs, without running")
    args = parser.parse_args()
    if args.from_json:
        saved = json.load(open(args.out + ".json"))
        args.repeats = saved["repeats"]
        args.step_delay_ms = saved.get("step_delay_ms", 0)
        write(table_rows(saved["runs"]), saved["runs"],
              {int(k): v for k, v in saved["links"].items()}, args)
        return
    build = os.path.abspath(args.build)
    net = Network()
    net.add_host("server", 10)
    for rate, prefix in LINKS:
        for k in range(WORKERS):
            net.add_host("%s%d" % (prefix, k), {"u": 30, "w": 20, "s": 40}[prefix] + k, rate)
            net.check_route("%s%d" % (prefix, k), net.hosts["server"])
    links = {rate: measure_link(net, prefix + "0", net.hosts["server"])
             for rate, prefix in LINKS if rate is not None}
    for rate, measured in links.items():
        print("link %d Mbit/s: %.1f up, %.1f down" % (rate, measured["up"], measured["down"]))
    work = tempfile.mkdtemp(prefix="ps_overlap_")
    runs = []
    total = args.repeats * len(LINKS) * len(MODES)
    for repeat in range(args.repeats):
        for rate, prefix in LINKS:
            for mode, worker_flags in MODES:
                label = "%s, %s" % ("no limit" if rate is None else "%d Mbit/s" % rate, mode)
                print("[%d/%d] %s" % (len(runs) + 1, total, label), flush=True)
                delay = ["--step_delay=%gms" % args.step_delay_ms] if args.step_delay_ms else []
                curves, rounds = run_config(
                    net, build, os.path.join(work, "%d-%s-%s" % (repeat, prefix, mode)), label, H,
                    ["--update=delta"] + FP32, True, worker_flags + delay, prefix)
                row = summarize(label, curves, rounds)
                row.update(repeat=repeat, link_mbit=rate, mode=mode)
                runs.append(row)
                print("  %s" % ("%.2f s to %.2f (round %d)" % (row["time_s"], TARGET,
                                                               row["target_round"])
                                if "time_s" in row else
                                "target not reached (final %.4f)" % row["final_accuracy"]),
                      flush=True)
    rows = table_rows(runs)
    write(rows, runs, links, args)
    print("results in %s.* (run folders in %s)" % (args.out, work))


LOWER_TARGET = 0.83  # both kinds of run reach it; 0.84 sits at the edge of softmax's plateau


def time_to(run, target):
    """Training seconds to the first evaluation at or above `target`, or None."""
    return next((t for t, accuracy, _ in run["curve"] if accuracy >= target), None)


def table_rows(runs):
    rows = []
    for rate, _ in LINKS:
        for mode, _ in MODES:
            group = [r for r in runs if r["link_mbit"] == rate and r["mode"] == mode]
            times = [r["time_s"] for r in group if "time_s" in r]
            lower = [t for t in (time_to(r, LOWER_TARGET) for r in group) if t is not None]
            rows.append(dict(link_mbit=rate, mode=mode, reached=len(times), runs=len(group),
                             time_s=statistics.median(times) if times else None,
                             min_s=min(times) if times else None,
                             max_s=max(times) if times else None,
                             final_accuracy=statistics.median(r["final_accuracy"] for r in group),
                             lower_s=statistics.median(lower) if lower else None))
    reference = next(r for r in rows if r["link_mbit"] is None and r["mode"] == "blocking")
    if reference["time_s"] is None:
        fail("the run without a link limit did not reach the target")
    for r in rows:
        r["vs_no_limit"] = r["time_s"] / reference["time_s"] if r["time_s"] else None
        r["lower_vs_no_limit"] = (r["lower_s"] / reference["lower_s"]
                                  if r["lower_s"] and reference["lower_s"] else None)
    return rows


def write(rows, runs, links, args):
    lines = ["| link | worker | time to %.2f (median, range) | vs no limit, blocking | time to "
             "%.2f | vs no limit, blocking | final accuracy | reached %.2f |" % (
                 TARGET, LOWER_TARGET, TARGET), "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        link = "not limited" if r["link_mbit"] is None else "%d Mbit/s" % r["link_mbit"]
        target = ("%.2f s (%.2f-%.2f) | %.2fx" % (r["time_s"], r["min_s"], r["max_s"],
                                                  r["vs_no_limit"])
                  if r["time_s"] is not None else "not reached | ")
        lower = ("%.2f s | %.2fx" % (r["lower_s"], r["lower_vs_no_limit"])
                 if r["lower_s"] is not None else "not reached | ")
        lines.append("| %s | %s | %s | %s | %.4f | %d/%d |" % (
            link, r["mode"], target, lower, r["final_accuracy"], r["reached"], r["runs"]))
    table = "\n".join(lines) + "\n"
    print(table)
    with open(args.out + ".md", "w") as f:
        f.write("# Time to accuracy with and without Overlap-Local-SGD\n\n")
        f.write("Command: `tests/netns_run.sh /usr/bin/python3 bench/overlap.py build "
                "--repeats %d%s` (`make overlap-table` runs the first). Machine: %s.\n\n" % (
                    args.repeats, " --step_delay_ms %g --out %s" % (
                        args.step_delay_ms, os.path.relpath(args.out, ROOT))
                    if args.step_delay_ms else "", machine()))
        f.write("Links measured with iperf3: %s.\n\n" % ", ".join(
            "%d Mbit/s: %.1f up, %.1f down" % (rate, m["up"], m["down"])
            for rate, m in sorted(links.items())))
        f.write(table)
    with open(args.out + ".json", "w") as f:
        json.dump(dict(machine=machine(), repeats=args.repeats, links=links, rows=rows,
                       step_delay_ms=args.step_delay_ms,
                       runs=runs), f, indent=1)
    plot(rows, args.out + ".png", args.step_delay_ms)


def plot(rows, path, step_delay_ms=0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labels = ["not limited" if rate is None else "%d Mbit/s" % rate for rate, _ in LINKS]
    width = 0.38
    for i, (mode, _) in enumerate(MODES):
        group = [r for r in rows if r["mode"] == mode]
        ax.bar([x + (i - 0.5) * width for x in range(len(group))],
               [r["lower_s"] or 0 for r in group], width, label="%s (median)" % mode)
    reference = next(r["lower_s"] for r in rows
                     if r["link_mbit"] is None and r["mode"] == "blocking")
    ax.axhline(1.25 * reference, color="k", linestyle="--", label="1.25 x no limit, blocking")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels)
    ax.set_ylabel("seconds to %.2f test accuracy" % LOWER_TARGET)
    steps = ", %g ms a step" % step_delay_ms if step_delay_ms else ""
    ax.set_title("4 workers, sync Local SGD H=%d, fp32%s, each worker behind its link" % (H, steps),
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
