"""One training run of the real binaries as processes on 127.0.0.1: a server on a free port
(started again on the same port after a kill) and workers, each with a log in the run's temporary
folder; and what the server's log and checkpoint folder say (versions written and resumed from).
Used by tests/fault_test.py and bench/chaos.py."""
import glob
import json
import os
import re
import shutil
import tempfile
import time

from harness.procs import Proc, binaries, fail, free_port

DATA = "/usr/share/datasets/fashion-mnist"


def have_data():
    return os.path.exists(os.path.join(DATA, "train-images-idx3-ubyte.gz"))


class Run:
    def __init__(self, build_dir, prefix="ps_run_"):
        bins = binaries(os.path.abspath(build_dir))
        self.server_binary = bins["ps-server"]
        self.worker_binary = bins["ps-worker"]
        self.work = tempfile.mkdtemp(prefix=prefix)
        self.port = free_port()
        self.procs = []
        self.count = 0

    def address(self):
        return "127.0.0.1:%d" % self.port

    def server(self, flags):
        """A server on the run's port, once it logs event=listening (it has loaded its model or
        checkpoint). The logs are server-1.log, server-2.log, ... in the order of starts."""
        self.count += 1
        p = Proc([self.server_binary, "--listen=" + self.address()] + flags,
                 os.path.join(self.work, "server-%d.log" % self.count))
        self.procs.append(p)
        deadline = time.time() + 30
        while "event=listening" not in p.text():
            if not p.alive():
                if self.count == 1 and "cannot listen" in p.text():
                    # Another test took the free port first (ctest runs tests in parallel).
                    self.port = free_port()
                    self.count = 0
                    return self.server(flags)
                fail("server exited with %s:\n%s" % (p.popen.returncode, p.text()))
            if time.time() > deadline:
                fail("server did not start listening:\n" + p.text())
            time.sleep(0.02)
        return p

    def worker(self, rank, flags, name):
        p = Proc([self.worker_binary, "--servers=" + self.address(), "--rank=%d" % rank,
                  "--name=%s" % name, "--summary_json=%s" % self.path(name + ".json"),
                  "--progress_every=5s"] + flags,
                 self.path(name + ".log"))
        self.procs.append(p)
        return p

    def path(self, name):
        return os.path.join(self.work, name)

    def stop(self):
        for p in self.procs:
            p.stop()

    def close(self, keep=False):
        """Stops what still runs and removes the folder, unless keep or $KEEP is set."""
        self.stop()
        if keep or os.environ.get("KEEP"):
            print("kept", self.work)
            return
        shutil.rmtree(self.work, ignore_errors=True)


def summary(path):
    with open(path) as f:
        return json.load(f)


def resumed_version(log):
    """The version of the checkpoint a server log says it resumed from, or None."""
    m = re.search(r"event=resumed path=\S+ version=(\d+)", log)
    return int(m.group(1)) if m else None


def listening_version(log):
    """The version a server started serving at (1 from scratch, else its checkpoint's)."""
    m = re.search(r"event=listening .* version=(\d+)", log)
    return int(m.group(1)) if m else None


def checkpoints_written(log):
    """Versions of the checkpoints a server log says were written, in order."""
    return [int(v) for v in re.findall(r"event=checkpoint version=(\d+)", log)]


def checkpoint_files(ckpt_dir):
    """Versions of the checkpoint files under their final names, oldest first."""
    names = glob.glob(os.path.join(ckpt_dir, "ckpt-*.ckpt"))
    return sorted(int(os.path.basename(p)[5:25]) for p in names)


def checkpoint_temporaries(ckpt_dir):
    """Checkpoint files being written (.ckpt-<version>.tmp)."""
    return glob.glob(os.path.join(ckpt_dir, ".ckpt-*.tmp"))
