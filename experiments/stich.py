#!/usr/bin/python3
"""Stich (2019), "Local SGD converges fast and communicates little": the speedup of Local SGD on
L2-regularised logistic regression over w8a (docs/reproduction.md, section 1).

K worker processes each run the training loop below over the `slowlink` client library against a
real ps-server (sync rounds: every H steps each pushes its model change and gets the average
back). Every worker samples mini-batches of b from the whole data set, as in the paper. The
measurement (not the algorithm) reads each worker's running weighted sum of its iterates from
shared memory, so x_hat is exactly Stich's weighted average of the virtual mean iterate.

  experiments/stich.py            the whole grid (about 70 minutes here)
  experiments/stich.py --quick    K in {1,2,4}, H in {1,8}, epsilon 0.02 (about 2 minutes)
"""
import argparse
import json
import math
import multiprocessing
import os
import time

import numpy

import runner
from logreg import FSTAR_TOLERANCE, Problem, Schedule, load_w8a


def eval_points(h, limit):
    """Steps at which the run is measured: multiples of H about 1% apart (so T is known to ~1%)."""
    points, t = [], h * max(1, 64 // h)
    while t <= limit:
        points.append(t)
        t = max(t + h, int(math.ceil(t * 1.01 / h)) * h)
    return points


class Shared:
    """What the K processes of one run share, written by each worker after every round under the
    lock: its weighted sum of iterates and sum of weights, its step count, the newest global model
    any worker got back (and its version); and the flag that ends the run."""

    def __init__(self, ctx, k, d):
        def array(*shape):
            size = int(numpy.prod(shape))
            return numpy.frombuffer(ctx.RawArray("d", size), dtype=numpy.float64).reshape(shape)
        self.sums, self.weights, self.steps = array(k, d), array(k), array(k)
        self.latest, self.latest_version = array(d), array(1)
        self.stop = ctx.Value("i", 0)
        self.barrier = ctx.Barrier(k)
        self.lock = ctx.Lock()

    def publish(self, rank, average, t, params, version):
        with self.lock:
            self.weights[rank], self.sums[rank], self.steps[rank] = average[0], average[1:], t
            if version > self.latest_version[0]:
                self.latest[:], self.latest_version[0] = params, version

    def snapshot(self, k):
        """(x_hat, the newest global model, mean steps per worker) over the workers that started."""
        with self.lock:
            started = self.weights[:k] > 0
            if not started.any():
                return None, None, 0.0
            x_hat = (self.sums[:k][started] / self.weights[:k][started, None]).mean(0)
            return x_hat, self.latest.copy(), self.steps[:k].mean()


def local_steps(problem, schedule, params, rng, t, h, b, average):
    """H SGD steps on params (float32, in place) from global step t; adds each iterate to the
    worker's weighted sum (x_hat covers x_t for t = 0 .. T-1)."""
    w = params.astype(numpy.float64)
    for i in range(h):
        average[0] += schedule.weight(t + i)
        average[1:] += schedule.weight(t + i) * w
        w -= schedule.eta(t + i) * problem.gradient(w, rng.integers(0, problem.n, b))
    params[:] = w


def worker_loop(rank, cfg, address, problem, shared, out):
    """One worker of a run. In sync runs rank 0 also measures and decides when the run ends."""
    import slowlink  # only in the worker processes: gRPC must not start before the fork
    session = slowlink.Session([address], name="stich-%d" % rank, rank=rank,
                               update_encoding="fp32")
    session.join(slowlink.Layout([("params", (problem.d,))]),
                 numpy.zeros(problem.d, numpy.float32))
    params = session.model()
    schedule = Schedule(cfg["schedule"], problem, cfg["H"], cfg.get("eta0"), cfg.get("c"))
    rng = numpy.random.default_rng(cfg["seed"] * 1000 + rank)
    timer = Timer(cfg) if rank == 0 else None
    meter = Meter(cfg, problem) if rank == 0 and cfg["mode"] == "sync" else None
    average = numpy.zeros(problem.d + 1)  # [sum of weights, weighted sum of iterates]
    t, points = 0, set(eval_points(cfg["H"], cfg["max_steps"]))
    while t < cfg["max_steps"] and not shared.stop.value:
        start, version = time.perf_counter(), session.version
        local_steps(problem, schedule, params, rng, t, cfg["H"], cfg["b"], average)
        middle = time.perf_counter()
        result = session.sync(params, sample_count=cfg["H"] * cfg["b"],
                              learning_rate=schedule.eta(t))
        t += cfg["H"]
        shared.publish(rank, average, t, params, result["version"])
        if timer:  # a refused update's steps are counted: the worker did them
            timer.add(middle - start, time.perf_counter() - middle,
                      (result["version"] - 1 - version) / cfg["K"], result["stale_refusals"])
        if cfg["mode"] == "sync" and t in points:
            measure_sync(cfg, meter, t, shared, timer)
    session.leave()
    if timer:
        out.put(dict(timer.result(), **(meter.result() if meter else {})))


def measure_sync(cfg, meter, t, shared, timer):
    """Every worker waits at step t while rank 0 measures, so the measurement changes nothing."""
    shared.barrier.wait()
    if meter:
        x_hat, latest, _ = shared.snapshot(cfg["K"])
        if meter.measure(t, x_hat, latest, timer.train_s):
            shared.stop.value = 1
    shared.barrier.wait()


def observe_async(cfg, problem, shared, procs):
    """Async runs: the parent measures snapshots while the workers run on, unhindered."""
    meter, start = Meter(cfg, problem), None
    while any(p.exitcode is None for p in procs) and not shared.stop.value:
        time.sleep(0.02)
        if start is None and shared.weights[:cfg["K"]].all():
            start = time.perf_counter()  # the clock starts once every worker has pushed once
        x_hat, latest, steps = shared.snapshot(cfg["K"])
        if start and meter.measure(steps, x_hat, latest, time.perf_counter() - start):
            shared.stop.value = 1
    return meter.result()


class Timer:
    """Rank 0's clock: time in local steps, time in sync calls, and the staleness it saw."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.train_s = self.step_s = self.sync_s = self.staleness = 0.0
        self.rounds = self.refusals = 0

    def add(self, steps_s, sync_s, staleness, refusals):
        self.staleness += staleness
        self.refusals += refusals
        self.step_s += steps_s
        self.sync_s += sync_s
        self.train_s += steps_s + sync_s
        self.rounds += 1

    def result(self):
        steps = self.rounds * self.cfg["H"]
        return {"step_s": self.step_s / max(steps, 1), "sync_s": self.sync_s / max(self.rounds, 1),
                "steps": steps, "staleness": self.staleness / max(self.rounds, 1),
                "stale_refusals": self.refusals}


class Meter:
    """f(x_hat) - f* and f(x_t) - f* at the evaluation points, and the first step (and training
    time, evaluation excluded) where each is <= epsilon."""

    def __init__(self, cfg, problem):
        self.cfg, self.problem = cfg, problem
        self.t_hat = self.t_last = self.wall_hat = self.wall_last = None
        self.curve = []

    def measure(self, t, x_hat, latest, train_s):
        """Records one point; True once the run can end: x_hat is there and the last iterate is
        too (or has had 50% more steps)."""
        fstar, eps = self.cfg["fstar"], self.cfg["epsilon"]
        hat = self.problem.loss(x_hat) - fstar if self.t_hat is None else None
        last = self.problem.loss(latest) - fstar if self.t_last is None else None
        self.curve.append((t, hat, last))
        if hat is not None and hat <= eps:
            self.t_hat, self.wall_hat = t, train_s
        if last is not None and last <= eps:
            self.t_last, self.wall_last = t, train_s
        return self.t_hat is not None and (self.t_last is not None or t >= 1.5 * self.t_hat)

    def result(self):
        return {"T_hat": self.t_hat, "T_last": self.t_last, "wall_hat_s": self.wall_hat,
                "wall_last_s": self.wall_last, "curve": self.curve}


def run_config(cfg, problem):
    """One run of K workers against a fresh ps-server; what rank 0 (and, async, the parent)
    measured."""
    flags = ["--model_size=%d" % problem.d, "--num_workers=%d" % cfg["K"], "--mode=" + cfg["mode"],
             "--update=delta", "--local_steps=%d" % cfg["H"], "--encodings=fp32",
             "--update_encoding=fp32", "--pull_encoding=fp32", "--lease=120s",
             "--max_staleness=%g" % cfg.get("max_staleness", 4)]
    ctx = multiprocessing.get_context("fork")
    shared, out = Shared(ctx, cfg["K"], problem.d), ctx.Queue()
    with runner.server(*flags) as (address, _):
        procs = [ctx.Process(target=worker_loop, args=(rank, cfg, address, problem, shared, out))
                 for rank in range(cfg["K"])]
        for p in procs:
            p.start()
        observed = observe_async(cfg, problem, shared, procs) if cfg["mode"] == "async" else {}
        result = dict(wait_for_result(procs, out, cfg), **observed)
        for p in procs:
            p.join(timeout=120)
            if p.exitcode != 0:
                raise RuntimeError("worker exited %s (K=%d H=%d)" % (p.exitcode, cfg["K"],
                                                                      cfg["H"]))
    return result


def wait_for_result(procs, out, cfg):
    """Rank 0's result; fails as soon as any worker died (the others would wait for it forever)."""
    import queue
    while True:
        try:
            return out.get(timeout=1)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                for p in procs:
                    p.kill()
                raise RuntimeError("a worker exited %s (K=%d H=%d)" % (dead[0], cfg["K"], cfg["H"]))


def theory_speedup(k, h, eps, rho):
    """Stich's S(K) for H and rho (his section 4), over S at K = H = 1 (which is not quite 1), so
    that it compares with the measured T(1,1) / T(K,H)."""
    def s(k, h):
        drift = 0.5 + 0.5 * math.sqrt(1 + eps * (1 + h + h * h * k))
        return k / (drift * (1 + 2 * rho * (k - 1) / h))
    return s(k, h) / s(1, 1)


def tune(problem, base, progress):
    """eta0 and c of the tuned schedule: the pair with the fewest steps to epsilon at K = H = 1."""
    rows = []
    for eta0 in base["tune_eta0"]:
        for c in base["tune_c"]:
            cfg = dict(base, K=1, H=1, schedule="tuned", eta0=eta0, c=c)
            r = run_config(cfg, problem)
            rows.append({"eta0": eta0, "c": c, "T_hat": r["T_hat"], "T_last": r["T_last"]})
            progress.step("tuning eta0=%g c=%g: T_hat=%s" % (eta0, c, r["T_hat"]))
    best = min((r for r in rows if r["T_hat"]), key=lambda r: r["T_hat"])
    return best["eta0"], best["c"], rows


def grid(problem, base, schedule, progress, extra=None):
    """T(K, H) of one schedule over the grid, sync; rows for T.csv."""
    rows, t11 = [], None
    for k in base["Ks"]:
        for h in base["Hs"]:
            cap = int(base["slack"] * t11) if t11 else base["max_steps"]
            cfg = dict(base, K=k, H=h, schedule=schedule, max_steps=cap, **(extra or {}))
            r = run_config(cfg, problem)
            t11 = t11 or r["T_hat"]
            rows.append(dict(schedule=schedule, K=k, H=h, **{key: r[key] for key in (
                "T_hat", "T_last", "wall_hat_s", "wall_last_s", "step_s", "sync_s", "steps")}))
            progress.step("%s K=%d H=%d: T_hat=%s T_last=%s (%d rounds, %.1f s)" % (
                schedule, k, h, r["T_hat"], r["T_last"], r["steps"] // h, r["wall_hat_s"] or 0))
    return rows


def add_speedups(rows, eps, rho):
    for schedule in {r["schedule"] for r in rows}:
        ref = next(r for r in rows if r["schedule"] == schedule and r["K"] == 1 and r["H"] == 1)
        for r in (r for r in rows if r["schedule"] == schedule):
            r["speedup_hat"] = ref["T_hat"] / r["T_hat"] if r["T_hat"] and ref["T_hat"] else None
            r["speedup_last"] = (ref["T_last"] / r["T_last"] if r["T_last"] and ref["T_last"]
                                 else None)
            r["speedup_wall"] = (ref["wall_hat_s"] / r["wall_hat_s"] if r["T_hat"] and ref["T_hat"]
                                 else None)
            r["theory_rho0"] = theory_speedup(r["K"], r["H"], eps, 0.0)
            r["theory_rho"] = theory_speedup(r["K"], r["H"], eps, rho)
    return rows


def colours(values):
    plt = runner.pyplot()
    cmap = plt.get_cmap("viridis")
    return {v: cmap(i / max(len(values) - 1, 1)) for i, v in enumerate(values)}


def log2_axes(ax):
    """Log-2 axes with the ticks written as plain numbers (1, 2, 4, ...)."""
    from matplotlib.ticker import FuncFormatter
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    plain = FuncFormatter(lambda v, _: "%g" % v)
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_formatter(plain)


def plot_speedup(rows, eps, rho, path):
    """Measured speedups (x_hat) for both schedules beside Stich's S(K) at rho = 0 and measured."""
    plt = runner.pyplot()
    ks, hs = sorted({r["K"] for r in rows}), sorted({r["H"] for r in rows})
    colour = colours(hs)
    fig, axes = plt.subplots(2, 2, figsize=(10, 8), sharex=True, sharey=True)
    panels = [("theory", "measured, eta_t = 4/(mu(a+t))", "speedup_hat"),
              ("tuned", "measured, tuned eta0/(1+t/c)", "speedup_hat"),
              (None, "Stich's S(K), rho = 0", "theory_rho0"),
              (None, "Stich's S(K), rho = %.1f (measured)" % rho, "theory_rho")]
    for ax, (schedule, title, key) in zip(axes.flat, panels):
        for h in hs:
            pts = [(r["K"], r[key]) for r in rows if r["H"] == h and r[key]
                   and r["schedule"] == (schedule or "theory")]
            if pts:
                ax.plot(*zip(*pts), "o-" if schedule else "--", color=colour[h], label="H=%d" % h)
        ax.plot(ks, ks, ":", color="grey", label="linear")
        ax.set_title(title, fontsize=10)
        log2_axes(ax)
    for ax in axes[1]:
        ax.set_xlabel("workers K")
    axes[0][0].set_ylabel("measured speedup T(1,1) / T(K,H)\n(iterations per worker, of x_hat)")
    axes[1][0].set_ylabel("theoretical speedup S(K)\n(rho > 0: in time)")
    axes[0][0].legend(ncol=2)
    fig.suptitle("Local SGD on w8a, logistic regression, b=4, epsilon=%g (sync, real ps-server)"
                 % eps)
    runner.save_figure(fig, path)


def plot_lines(rows, key, title, ylabel, path, label=lambda r: "H=%d" % r["H"]):
    """One line per label over K, log-log, with the linear speedup for reference. The colour
    says H; async lines are dashed."""
    plt = runner.pyplot()
    groups = sorted({label(r) for r in rows}, key=lambda s: (len(s), s))
    colour = colours(sorted({r["H"] for r in rows}))
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for g in groups:
        mine = [r for r in rows if label(r) == g and r[key]]
        if mine:
            ax.plot(*zip(*sorted((r["K"], r[key]) for r in mine)),
                    "o--" if mine[0].get("mode") == "async" else "o-", color=colour[mine[0]["H"]],
                    label=g)
    ks = sorted({r["K"] for r in rows})
    ax.plot(ks, ks, ":", color="grey", label="linear")
    log2_axes(ax)
    ax.set_xlabel("workers K")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(ncol=2)
    runner.save_figure(fig, path)


def settings(args):
    if args.quick:
        return dict(Ks=[1, 2, 4], Hs=[1, 8], epsilon=0.02, async_Ks=[2], async_Hs=[8],
                    tune_eta0=[], tune_c=[], eta0=2.0, c=5000.0)
    return dict(Ks=[1, 2, 4, 8, 16], Hs=[1, 2, 4, 8, 16, 32, 64], epsilon=0.005,
                async_Ks=[1, 2, 4, 8, 16], async_Hs=[8, 32], tune_eta0=[1.0, 2.0, 4.0, 8.0],
                tune_c=[1000.0, 2000.0, 5000.0, 20000.0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a reduced grid (the make test one)")
    parser.add_argument("--out", default=None, help="results folder (default results/stich)")
    parser.add_argument("--check", action="store_true",
                        help="then fail (exit 1) unless the results are sane (make test)")
    parser.add_argument("--plot_only", action="store_true",
                        help="redraw the PNGs from the CSV and JSON files already in the folder")
    args = parser.parse_args()
    out = args.out or runner.results_dir("stich-quick" if args.quick else "stich")
    os.makedirs(out, exist_ok=True)
    if args.plot_only:
        return plot_all(out, *read_results(out))
    base = dict(settings(args), seed=1, b=4, mode="sync", slack=1.5, max_steps=400000)
    started = time.time()
    problem = Problem(*load_w8a())
    fstar, gnorm = problem.solve()
    base["fstar"] = fstar
    runs = (len(base["tune_eta0"]) * len(base["tune_c"]) + 2 * len(base["Ks"]) * len(base["Hs"])
            + len(base["async_Ks"]) * len(base["async_Hs"]))
    progress = runner.Progress("stich", runs)
    progress.note("f* = %.12f (Newton, |grad| = %.1e), L = %.4f, kappa = %.0f" %
                  (fstar, gnorm, problem.smoothness, problem.kappa))
    rows = grid(problem, base, "theory", progress)
    # rho: one model up and one down take sync_s at K = 1; a gradient step takes step_s.
    rho = rows[0]["sync_s"] / 2 / rows[0]["step_s"]
    tuning = []
    if base["tune_eta0"]:
        base["eta0"], base["c"], tuning = tune(problem, base, progress)
    rows += grid(problem, base, "tuned", progress, {"eta0": base["eta0"], "c": base["c"]})
    best = min(("theory", "tuned"), key=lambda s: next(
        r["T_hat"] for r in rows if r["schedule"] == s and r["K"] == 1 and r["H"] == 1))
    async_rows = run_async(problem, base, best, rows, progress)
    write(out, rows, async_rows, tuning, dict(
        fstar=fstar, grad_norm=gnorm, smoothness=problem.smoothness, kappa=problem.kappa,
        rho=rho, best_schedule=best, eta0=base["eta0"], c=base["c"], epsilon=base["epsilon"],
        machine=runner.machine(), wall_time_s=time.time() - started))
    progress.note("results in %s (%.0f s)" % (out, time.time() - started))
    if args.check:
        check(out, *read_results(out))


def check(out, rows, async_rows, summary):
    """What must hold whatever the machine: the reference solution is exact, every run reached
    epsilon, K = 1 is plain SGD whatever H, more workers need fewer steps with the tuned schedule,
    and the plots were written."""
    problems = []
    if summary["grad_norm"] > FSTAR_TOLERANCE:
        problems.append("f* not converged: |grad| = %g" % summary["grad_norm"])
    problems += ["%s K=%d H=%d did not reach epsilon" % (r["schedule"], r["K"], r["H"])
                 for r in rows + [dict(a, schedule="async") for a in async_rows] if not r["T_hat"]]
    for r in rows:
        if r["K"] == 1 and r["T_hat"] and abs(r["speedup_hat"] - 1) > 0.05:
            problems.append("K=1 H=%d is not SGD: speedup %.3f" % (r["H"], r["speedup_hat"]))
    k_max = max(r["K"] for r in rows)
    if any(r["schedule"] == "tuned" and r["K"] == k_max and (r["speedup_hat"] or 0) < 1.1
           for r in rows):
        problems.append("no speedup at K=%d with the tuned schedule" % k_max)
    for png in ("speedup.png", "speedup_wall.png", "async.png"):
        path = os.path.join(out, png)
        if not os.path.exists(path) or os.path.getsize(path) < 10000:
            problems.append("%s missing or empty" % png)
    if problems:
        raise SystemExit("FAIL: " + "; ".join(problems))
    print("[stich] check passed: %d runs" % (len(rows) + len(async_rows)))


def run_async(problem, base, schedule, sync_rows, progress):
    """Stich's section 5: the same loop against an async server (no rounds; staleness weights)."""
    ref = next(r for r in sync_rows if r["schedule"] == schedule and r["K"] == 1 and r["H"] == 1)
    rows = []
    for h in base["async_Hs"]:
        for k in base["async_Ks"]:
            cfg = dict(base, K=k, H=h, mode="async", schedule=schedule,
                       max_steps=int(base["slack"] * ref["T_hat"]))
            r = run_config(cfg, problem)
            rows.append({"mode": "async", "K": k, "H": h, "T_hat": r["T_hat"],
                         "T_last": r["T_last"],
                         "speedup_hat": ref["T_hat"] / r["T_hat"] if r["T_hat"] else None,
                         "mean_staleness_rounds": r["staleness"],
                         "stale_refusals_rank0": r["stale_refusals"],
                         "wall_hat_s": r["wall_hat_s"]})
            progress.step("async K=%d H=%d: T_hat=%s staleness %.2f rounds" % (
                k, h, r["T_hat"], r["staleness"]))
    return rows


def write(out, rows, async_rows, tuning, summary):
    add_speedups(rows, summary["epsilon"], summary["rho"])
    runner.write_csv(os.path.join(out, "T.csv"), rows)
    runner.write_csv(os.path.join(out, "async.csv"), async_rows)
    if tuning:
        runner.write_csv(os.path.join(out, "tuning.csv"), tuning)
    runner.write_json(os.path.join(out, "summary.json"), summary)
    plot_all(out, rows, async_rows, summary)


def read_results(out):
    """(rows, async rows, summary) as write() left them, numbers parsed."""
    with open(os.path.join(out, "summary.json")) as f:
        return (runner.read_csv(os.path.join(out, "T.csv")),
                runner.read_csv(os.path.join(out, "async.csv")), json.load(f))


def plot_all(out, rows, async_rows, summary):
    eps, best = summary["epsilon"], summary["best_schedule"]
    plot_speedup(rows, eps, summary["rho"], os.path.join(out, "speedup.png"))
    plot_lines([r for r in rows if r["schedule"] == best], "speedup_wall",
               "Wall-clock speedup to epsilon=%g, %s schedule\n(K processes on %s)" % (
                   eps, best, summary["machine"]),
               "time(1,1) / time(K,H)", os.path.join(out, "speedup_wall.png"))
    sync_best = [dict(r, mode="sync") for r in rows if r["schedule"] == best
                 and r["H"] in {a["H"] for a in async_rows}]
    plot_lines(sync_best + async_rows, "speedup_hat",
               "Async against sync Local SGD, %s schedule, epsilon=%g" % (best, eps),
               "speedup T(1,1) / T(K,H)", os.path.join(out, "async.png"),
               label=lambda r: "%s H=%d" % (r["mode"], r["H"]))


if __name__ == "__main__":
    main()
