#!/usr/bin/python3
"""Several hosts: the pods of the base Kubernetes manifests (2 server shards, 3 workers) run with
their own commands and settings, each in its own network namespace with its own 10.77.0.x
address, joined by a bridge; every worker's link is limited to 100 Mbit/s each way by tbf. The
workers reach the shards by their StatefulSet DNS names (ps-server-0.ps-server:50051) through an
/etc/hosts that only this test's private mount namespace sees.

Run 1: training reaches the accuracy target.
Run 2: once a fifth of the rounds are done, one worker's link is cut for 40 s, then restored (a
short partition, as on a shared network). The servers close rounds at the deadline without it;
the worker's keepalive notices the dead link, its calls retry until the link is back, and it
finishes the run with the others: every worker exits 0, the survivors reach the target, no round
waited longer than the deadline plus the partition's detection, and the servers saw no re-join
storm. The servers' lease is raised above the partition for this run (--lease=90s on the
command line, which wins over the manifests' PS_LEASE=20s): with the manifests' lease, the two
other workers would finish the short run before the link came back.

Must run inside tests/netns_run.sh (ctest does that): it refuses to run anywhere else.
Usage: netns_run.sh multihost_test.py BUILD_DIR SOURCE_DIR
"""
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import manifests  # noqa: E402
from harness.cluster import Cluster, server_settings  # noqa: E402
from harness.netns import Network, bind_hosts_file  # noqa: E402
from harness.procs import binaries, fail, wait_until  # noqa: E402

BUILD = os.path.abspath(sys.argv[1])
BINARIES = binaries(BUILD)
SOURCE = os.path.abspath(sys.argv[2])
ACCURACY_TARGET = 0.83
WORKER_LINK_MBIT = 100


def seconds(duration):
    """A flag duration such as 20s or 1m30s, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


def scrape(address, name):
    """A sample of the metric `name` (any labels) from the Prometheus endpoint at address:9100."""
    with urllib.request.urlopen("http://%s:9100/metrics" % address, timeout=5) as r:
        m = re.search(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), r.read().decode(), re.M)
    if not m:
        fail("no %s in the metrics of %s" % (name, address))
    return float(m.group(1))


def build_network(objects, work):
    sts, service = server_settings(objects)
    net = Network()
    pods = manifests.pods(objects)
    names = {}
    for number, pod in enumerate(pods):
        is_server = pod.workload == sts["metadata"]["name"]
        net.add_host(pod.name, 10 + number, None if is_server else WORKER_LINK_MBIT)
        if is_server:
            names["%s.%s" % (pod.name, service["metadata"]["name"])] = pod.name
    hosts = os.path.join(work, "hosts")
    net.hosts_file(hosts, names)
    bind_hosts_file(hosts)
    for pod in pods:
        for server in names.values():
            net.check_route(pod.name, net.hosts[server])
        net.check_route(None, net.hosts[pod.name])
    print("network: %s; worker links %d Mbit/s each way (tbf)" %
          (", ".join("%s %s" % (h, a) for h, a in net.hosts.items()), WORKER_LINK_MBIT))
    return net


def new_cluster(objects, net, work):
    def launch(pod, argv, env, log_path):
        return net.run(pod.name, argv, log_path, env=env)

    def replacements(pod):  # only the volumes: names and addresses are the manifests' own
        return [(m["mountPath"], os.path.join(work, pod.name, m["name"]))
                for m in pod.container.get("volumeMounts", [])]
    os.makedirs(work)
    return Cluster(objects, BINARIES, work, launch, replacements)


def run_all_links(objects, net, work):
    start = time.time()
    results, shards = new_cluster(objects, net, work).run_to_end()
    accuracy = min(r["test_accuracy"] for r in results)
    print("run 1 (all links up): %.1f s, test accuracy %.4f, shard versions %s, %.1f MB up "
          "and %.1f MB down per worker" %
          (time.time() - start, accuracy, [s["version"] for s in shards],
           max(r["bytes_sent"] for r in results) / 1e6,
           max(r["bytes_received"] for r in results) / 1e6))
    if accuracy < ACCURACY_TARGET:
        fail("run 1: accuracy %.4f below %.2f" % (accuracy, ACCURACY_TARGET))
    if len(set(s["version"] for s in shards)) != 1:
        fail("run 1: shards ended at different versions")


PARTITION_SECONDS = 40


def print_state(cluster, shard_addresses):
    """What every process was doing: the end of its log, and each shard's version and members."""
    for name, proc in cluster.procs.items():
        print("---- %s (%s):\n%s" % (name, "running" if proc.alive() else
                                     "exited %s" % proc.popen.returncode, proc.text()[-2500:]))
    for address in shard_addresses:
        try:
            print("---- shard %s: version %d, members %d" % (
                address, scrape(address, "ps_model_version"), scrape(address, "ps_members")))
        except Exception as e:  # a shard that exited has no metrics
            print("---- shard %s: %s" % (address, e))


def run_with_partition(objects, net, work):
    cluster = new_cluster(objects, net, work)
    server_env = cluster.servers[0].env
    deadline = seconds(server_env["PS_ROUND_DEADLINE"])
    victim, survivors = cluster.workers[-1], cluster.workers[:-1]
    shard0 = net.hosts[cluster.servers[0].name]
    start = time.time()
    try:
        cluster.start_servers(["--exit_when_done", "--lease=90s"])
        cluster.wait_healthy()
        cluster.start_workers()
        # 10 epochs of 60,000 examples, 3 workers x 8 steps x 32 a round.
        total = int(server_env["PS_EPOCHS"]) * 60000 // (
            int(server_env["PS_NUM_WORKERS"]) * int(server_env["PS_LOCAL_STEPS"]) *
            int(server_env.get("PS_BATCH_SIZE", "32")))
        wait_until(lambda: scrape(shard0, "ps_model_version") >= total // 5, 300,
                   "a fifth of the rounds")
        cut_version = scrape(shard0, "ps_model_version")
        net.cut(victim.name)
        print("run 2: cut the link of %s at version %d of about %d for %d s" %
              (victim.name, cut_version, total, PARTITION_SECONDS))
        time.sleep(PARTITION_SECONDS)
        restored_version = scrape(shard0, "ps_model_version")
        net.restore(victim.name)
        restored_at = time.time()
        # Every worker exits 0, the one cut off too. The budgets stay inside ctest's timeout, so
        # that a hang fails here with every log's end instead of being killed without a word.
        try:
            cluster.wait(cluster.workers, 300)
            cluster.wait(cluster.servers, 60)
        except Exception:
            print_state(cluster, [shard0, net.hosts[cluster.servers[1].name]])
            raise
        finished = time.time()
        results = [cluster.summary(p) for p in cluster.workers]
        shards = [cluster.summary(p) for p in cluster.servers]
        logs = [cluster.procs[p.name].text() for p in cluster.servers]
        victim_log = cluster.procs[victim.name].text()
    finally:
        cluster.stop()
    accuracy = min(r["test_accuracy"] for r in results)
    max_wait = max(s["max_round_wait_ms"] for s in shards) / 1000
    joins = [log.count("event=join ") for log in logs]
    retries = victim_log.count("event=retry")
    repushes = sum(r["stale_repushes"] for r in results)
    print("run 2 (a %d s partition): %d versions while cut off; finished %.1f s after the link "
          "came back, %.1f s in all; test accuracy %.4f (the worker cut off: %.4f); shard "
          "versions %s; rounds closed by deadline %s; longest round %.1f s; joins per shard %s; "
          "%d retries by the worker cut off; %d updates pushed again to bring the shards into phase" %
          (PARTITION_SECONDS, restored_version - cut_version, finished - restored_at,
           finished - start, accuracy, results[-1]["test_accuracy"], [s["version"] for s in shards],
           [s["rounds_closed_by_deadline"] for s in shards], max_wait, joins, retries, repushes))
    if accuracy < ACCURACY_TARGET:
        fail("run 2: accuracy %.4f below %.2f" % (accuracy, ACCURACY_TARGET))
    # Housekeeping checks deadlines every deadline / 4, so a round closes up to that much late.
    if max_wait > deadline * 1.25 + 1:
        fail("run 2: a round waited %.1f s, more than its deadline of %.0f s allows" %
             (max_wait, deadline))
    if any(j > len(cluster.workers) + 1 for j in joins):
        fail("run 2: a re-join storm: joins per shard %s for %d workers" %
             (joins, len(cluster.workers)))
    # Rounds close by the deadline while the link is down, and for a round or two after; shards
    # whose workers stay out of phase would close every round by it (a livelock of refusals).
    by_deadline_limit = PARTITION_SECONDS / deadline + 5
    if any(s["rounds_closed_by_deadline"] > by_deadline_limit for s in shards):
        fail("run 2: rounds closed by deadline %s, more than the partition explains (%d): "
             "workers out of phase across shards" %
             ([s["rounds_closed_by_deadline"] for s in shards], by_deadline_limit))
    if not any(s["rounds_closed_by_deadline"] for s in shards):
        fail("run 2: no round closed by its deadline: the link was never really cut")


def main():
    objects = manifests.render(os.path.join(SOURCE, "deploy", "k8s", "base"))
    work = tempfile.mkdtemp(prefix="ps_multihost_")
    try:
        net = build_network(objects, work)
        run_all_links(objects, net, os.path.join(work, "run1"))
        run_with_partition(objects, net, os.path.join(work, "run2"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
