#!/usr/bin/python3
"""docker-compose.yml is accepted by `docker-compose config`, and the commands it gives are the ones
that work: this test reads them from the resolved file and runs them as local processes, with the
service names mapped to loopback ports and the checkpoint volume to a temporary folder. The servers'
health check command from the file is run too. So the file cannot drift from the binaries.

Usage: compose_test.py BUILD_DIR SOURCE_DIR
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness.containers import services_running  # noqa: E402
from harness.procs import binaries, fail, free_port  # noqa: E402

BUILD = os.path.abspath(sys.argv[1])
BINARIES = binaries(BUILD)
SOURCE = os.path.abspath(sys.argv[2])


def main():
    if not shutil.which("docker-compose"):
        fail("docker-compose not found (deploy/install-deps.sh installs it)")
    resolved = subprocess.run(["docker-compose", "-f", os.path.join(SOURCE, "docker-compose.yml"),
                               "config"], capture_output=True, text=True)
    if resolved.returncode != 0:
        fail("docker-compose config refused the file:\n" + resolved.stderr)
    services = yaml.safe_load(resolved.stdout)["services"]
    servers = services_running(services, "ps-server")
    workers = services_running(services, "ps-worker")
    if len(servers) < 1 or len(workers) < 1:
        fail("expected servers and workers, got %s" % list(services))
    if "checkpoints" not in yaml.safe_load(resolved.stdout).get("volumes", {}):
        fail("no named volume for checkpoints")
    work = tempfile.mkdtemp(prefix="ps_compose_")
    ports = {name: free_port() for name in servers}

    def local(args, own_server=None):
        out = [BINARIES[args[0]]]
        for a in args[1:]:
            for name, port in ports.items():
                a = a.replace("%s:50051" % name, "127.0.0.1:%d" % port)
            if own_server is not None:
                a = a.replace("0.0.0.0:50051", "127.0.0.1:%d" % ports[own_server])
                a = a.replace("127.0.0.1:50051", "127.0.0.1:%d" % ports[own_server])
            a = a.replace("0.0.0.0:9100", "127.0.0.1:0")
            a = a.replace("/var/lib/ps/checkpoints", os.path.join(work, "checkpoints"))
            out.append(a)
        return out

    procs = []
    try:
        for name in servers:
            service = services[name]
            if "healthcheck" not in service:
                fail("%s has no health check" % name)
            argv = local(service["command"], name) + [
                "--exit_when_done", "--summary_json=" + os.path.join(work, name + ".json")]
            log = open(os.path.join(work, name + ".log"), "w")
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        for name in servers:
            check = services[name]["healthcheck"]["test"]
            argv = local(check[1:], name)  # drop "CMD"
            deadline = time.time() + 30
            while subprocess.run(argv, capture_output=True).returncode != 0:
                if time.time() > deadline:
                    fail("health check of %s never passed: %s" % (name, argv))
                time.sleep(0.2)
        start = time.time()
        for name in workers:
            argv = local(services[name]["command"]) + [
                "--quiet", "--summary_json=" + os.path.join(work, name + ".json")]
            log = open(os.path.join(work, name + ".log"), "w")
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        for p in procs:
            if p.wait(timeout=600) != 0:
                name = (servers + workers)[procs.index(p)]
                with open(os.path.join(work, name + ".log")) as f:
                    fail("%s exited with %d:\n%s" % (name, p.returncode, f.read()[-3000:]))
        results = [json.load(open(os.path.join(work, w + ".json"))) for w in workers]
        shards = [json.load(open(os.path.join(work, s + ".json"))) for s in servers]
        accuracy = min(r["test_accuracy"] for r in results)
        print("compose: %d servers, %d workers, %.1f s, test accuracy %.4f, shard versions %s, "
              "uplink %.1fx" % (len(servers), len(workers), time.time() - start, accuracy,
                                [s["version"] for s in shards],
                                min(r["uplink_compression"] for r in results)))
        if accuracy < 0.82:
            fail("accuracy %.4f below 0.82" % accuracy)
        if len(set(s["version"] for s in shards)) != 1:
            fail("shards ended at different versions: %s" % [s["version"] for s in shards])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
