#!/usr/bin/python3
"""Rounds per second against the number of workers K, sync and async, small and medium models.

For each model size, mode and K, a fresh ps-server (--num_workers=K) and `ps_load` with K
simulated workers (one thread, Session and connection each, pushing fp32 deltas and pulling the
model in every Sync) for --seconds, measured from when every client has synced twice (joining and
the first model are start-up, not rate). Reports rounds per second (sync: rounds closed; async: K
applied updates make a round), p50/p99 of a worker's Sync (push, then pull of the next model;
sync includes the wait for the round), the server's CPU per update, and the largest batch the
async server applied at once. Writes JSON, a markdown table and a plot.

  /usr/bin/python3 bench/many_workers.py --build build --out bench/results/many_workers
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from harness.procs import fail  # noqa: E402
from push_pull import save  # noqa: E402
from soak import process_sample, scrape, start_server  # noqa: E402
from time_to_accuracy import machine  # noqa: E402


def run_one(args, work, floats, mode, k):
    for name in ("port", "metrics_port"):
        if os.path.exists(os.path.join(work, name)):
            os.remove(os.path.join(work, name))
    # The server's default lease: with 256 clients in one process on 2 cores, heartbeats come
    # seconds late while the clients fault in their buffers at the start.
    server_args = argparse.Namespace(build=args.build, clients=k, floats=floats, lease="30s")
    server, port, metrics_port = start_server(server_args, mode, work)
    names = ("ps_updates_applied_total", "ps_model_version", "ps_update_batches_total")
    log = os.path.join(work, "load-%d-%s-%d.log" % (floats, mode, k))
    try:
        # The measurement starts once every client has synced twice: joining 256 clients and
        # sending each the first model is a start-up cost, not a rate.
        load = subprocess.Popen(
            [os.path.join(args.build, "bench", "ps_load"), "--server=127.0.0.1:%d" % port,
             "--clients=%d" % k, "--floats=%d" % floats, "--duration=%ds" % args.seconds,
             "--report_every=%ds" % args.seconds, "--warmup_syncs=2"],
            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
        start = final = None
        for line in load.stdout:
            record = json.loads(line)
            if record.get("warm"):
                start = (process_sample(server.popen.pid)["cpu_s"], scrape(metrics_port, names))
                print("[many_workers]   warm after %.1f s" % record["t"], flush=True)
            if record.get("final"):
                final = record
        # Failed calls are counted in the table (errors); no result at all is a failure.
        load.wait(timeout=args.seconds + 900)
        if start is None or final is None:
            fail("ps_load gave no result:\n" + open(log).read()[-3000:])
        if final["errors"]:
            first = [l for l in open(log) if l.startswith("ps_load:")]
            print("[many_workers]   %d errors; the first:\n%s" % (final["errors"], "".join(first)),
                  flush=True)
        cpu = process_sample(server.popen.pid)["cpu_s"] - start[0]
        end = scrape(metrics_port, names)
        values = {name: end[name] - start[1][name] for name in names}
        batches = values["ps_update_batches_total"]
    finally:
        server.signal(signal.SIGTERM)
        server.wait(60, "ps-server after SIGTERM")
    updates = values["ps_updates_applied_total"]
    version = values["ps_model_version"]
    rounds = version if mode == "sync" else updates / k
    return dict(floats=floats, mode=mode, clients=k, seconds=final["seconds"],
                rounds_per_s=rounds / final["seconds"], updates_per_s=updates / final["seconds"],
                sync_ms_p50=final["sync_ms_p50"], sync_ms_p99=final["sync_ms_p99"],
                errors=final["errors"], stale_refusals=final["stale_refusals"],
                server_cpu_ms_per_update=1000.0 * cpu / max(updates, 1),
                updates_per_batch=updates / batches if batches else 1.0)


def markdown(rows):
    lines = ["| floats | mode | K | rounds/s | updates/s | Sync p50 / p99 ms | server CPU ms / update "
             "| updates per batch | errors |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append("| %s | %s | %d | %.2f | %.0f | %.0f / %.0f | %.2f | %.1f | %d |" % (
            "{:,}".format(r["floats"]), r["mode"], r["clients"], r["rounds_per_s"],
            r["updates_per_s"], r["sync_ms_p50"], r["sync_ms_p99"],
            r["server_cpu_ms_per_update"], r["updates_per_batch"], r["errors"]))
    return "\n".join(lines) + "\n"


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for floats, color in zip(sorted({r["floats"] for r in rows}), ("C0", "C1", "C2")):
        for mode, style in (("sync", "s-"), ("async", "o--")):
            group = sorted((r for r in rows if r["floats"] == floats and r["mode"] == mode),
                           key=lambda r: r["clients"])
            if group:
                ax.plot([r["clients"] for r in group], [r["rounds_per_s"] for r in group], style,
                        color=color, label="{:,} floats, {}".format(floats, mode))
    ks = sorted({r["clients"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.set_xlabel("workers K (threads of ps_load, one connection each)")
    ax.set_ylabel("rounds per second (async: K updates)")
    ax.set_title("One ps-server, K simulated workers, 2 shared cores", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", default="build")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--floats", type=int, nargs="+", default=[10**4, 10**6])
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--modes", nargs="+", default=["sync", "async"])
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ps_many_") as work:
        for floats in args.floats:
            for mode in args.modes:
                for k in args.clients:
                    row = run_one(args, work, floats, mode, k)
                    rows.append(row)
                    print("[many_workers] %d floats %s K=%d: %.2f rounds/s, Sync p50 %.0f ms, "
                          "p99 %.0f ms, %d errors" % (floats, mode, k, row["rounds_per_s"],
                                                      row["sync_ms_p50"], row["sync_ms_p99"],
                                                      row["errors"]), flush=True)
    save(args.out, markdown(rows), dict(machine=machine(), seconds=args.seconds, rows=rows),
         rows, plot)


if __name__ == "__main__":
    main()
