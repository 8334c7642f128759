#!/usr/bin/python3
"""Server memory against model size: join, push, pull, checkpoint and resume, async and sync.

For each model size and mode, a fresh `ps-server --model_size=N --checkpoint_dir=...` and one
`ps_push_pull_bench` client (joins, uploads the zero model, pushes, then pulls, for --seconds each
and at least once); SIGTERM writes the last checkpoint; a second server resumes from it and serves
the client once more. Peak RSS (VmHWM) and RSS after each step, in bytes and in model bytes
(4 per float). Pushes are fp32 up to 10^8 floats and 4-bit QSGD beyond, so that the client's own
copies fit on the machine beside the server's.

  /usr/bin/python3 bench/memory.py --build build --out bench/results/memory
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from harness.procs import Proc, fail, read_port_file  # noqa: E402
from push_pull import peak_rss, save  # noqa: E402
from soak import process_sample  # noqa: E402
from time_to_accuracy import machine  # noqa: E402


def start_server(args, work, floats, mode, name):
    port_file = os.path.join(work, "port")
    if os.path.exists(port_file):
        os.remove(port_file)
    server = Proc([os.path.join(args.build, "server", "ps-server"), "--listen=127.0.0.1:0",
                   "--port_file=" + port_file, "--mode=" + mode, "--num_workers=1",
                   "--local_steps=1", "--model_size=%d" % floats, "--max_staleness=1e12",
                   "--threads=2", "--lease=600s", "--checkpoint_dir=" + os.path.join(work, "ckpt")],
                  os.path.join(work, "server-%s.log" % name))
    return server, read_port_file(port_file, server, timeout=600)


def client(args, port, floats, bits):
    out = subprocess.run(
        [os.path.join(args.build, "bench", "ps_push_pull_bench"), "--server=127.0.0.1:%d" % port,
         "--floats=%d" % floats, "--clients=1", "--bits=%d" % bits,
         "--duration=%ds" % args.seconds], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        fail("ps_push_pull_bench failed: " + out.stderr[-2000:])
    return {json.loads(l)["phase"]: json.loads(l) for l in out.stdout.splitlines()}


def stop(server):
    start = time.time()
    server.signal(signal.SIGTERM)
    server.wait(1800, "ps-server after SIGTERM (writing its last checkpoint)")
    return time.time() - start


def measure_one(args, work, floats, mode):
    model_bytes = 4.0 * floats
    bits = 32 if floats <= 10**8 else 4
    subprocess.run(["rm", "-rf", os.path.join(work, "ckpt")], check=True)
    row = dict(floats=floats, mode=mode, push_bits=bits, model_bytes=model_bytes)
    server, port = start_server(args, work, floats, mode, "first")
    try:
        pid = server.popen.pid
        row["rss_idle"] = process_sample(pid)["rss_bytes"]
        phases = client(args, port, floats, bits)
        row["pushes"] = phases["push"]["operations"]
        row["pulls"] = phases["pull"]["operations"]
        row["rss_after_training"] = process_sample(pid)["rss_bytes"]
        row["peak_rss_training"] = peak_rss(pid)
    finally:
        row["shutdown_checkpoint_s"] = stop(server)
    ckpts = sorted(os.listdir(os.path.join(work, "ckpt")))
    row["checkpoint_bytes"] = os.path.getsize(os.path.join(work, "ckpt", ckpts[-1]))
    start = time.time()
    server, port = start_server(args, work, floats, mode, "resumed")
    try:
        row["resume_s"] = time.time() - start
        pid = server.popen.pid
        row["rss_resumed"] = process_sample(pid)["rss_bytes"]
        row["peak_rss_resume"] = peak_rss(pid)
        log = open(os.path.join(work, "server-resumed.log")).read()
        if "event=resumed" not in log:
            fail("the second server did not resume from the checkpoint:\n" + log[-2000:])
        phases = client(args, port, floats, bits)  # join, push and pull on the resumed server
        row["pushes_after_resume"] = phases["push"]["operations"]
        row["peak_rss_after_resume"] = peak_rss(pid)
    finally:
        stop(server)
    row["peak_over_model"] = max(row["peak_rss_training"], row["peak_rss_after_resume"]) / model_bytes
    row["steady_over_model"] = row["rss_after_training"] / model_bytes
    return row


def markdown(rows):
    gb = 1e9
    lines = ["| floats | mode | push | peak RSS GB | peak / model | RSS after GB | after / model | "
             "checkpoint GB | shutdown+checkpoint s | resume s | pushes, pulls, pushes resumed |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        peak = max(r["peak_rss_training"], r["peak_rss_after_resume"])
        lines.append("| %s | %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f | %.1f | %d, %d, %d |" % (
            "{:,}".format(r["floats"]), r["mode"], "fp32" if r["push_bits"] == 32 else "4-bit",
            peak / gb, r["peak_over_model"], r["rss_after_training"] / gb,
            r["steady_over_model"], r["checkpoint_bytes"] / gb, r["shutdown_checkpoint_s"],
            r["resume_s"], r["pushes"], r["pulls"], r["pushes_after_resume"]))
    return "\n".join(lines) + "\n"


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (gb, ratio) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = sorted({r["floats"] for r in rows})
    gb.plot(sizes, [4.0 * n / 1e9 for n in sizes], "k:", label="model bytes")
    gb.plot(sizes, [12.0 * n / 1e9 for n in sizes], "k--", label="3 x model bytes")
    ratio.axhline(3.0, color="k", linestyle="--", label="goal: 3 x model bytes")
    for mode, color in (("async", "C0"), ("sync", "C3")):
        group = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["floats"])
        if not group:
            continue
        x = [r["floats"] for r in group]
        peak = [max(r["peak_rss_training"], r["peak_rss_after_resume"]) for r in group]
        after = [r["rss_after_training"] for r in group]
        gb.plot(x, [p / 1e9 for p in peak], "o-", color=color, label="%s: peak RSS" % mode)
        ratio.plot(x, [p / r["model_bytes"] for p, r in zip(peak, group)], "o-", color=color,
                   label="%s: peak" % mode)
        ratio.plot(x, [a / r["model_bytes"] for a, r in zip(after, group)], "s:", color=color,
                   label="%s: after training" % mode)
    for ax in (gb, ratio):
        ax.set_xscale("log")
        ax.set_xlabel("model size (floats)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    gb.set_yscale("log")
    gb.set_ylabel("server RSS (GB)")
    ratio.set_ylabel("server RSS / model bytes")
    ratio.set_ylim(0, 8)
    fig.suptitle("ps-server memory through join, push, pull, checkpoint and resume (fixed "
                 "process overhead dominates below 10^8)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", default="build")
    parser.add_argument("--seconds", type=int, default=2, help="push, then pull, this long")
    parser.add_argument("--floats", type=int, nargs="+", default=[10**6, 10**7, 10**8, 10**9])
    parser.add_argument("--modes", nargs="+", default=["async", "sync"])
    parser.add_argument("--out", default="", help="writes OUT.json, OUT.png and prints the table")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ps_memory_", dir=os.environ.get("TMPDIR", "/var/tmp")) as work:
        for floats in args.floats:
            for mode in args.modes:
                row = measure_one(args, work, floats, mode)
                rows.append(row)
                print("[memory] %d floats %s: peak %.2f x model, after training %.2f x, "
                      "checkpoint+shutdown %.1f s, resume %.1f s" % (
                          floats, mode, row["peak_over_model"], row["steady_over_model"],
                          row["shutdown_checkpoint_s"], row["resume_s"]), flush=True)
    save(args.out, markdown(rows), dict(machine=machine(), seconds=args.seconds, rows=rows),
         rows, plot)


if __name__ == "__main__":
    main()
