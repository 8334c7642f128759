#!/usr/bin/python3
"""`make chaos`: a kill campaign with the real binaries on loopback, outside `make test`.

Three scenarios, each run --cycles times (default 20). Every cycle is a small training job of its
own (Fashion-MNIST subset, a small model, a few hundred rounds) on 127.0.0.1 with a free port and
a checkpoint folder in a temporary directory, and one kill -9:

  worker_kill      sync rounds, K = 3, lease 1 s, round deadline 0.5 s, minimum quorum 2: kill -9
                   a worker in the middle of training and start a replacement with its rank.
                   The run must finish (every worker and the server exit 0).
  server_kill      sync rounds, K = 2, a checkpoint every --checkpoint_every_versions versions
                   (and none by time): kill -9 the server mid-training and start it again on the
                   same port and checkpoint folder; the workers must ride it out. Versions lost =
                   the last version Status reported before the kill - the version the restarted
                   server resumed from (its event=listening line); at most one checkpoint
                   interval: the flag's, or the largest gap between the checkpoints the server
                   wrote in that run if larger (training goes on while a checkpoint is written,
                   so the versions published meanwhile fall in the next gap).
  checkpoint_kill  async, K = 1, a 6.4 MB model (mlp, 2048 hidden units) with a checkpoint due
                   every version: kill -9 the server at a random moment while a checkpoint is
                   being written (a temporary file exists), start it again; it must resume from the
                   newest checkpoint file under its final name (none corrupt), and the run finish.
                   Versions lost as in server_kill, against an interval of 1 (or that gap).

A cycle that runs longer than --timeout seconds is stopped and counted as hung. At the end a table
(scenario, runs, finished, hung, longest round, max versions lost, checkpoint interval, verdict)
is printed and written as JSON to --json. The exit status is 1 if any run hung, failed (a process
exited non-zero or a check did not hold) or lost more than one checkpoint interval.

Usage: chaos.py BUILD_DIR [--cycles N] [--scenarios a,b,c] [--checkpoint_every_versions C]
                [--timeout S] [--seed S] [--json PATH] [--keep]
"""
import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from harness.loopback import (DATA, Run, checkpoint_files, checkpoint_temporaries,  # noqa: E402
                              checkpoints_written, have_data, listening_version, resumed_version,
                              summary)
from harness.procs import Failed  # noqa: E402
from harness.status import StatusClient, messages  # noqa: E402

SCENARIOS = ["worker_kill", "server_kill", "checkpoint_kill"]
DATA_FLAGS = ["--train_limit=3000", "--test_limit=500", "--data_dir=" + DATA]


class Hung(Exception):
    """The cycle's hard timeout went off (SIGALRM)."""


def on_alarm(signum, frame):
    raise Hung()


def check(condition, message):
    if not condition:
        raise Failed(message)


def wait_status(status, procs, predicate, what, poll=0.01):
    """Polls the server's Status until predicate(response); the processes must stay alive."""
    while True:
        for p in procs:
            if not p.alive():
                raise Failed("%s exited with %s before %s; log end:\n%s" %
                             (os.path.basename(p.log_path)[:-4], p.popen.returncode, what,
                              p.text()[-1500:]))
        st = status.get(timeout=1.0)
        if st is not None and predicate(st):
            return st
        time.sleep(poll)


def exit_code(proc):
    """Waits for the process to exit (the cycle's alarm bounds the wait)."""
    return proc.popen.wait()


def wait_finished(procs):
    for p in procs:
        code = exit_code(p)
        lines = p.text().strip().splitlines() or [""]
        check(code == 0, "%s exited with %d: %s\nlog end:\n%s" %
              (os.path.basename(p.log_path)[:-4], code, lines[-1], "\n".join(lines[-15:])))


# ---------------------------------------------------------------------------------------------
# Scenarios. Each fills rec (a dict) with what it measured and raises Failed when a check fails.

def worker_kill(run, rng, args, rec):
    # Long enough after the kill for the replacement to join: it waits for the old lease and
    # backs off meanwhile, up to about 3 s (else it finds training over and exits 1, CANCELLED).
    k, rounds, lease_ms, deadline_ms = 3, 500, 1000, 500
    server = run.server([
        "--mode=sync", "--num_workers=%d" % k, "--local_steps=8", "--rounds=%d" % rounds,
        "--model=mlp", "--hidden_units=64", "--learning_rate=0.2", "--eval_every=0",
        "--lease=%dms" % lease_ms, "--round_deadline=%dms" % deadline_ms, "--min_quorum=2",
        "--exit_when_done", "--summary_json=" + run.path("server.json")])
    status = StatusClient(run.address())
    try:
        workers = {r: run.worker(r, DATA_FLAGS, "w%d" % r) for r in range(k)}
        target = rng.randint(rounds * 15 // 100, rounds * 35 // 100)
        # Mid-round: rounds follow each other without a pause, so at any version the next round
        # is open; the victim is a member that has pushed already.
        st = wait_status(status, [server] + list(workers.values()),
                         lambda s: s.version >= target and
                         sum(1 for m in s.members if m.updates_accepted > 0) == k,
                         "version %d" % target)
        victim = rng.choice(sorted(m.rank for m in st.members))
        workers[victim].kill9()
        killed = time.time()
        rec["killed_at_version"] = st.version
        rec["killed_rank"] = victim
        time.sleep(rng.uniform(0.0, 0.5))
        workers[victim] = run.worker(victim, DATA_FLAGS, "w%d-replacement" % victim)
        name = "w%d-replacement" % victim
        wait_status(status, [server] + list(workers.values()),
                    lambda s: any(m.name == name for m in s.members), name + " to join")
        rec["replacement_joined_s"] = round(time.time() - killed, 2)
    finally:
        # Closed before the end: an open client connection, even idle, holds the server's
        # shutdown up by seconds.
        status.close()
    wait_finished(list(workers.values()) + [server])
    s = summary(run.path("server.json"))
    rec["longest_round_ms"] = s["max_round_wait_ms"]
    rec["round_bound_ms"] = lease_ms + deadline_ms
    rec["final_version"] = s["version"]
    rec["rounds_closed_by_deadline"] = s["rounds_closed_by_deadline"]
    rec["leases_expired"] = server.text().count("event=lease_expired")
    rec["summary"] = ("killed rank %d at version %d, replacement joined %.1f s later, longest "
                      "round %d ms, final version %d" %
                      (victim, rec["killed_at_version"], rec["replacement_joined_s"],
                       rec["longest_round_ms"], rec["final_version"]))


def restart_cycle(run, rng, flags, workers_flags, k, kill_moment, rec):
    """Common part of server_kill and checkpoint_kill: a server and k workers; kill_moment(server,
    status, procs) returns the last Status before the moment to kill; kill -9, restart on the same
    port and folder; the run must finish. Fills rec with versions and checkpoints."""
    ckpt = run.path("ckpt")
    first = run.server(flags)
    status = StatusClient(run.address())
    try:
        workers = [run.worker(r, workers_flags, "w%d" % r) for r in range(k)]
        st = kill_moment(first, status, workers)
        first.kill9()
    finally:
        status.close()
    rec["during_write"] = bool(checkpoint_temporaries(ckpt))
    files = checkpoint_files(ckpt)
    written = checkpoints_written(first.text())
    rec["last_version"] = st.version
    rec["checkpoints_written"] = written
    rec["checkpoint_files"] = files
    rec["longest_round_ms"] = st.max_round_wait_ms
    time.sleep(rng.uniform(0.1, 0.8))
    second = run.server(flags)
    log = second.text()
    resumed = listening_version(log)
    rec["resumed_from"] = resumed
    rec["versions_lost"] = st.version - resumed
    check("event=checkpoint_corrupt" not in log,
          "the restarted server found a corrupt checkpoint:\n" + log[-1500:])
    if files:
        check(resumed_version(log) == files[-1] and resumed == files[-1],
              "newest checkpoint file is version %d, the server resumed from %s:\n%s" %
              (files[-1], resumed_version(log), log[-1500:]))
    check(not written or resumed >= written[-1],
          "resumed from %s, older than the last checkpoint logged as written (%d)" %
          (resumed, written[-1]))
    wait_finished(workers + [second])
    s = summary(run.path("server.json"))
    rec["final_version"] = s["version"]
    rec["longest_round_ms"] = max(rec["longest_round_ms"], s["max_round_wait_ms"])
    rec["rejoins"] = [summary(run.path("w%d.json" % r))["rejoins"] for r in range(k)]
    check(s["version"] > resumed, "the version did not move on after the restart: %s" % s)
    # Versions between checkpoints, from each server's start (version 1, or the one it resumed
    # from): what the interval was in effect.
    gaps = []
    for seq in ([1] + written, [resumed] + checkpoints_written(second.text())):
        gaps += [b - a for a, b in zip(seq, seq[1:])]
    rec["largest_checkpoint_gap"] = max(gaps) if gaps else None
    return ckpt


def server_kill(run, rng, args, rec):
    k, rounds, every = 2, 300, args.checkpoint_every_versions
    rec["checkpoint_interval"] = every
    flags = ["--mode=sync", "--num_workers=%d" % k, "--local_steps=8", "--rounds=%d" % rounds,
             "--model=mlp", "--hidden_units=64", "--learning_rate=0.2", "--eval_every=0",
             "--lease=2s", "--checkpoint_dir=" + run.path("ckpt"),
             "--checkpoint_every_versions=%d" % every, "--checkpoint_every=0",
             "--exit_when_done", "--summary_json=" + run.path("server.json")]
    target = rng.randint(max(2 * every, rounds * 3 // 10), rounds * 7 // 10)

    def moment(server, status, workers):
        return wait_status(status, [server] + workers, lambda s: s.version >= target,
                           "version %d" % target)

    restart_cycle(run, rng, flags, DATA_FLAGS + ["--retry_budget=30s"], k, moment, rec)
    rec["summary"] = ("killed at version %d (checkpoints written %s), resumed from %d: lost %d; "
                      "final version %d, rejoins %s" %
                      (rec["last_version"], short(rec["checkpoints_written"]),
                       rec["resumed_from"], rec["versions_lost"], rec["final_version"],
                       rec["rejoins"]))


def checkpoint_kill(run, rng, args, rec):
    rec["checkpoint_interval"] = 1
    ckpt = run.path("ckpt")
    rounds = 150
    flags = ["--mode=async", "--num_workers=1", "--local_steps=1", "--rounds=%d" % rounds,
             "--model=mlp", "--hidden_units=2048", "--learning_rate=0.05", "--eval_every=0",
             "--lease=2s", "--checkpoint_dir=" + ckpt, "--checkpoint_every_versions=1",
             "--checkpoint_every=0", "--shutdown_grace=5s", "--exit_when_done",
             "--summary_json=" + run.path("server.json")]
    after = rng.randint(1, 2)  # complete checkpoints before the one the kill hits
    # A write (6.4 MB, fsync, rename) takes about 10-15 ms here: kill 0-8 ms after its temporary
    # file appeared.
    delay = rng.uniform(0.0, 0.008)

    def moment(server, status, workers):
        wait_status(status, [server] + workers,
                    lambda s: len(checkpoints_written(server.text())) >= after,
                    "%d checkpoints" % after, poll=0.02)
        # Status waits while a checkpoint is written (it reads the checkpoint state under the
        # lock the write holds), so the write is watched through the folder alone, and the
        # version in the temporary file's name (the server has reached it) counts as the last
        # version reported if it is newer than the last Status.
        st = status.get(timeout=1.0)
        while True:
            temporaries = checkpoint_temporaries(ckpt)
            if temporaries:
                break
            if not server.alive() or not workers[0].alive():
                raise Failed("training ended before a checkpoint was being written")
            time.sleep(0.0002)
        time.sleep(delay)
        writing = max(int(re.match(r"\.ckpt-(\d+)\.tmp$", os.path.basename(t)).group(1))
                      for t in temporaries)
        if st is None or writing > st.version:
            st = messages().StatusResponse(version=writing)
        return st

    restart_cycle(run, rng, flags, DATA_FLAGS + ["--retry_budget=30s"], 1, moment, rec)
    rec["longest_round_ms"] = None  # async: no rounds
    # Async: the versions lost are not trained again, so the run ends short by about as many
    # (a cross-check of the measured loss, which can miss the versions of the last few ms).
    rec["final_version_short_by"] = rounds + 1 - rec["final_version"]
    rec["summary"] = ("killed %.1f ms into a write (%s), at version %d; newest file %s, resumed "
                      "from %d: lost %d; final version %d" %
                      (delay * 1000, "temporary file left" if rec["during_write"]
                       else "write had finished", rec["last_version"],
                       rec["checkpoint_files"][-1] if rec["checkpoint_files"] else None,
                       rec["resumed_from"], rec["versions_lost"], rec["final_version"]))


def short(versions):
    return "[%s]" % ", ".join(str(v) for v in versions[-4:]) if len(versions) <= 4 else \
        "[..., %s]" % ", ".join(str(v) for v in versions[-3:])


# ---------------------------------------------------------------------------------------------

def run_cycle(build, scenario, cycle, args):
    rng = random.Random("%d-%s-%d" % (args.seed, scenario, cycle))
    rec = {"scenario": scenario, "cycle": cycle, "outcome": None, "message": None,
           "longest_round_ms": None, "versions_lost": None, "checkpoint_interval": None}
    run = Run(build, "ps_chaos_%s_" % scenario)
    rec["work_dir"] = run.work
    started = time.time()
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    try:
        globals()[scenario](run, rng, args, rec)
        rec["outcome"] = "finished"
    except Hung:
        rec["outcome"] = "hung"
        alive = [os.path.basename(p.log_path)[:-4] for p in run.procs if p.alive()]
        rec["message"] = "still running after %d s: %s" % (args.timeout, ", ".join(alive))
    except Failed as e:
        rec["outcome"] = "failed"
        rec["message"] = e.message
    except Exception:  # a bug here, not in the server: recorded, and the campaign goes on
        rec["outcome"] = "failed"
        rec["message"] = "chaos.py error: " + traceback.format_exc().strip().splitlines()[-1]
        traceback.print_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        rec["seconds"] = round(time.time() - started, 2)
        # One checkpoint interval as the server kept it: the flag's, or the largest gap between
        # the checkpoints it wrote in this run if that was larger (a write does not stop
        # training, so the versions published during one are in the next gap).
        interval = rec["checkpoint_interval"]
        if interval is not None and rec.get("largest_checkpoint_gap"):
            interval = max(interval, rec["largest_checkpoint_gap"])
        rec["interval_in_effect"] = interval
        over = (rec["versions_lost"] is not None and interval is not None and
                rec["versions_lost"] > interval)
        rec["lost_over_interval"] = over
        run.stop()
        # Runs that only lost too much are not kept: the JSON has their versions and
        # checkpoints, and 20 folders of 6.4 MB checkpoints add up.
        if args.keep or rec["outcome"] != "finished":
            rec["work_dir"] = run.work
        else:
            shutil.rmtree(run.work, ignore_errors=True)
            rec["work_dir"] = None
    return rec


def progress(rec, cycles):
    head = "[%s %d/%d] %s in %.1f s" % (rec["scenario"], rec["cycle"] + 1, cycles,
                                        rec["outcome"], rec["seconds"])
    if rec["outcome"] == "finished":
        line = head + ": " + rec.get("summary", "")
        if rec["lost_over_interval"]:
            line += "  (more than the interval of %d)" % rec["interval_in_effect"]
    else:
        line = head + ": " + (rec["message"] or "").splitlines()[0][:300]
    if rec["work_dir"]:
        line += "  [kept %s]" % rec["work_dir"]
    print(line, flush=True)


def row(scenario, recs):
    finished = sum(1 for r in recs if r["outcome"] == "finished")
    hung = sum(1 for r in recs if r["outcome"] == "hung")
    failed = sum(1 for r in recs if r["outcome"] == "failed")
    over = sum(1 for r in recs if r["lost_over_interval"])
    rounds = [r["longest_round_ms"] for r in recs if r["longest_round_ms"] is not None]
    lost = [r["versions_lost"] for r in recs if r["versions_lost"] is not None]
    intervals = sorted({r["checkpoint_interval"] for r in recs
                        if r["checkpoint_interval"] is not None})
    gaps = [r.get("largest_checkpoint_gap") for r in recs if r.get("largest_checkpoint_gap")]
    problems = []
    if failed:
        problems.append("%d failed" % failed)
    if hung:
        problems.append("%d hung" % hung)
    if over:
        problems.append("%d lost > interval" % over)
    return {"scenario": scenario, "runs": len(recs), "finished": finished, "hung": hung,
            "notes": notes(scenario, [r for r in recs if r["outcome"] == "finished"]),
            "failed": failed, "longest_round_ms": max(rounds) if rounds else None,
            "max_versions_lost": max(lost) if lost else None,
            "checkpoint_interval": intervals[0] if len(intervals) == 1 else (intervals or None),
            "largest_checkpoint_gap": max(gaps) if gaps else None,
            "runs_over_interval": over,
            "verdict": "PASS" if not problems else "FAIL (%s)" % ", ".join(problems)}


def span(values, unit=""):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return ("%s%s" % (lo, unit)) if lo == hi else ("%s-%s%s" % (lo, hi, unit))


def notes(scenario, recs):
    """What else the finished runs measured, one line."""
    if not recs:
        return ""
    if scenario == "worker_kill":
        return ("replacement joined %s after the kill; longest round %s (lease + deadline = %d "
                "ms); final version %s" %
                (span([r["replacement_joined_s"] for r in recs], " s"),
                 span([r["longest_round_ms"] for r in recs], " ms"), recs[0]["round_bound_ms"],
                 span([r["final_version"] for r in recs])))
    line = ("versions lost %s; largest gap between the checkpoints written %s versions" %
            (span([r["versions_lost"] for r in recs]),
             span([r["largest_checkpoint_gap"] for r in recs])))
    if scenario == "server_kill":
        return line + "; final version %s; workers rejoined %s times" % (
            span([r["final_version"] for r in recs]),
            span([x for r in recs for x in r["rejoins"]]))
    return line + ("; %d of %d kills left a temporary file (mid-write); async runs ended %s "
                   "versions short" % (sum(1 for r in recs if r["during_write"]), len(recs),
                                       span([r["final_version_short_by"] for r in recs])))


COLUMNS = [("scenario", "scenario"), ("runs", "runs"), ("finished", "finished"), ("hung", "hung"),
           ("longest round (ms)", "longest_round_ms"), ("max versions lost", "max_versions_lost"),
           ("checkpoint interval (flag)", "checkpoint_interval"),
           ("largest gap between checkpoints", "largest_checkpoint_gap"), ("verdict", "verdict")]


def table(rows):
    cells = [[h for h, _ in COLUMNS]] + \
        [["-" if r[key] is None else str(r[key]) for _, key in COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = []
    for n, c in enumerate(cells):
        lines.append("| " + " | ".join(x.ljust(w) for x, w in zip(c, widths)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build", help="build folder with server/ps-server and worker/ps-worker")
    parser.add_argument("--cycles", type=int, default=20, help="runs per scenario (20)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated subset of %s" % ",".join(SCENARIOS))
    parser.add_argument("--checkpoint_every_versions", type=int, default=20,
                        help="server_kill: the server's checkpoint interval in versions (20)")
    parser.add_argument("--timeout", type=float, default=60,
                        help="hard limit of one cycle in seconds; past it the run counts as hung")
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill moments")
    parser.add_argument("--json", default=None, help="where to write the table and the runs as "
                        "JSON (default BUILD/chaos.json)")
    parser.add_argument("--keep", action="store_true",
                        help="keep every run's folder (runs that fail or hang always are)")
    args = parser.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error("unknown scenario %s" % s)
    if args.cycles < 1:
        parser.error("--cycles must be at least 1")
    build = os.path.abspath(args.build)
    for b in ("server/ps-server", "worker/ps-worker"):
        if not os.access(os.path.join(build, b), os.X_OK):
            sys.exit("chaos: %s not found in %s (make build)" % (b, build))
    if not have_data():
        sys.exit("chaos: %s is missing (Debian package dataset-fashion-mnist)" % DATA)
    json_path = args.json or os.path.join(build, "chaos.json")
    signal.signal(signal.SIGALRM, on_alarm)

    started = time.time()
    print("chaos: %d cycles of %s, timeout %d s per cycle" %
          (args.cycles, ", ".join(scenarios), args.timeout), flush=True)
    runs = []
    for scenario in scenarios:
        for cycle in range(args.cycles):
            rec = run_cycle(build, scenario, cycle, args)
            runs.append(rec)
            progress(rec, args.cycles)
    seconds = time.time() - started
    rows = [row(s, [r for r in runs if r["scenario"] == s]) for s in scenarios]

    print()
    print(table(rows))
    print("\n%d runs in %.0f s (%s, %d cores)" % (len(runs), seconds, platform.node(),
                                                  os.cpu_count()))
    for r in rows:
        if r["notes"]:
            print("%s: %s" % (r["scenario"], r["notes"]))
    bad = [r for r in runs if r["outcome"] != "finished"]
    for r in bad:
        print("%s cycle %d %s: %s" % (r["scenario"], r["cycle"] + 1, r["outcome"],
                                      (r["message"] or "").splitlines()[0][:500]))

    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump({"command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                       timespec="seconds"),
                   "host": platform.node(), "cores": os.cpu_count(), "cycles": args.cycles,
                   "timeout_s": args.timeout, "seed": args.seed, "seconds": round(seconds, 1),
                   "table": rows, "runs": runs}, f, indent=1)
    print("wrote", json_path)
    sys.exit(0 if all(r["verdict"] == "PASS" for r in rows) else 1)


if __name__ == "__main__":
    main()
