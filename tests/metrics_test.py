#!/usr/bin/python3
"""The metrics endpoint of a real ps-server process: its output passes `promtool check metrics`
(Debian's prometheus package), and the counters move as training runs.

Usage: metrics_test.py BUILD_DIR
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

BUILD = os.path.abspath(sys.argv[1])
DATA = "/usr/share/datasets/fashion-mnist"

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness.procs import fail  # noqa: E402


def wait_for_file(path, what, proc):
    deadline = time.time() + 30
    while not (os.path.exists(path) and os.path.getsize(path) > 0):
        if proc.poll() is not None or time.time() > deadline:
            fail("%s never appeared" % what)
        time.sleep(0.05)
    with open(path) as f:
        return int(f.read())


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        if "text/plain" not in r.headers["Content-Type"]:
            fail("content type " + r.headers["Content-Type"])
        return r.read().decode()


def value(text, name, labels=""):
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    if not m:
        fail("no sample %s%s in:\n%s" % (name, labels, text))
    return float(m.group(1))


def promtool(text):
    if not shutil.which("promtool"):
        fail("promtool not found (Debian package prometheus; deploy/install-deps.sh installs it)")
    p = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                       capture_output=True)
    if p.returncode != 0:
        fail("promtool check metrics failed:\n%s%s\n%s" %
             (p.stdout.decode(), p.stderr.decode(), text))


def main():
    if not os.path.exists(os.path.join(DATA, "train-images-idx3-ubyte.gz")):
        print("SKIP: dataset-fashion-mnist not installed")
        return
    work = tempfile.mkdtemp(prefix="ps_metrics_")
    procs = []
    try:
        log = open(os.path.join(work, "server.log"), "w")
        server = subprocess.Popen(
            [os.path.join(BUILD, "server", "ps-server"), "--listen=127.0.0.1:0",
             "--port_file=" + os.path.join(work, "port"), "--metrics_listen=127.0.0.1:0",
             "--metrics_port_file=" + os.path.join(work, "metrics_port"), "--mode=sync",
             "--num_workers=2", "--local_steps=8", "--epochs=2", "--eval_every=20",
             "--update_encoding=qsgd", "--bits=4", "--pull_encoding=qsgd",
             "--checkpoint_dir=" + os.path.join(work, "ckpt"), "--checkpoint_every_versions=20"],
            stdout=log, stderr=subprocess.STDOUT)
        procs.append(server)
        port = wait_for_file(os.path.join(work, "port"), "port file", server)
        metrics_port = wait_for_file(os.path.join(work, "metrics_port"), "metrics port", server)
        before = scrape(metrics_port)
        promtool(before)
        if value(before, "ps_rounds_total") != 0:
            fail("rounds before training")
        workers = [subprocess.Popen(
            [os.path.join(BUILD, "worker", "ps-worker"), "--servers=127.0.0.1:%d" % port,
             "--train_limit=10000", "--test_limit=1000", "--data_dir=" + DATA, "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        procs += workers
        # While training: members are listed with their last-seen age.
        deadline = time.time() + 60
        during = scrape(metrics_port)
        while value(during, "ps_members") < 2 and time.time() < deadline:
            time.sleep(0.05)
            during = scrape(metrics_port)
        promtool(during)
        if 'ps_member_last_seen_seconds{worker_id="' not in during:
            fail("no member ages while training:\n" + during)
        for w in workers:
            if w.wait(timeout=120) != 0:
                fail("a worker failed")
        after = scrape(metrics_port)
        promtool(after)
        checks = [
            ("ps_rounds_total", ""),
            ("ps_updates_applied_total", ""),
            ("ps_bytes_total", '{direction="in",kind="wire"}'),
            ("ps_bytes_total", '{direction="out",kind="raw"}'),
            ("ps_round_wait_seconds_count", ""),
            ("ps_pull_wait_seconds_count", ""),
            ("ps_update_staleness_rounds_count", ""),
            ("ps_sync_rounds_total", '{closed_by="complete"}'),
        ]
        for name, labels in checks:
            if not value(after, name, labels) > value(before, name, labels):
                fail("%s%s did not move" % (name, labels))
        up = value(after, "ps_compression_ratio", '{direction="in"}')
        if up < 4:
            fail("4-bit updates should compress the uplink > 4x, got %.2f" % up)
        deadline = time.time() + 10  # checkpoints are written by the housekeeping thread
        while value(after, "ps_checkpoint_version") < 20 and time.time() < deadline:
            time.sleep(0.1)
            after = scrape(metrics_port)
        if value(after, "ps_checkpoint_version") < 20:
            fail("no checkpoint reported")
        if not value(after, "ps_checkpoint_age_seconds") >= 0:
            fail("no checkpoint age")
        print("metrics: %d rounds, %d updates, uplink %.1fx, downlink %.1fx, promtool OK on 3 "
              "scrapes" % (value(after, "ps_rounds_total"), value(after, "ps_updates_applied_total"),
                           up, value(after, "ps_compression_ratio", '{direction="out"}')))
        server.send_signal(signal.SIGTERM)
        if server.wait(timeout=30) != 0:
            fail("server did not exit 0 after SIGTERM")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
