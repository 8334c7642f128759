#!/usr/bin/python3
"""Faults with the real binaries as processes on loopback: kill -9 of workers and of the server,
kill -9 while a checkpoint is being written, a corrupt checkpoint, SIGTERM of server and worker.

Usage: fault_test.py BUILD_DIR {worker_kill|server_kill|checkpoint_kill}
Prints the numbers it measured (for the issue notes) and exits non-zero on the first failure.
"""
import glob
import os
import random
import signal
import sys
import time

BUILD = os.path.abspath(sys.argv[1])
SCENARIO = sys.argv[2]
random.seed(20261122)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness.loopback import (DATA, Run, checkpoint_files, checkpoint_temporaries,  # noqa: E402
                              checkpoints_written, have_data, resumed_version, summary)
from harness.procs import fail  # noqa: E402


def worker_kill(run):
    """kill -9 of one worker in the middle of sync rounds, three times, each followed by a
    replacement with the same rank. Rounds close through the deadline and the lease."""
    lease_ms, deadline_ms = 2000, 1000
    server = run.server([
        "--mode=sync", "--num_workers=3", "--local_steps=8", "--epochs=30", "--eval_every=0",
        "--model=mlp", "--hidden_units=128",
        "--learning_rate=0.2", "--lease=%dms" % lease_ms, "--round_deadline=%dms" % deadline_ms,
        "--min_quorum=2", "--exit_when_done", "--summary_json=" + run.path("server.json")])
    data = ["--train_limit=20000", "--test_limit=2000", "--data_dir=" + DATA]
    workers = {rank: run.worker(rank, data, "w%d" % rank) for rank in range(3)}
    killed = []
    for i in range(3):
        time.sleep(random.uniform(1.0, 2.0))
        # A worker that is a member (a fresh replacement may still be waiting for its rank).
        members = [r for r, w in workers.items() if "joined as worker id" in w.text()]
        if not members:
            fail("no worker has joined")
        rank = random.choice(members)
        if not workers[rank].alive():
            fail("worker %d ended before it could be killed: training too short" % rank)
        workers[rank].kill9()
        killed.append(rank)
        time.sleep(random.uniform(0.0, 1.0))
        workers[rank] = run.worker(rank, data, "w%d-replacement%d" % (rank, i))
    for rank, w in workers.items():
        if w.wait(240, "worker %d" % rank) != 0:
            fail("worker %d failed:\n%s" % (rank, w.text()[-3000:]))
    if server.wait(60, "server") != 0:
        fail("server failed:\n" + server.text()[-3000:])
    s = summary(run.path("server.json"))
    bound = lease_ms + deadline_ms + 500  # housekeeping looks at deadlines every deadline / 4
    accuracies = [summary(run.path(os.path.basename(w.log_path)[:-4] + ".json"))["test_accuracy"]
                  for w in workers.values()]
    print("worker_kill: killed ranks %s; rounds %d (complete %d, by deadline %d); "
          "max round wait %d ms (bound lease + deadline = %d ms); late dropped %d; "
          "final test accuracy %s" %
          (killed, s["rounds"], s["rounds_closed_complete"], s["rounds_closed_by_deadline"],
           s["max_round_wait_ms"], lease_ms + deadline_ms, s["updates_late_dropped"],
           ", ".join("%.4f" % a for a in accuracies)))
    if s["max_round_wait_ms"] > bound:
        fail("a round waited %d ms, more than lease + deadline" % s["max_round_wait_ms"])
    if min(accuracies) < 0.80:
        fail("accuracy %.4f below 0.80" % min(accuracies))
    if server.text().count("event=lease_expired") < 3:
        fail("the killed workers' leases did not expire:\n" + server.text()[-3000:])


def server_kill(run):
    """kill -9 of the server in the middle of training, then a restart with the same flags: the
    workers re-join on their own and the version continues from the checkpoint."""
    ckpt = run.path("ckpt")
    flags = ["--mode=sync", "--num_workers=2", "--local_steps=8", "--epochs=20",
             "--model=mlp", "--hidden_units=128", "--eval_every=0", "--learning_rate=0.2",
             "--checkpoint_dir=" + ckpt,
             "--checkpoint_every_versions=25", "--checkpoint_every=1s", "--exit_when_done",
             "--summary_json=" + run.path("server.json")]
    first = run.server(flags)
    data = ["--train_limit=20000", "--test_limit=2000", "--data_dir=" + DATA,
            "--retry_budget=60s"]
    workers = [run.worker(rank, data, "w%d" % rank) for rank in range(2)]
    # Kill at a random moment after a quarter of the 782 rounds (a checkpoint at version >= 200).
    deadline = time.time() + 60
    while not any(v >= 200 for v in checkpoints_written(first.text())):
        if time.time() > deadline:
            fail("training did not reach version 200:\n" + first.text()[-2000:])
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.5))
    if any(not w.alive() for w in workers):
        fail("training ended before the server could be killed")
    first.kill9()
    written = checkpoints_written(first.text())
    if not written:
        fail("no checkpoint was written before the kill:\n" + first.text()[-2000:])
    down = time.time()
    time.sleep(1.0)
    second = run.server(flags)
    restart_s = time.time() - down
    resumed = resumed_version(second.text())
    if resumed is None or resumed < written[-1]:
        fail("expected a resume from version >= %d:\n%s" % (written[-1], second.text()))
    for rank, w in enumerate(workers):
        if w.wait(240, "worker %d" % rank) != 0:
            fail("worker %d failed:\n%s" % (rank, w.text()[-3000:]))
    if second.wait(60, "restarted server") != 0:
        fail("restarted server failed:\n" + second.text()[-3000:])
    s = summary(run.path("server.json"))
    ws = [summary(run.path("w%d.json" % rank)) for rank in range(2)]
    print("server_kill: killed at checkpoint version %d (last written), resumed from %d, "
          "server down %.1f s, final version %d, worker rejoins %s, final test accuracy %s" %
          (written[-1], resumed, restart_s, s["version"], [w["rejoins"] for w in ws],
           ", ".join("%.4f" % w["test_accuracy"] for w in ws)))
    if s["resumed_from_version"] != resumed or s["version"] <= resumed:
        fail("the version did not continue from the checkpoint: %s" % s)
    if any(w["rejoins"] < 1 for w in ws):
        fail("a worker did not re-join: %s" % ws)
    if min(w["test_accuracy"] for w in ws) < 0.80:
        fail("accuracy below 0.80: %s" % ws)


def checkpoint_kill(run):
    """kill -9 of the server 20 times while it checkpoints every version of a 6.4 MB model (half
    of the kills as soon as a temporary checkpoint file appears): every restart resumes from the
    newest checkpoint file there was. Then a corrupt newest checkpoint is skipped for the older
    one, and SIGTERM stops server and worker cleanly."""
    ckpt = run.path("ckpt")
    flags = ["--mode=async", "--num_workers=1", "--local_steps=1", "--rounds=1000000",
             "--model=mlp", "--hidden_units=2048", "--learning_rate=0.05", "--eval_every=0",
             "--lease=10s", "--checkpoint_dir=" + ckpt, "--checkpoint_every_versions=1",
             "--shutdown_grace=5s"]
    server = run.server(flags)
    worker = run.worker(0, ["--train_limit=3000", "--test_limit=500", "--data_dir=" + DATA,
                            "--retry_budget=60s"], "w0")
    last_resumed = 0
    during_write = 0
    restarts = []
    for i in range(20):
        if i % 2 == 0:
            # As soon as a temporary file exists, plus up to 3 ms.
            deadline = time.time() + 20
            while not checkpoint_temporaries(ckpt):
                if time.time() > deadline:
                    fail("no checkpoint was being written within 20 s:\n" + server.text()[-2000:])
            time.sleep(random.uniform(0.0, 0.003))
        else:
            time.sleep(random.uniform(0.05, 0.6))
        server.kill9()
        if checkpoint_temporaries(ckpt):
            during_write += 1
        versions = checkpoint_files(ckpt)
        newest = versions[-1] if versions else None
        start = time.time()
        server = run.server(flags)
        restarts.append(time.time() - start)
        resumed = resumed_version(server.text())
        if resumed != newest:
            fail("kill %d: newest checkpoint file was version %s, the server resumed from %s:\n%s"
                 % (i, newest, resumed, server.text()))
        if resumed is not None and resumed < last_resumed:
            fail("kill %d: resumed from %d after %d before" % (i, resumed, last_resumed))
        last_resumed = resumed or 0
        if "event=checkpoint_corrupt" in server.text():
            fail("kill %d left a corrupt checkpoint under its final name:\n%s" % (i, server.text()))
        # Let the worker reconnect and training advance before the next kill.
        deadline = time.time() + 30
        while len(checkpoints_written(server.text())) < 2:
            if time.time() > deadline:
                fail("kill %d: training did not resume:\n%s\n%s" %
                     (i, server.text()[-2000:], worker.text()[-2000:]))
            time.sleep(0.02)

    # Flipped bytes in the newest checkpoint: detected, skipped, the older one is used.
    server.kill9()
    # The server keeps two (ServerOptions::checkpoint_keep), but a SIGKILL between a new
    # checkpoint's rename and the pruning of the oldest (WriteCheckpoint in
    # server/checkpoint.cc) leaves a third; the next write prunes it.
    names = sorted(glob.glob(os.path.join(ckpt, "ckpt-*.ckpt")))
    if len(names) not in (2, 3):
        fail("expected the last two checkpoints (three after a kill before pruning), found %s"
             % names)
    names = names[-2:]
    with open(names[-1], "r+b") as f:
        f.seek(os.path.getsize(names[-1]) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    older = int(os.path.basename(names[0])[5:25])
    server = run.server(flags)
    if "event=checkpoint_corrupt" not in server.text() or \
            resumed_version(server.text()) != older:
        fail("the corrupt checkpoint was not skipped for version %d:\n%s" % (older, server.text()))

    # SIGTERM: the worker finishes its push and leaves; the server checkpoints and exits 0.
    time.sleep(1.0)
    worker.popen.send_signal(signal.SIGTERM)
    if worker.wait(60, "worker after SIGTERM") != 0:
        fail("worker did not exit 0 after SIGTERM:\n" + worker.text()[-2000:])
    if not summary(run.path("w0.json"))["stopped_early"]:
        fail("worker summary does not say it stopped early")
    stopped = time.time()
    server.popen.send_signal(signal.SIGTERM)
    if server.wait(30, "server after SIGTERM") != 0:
        fail("server did not exit 0 after SIGTERM:\n" + server.text()[-2000:])
    stop_s = time.time() - stopped
    if "event=leave" not in server.text():
        fail("the worker did not leave:\n" + server.text()[-2000:])
    print("checkpoint_kill: 20 kills, %d with a checkpoint being written (temporary file on disk),"
          " every restart resumed from the newest checkpoint file (last version %d); restart to "
          "listening %.2f-%.2f s; corrupt newest checkpoint skipped for version %d; SIGTERM exit "
          "in %.2f s" % (during_write, last_resumed, min(restarts), max(restarts), older, stop_s))


def main():
    if not have_data():
        print("SKIP: dataset-fashion-mnist not installed")
        return
    run = Run(BUILD, "ps_fault_")
    try:
        {"worker_kill": worker_kill, "server_kill": server_kill,
         "checkpoint_kill": checkpoint_kill}[SCENARIO](run)
    finally:
        run.close()


if __name__ == "__main__":
    main()
