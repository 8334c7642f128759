#!/usr/bin/python3
"""The containers for real: builds the images from deploy/Dockerfile and deploy/prometheus/Dockerfile
with podman, and runs the project's own docker-compose.yml with Debian's docker-compose against
podman's Docker API (tests/harness/containers.py). Two runs:

1. The file as it is: the servers become healthy, every worker trains to the end and exits 0 with the
   target accuracy, each shard writes a checkpoint into the named volume, Prometheus has scraped both
   servers while the model version and the byte counters moved, and `docker-compose down -v` leaves no
   container, volume or network behind.
2. Faults, with the epochs raised so that the job runs long enough to be hit: a worker's process and
   then a server's are killed (SIGKILL, as a crash or the OOM killer does). As the README says, the
   worker's container is started again and re-joins, the server's is started again and resumes from
   its newest checkpoint, and every worker still ends with exit 0 and the target accuracy.

The containers get no route out: the compose network is made internal, and the ports the file
publishes on the host are left out (a copy of the file is run). Everything lives in a private podman
store (nothing in /etc, no other podman user touched); the run folder is removed at the end.

Usage: container_test.py SOURCE_DIR [--demo]   (--demo: run 1 only, with progress; make compose-demo)
"""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness.containers import Engine, missing_tools, services_running  # noqa: E402
from harness.procs import fail  # noqa: E402

SOURCE = os.path.abspath(sys.argv[1])
DEMO = "--demo" in sys.argv[2:]
ACCURACY_TARGET = 0.82
# Compose names everything it creates after the project: containers, the network, the volumes.
PROJECT = ("psdemo" if DEMO else "pstest") + str(os.getpid())


def log(message):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), message), flush=True)


def images_of(compose):
    """(image tag, Dockerfile) for each service that builds one."""
    built = {}
    for service in compose["services"].values():
        if "build" in service:
            built[service["image"]] = service["build"]["dockerfile"]
    return built


def runnable_copy(compose, epochs=None):
    """The file as the test runs it: no published ports, no route out, images already built; with
    `epochs`, the servers' --epochs replaced."""
    servers = services_running(compose["services"], "ps-server")
    services = {}
    for name, service in compose["services"].items():
        service = {k: v for k, v in service.items() if k not in ("ports", "build")}
        if epochs is not None and name in servers:
            service["command"] = [re.sub(r"^--epochs=\d+$", "--epochs=%d" % epochs, a)
                                  for a in service["command"]]
        services[name] = service
    return dict(compose, services=services, networks={"default": {"internal": True}})


class Job:
    """One `docker-compose up` of a compose file in the engine, and what the test asks of it."""

    def __init__(self, engine, compose, path):
        self.engine = engine
        self.compose = compose
        self.path = path
        with open(path, "w") as f:
            yaml.safe_dump(compose, f, sort_keys=False)
        self.workers = services_running(compose["services"], "ps-worker")
        self.servers = services_running(compose["services"], "ps-server")

    def compose_cmd(self, *args, timeout=300):
        result = subprocess.run(["docker-compose", "-p", PROJECT, "-f", self.path,
                                 "--project-directory", SOURCE, *args], env=self.engine.env,
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            fail("docker-compose %s failed:\n%s" % (" ".join(args), result.stderr[-3000:]))
        return result.stdout

    def container(self, service):
        ids = self.engine.podman("ps", "-aq", "--filter",
                                 "label=com.docker.compose.project=" + PROJECT, "--filter",
                                 "label=com.docker.compose.service=" + service).stdout.split()
        if len(ids) != 1:
            fail("expected one container of %s, found %s" % (service, ids))
        return ids[0]

    def state(self, service):
        out = self.engine.podman("inspect", "--format",
                                 "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}} "
                                 "{{.State.Pid}}", self.container(service)).stdout.split()
        return {"status": out[0], "exit": int(out[1]), "restarts": int(out[2]), "pid": int(out[3])}

    def logs(self, service):
        result = self.engine.podman("logs", self.container(service))
        return result.stdout + result.stderr

    def up(self):
        # `up` waits for the servers to be healthy, which needs the health checks running.
        self.engine.run_health_checks(PROJECT)
        self.compose_cmd("up", "-d", "--no-build", timeout=600)

    def wait_workers(self, timeout):
        """Each worker's final summary once all have exited 0 (a restarted one counts by its end)."""
        deadline = time.time() + timeout
        pending = set(self.workers)
        while pending:
            for name in sorted(pending):
                s = self.state(name)
                if s["status"] == "exited" and s["exit"] == 0:
                    pending.discard(name)
                elif s["status"] == "exited" and s["restarts"] >= 5:
                    fail("%s exited with %d:\n%s" % (name, s["exit"], self.logs(name)[-3000:]))
            if time.time() > deadline:
                for name in pending:
                    print("--- %s %s\n%s" % (name, self.state(name), self.logs(name)[-2000:]))
                fail("workers %s did not finish in %d s" % (sorted(pending), timeout))
            time.sleep(1)
        return {name: self.summary(name) for name in self.workers}

    def summary(self, worker):
        lines = [l for l in self.logs(worker).splitlines() if l.startswith("summary {")]
        if not lines:
            fail("%s printed no summary:\n%s" % (worker, self.logs(worker)[-3000:]))
        return json.loads(lines[-1][len("summary "):])

    def checkpoints(self):
        """Checkpoint files in the named volume, by shard folder."""
        volume = "%s_checkpoints" % PROJECT
        root = self.engine.podman("volume", "inspect", "--format", "{{.Mountpoint}}",
                                  volume).stdout.strip()
        return {os.path.basename(d): sorted(os.listdir(d))
                for d in sorted(glob.glob(os.path.join(root, "shard-*")))}

    def prometheus(self, expr):
        """Prometheus' HTTP API asked from inside its container (promtool), as {shard: value}."""
        out = self.engine.podman("exec", self.container("prometheus"), "promtool", "query",
                                 "instant", "http://localhost:9090", expr, check=False).stdout
        values = {}
        for line in out.splitlines():
            shard = re.search(r'shard="(\d+)"', line)
            value = re.search(r"=> (\S+) @", line)
            if shard and value:
                values[shard.group(1)] = float(value.group(1))
        return values

    def down(self):
        self.compose_cmd("down", "-v", "--timeout", "20")
        left = self.engine.leftovers()
        if left:
            fail("docker-compose down -v left behind: %s" % left)


def check_accuracy(summaries):
    for name, s in summaries.items():
        if s["test_accuracy"] < ACCURACY_TARGET:
            fail("%s ended at test accuracy %.4f, below %.2f" % (name, s["test_accuracy"],
                                                                 ACCURACY_TARGET))


def check_prometheus(job):
    """Both shards scraped, and their version and bytes counters moved during the job."""
    def rise(series):
        return "sum by (shard) (max_over_time(%s[30m]) - min_over_time(%s[30m]))" % (series, series)
    queries = {
        "version": rise("ps_model_version"),
        "wire bytes in": rise('ps_bytes_total{direction="in",kind="wire"}'),
        "wire bytes out": rise('ps_bytes_total{direction="out",kind="wire"}'),
    }
    deadline = time.time() + 60
    while True:
        moved = {name: job.prometheus(q) for name, q in queries.items()}
        if all(len(v) == len(job.servers) and min(v.values()) > 0 for v in moved.values()):
            break
        if time.time() > deadline:
            fail("Prometheus did not see the counters move on every shard: %s" % moved)
        time.sleep(2)
    log("prometheus, rise per shard during the job: " + "; ".join(
        "%s %s" % (name, {k: int(v) for k, v in sorted(values.items())})
        for name, values in moved.items()))


def first_run(engine, compose):
    job = Job(engine, runnable_copy(compose), os.path.join(engine.run, "compose.yml"))
    started = time.time()
    try:
        job.up()
        log("compose up: %s, %s and prometheus" % (", ".join(job.servers),
                                                   ", ".join(job.workers)))
        internal = engine.podman("network", "inspect", "--format", "{{.Internal}}",
                                 PROJECT + "_default").stdout.strip()
        if internal != "true":
            fail("the compose network is not internal (%r): containers would have a route out"
                 % internal)
        summaries = job.wait_workers(timeout=600)
        log("workers done in %.0f s: %s" % (time.time() - started, ", ".join(
            "%s accuracy %.4f (%d rounds, uplink %.1fx smaller)" % (
                n, s["test_accuracy"], s["rounds"], s["uplink_compression"])
            for n, s in summaries.items())))
        check_accuracy(summaries)
        checkpoints = job.checkpoints()
        log("checkpoints in the volume: %s" % {k: v[-1:] for k, v in checkpoints.items()})
        for shard in ("shard-0", "shard-1"):
            if not any(f.endswith(".ckpt") for f in checkpoints.get(shard, [])):
                fail("no checkpoint of %s in the volume: %s" % (shard, checkpoints))
        check_prometheus(job)
    finally:
        job.down()
    log("compose down -v: no container, volume or network left")


def wait_for(what, predicate, timeout):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            fail("timed out waiting for " + what)
        time.sleep(0.5)


def fault_run(engine, compose):
    """A worker and a server killed mid-run; the job recovers and ends as it would have."""
    job = Job(engine, runnable_copy(compose, epochs=40), os.path.join(engine.run, "faults.yml"))
    try:
        job.up()
        wait_for("a checkpoint of shard 0", lambda: any(
            f.endswith(".ckpt") for f in job.checkpoints().get("shard-0", [])), timeout=300)
        os.kill(job.state("worker-1")["pid"], signal.SIGKILL)
        log("killed worker-1's process")
        wait_for("worker-1 to be started again",
                 lambda: job.state("worker-1")["restarts"] >= 1, timeout=60)
        wait_for("a newer checkpoint of shard 0", lambda: len(
            [f for f in job.checkpoints().get("shard-0", []) if f.endswith(".ckpt")]) >= 2,
            timeout=300)
        os.kill(job.state("ps-server-0")["pid"], signal.SIGKILL)
        log("killed ps-server-0's process")
        summaries = job.wait_workers(timeout=900)
        check_accuracy(summaries)
        server = job.state("ps-server-0")
        resumed = re.findall(r"event=resumed .*?version=(\d+)", job.logs("ps-server-0"))
        if server["restarts"] < 1 or not resumed:
            fail("ps-server-0 was not started again from its checkpoint (%s):\n%s" % (
                server, job.logs("ps-server-0")[-3000:]))
        log("recovered: worker-1 restarted %d time(s), ps-server-0 restarted and resumed from "
            "version %s; accuracy %s" % (job.state("worker-1")["restarts"], resumed[-1], {
                n: round(s["test_accuracy"], 4) for n, s in summaries.items()}))
    finally:
        job.down()


def remove_earlier_runs(engine):
    """Containers of this test's or the demo's earlier runs that were cut off (same store only)."""
    out = engine.podman("ps", "-a", "--format",
                        "{{.ID}} {{index .Labels \"com.docker.compose.project\"}}").stdout
    stale = [fields[0] for fields in map(str.split, out.splitlines())
             if len(fields) == 2 and fields[1].startswith(("pstest", "psdemo"))]
    if stale:
        engine.podman("rm", "-f", "-v", *stale)
    engine.podman("volume", "prune", "-f")
    engine.podman("network", "prune", "-f")


def main():
    missing = missing_tools()
    if missing:
        fail("%s not found: deploy/install-deps.sh installs them" % ", ".join(missing))
    with open(os.path.join(SOURCE, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    started = time.time()
    with Engine(log=log) as engine:
        remove_earlier_runs(engine)
        engine.ensure_base_images()
        for tag, dockerfile in images_of(compose).items():
            engine.build(os.path.join(SOURCE, dockerfile), tag, SOURCE)
        engine.start_service()
        first_run(engine, compose)
        if not DEMO:
            fault_run(engine, compose)
    log("containers: all done in %.0f s" % (time.time() - started))


if __name__ == "__main__":
    main()
