"""Child processes with their output in log files, for end-to-end tests and benchmarks."""
import os
import signal
import socket
import subprocess
import sys
import time


def binaries(build_dir):
    """The two binaries of a build folder, by the names containers and manifests run them as."""
    return {"ps-server": os.path.join(build_dir, "server", "ps-server"),
            "ps-worker": os.path.join(build_dir, "worker", "ps-worker")}


class Failed(SystemExit):
    """What fail() raises: exit status 1 where nobody catches it (a test), the message for a
    caller that goes on (bench/chaos.py records a failed run and starts the next)."""

    def __init__(self, message):
        super().__init__(1)
        self.message = message


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    raise Failed(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process whose stdout and stderr go to a log file."""

    def __init__(self, argv, log_path, env=None):
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def text(self):
        with open(self.log_path) as f:
            return f.read()

    def alive(self):
        return self.popen.poll() is None

    def signal(self, sig):
        if self.alive():
            self.popen.send_signal(sig)

    def kill9(self):
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def wait(self, timeout, what):
        """The exit code; fails the test (with the log's end) if it takes longer than timeout."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            fail("%s did not finish within %ds; log %s:\n%s" %
                 (what, timeout, self.log_path, self.text()[-3000:]))

    def stop(self):
        if self.alive():
            self.popen.kill()
        self.popen.wait()


def wait_until(predicate, timeout, what, poll=0.05):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            fail("timed out after %ds waiting for %s" % (timeout, what))
        time.sleep(poll)


def read_port_file(path, proc, timeout=30):
    """The port a process wrote to `path` (--port_file), once it is there."""
    def ready():
        if not proc.alive():
            fail("%s exited with %s before writing %s:\n%s" %
                 (proc.argv[0], proc.popen.returncode, path, proc.text()[-3000:]))
        return os.path.exists(path) and os.path.getsize(path) > 0
    wait_until(ready, timeout, path)
    with open(path) as f:
        return int(f.read())
