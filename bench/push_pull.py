#!/usr/bin/python3
"""Push absorbed and pull served by ps-server on loopback, beside raw loopback TCP.

For each repetition, model size and client count K: iperf3 with K streams (the reference, measured
right before), then a fresh `ps-server --mode=async --model_size=N` and `ps_push_pull_bench`
(real PsClients over gRPC, one connection each): fp32 pushes then full-model pulls, and on another
fresh server 4-bit QSGD pushes, each phase timed after one untimed operation per client (GB/s in fp32-equivalent bytes, 4 per coordinate). Also the
server's CPU seconds and peak RSS per run. Writes JSON (every run), a markdown table (median and
range over the repetitions) and a plot.

  /usr/bin/python3 bench/push_pull.py --build build --out bench/results/push_pull
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from harness.procs import Proc, fail, free_port, read_port_file  # noqa: E402
from soak import process_sample  # noqa: E402
from time_to_accuracy import machine  # noqa: E402


def peak_rss(pid):
    """VmHWM of a live process, in bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def iperf3(streams, seconds):
    """Raw loopback TCP, GB/s received, with `streams` parallel connections and 1 MiB writes."""
    for _ in range(5):
        port = free_port()
        server = subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port), "-1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # until it listens
        try:
            out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t",
                                  str(seconds), "-P", str(streams), "-l", "1M", "-J"],
                                 capture_output=True, text=True)
            try:
                result = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
                return result / 8e9
            except (ValueError, KeyError):
                print("[push_pull] iperf3 failed, again: " + out.stdout[-300:], flush=True)
        finally:
            server.kill()
            server.wait()
    fail("iperf3 failed 5 times")


def run_ps(args, work, floats, clients, bits, pull):
    """One fresh server and one bench run; the bench's JSON lines by phase, plus server figures."""
    port_file = os.path.join(work, "port")
    if os.path.exists(port_file):
        os.remove(port_file)
    server = Proc([os.path.join(args.build, "server", "ps-server"), "--listen=127.0.0.1:0",
                   "--port_file=" + port_file, "--mode=async", "--num_workers=%d" % clients,
                   "--local_steps=1", "--model_size=%d" % floats, "--max_staleness=1e12",
                   "--threads=2", "--lease=600s"], os.path.join(work, "server.log"))
    try:
        port = read_port_file(port_file, server)
        cpu_before = process_sample(server.popen.pid)["cpu_s"]
        out = subprocess.run(
            [os.path.join(args.build, "bench", "ps_push_pull_bench"),
             "--server=127.0.0.1:%d" % port, "--floats=%d" % floats, "--clients=%d" % clients,
             "--bits=%d" % bits, "--duration=%ds" % args.seconds, "--pull=%s" % str(pull).lower()],
            capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            fail("ps_push_pull_bench failed: " + out.stderr[-2000:])
        sample = process_sample(server.popen.pid)
        phases = {}
        for line in out.stdout.splitlines():
            row = json.loads(line)
            phases[row["phase"]] = row
        phases["server"] = dict(cpu_s=sample["cpu_s"] - cpu_before,
                                peak_rss_bytes=peak_rss(server.popen.pid))
        return phases
    finally:
        server.signal(signal.SIGTERM)
        server.wait(120, "ps-server after SIGTERM")


def measure(args, work):
    runs = []
    total = args.reps * len(args.floats) * len(args.clients)
    done = 0
    for rep in range(args.reps):
        for floats in args.floats:
            for clients in args.clients:
                done += 1
                tcp = iperf3(clients, args.seconds)
                fp32 = run_ps(args, work, floats, clients, 32, pull=True)
                quantized = run_ps(args, work, floats, clients, args.bits, pull=False)
                run = dict(rep=rep, floats=floats, clients=clients, tcp_gbs=tcp,
                           push_fp32_gbs=fp32["push"]["gbytes_per_s"],
                           pull_gbs=fp32["pull"]["gbytes_per_s"],
                           push_quantized_gbs=quantized["push"]["gbytes_per_s"],
                           server_cpu_s_fp32=fp32["server"]["cpu_s"],
                           server_peak_rss_fp32=fp32["server"]["peak_rss_bytes"],
                           pushes_fp32=fp32["push"]["operations"],
                           pulls=fp32["pull"]["operations"])
                runs.append(run)
                print("[push_pull] %d/%d rep %d, %d floats, %d clients: TCP -P %d %.2f GB/s, "
                      "fp32 push %.2f, pull %.2f, %d-bit push %.2f" % (
                          done, total, rep, floats, clients, clients, tcp, run["push_fp32_gbs"],
                          run["pull_gbs"], args.bits, run["push_quantized_gbs"]), flush=True)
    return runs


COLUMNS = (("tcp_gbs", "TCP -P K"), ("push_fp32_gbs", "fp32 push"), ("pull_gbs", "pull"),
           ("push_quantized_gbs", "4-bit push"))


def summarize(runs):
    """Median and range per (floats, clients), and the ratios the goals name (of the medians)."""
    rows = []
    for key in sorted({(r["floats"], r["clients"]) for r in runs}):
        group = [r for r in runs if (r["floats"], r["clients"]) == key]
        row = dict(floats=key[0], clients=key[1])
        for column, _ in COLUMNS:
            values = [r[column] for r in group]
            row[column] = dict(median=statistics.median(values), min=min(values), max=max(values))
        med = {c: row[c]["median"] for c, _ in COLUMNS}
        row["push_over_tcp"] = med["push_fp32_gbs"] / med["tcp_gbs"]
        row["pull_over_tcp"] = med["pull_gbs"] / med["tcp_gbs"]
        row["quantized_over_fp32_push"] = med["push_quantized_gbs"] / med["push_fp32_gbs"]
        row["server_peak_rss_over_model"] = max(r["server_peak_rss_fp32"] for r in group) / (
            4.0 * key[0])
        rows.append(row)
    return rows


def save(out, table, results, plot_rows, plot):
    """Prints the table; with `out`, writes OUT.json (`results`) and OUT.png."""
    print(table)
    if out:
        with open(out + ".json", "w") as f:
            json.dump(results, f, indent=1)
        plot(plot_rows, out + ".png")


def markdown(rows):
    def cell(x):
        return "%.2f (%.2f-%.2f)" % (x["median"], x["min"], x["max"])
    lines = ["| floats | K | TCP -P K GB/s | fp32 push GB/s | push / TCP | pull GB/s | pull / TCP | "
             "4-bit push GB/s | 4-bit / fp32 | server peak RSS / model |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append("| %s | %d | %s | %s | %.2f | %s | %.2f | %s | %.1f | %.1f |" % (
            "{:,}".format(r["floats"]), r["clients"], cell(r["tcp_gbs"]),
            cell(r["push_fp32_gbs"]), r["push_over_tcp"], cell(r["pull_gbs"]), r["pull_over_tcp"],
            cell(r["push_quantized_gbs"]), r["quantized_over_fp32_push"],
            r["server_peak_rss_over_model"]))
    return "\n".join(lines) + "\n"


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401
    sizes = sorted({r["floats"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.8), sharey=True)
    axes = axes if len(sizes) > 1 else [axes]
    for ax, floats in zip(axes, sizes):
        group = [r for r in rows if r["floats"] == floats]
        ks = [r["clients"] for r in group]
        for (column, label), style in zip(COLUMNS, ("k--", "o-", "s-", "^-")):
            med = [r[column]["median"] for r in group]
            low = [r[column]["median"] - r[column]["min"] for r in group]
            high = [r[column]["max"] - r[column]["median"] for r in group]
            ax.errorbar(ks, med, yerr=[low, high], fmt=style, capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_yticks([0.2, 0.5, 1, 2, 5])
        ax.get_yaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_yaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("clients K")
        ax.set_title("{:,} floats".format(floats))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("GB/s (fp32-equivalent bytes)")
    axes[0].legend(fontsize=8)
    fig.suptitle("ps-server on loopback: median and range of the repetitions", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", default="build")
    parser.add_argument("--seconds", type=int, default=3, help="length of each phase")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--floats", type=int, nargs="+", default=[10**6, 10**7, 10**8])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--out", default="", help="writes OUT.json, OUT.png and prints the table")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ps_push_pull_") as work:
        runs = measure(args, work)
    rows = summarize(runs)
    save(args.out, markdown(rows), dict(machine=machine(), seconds=args.seconds, reps=args.reps,
                                        bits=args.bits, runs=runs, summary=rows), rows, plot)


if __name__ == "__main__":
    main()
