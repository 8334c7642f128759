#!/usr/bin/python3
"""The Python binding's cost, against the C++ client in the same run, and the time of one DiLoCo
sync of a 10M-parameter torch model.

  PYTHONPATH=build/python bench/python_binding.py --build build [--seconds 4] [--repeats 3]

Part 1: a fresh async ps-server per measurement; one client pushes an fp32 update and pulls the
next model back (Session.push), as fast as it can: the C++ client (build/bench/ps_session_bench)
and the binding (slowlink.Session.push), interleaved, --repeats times each; medians and ranges.
Python runs with glibc told by environment what the C++ mains tell it with mallopt (keep freed
memory for reuse, app/malloc_tuning.cc), and once without, to show what that setting is worth.
Part 2: slowlink.torch.DiLoCo.sync() of a 10M-parameter model (one worker, sync mode), fp32 and
4-bit both ways; the gather/scatter between torch and the flat array is timed on its own.
Writes bench/results/python_binding.{md,json,png} (the plot needs python3-matplotlib).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TUNED = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(512 << 20)}


def start_server(build, *flags):
    work = tempfile.mkdtemp()
    port = os.path.join(work, "port")
    proc = subprocess.Popen([f"{build}/server/ps-server", "--listen=127.0.0.1:0",
                             f"--port_file={port}", "--threads=2", *flags],
                            stderr=open(os.path.join(work, "log"), "w"))
    for _ in range(200):
        if os.path.exists(port) and open(port).read().strip():
            return proc, "127.0.0.1:" + open(port).read().strip()
        time.sleep(0.05)
    raise RuntimeError(open(os.path.join(work, "log")).read())


def python_loop(address, floats, seconds):
    """Run in a child interpreter: the same loop as bench/session_bench.cc."""
    import numpy
    import slowlink
    s = slowlink.Session([address], name="py-bench")
    s.join(slowlink.Layout([("params", (floats,))]), numpy.zeros(floats, numpy.float32))
    update = numpy.full(floats, 1e-3, numpy.float32)
    pushes, start = 0, time.time()
    while time.time() - start < seconds:
        s.push(update)
        pushes += 1
    elapsed = time.time() - start
    s.leave()
    print(json.dumps(dict(client="python", floats=floats, pushes=pushes, seconds=elapsed,
                          pushes_per_s=pushes / elapsed)))


def measure(args, client, floats):
    server, address = start_server(args.build, "--mode=async", "--num_workers=1",
                                   "--local_steps=1", "--max_staleness=1e12")
    try:
        if client == "cpp":
            command = [f"{args.build}/bench/ps_session_bench", f"--server={address}",
                       f"--floats={floats}", f"--duration={args.seconds}s"]
            env = dict(os.environ)
        else:
            command = [sys.executable, __file__, "--child", address, str(floats),
                       str(args.seconds)]
            env = dict(os.environ, **(TUNED if client == "python" else {}))
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["pushes_per_s"]
    finally:
        server.terminate()
        server.wait()


def part1(args):
    rows = []
    for floats in (1_000_000, 10_000_000):
        runs = {c: [] for c in ("cpp", "python", "python-untuned")}
        for r in range(args.repeats):
            for client in runs:
                runs[client].append(measure(args, client, floats))
                print(f"  {floats:>10,} floats  {client:15s} rep {r + 1}: "
                      f"{runs[client][-1]:.1f} push+pull/s", file=sys.stderr, flush=True)
        rows.append(dict(floats=floats, **{c: v for c, v in runs.items()}))
    return rows


def part2(args):
    import numpy
    import torch
    import slowlink
    import slowlink.torch
    results = []
    for label, flags in (("fp32", ["--update_encoding=fp32", "--pull_encoding=fp32"]),
                         ("qsgd 4-bit both ways", ["--update_encoding=qsgd", "--bits=4",
                                                   "--pull_encoding=qsgd", "--pull_bits=4"])):
        server, address = start_server(args.build, "--mode=sync", "--num_workers=1",
                                       "--local_steps=1", *flags)
        try:
            model = torch.nn.Sequential(torch.nn.Linear(3000, 3000), torch.nn.Linear(3000, 333))
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            diloco = slowlink.torch.DiLoCo(model, slowlink.Session([address]), optimizer)
            size = diloco.layout.size
            syncs, gathers = [], []
            for _ in range(args.repeats * 3):
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(1e-4)
                t = time.perf_counter()
                diloco.sync()
                syncs.append(time.perf_counter() - t)
                t = time.perf_counter()
                diloco._flat.scatter(diloco._flat.gather(numpy.empty(size, numpy.float32)))
                gathers.append(time.perf_counter() - t)
            diloco.close()
            results.append(dict(encoding=label, parameters=size, sync_s=syncs,
                                gather_scatter_s=gathers))
            print(f"  DiLoCo sync, {size:,} parameters, {label}: "
                  f"{statistics.median(syncs) * 1e3:.0f} ms", file=sys.stderr, flush=True)
        finally:
            server.terminate()
            server.wait()
    return results


def span(values):
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def write(rows, syncs, args):
    machine = subprocess.run(["bash", "-c", "nproc; grep -m1 'model name' /proc/cpuinfo"],
                             capture_output=True, text=True).stdout.split("\n")
    lines = [f"# Python binding against the C++ client (`{' '.join(sys.argv)}`)", "",
             f"Machine: {machine[0]} cores, {machine[1].split(':')[-1].strip()}; "
             f"{time.strftime('%Y-%m-%d')}. One client, async server, fp32 both ways; each "
             "operation pushes the update and pulls the next model (push+pull per second, "
             f"median and range of {args.repeats}, interleaved).", "",
             "| floats | C++ Session | Python (binding) | Python / C++ | Python, glibc untuned | "
             "untuned / C++ |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cpp, py, raw = (statistics.median(r[c]) for c in ("cpp", "python", "python-untuned"))
        lines.append(f"| {r['floats']:,} | {span(r['cpp'])} | {span(r['python'])} | "
                     f"{py / cpp:.2f} | {span(r['python-untuned'])} | {raw / cpp:.2f} |")
    lines += ["", "![Python over C++](python_binding.png)"]
    lines += ["", "DiLoCo sync of a torch model (one worker, sync server; ms, median and range):",
              "", "| parameters | encoding | whole sync | of which torch <-> flat copies |",
              "|---:|---|---:|---:|"]
    for s in syncs:
        ms = lambda v: [x * 1e3 for x in v]  # noqa: E731
        lines.append(f"| {s['parameters']:,} | {s['encoding']} | {span(ms(s['sync_s']))} | "
                     f"{span(ms(s['gather_scatter_s']))} |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    open(os.path.join(HERE, "results", "python_binding.md"), "w").write(text)
    json.dump(dict(push_pull=rows, diloco_sync=syncs), indent=1,
              fp=open(os.path.join(HERE, "results", "python_binding.json"), "w"))
    plot(rows, os.path.join(HERE, "results", "python_binding.png"))


def plot(rows, path):
    """Python's rate over the C++ client's, per model size (bars: median; whiskers: range)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.25
    for i, (client, label) in enumerate((("cpp", "C++ Session"), ("python", "Python binding"),
                                         ("python-untuned", "Python, glibc untuned"))):
        ratios = [[v / statistics.median(r["cpp"]) for v in r[client]] for r in rows]
        mid = [statistics.median(v) for v in ratios]
        err = [[m - min(v) for m, v in zip(mid, ratios)], [max(v) - m for m, v in zip(mid, ratios)]]
        xs = [j + (i - 1) * width for j in range(len(rows))]
        ax.bar(xs, mid, width, yerr=err, capsize=3, label=label)
    ax.axhline(0.8, color="grey", linestyle="--", linewidth=1)
    ax.text(len(rows) - 0.5, 0.81, "goal 0.8x", color="grey", ha="right", fontsize=8)
    ax.set_xticks(range(len(rows)), [f"{r['floats']:,} floats" for r in rows])
    ax.set_ylabel("push+pull rate / C++ median")
    ax.set_title("slowlink binding against the C++ client (fp32, loopback)")
    ax.set_ylim(0, 1.5)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    if len(sys.argv) == 2 and sys.argv[1] == "--plot-only":  # from the committed JSON
        rows = json.load(open(os.path.join(HERE, "results", "python_binding.json")))["push_pull"]
        return plot(rows, os.path.join(HERE, "results", "python_binding.png"))
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        return python_loop(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--build", default="build")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print("part 1: push+pull through the C++ client and through the binding", file=sys.stderr)
    rows = part1(args)
    print("part 2: DiLoCo sync of a 10M-parameter torch model", file=sys.stderr)
    write(rows, part2(args), args)


if __name__ == "__main__":
    main()
