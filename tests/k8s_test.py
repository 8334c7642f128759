#!/usr/bin/python3
"""deploy/k8s: every kustomization (the base and each overlay) renders with `kubectl kustomize`, its
objects validate against the Kubernetes schemas (npm package kubernetes-models, tests/k8s), and the
settings agree across objects (shard count, replicas and the workers' server list; workers and Job
completions; probes on the gRPC port; non-root, read-only root filesystem, resources). Then the
commands the manifests give are run: the base's pods train to the end as local processes (the
shards' DNS names mapped to loopback ports, the checkpoint volume to a temporary folder), and every
overlay's servers start with their settings until the workers' health check passes.

Usage: k8s_test.py BUILD_DIR SOURCE_DIR
"""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import certs, manifests  # noqa: E402
from harness.cluster import Cluster, server_settings  # noqa: E402
from harness.procs import Proc, binaries, fail, free_port  # noqa: E402

BUILD = os.path.abspath(sys.argv[1])
BINARIES = binaries(BUILD)
SOURCE = os.path.abspath(sys.argv[2])
ACCURACY_TARGET = 0.82


def flags_of(binary):
    """The flags `binary --help` lists."""
    out = subprocess.run([binary, "--help"], capture_output=True, text=True)
    return set(re.findall(r"^\s+--(\w+)", out.stdout + out.stderr, re.M))


def flag(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith("--%s=" % name)]
    return values[-1] if values else None


def check_objects(where, objects):
    """What must agree across the objects for the cluster to work."""
    sts, service = server_settings(objects)
    job = [o for o in objects if o["kind"] == "Job"]
    if len(job) != 1:
        fail("%s: expected one Job, found %d" % (where, len(job)))
    job = job[0]
    pods = manifests.pods(objects)
    servers = [p for p in pods if p.workload == sts["metadata"]["name"]]
    workers = [p for p in pods if p.workload == job["metadata"]["name"]]
    shards = sts["spec"]["replicas"]

    if service["spec"].get("clusterIP") != "None":
        fail("%s: Service %s is not headless" % (where, service["metadata"]["name"]))
    labels = sts["spec"]["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in service["spec"]["selector"].items()):
        fail("%s: the Service's selector does not select the server pods" % where)
    if not sts["spec"].get("volumeClaimTemplates"):
        fail("%s: the servers have no volume claim per shard" % where)
    for pod in servers:
        if pod.env.get("PS_SHARD_INDEX") != str(pod.index):
            fail("%s: pod %s gets shard index %r" % (where, pod.name, pod.env.get("PS_SHARD_INDEX")))
        if int(pod.env.get("PS_SHARD_COUNT", "1")) != shards:
            fail("%s: PS_SHARD_COUNT %s but %d replicas" % (where, pod.env.get("PS_SHARD_COUNT"),
                                                           shards))
        # Fewer completions than workers: the rest run outside the cluster.
        if int(pod.env["PS_NUM_WORKERS"]) < job["spec"]["completions"]:
            fail("%s: PS_NUM_WORKERS %s but the Job has %d completions" %
                 (where, pod.env["PS_NUM_WORKERS"], job["spec"]["completions"]))
        mounts = {m["mountPath"] for m in pod.container.get("volumeMounts", [])}
        if flag(pod.argv, "checkpoint_dir") not in mounts:
            fail("%s: --checkpoint_dir is not the mounted volume (%s)" % (where, mounts))
        ports = {p["name"]: p["containerPort"] for p in pod.container["ports"]}
        if flag(pod.argv, "listen") != "0.0.0.0:%d" % ports["grpc"]:
            fail("%s: --listen %s is not the grpc port %d" % (where, flag(pod.argv, "listen"),
                                                              ports["grpc"]))
        # Probes go to the plaintext health port when there is one (the kubelet's gRPC probes
        # cannot speak TLS), else to the gRPC port.
        probe_port = ports.get("health", ports["grpc"])
        if "health" in ports and flag(pod.argv, "health_listen") != "0.0.0.0:%d" % probe_port:
            fail("%s: --health_listen is not the health port %d" % (where, probe_port))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc = pod.container.get(probe, {}).get("grpc")
            if grpc is None or grpc["port"] != probe_port:
                fail("%s: %s is not a gRPC probe on port %d" % (where, probe, probe_port))
        external = [o for o in objects if o["kind"] == "Service" and
                    o["spec"].get("type") in ("LoadBalancer", "NodePort")]
        if external and not (flag(pod.argv, "tls_cert") and flag(pod.argv, "tokens_file")):
            fail("%s: servers reachable from outside the cluster (%s) need TLS and tokens" %
                 (where, [o["metadata"]["name"] for o in external]))
    if job["spec"].get("completionMode") != "Indexed" or (
            job["spec"]["parallelism"] != job["spec"]["completions"]):
        fail("%s: the workers must be an Indexed Job that runs all of them at once" % where)
    grpc_port = [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"][0]
    expected = ",".join("%s-%d.%s:%d" % (sts["metadata"]["name"], i, service["metadata"]["name"],
                                         grpc_port) for i in range(shards))
    for pod in workers:
        if pod.env.get("PS_SERVERS") != expected:
            fail("%s: worker %s has PS_SERVERS=%s, expected %s" %
                 (where, pod.name, pod.env.get("PS_SERVERS"), expected))
    known = {name: flags_of(path) for name, path in BINARIES.items()}
    for pod in pods:
        binary = pod.argv[0]
        unknown = [k for k in pod.env if k.startswith("PS_") and k[3:].lower() not in known[binary]]
        unknown += [a for a in pod.argv[1:] if a.split("=")[0][2:] not in known[binary]]
        if unknown:
            fail("%s: pod %s sets what %s has no flag for: %s" % (where, pod.name, binary, unknown))
        spec = [o for o in (sts, job) if o["metadata"]["name"] == pod.workload][0]
        pod_spec = spec["spec"]["template"]["spec"]
        security = pod.container.get("securityContext", {})
        if not (pod_spec.get("securityContext", {}).get("runAsNonRoot") and
                security.get("readOnlyRootFilesystem") and
                security.get("allowPrivilegeEscalation") is False):
            fail("%s: pod %s must run as non-root with a read-only root filesystem" %
                 (where, pod.name))
        resources = pod.container.get("resources", {})
        if not resources.get("requests") or not resources.get("limits"):
            fail("%s: pod %s has no resource requests and limits" % (where, pod.name))
        if pod_spec.get("enableServiceLinks") is not False:
            fail("%s: pod %s gets service-link variables (PS_SERVER_...)" % (where, pod.name))
    return sts, service


def local_replacements(objects, ports, work):
    """Pod DNS names to loopback ports, every server's listen address to its own port, the
    metrics port to one the kernel picks, volumes to folders under `work`."""
    sts, service = server_settings(objects)

    def replacements(pod):
        out = [("%s.%s:50051" % (name, service["metadata"]["name"]), "127.0.0.1:%d" % port)
               for name, port in ports.items()]
        if pod.name in ports:
            out.append(("0.0.0.0:50051", "127.0.0.1:%d" % ports[pod.name]))
        out.append(("0.0.0.0:9100", "127.0.0.1:0"))
        out.append(("0.0.0.0:50052", "127.0.0.1:0"))
        for mount in pod.container.get("volumeMounts", []):
            out.append((mount["mountPath"], os.path.join(work, pod.name, mount["name"])))
        return out
    return replacements


def launch_local(pod, argv, env, log_path):
    return Proc(argv, log_path, env=env)


def make_secrets(folder, workers):
    """The Secrets the overlays mount, made the way the README says: a CA and a server
    certificate (for the shards' names, and 127.0.0.1 where this test runs them) with openssl,
    the servers' token list and one token file per worker."""
    os.makedirs(folder)
    certs.make_server_certificate(folder, "DNS:*.ps-server,DNS:localhost,IP:127.0.0.1")
    read = lambda name: open(os.path.join(folder, name), "rb").read()  # noqa: E731
    tokens = {"worker-%d" % i: os.urandom(16).hex().encode() for i in range(workers)}
    return {
        "ps-tls": {name: read(name) for name in ("ca.pem", "server.pem", "server.key")},
        "ps-server-tokens": {"tokens": b"".join(b"%s %s\n" % (n.encode(), t)
                                                for n, t in tokens.items())},
        "ps-worker-tokens": tokens,
    }


def new_local_cluster(objects, work, secrets):
    """The pods of `objects` on loopback, with `secrets` where they mount them."""
    sts, _ = server_settings(objects)
    ports = {"%s-%d" % (sts["metadata"]["name"], i): free_port()
             for i in range(sts["spec"]["replicas"])}
    replacements = local_replacements(objects, ports, work)
    cluster = Cluster(objects, BINARIES, work, launch_local, replacements)
    for pod in cluster.servers + cluster.workers:
        manifests.fill_secret_volumes(
            pod, lambda mount, pod=pod: os.path.join(work, pod.name, mount["name"]), secrets)
    return cluster


def run_base(objects, work, secrets):
    """The whole training run of the base manifests, as local processes."""
    results, shards = new_local_cluster(objects, work, secrets).run_to_end()
    accuracy = min(r["test_accuracy"] for r in results)
    versions = [s["version"] for s in shards]
    print("k8s base: %d shards, %d workers (ranks %s), test accuracy %.4f, shard versions %s, "
          "uplink %.1fx smaller" % (len(shards), len(results), sorted(r["rank"] for r in results),
                                   accuracy, versions,
                                   min(r["uplink_compression"] for r in results)))
    if sorted(r["rank"] for r in results) != list(range(len(results))):
        fail("workers did not train on ranks 0..K-1 (from JOB_COMPLETION_INDEX)")
    if accuracy < ACCURACY_TARGET:
        fail("accuracy %.4f below %.2f" % (accuracy, ACCURACY_TARGET))
    if len(set(versions)) != 1:
        fail("shards ended at different versions: %s" % versions)
    for s in shards:
        if s["checkpoint_version"] != s["version"]:
            fail("shard checkpoint at version %d, model at %d" % (s["checkpoint_version"],
                                                                 s["version"]))


def start_servers_of(where, objects, work, secrets):
    """Every server of an overlay starts with its settings and passes the workers' own health
    check (over TLS and with a token where the overlay says so); SIGTERM then stops each with
    exit 0."""
    cluster = new_local_cluster(objects, work, secrets)
    try:
        cluster.start_servers()
        cluster.wait_healthy()
        for proc in cluster.procs.values():
            proc.signal(signal.SIGTERM)
        cluster.wait(cluster.servers, 60)
        print("k8s %s: %d servers started with its settings, healthy, stopped cleanly" %
              (where, len(cluster.servers)))
    finally:
        cluster.stop()


def main():
    if not shutil.which("kubectl"):
        print("SKIP: kubectl not found (not in Debian 12; see deploy/install-deps.sh)")
        sys.exit(77)
    k8s = os.path.join(SOURCE, "deploy", "k8s")
    kustomizations = [os.path.join(k8s, "base")] + sorted(
        glob.glob(os.path.join(k8s, "overlays", "*")))
    work = tempfile.mkdtemp(prefix="ps_k8s_")
    try:
        secrets = make_secrets(os.path.join(work, "secrets"), workers=4)
        rendered = {}
        for path in kustomizations:
            where = os.path.relpath(path, SOURCE)
            objects = manifests.render(path)
            lines = manifests.validate(objects, SOURCE, os.path.join(BUILD, "k8s-validate"))
            check_objects(where, objects)
            print("%s: %d objects valid (%s)" % (where, len(lines),
                                                 ", ".join(l.split(" ", 1)[1] for l in lines)))
            rendered[where] = objects
        for where, objects in rendered.items():
            folder = os.path.join(work, where.replace("/", "_"))
            os.makedirs(folder)
            if where.endswith("base"):
                run_base(objects, folder, secrets)
            else:
                start_servers_of(where, objects, folder, secrets)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
