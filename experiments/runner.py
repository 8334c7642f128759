"""What every experiment shares: the build's binaries and Python package, a real ps-server on a
loopback port, ps-worker jobs, progress lines, and result files (CSV, JSON, PNG).

An experiment runs the project's own processes: `ps-server` from the build, and either the
`ps-worker` training loop or its own loop over the `slowlink` client library. Nothing here
simulates the server.
"""
import contextlib
import csv
import json
import os
import signal
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.abspath(os.environ.get("PS_BUILD", os.path.join(ROOT, "build")))
RESULTS = os.path.abspath(os.environ.get("PS_RESULTS",
                                         os.path.join(ROOT, "experiments", "results")))
DATA = os.path.join(ROOT, "experiments", "data")

sys.path.insert(0, os.path.join(BUILD, "python"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from harness.procs import Proc, binaries, read_port_file  # noqa: E402

BINARIES = binaries(BUILD)


def results_dir(name):
    """experiments/results/NAME (or $PS_RESULTS/NAME), created."""
    path = os.path.join(RESULTS, name)
    os.makedirs(path, exist_ok=True)
    return path


class Progress:
    """One line per finished step of an experiment: what it was, how long it took, how far along."""

    def __init__(self, name, total):
        self.name, self.total, self.done, self.start = name, total, 0, time.time()

    def step(self, what):
        self.done += 1
        elapsed = time.time() - self.start
        left = elapsed / self.done * (self.total - self.done)
        print("[%s] %d/%d %s  (%.0f s so far, about %.0f s left)" %
              (self.name, self.done, self.total, what, elapsed, left), flush=True)

    def note(self, text):
        print("[%s] %s" % (self.name, text), flush=True)


@contextlib.contextmanager
def server(*flags, work=None):
    """A ps-server with `flags` on a free loopback port: yields (address, work folder). At the end
    it is stopped with SIGTERM and its summary (JSON) is left in work/server.json."""
    work = work or tempfile.mkdtemp(prefix="ps-exp-")
    port_file = os.path.join(work, "server.port")
    proc = Proc([BINARIES["ps-server"], "--listen=127.0.0.1:0", "--port_file=" + port_file,
                 "--summary_json=" + os.path.join(work, "server.json")] + list(flags),
                os.path.join(work, "server.log"))
    try:
        port = read_port_file(port_file, proc)
        yield "127.0.0.1:%d" % port, work
    finally:
        proc.signal(signal.SIGTERM)
        try:
            proc.popen.wait(timeout=30)
        except Exception:
            proc.stop()


def run_workers(address, count, work, flags=(), per_worker_flags=None, timeout=3600):
    """`count` ps-worker processes against `address`; waits for all. Returns one dict per worker:
    its summary JSON, and `curve`, its --eval_log lines (the learning curve)."""
    procs = []
    for rank in range(count):
        extra = list(per_worker_flags(rank)) if per_worker_flags else []
        argv = [BINARIES["ps-worker"], "--servers=" + address, "--rank=%d" % rank, "--quiet",
                "--summary_json=%s/worker%d.json" % (work, rank),
                "--eval_log=%s/worker%d.eval" % (work, rank)] + list(flags) + extra
        procs.append(Proc(argv, os.path.join(work, "worker%d.log" % rank)))
    out = []
    for rank, proc in enumerate(procs):
        code = proc.wait(timeout, "ps-worker %d" % rank)
        if code != 0:
            for other in procs:
                other.stop()
            raise RuntimeError("ps-worker %d exited %d:\n%s" % (rank, code, proc.text()[-2000:]))
        with open("%s/worker%d.json" % (work, rank)) as f:
            summary = json.load(f)
        curve = []
        if os.path.exists("%s/worker%d.eval" % (work, rank)):
            with open("%s/worker%d.eval" % (work, rank)) as f:
                curve = [json.loads(line) for line in f if line.strip()]
        summary["curve"] = curve
        out.append(summary)
    return out


def write_csv(path, rows):
    """rows: a list of dicts with the same keys; the keys are the header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path):
    """write_csv's rows back, with numbers as numbers and empty cells (None) as None."""
    def parse(value):
        if value in ("", "None"):
            return None
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return value
    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.write("\n")
    return path


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
                         "legend.fontsize": 8})
    return plt


def save_figure(fig, path):
    """Lays out, writes and closes a figure."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def machine():
    """A line that says where the numbers were measured (the benchmarks' own)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from time_to_accuracy import machine as bench_machine
    return bench_machine()


def job(server_flags, workers, worker_flags=(), per_worker_flags=None):
    """A whole built-in training job: a ps-server with `server_flags` (plus --num_workers) and
    `workers` ps-worker processes. Returns {"server": its summary, "workers": run_workers(...)}."""
    work = tempfile.mkdtemp(prefix="ps-exp-")
    with server("--num_workers=%d" % workers, *server_flags, work=work) as (address, _):
        summaries = run_workers(address, workers, work, worker_flags, per_worker_flags)
    with open(os.path.join(work, "server.json")) as f:
        server_summary = json.load(f)
    return {"server": server_summary, "workers": summaries}


def first_reaching(curve, target, key="test_accuracy"):
    """The first point of a learning curve whose `key` is at least `target`, or None."""
    return next((point for point in curve if point[key] >= target), None)


def curve(result, **labels):
    """Worker 0's learning curve as rows: `labels`, then round, accuracy, bytes both ways so far
    (the initial model's upload not counted) and training seconds (joining, loading and
    evaluating excluded)."""
    return [dict(labels, round=p["round"], test_accuracy=p["test_accuracy"],
                 bytes_sent=p["bytes_sent"] - p["upload_bytes_sent"],
                 bytes_received=p["bytes_received"],
                 train_s=p["elapsed_s"] - p["train_start_s"] - p["eval_s"])
            for p in result["workers"][0]["curve"]]
