#!/usr/bin/python3
"""The soak: many simulated workers (bench/load_gen.cc, ps_load) against one ps-server for a long
time, async and then sync, with workers that leave and join again as new members all along.

  bench/soak.py                      # 64 workers, 10 minutes per mode (make soak)
  bench/soak.py --seconds 30 --check --out build/soak-quick     # the make test version

Every second it samples the server process (RSS and CPU time from /proc) and its Prometheus
endpoint (members, workers with a kept sequence number, updates applied). It writes soak.json
(the samples and a summary per mode) and soak.png (RSS, rounds per second and the per-worker
tables over time). With --check it fails (exit 1) unless, in every mode: no client call failed;
RSS after the warm-up drifted by at most --rss_drift (the mean of the window's last fifth
against its first fifth); the members and the per-worker sequence table never held more than
--clients workers, however many joins the churn made; and rounds kept closing.
"""
import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from harness.procs import Proc, fail, read_port_file  # noqa: E402
from time_to_accuracy import machine  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
METRICS = ("ps_members", "ps_tracked_workers", "ps_updates_applied_total", "ps_model_version")


def process_sample(pid):
    """RSS bytes, CPU seconds (user + system) and threads of a live process."""
    with open("/proc/%d/statm" % pid) as f:
        rss = int(f.read().split()[1]) * PAGE
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return dict(rss_bytes=rss, cpu_s=(int(fields[11]) + int(fields[12])) / TICKS,
                threads=int(fields[17]))


def scrape(port, names=METRICS):
    """The `names` families' values from the server's /metrics (sums over labels)."""
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    values = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in values:
            values[name] += float(line.rsplit(" ", 1)[1])
    return values


def start_server(args, mode, work):
    flags = [os.path.join(args.build, "server", "ps-server"), "--listen=127.0.0.1:0",
             "--port_file=%s/port" % work, "--metrics_listen=127.0.0.1:0",
             "--metrics_port_file=%s/metrics_port" % work, "--mode=" + mode,
             "--num_workers=%d" % args.clients, "--model_size=%d" % args.floats,
             "--lease=%s" % getattr(args, "lease", "10s"),
             "--summary_json=%s/server.json" % work]
    server = Proc(flags, os.path.join(work, "server-%s.log" % mode))
    port = read_port_file(os.path.join(work, "port"), server)
    metrics_port = read_port_file(os.path.join(work, "metrics_port"), server)
    return server, port, metrics_port


def run_mode(args, mode, work):
    """One soak against a fresh server; returns (samples, load generator's final line)."""
    for name in ("port", "metrics_port"):
        if os.path.exists(os.path.join(work, name)):
            os.remove(os.path.join(work, name))
    server, port, metrics_port = start_server(args, mode, work)
    load = subprocess.Popen(
        [os.path.join(args.build, "bench", "ps_load"), "--server=127.0.0.1:%d" % port,
         "--clients=%d" % args.clients, "--floats=%d" % args.floats,
         "--duration=%ds" % args.seconds, "--churn_rounds=%d" % args.churn_rounds],
        stdout=subprocess.PIPE, stderr=open(os.path.join(work, "load-%s.log" % mode), "w"),
        text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(l) for l in load.stdout))
    reader.start()
    samples, start = [], time.time()
    try:
        while load.poll() is None:
            if time.time() - start > args.seconds + 120:
                fail("ps_load still running 120 s after its --duration (a stuck Sync?); logs "
                     "in " + work)
            sample = dict(t=time.time() - start, **process_sample(server.popen.pid),
                          **scrape(metrics_port))
            rss = sample["rss_bytes"]
            samples.append(sample)
            if len(samples) % 10 == 0:
                progress = [l for l in lines if not l.get("final")]
                rate = progress[-1]["syncs_per_s"] if progress else 0.0
                print("[soak] %s %3.0f/%d s: RSS %.1f MB, %.0f syncs/s, members %d, tracked %d, "
                      "errors %d" % (mode, sample["t"], args.seconds, rss / 2**20, rate,
                                     sample["ps_members"], sample["ps_tracked_workers"],
                                     progress[-1]["errors"] if progress else 0), flush=True)
            time.sleep(1.0)
        reader.join()
    finally:
        if load.poll() is None:
            load.kill()
        server.signal(signal.SIGTERM)
        server.wait(60, "ps-server after SIGTERM")
    final = next((l for l in lines if l.get("final")), None)
    if final is None:
        fail("ps_load printed no final line (exit %s):\n%s" % (
            load.returncode, open(os.path.join(work, "load-%s.log" % mode)).read()[-3000:]))
    final["exit_code"] = load.returncode
    return samples, final


def summarize(args, samples, final):
    """What the check looks at, and what the README quotes."""
    window = [s for s in samples if s["t"] >= args.warmup * args.seconds]
    fifth = max(1, len(window) // 5)
    first = sum(s["rss_bytes"] for s in window[:fifth]) / fifth
    last = sum(s["rss_bytes"] for s in window[-fifth:]) / fifth
    applied = samples[-1]["ps_updates_applied_total"] - window[0]["ps_updates_applied_total"]
    versions = samples[-1]["ps_model_version"] - window[0]["ps_model_version"]
    cpu = samples[-1]["cpu_s"] - window[0]["cpu_s"]
    seconds = max(samples[-1]["t"] - window[0]["t"], 1e-9)
    return dict(
        errors=final["errors"], syncs=final["syncs"], syncs_per_s=final["syncs_per_s"],
        sync_ms_p50=final["sync_ms_p50"], sync_ms_p99=final["sync_ms_p99"],
        updates_per_s=applied / seconds, versions_per_s=versions / seconds,
        churns=final["churns"], stale_refusals=final["stale_refusals"],
        rss_mb_after_warmup_first=first / 2**20, rss_mb_after_warmup_last=last / 2**20,
        rss_drift=last / first - 1, rss_mb_max=max(s["rss_bytes"] for s in samples) / 2**20,
        max_members=max(s["ps_members"] for s in samples),
        max_tracked_workers=max(s["ps_tracked_workers"] for s in samples),
        server_threads_max=max(s["threads"] for s in samples),
        server_cpu_ms_per_update=1000 * cpu / applied if applied else None,
        final_version=samples[-1]["ps_model_version"])


def check(args, results):
    problems = []
    for mode, r in results.items():
        s = r["summary"]
        if s["errors"] or r["final"]["exit_code"] != 0:
            problems.append("%s: %d client calls failed (see load-%s.log)" % (mode, s["errors"],
                                                                             mode))
        if abs(s["rss_drift"]) > args.rss_drift:
            problems.append("%s: RSS drifted %.1f%% after the warm-up (%.1f -> %.1f MB)" % (
                mode, 100 * s["rss_drift"], s["rss_mb_after_warmup_first"],
                s["rss_mb_after_warmup_last"]))
        for table in ("max_members", "max_tracked_workers"):
            if s[table] > args.clients:
                problems.append("%s: %s %d > %d clients: a per-worker table grows" % (
                    mode, table, s[table], args.clients))
        if args.churn_rounds and s["churns"] < args.clients:
            problems.append("%s: only %d churns: the tables were not exercised" % (
                mode, s["churns"]))
        if s["syncs"] == 0 or s["final_version"] < 2:
            problems.append("%s: no rounds closed" % mode)
    if problems:
        fail("; ".join(problems))
    print("[soak] check passed: %s" % ", ".join(results))


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("python3-matplotlib not installed: no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for mode, r in results.items():
        t = [s["t"] for s in r["samples"]]
        axes[0].plot(t, [s["rss_bytes"] / 2**20 for s in r["samples"]], label=mode)
        rates = [(b["t"], (b["ps_updates_applied_total"] - a["ps_updates_applied_total"]) /
                  max(b["t"] - a["t"], 1e-9)) for a, b in zip(r["samples"], r["samples"][1:])]
        axes[1].plot([x for x, _ in rates], [y for _, y in rates], label=mode)
        axes[2].plot(t, [s["ps_tracked_workers"] for s in r["samples"]],
                     label="%s: sequence table" % mode)
        axes[2].plot(t, [s["ps_members"] for s in r["samples"]], "--", label="%s: members" % mode)
    axes[0].set_ylim(bottom=0)
    axes[0].set_ylabel("server RSS (MiB)")
    axes[1].set_ylabel("updates applied per second")
    axes[2].set_ylabel("workers held by the server")
    for ax, title in zip(axes, ("memory", "throughput", "per-worker tables")):
        ax.set_xlabel("seconds")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    meta = next(iter(results.values()))["config"]
    fig.suptitle("soak: %d simulated workers, %s floats, a leave and join every %d rounds each" % (
        meta["clients"], format(meta["floats"], ","), meta["churn_rounds"]))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--seconds", type=int, default=600, help="per mode")
    p.add_argument("--modes", default="async,sync")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--floats", type=int, default=100000)
    p.add_argument("--churn_rounds", type=int, default=50,
                   help="each worker leaves and joins again as a new one every N rounds")
    p.add_argument("--warmup", type=float, default=0.3, help="fraction of the run left out")
    p.add_argument("--rss_drift", type=float, default=0.05)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="ps-soak-")  # logs and port files, kept for a look after
    config = dict(clients=args.clients, floats=args.floats, seconds=args.seconds,
                  churn_rounds=args.churn_rounds, warmup=args.warmup)
    results = {}
    for mode in args.modes.split(","):
        samples, final = run_mode(args, mode, work)
        results[mode] = dict(config=config, final=final, samples=samples,
                             summary=summarize(args, samples, final))
        print("[soak] %s: %s" % (mode, json.dumps(results[mode]["summary"])), flush=True)
    with open(os.path.join(args.out, "soak.json"), "w") as f:
        json.dump(dict(machine=machine(), date=datetime.date.today().isoformat(),
                       command=" ".join(sys.argv), results=results), f, indent=1)
        f.write("\n")
    plot(results, os.path.join(args.out, "soak.png"))
    print("[soak] results in %s (soak.json, soak.png; logs in %s)" % (args.out, work))
    if args.check:
        check(args, results)


if __name__ == "__main__":
    main()
