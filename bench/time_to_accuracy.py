#!/usr/bin/python3
"""Time to reach the demo's accuracy target (0.84 test accuracy: softmax regression on the full
Fashion-MNIST, 4 workers) with every worker behind a 100 Mbit/s link, for:
  - fp32 parallel SGD: every worker pushes a gradient every step (--update=gradient);
  - Local SGD, H = 8, fp32;
  - Local SGD, H = 8, 4-bit QSGD updates and 4-bit quantized pulls;
  - Local SGD, H = 8, DQ-SGD bit widths both ways (updates and pulls);
and, for scale, the last one again on links without a limit (what computation alone takes).
All runs are synchronous with the same data, batch (32), learning-rate schedule (cosine from 0.2
over 10 epochs; the server applies it in gradient mode) and evaluation cadence (every quarter
epoch, on all 10,000 test images). Time to target is the training time up to the first
evaluation at or above the target: from the first round (after joining, loading the data and the
first pull) without the time spent evaluating.

The server and each worker get a network namespace of their own (tests/harness/netns.py); each
worker's link is limited to 100 Mbit/s each way by tbf, the server's is not. Must run inside
tests/netns_run.sh:
    make time-to-accuracy
    (= tests/netns_run.sh /usr/bin/python3 bench/time_to_accuracy.py build [--repeats N])
Writes bench/results/time_to_accuracy.md and, with python3-matplotlib, time_to_accuracy.png.
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
from harness.netns import Network  # noqa: E402
from harness.procs import fail, read_port_file  # noqa: E402

TARGET = 0.84
WORKERS = 4
LINK_MBIT = 100
EPOCHS = 10
TRAIN_EXAMPLES = 60000
BATCH = 32
COMMON = ["--mode=sync", "--num_workers=%d" % WORKERS, "--model=softmax", "--learning_rate=0.2",
          "--server_learning_rate=0.2", "--lr_schedule=cosine", "--batch_size=%d" % BATCH,
          "--encodings=fp32,qsgd"]
FP32 = ["--update_encoding=fp32", "--pull_encoding=fp32"]
DQSGD = ["--update=delta", "--update_encoding=qsgd", "--bits_policy=dqsgd",
         "--pull_encoding=qsgd", "--pull_bits_policy=dqsgd"]
# label, H, server flags, workers behind the limited links (else on links without a limit)
CONFIGS = [
    ("fp32 parallel SGD (gradient every step)", 1, ["--update=gradient"] + FP32, True),
    ("Local SGD H=8, fp32", 8, ["--update=delta"] + FP32, True),
    ("Local SGD H=8, 4-bit QSGD both ways", 8,
     ["--update=delta", "--update_encoding=qsgd", "--bits=4", "--pull_encoding=qsgd",
      "--pull_bits=4"], True),
    ("Local SGD H=8, DQ-SGD both ways", 8, DQSGD, True),
    # What computation alone takes on this machine: the same run without a link limit.
    ("(Local SGD H=8, DQ-SGD both ways, links not limited)", 8, DQSGD, False),
]


def measure_link(net, client, server_address):
    """iperf3 goodput over one worker's link, each way, in Mbit/s."""
    out = {}
    for direction, extra in (("up", []), ("down", ["-R"])):
        server = net.run("server", ["iperf3", "-s", "-1", "-B", server_address],
                         os.devnull)
        time.sleep(0.3)
        result = subprocess.run(["ip", "netns", "exec", client, "iperf3", "-c", server_address,
                                 "-t", "3", "-J"] + extra, capture_output=True, text=True)
        server.wait(10, "iperf3 server")
        if result.returncode != 0:
            fail("iperf3: " + result.stderr)
        out[direction] = json.loads(result.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
    return out


def run_config(net, build, work, label, h, flags, limited, worker_flags=(), hosts=None):
    """One run; the workers run in namespaces w0.. (limited) or u0.. (not), or `hosts`0.."""
    rounds = -(-EPOCHS * TRAIN_EXAMPLES // (WORKERS * h * BATCH))  # ceil
    eval_every = max(1, round(TRAIN_EXAMPLES / 4 / (WORKERS * h * BATCH)))
    os.makedirs(work)
    server = net.run("server", [os.path.join(build, "server", "ps-server"),
                                "--listen=0.0.0.0:50051", "--allow_plaintext",
                                "--port_file=" + os.path.join(work, "port"),
                                "--exit_when_done", "--local_steps=%d" % h,
                                "--rounds=%d" % rounds, "--eval_every=%d" % eval_every,
                                "--summary_json=" + os.path.join(work, "server.json")]
                     + COMMON + flags, os.path.join(work, "server.log"))
    read_port_file(os.path.join(work, "port"), server)
    workers = []
    for k in range(WORKERS):
        prefix = hosts or ("w" if limited else "u")
        workers.append(net.run(prefix + str(k), [
            os.path.join(build, "worker", "ps-worker"),
            "--servers=%s:50051" % net.hosts["server"], "--rank=%d" % k, "--quiet",
            "--eval_log=" + os.path.join(work, "eval-%d.jsonl" % k),
            "--summary_json=" + os.path.join(work, "worker-%d.json" % k)] + list(worker_flags),
            os.path.join(work, "worker-%d.log" % k)))
    start, last = time.time(), 0.0
    while any(w.alive() for w in workers):
        time.sleep(0.5)
        if time.time() - last >= 10:
            last = time.time()
            curve = read_curve(work, 0)
            if curve:
                print("  %s: round %d/%d, test accuracy %.4f, %.0f s" %
                      (label, curve[-1]["round"], rounds, curve[-1]["test_accuracy"],
                       time.time() - start), flush=True)
    for k, w in enumerate(workers):
        if w.wait(60, "worker %d" % k) != 0:
            fail("%s: worker %d failed:\n%s" % (label, k, w.text()[-2000:]))
    server.wait(60, "server")
    return [read_curve(work, k) for k in range(WORKERS)], rounds


def read_curve(work, k):
    path = os.path.join(work, "eval-%d.jsonl" % k)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def training_time(record):
    """Seconds of training up to an evaluation: from the first round, evaluations excluded."""
    return record["elapsed_s"] - record["train_start_s"] - record["eval_s"]


def summarize(label, curves, rounds):
    """Time (evaluation excluded) and bytes of all workers at worker 0's first evaluation at or
    above the target; in sync mode every worker evaluates the same model at the same round."""
    lead = curves[0]
    hit = next((c for c in lead if c["test_accuracy"] >= TARGET), None)
    total_bytes = sum(c[-1]["bytes_sent"] + c[-1]["bytes_received"] for c in curves)
    row = {"config": label, "rounds": rounds, "final_accuracy": lead[-1]["test_accuracy"],
           "total_time_s": training_time(lead[-1]), "total_bytes": total_bytes,
           "start_s": lead[0]["train_start_s"],
           "curve": [(training_time(c), c["test_accuracy"],
                      sum(w[i]["bytes_sent"] + w[i]["bytes_received"] for w in curves))
                     for i, c in enumerate(lead)]}
    if hit is not None:
        i = lead.index(hit)
        row.update(target_round=hit["round"], time_s=training_time(hit),
                   bytes=sum(w[i]["bytes_sent"] + w[i]["bytes_received"] for w in curves))
    return row


def machine():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return "%s, %d cores, %s %s" % (model, os.cpu_count(), platform.system(), platform.release())


def write_results(rows, link, repeats, out_dir):
    ref = rows[0]
    lines = ["| configuration | time to %.2f (s) | vs fp32 parallel SGD | rounds to target | "
             "MB to target (all workers, both ways) | bytes vs fp32 parallel SGD | "
             "final test accuracy | whole run (s) |" % TARGET,
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "time_s" in r:
            ratios = ("reference", "reference") if r is ref else (
                "%.1fx faster" % (ref["time_s"] / r["time_s"]), "%.0fx less" % (ref["bytes"] / r["bytes"]))
            lines.append("| %s | %.2f | %s | %d of %d | %.1f | %s | %.4f | %.1f |" % (
                r["config"], r["time_s"], ratios[0], r["target_round"], r["rounds"],
                r["bytes"] / 1e6, ratios[1], r["final_accuracy"], r["total_time_s"]))
        else:
            lines.append("| %s | not reached | | | | | %.4f | %.1f |" % (
                r["config"], r["final_accuracy"], r["total_time_s"]))
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(out_dir, "time_to_accuracy.md"), "w") as f:
        f.write("""# Time to accuracy behind a 100 Mbit/s link

Command: `make time-to-accuracy` (= `tests/netns_run.sh /usr/bin/python3 bench/time_to_accuracy.py
build --repeats %d`). One ps-server and 4 ps-worker processes, each in its own network namespace on
one machine, joined by a bridge; every worker's link is limited to %d Mbit/s each way by tbf
(measured with iperf3 in this run: %.1f Mbit/s up, %.1f Mbit/s down), the server's link is not.
No added latency (netem is not available here), so the gap between the rows is bandwidth and
per-round overhead only; on a link with a real round-trip time, rows with fewer rounds gain more.

Task: softmax regression on the full Fashion-MNIST (60,000 training images split over 4 workers),
synchronous rounds, batch 32 per worker, learning rate 0.2 with a cosine schedule over %d epochs
(applied by the server in gradient mode), evaluation every quarter epoch on all 10,000 test
images. Time to target: training time up to the first evaluation at or above %.2f, from the
first round (joining, loading the data and the first pull take another %.1f-%.1f s in every row)
and without the time spent evaluating; %s. Bytes: gRPC messages sent and received by all
workers up to that evaluation.

Machine: %s; %s.

%s

The last row is the DQ-SGD run again with links that are not limited: on this machine the 4
workers and the server share 2 cores, so that much of the Local SGD rows' time is computation,
which workers on machines of their own would do in parallel. The plot (time_to_accuracy.png)
shows worker 0's test accuracy against training time and against bytes.
""" % (repeats, LINK_MBIT, link["up"], link["down"], EPOCHS, TARGET,
       min(r["start_s"] for r in rows), max(r["start_s"] for r in rows),
       "the median of %d runs per row" % repeats if repeats > 1 else "one run per row",
       machine(), datetime.date.today(), table))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("python3-matplotlib not installed: no plot (make bench-deps)", file=sys.stderr)
        return
    fig, (by_time, by_bytes) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in rows:
        t, acc, b = zip(*r["curve"])
        by_time.plot(t, [100 * a for a in acc], marker=".", label=r["config"])
        by_bytes.plot([x / 1e6 for x in b], [100 * a for a in acc], marker=".", label=r["config"])
    for ax, xlabel in ((by_time, "training time (s), start-up and evaluation excluded, log scale"),
                       (by_bytes, "MB on the wire, all workers, both ways (log scale)")):
        ax.axhline(100 * TARGET, color="gray", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(70, 86)
        ax.grid(True, which="both", alpha=0.3)
    by_time.legend(fontsize=8, loc="lower right")
    fig.suptitle("Fashion-MNIST softmax, 4 sync workers behind %d Mbit/s links: time to %.0f%%" %
                 (LINK_MBIT, 100 * TARGET))
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "time_to_accuracy.png"), dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args()
    build = os.path.abspath(args.build)
    net = Network()
    net.add_host("server", 10)
    for k in range(WORKERS):
        net.add_host("w%d" % k, 20 + k, LINK_MBIT)
        net.add_host("u%d" % k, 30 + k)
        for host in ("w%d" % k, "u%d" % k):
            net.check_route(host, net.hosts["server"])
    link = measure_link(net, "w0", net.hosts["server"])
    print("link w0 <-> server: %.1f Mbit/s up, %.1f Mbit/s down" % (link["up"], link["down"]))
    work = tempfile.mkdtemp(prefix="ps_tta_")
    runs = {label: [] for label, _, _, _ in CONFIGS}
    for repeat in range(args.repeats):
        for n, (label, h, flags, limited) in enumerate(CONFIGS):
            print("[%d/%d] %s" % (repeat * len(CONFIGS) + n + 1, args.repeats * len(CONFIGS),
                                  label), flush=True)
            curves, rounds = run_config(net, build, os.path.join(work, "%d-%d" % (repeat, n)),
                                        label, h, flags, limited)
            row = summarize(label, curves, rounds)
            runs[label].append(row)
            print("  %s: %s" % (label, "%.2f s to %.2f at round %d, %.1f MB" % (
                row["time_s"], TARGET, row["target_round"], row["bytes"] / 1e6)
                if "time_s" in row else "target not reached (final %.4f)" %
                row["final_accuracy"]), flush=True)
    rows = []
    for label, _, _, _ in CONFIGS:
        reached = [r for r in runs[label] if "time_s" in r]
        if len(reached) * 2 > len(runs[label]):  # the median run, by time to target
            reached.sort(key=lambda r: r["time_s"])
            rows.append(reached[len(reached) // 2])
        else:
            rows.append(runs[label][0])
    if "time_s" not in rows[0]:
        fail("the fp32 parallel SGD reference did not reach the target")
    write_results(rows, link, args.repeats, args.out)
    print("results in %s (run folders in %s)" % (args.out, work))


if __name__ == "__main__":
    main()
