"""pytest fixtures: a real ps-server on a free loopback port."""
import os
import subprocess
import sys
import tempfile
import time

import pytest

# tests/harness (certificates, free ports), shared with the project's other end-to-end tests.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))


def pytest_addoption(parser):
    parser.addoption("--server", required=True, help="the ps-server binary")
    parser.addoption("--worker", default="", help="the ps-worker binary (mixed jobs)")


@pytest.fixture
def server(request):
    """start(*flags) -> "127.0.0.1:PORT" of a ps-server with those flags, stopped after the test."""
    procs = []

    def start(*flags):
        work = tempfile.mkdtemp()
        port_file = os.path.join(work, "port")
        proc = subprocess.Popen([request.config.getoption("--server"), "--listen=127.0.0.1:0",
                                 "--port_file=" + port_file] + list(flags),
                                stderr=open(os.path.join(work, "server.log"), "w"))
        procs.append(proc)
        for _ in range(300):
            if os.path.exists(port_file) and open(port_file).read().strip():
                return "127.0.0.1:" + open(port_file).read().strip()
            if proc.poll() is not None:
                raise RuntimeError(open(os.path.join(work, "server.log")).read())
            time.sleep(0.05)
        raise RuntimeError("ps-server did not start")

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=30)
