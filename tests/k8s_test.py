#!/usr/bin/python3
"""deploy/k8s as a real cluster would run it, checked without one.

1. Every kustomization (the base, each overlay, and the base with components/podmonitor) renders
   with `kubectl kustomize` and its objects validate against the Kubernetes schemas (npm
   kubernetes-models and its Prometheus Operator package, tests/k8s).
2. What the objects mean (harness/k8s_checks.py): settings that agree across objects, labels and
   selectors, image and pull policy, the Job's failure handling, the retry budget against a
   shard's move off a lost node, the disruption budget, the NetworkPolicy, the external Services,
   the TLS Secret keys; the README's commands against the manifests; the training settings
   against docker-compose.yml's.
3. The pods' own commands run as local processes (shards' names mapped to loopback ports, volumes
   to temporary folders): the base trains to the end while one worker is stopped by SIGTERM and
   replaced as the Job would; the worker's exit codes meet the Job's podFailurePolicy as intended;
   the servers find their shard without the pod-index label (Kubernetes 1.27); every overlay's
   servers start and pass the workers' health check.
4. The certificate the README's recipe makes names every host the workers dial; in network
   namespaces of its own (tests/netns_run.sh, as root) the external-workers overlay's shards serve
   it on addresses of their own and the workers reach them by those names over TLS.

Usage: k8s_test.py BUILD_DIR SOURCE_DIR
       netns_run.sh k8s_test.py --by-name BUILD_DIR SOURCE_DIR SECRETS_DIR WORK_DIR
           (step 4 alone, in network namespaces; the first form runs it so)
"""
import base64
import copy
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import certs, k8s_checks, manifests  # noqa: E402
from harness.cluster import Cluster, server_settings  # noqa: E402
from harness.k8s_semantics import job_outcome, parse_duration, selects  # noqa: E402
from harness.procs import Proc, binaries, fail, free_port, wait_until  # noqa: E402
from harness.status import StatusClient  # noqa: E402

BY_NAME = sys.argv[1] == "--by-name"
ARGS = sys.argv[2:] if BY_NAME else sys.argv[1:]
BUILD = os.path.abspath(ARGS[0])
BINARIES = binaries(BUILD)
SOURCE = os.path.abspath(ARGS[1])
K8S = os.path.join(SOURCE, "deploy", "k8s")
ACCURACY_TARGET = 0.82
NAMESPACE = "ps"  # the README's
# The certificate of the README's recipe before this fix: gRPC matches a wildcard only with two
# labels after it, so no shard name matches it.
OLD_RECIPE_NAMES = "DNS:*.ps-server,DNS:ps-0.example.org,DNS:ps-1.example.org"


def flags_of(binary):
    """The flags `binary --help` lists, with their defaults as --help prints them."""
    out = subprocess.run([binary, "--help"], capture_output=True, text=True)
    text = out.stdout + out.stderr
    flags = dict.fromkeys(re.findall(r"^\s+--(\w+)", text, re.M))
    for name, default in re.findall(r"--(\w+) \(.*?\);\s+default: (.*?);", text, re.S):
        flags[name] = default.strip('"')
    return flags


def flag(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith("--%s=" % name)]
    return values[-1] if values else None


def project_version():
    with open(os.path.join(SOURCE, "CMakeLists.txt")) as f:
        return re.search(r"project\(\w+ VERSION ([\d.]+)", f.read()).group(1)


# ---- 1. Rendering -------------------------------------------------------------------------------

def kustomizations(work):
    """(name, folder) of every kustomization: the base, each overlay, and the base with each
    component (a kustomization in `work` that names both by relative paths, as kustomize wants)."""
    out = [("deploy/k8s/base", os.path.join(K8S, "base"))]
    overlays = sorted(glob.glob(os.path.join(K8S, "overlays", "*")))
    out += [(os.path.relpath(p, SOURCE), p) for p in overlays]
    for component in sorted(glob.glob(os.path.join(K8S, "components", "*"))):
        folder = os.path.join(work, "with-" + os.path.basename(component))
        os.makedirs(folder)
        with open(os.path.join(folder, "kustomization.yaml"), "w") as f:
            yaml.safe_dump({"resources": [os.path.relpath(os.path.join(K8S, "base"), folder)],
                            "components": [os.path.relpath(component, folder)]}, f)
        out.append(("deploy/k8s/base+" + os.path.relpath(component, K8S), folder))
    return out


# ---- 2. What the objects mean -------------------------------------------------------------------

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
    if not sts["spec"].get("volumeClaimTemplates"):
        fail("%s: the servers have no volume claim per shard" % where)
    for pod in servers:
        check_server_pod(where, objects, pod, shards, job)
    if job["spec"].get("completionMode") != "Indexed" or (
            job["spec"]["parallelism"] != job["spec"]["completions"]):
        fail("%s: the workers must be an Indexed Job that runs all of them at once" % where)
    expected = ",".join("%s:%d" % (name, grpc_port(service)) for name in shard_names(objects))
    for pod in workers:
        if pod.env.get("PS_SERVERS") != expected:
            fail("%s: worker %s has PS_SERVERS=%s, expected %s" %
                 (where, pod.name, pod.env.get("PS_SERVERS"), expected))
    check_pods_generally(where, objects, pods, sts, job)


def check_server_pod(where, objects, pod, shards, job):
    # The pod-index label where it exists; else (1.27) ps-server takes the ordinal of POD_NAME.
    if pod.env.get("PS_SHARD_INDEX") != str(pod.index) or pod.env.get("POD_NAME") != pod.name:
        fail("%s: pod %s gets shard index %r, POD_NAME %r" %
             (where, pod.name, pod.env.get("PS_SHARD_INDEX"), pod.env.get("POD_NAME")))
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


def check_pods_generally(where, objects, pods, sts, job):
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


def shard_names(objects, namespace=None):
    """The DNS name of each shard as the workers dial it (ps-server-<i>.ps-server), or in
    `namespace`: [short, .NAMESPACE.svc, .NAMESPACE.svc.cluster.local] per shard."""
    sts, service = server_settings(objects)
    short = ["%s-%d.%s" % (sts["metadata"]["name"], i, service["metadata"]["name"])
             for i in range(sts["spec"]["replicas"])]
    if namespace is None:
        return short
    return [[n, "%s.%s.svc" % (n, namespace), "%s.%s.svc.cluster.local" % (n, namespace)]
            for n in short]


def grpc_port(service):
    return [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"][0]


def check_meaning(where, objects, version):
    """harness/k8s_checks.py: what the objects mean for a real cluster."""
    k8s_checks.check_image(where, objects, version)
    k8s_checks.check_labels(where, objects, version)
    k8s_checks.check_selectors(where, objects)
    k8s_checks.check_servers(where, objects)
    k8s_checks.check_disruption_budget(where, objects)
    k8s_checks.check_job(where, objects)
    move = k8s_checks.check_retry_budget(where, objects)
    k8s_checks.check_network_policy(where, objects)
    k8s_checks.check_external_services(where, objects)
    k8s_checks.check_tls_secrets(where, objects)
    k8s_checks.check_podmonitor(where, objects)
    return move


# Flags that say where and how a process runs here or there (addresses, paths, TLS files, retry
# budgets, exit codes), not what it trains: they may differ between compose and the manifests.
DEPLOYMENT_FLAGS = {"listen", "allow_plaintext", "shard_index", "checkpoint_dir", "metrics_listen",
                    "health_listen", "tls_cert", "tls_key", "tokens_file", "exit_when_done",
                    "summary_json", "servers", "rank", "name", "retry_budget", "stopped_exit_code",
                    "progress_every", "quiet", "tls_ca", "token_file"}


def effective_settings(argv, env, defaults):
    """flag -> value a process runs with: its command line over its PS_ variables over the
    binary's defaults; durations and numbers compared by value."""
    values = dict(defaults)
    values.update({k[3:].lower(): v for k, v in env.items() if k.startswith("PS_")})
    values.update({a[2:].split("=", 1)[0]: a.split("=", 1)[1] for a in argv[1:] if "=" in a})
    values.update({a[2:]: "true" for a in argv[1:] if "=" not in a})

    def normal(v):
        try:
            return float(v)
        except ValueError:
            seconds = parse_duration(v)
            return v if seconds is None else seconds
    return {k: normal(v) for k, v in values.items() if k not in DEPLOYMENT_FLAGS}


def check_compose_agrees(objects):
    """docker-compose.yml trains with the base's settings: the same flags after defaults, for
    its servers and for its workers."""
    with open(os.path.join(SOURCE, "docker-compose.yml")) as f:
        services = yaml.safe_load(f)["services"]
    pods = manifests.pods(objects)
    for binary in ("ps-server", "ps-worker"):
        defaults = flags_of(BINARIES[binary])
        pod = [p for p in pods if p.argv[0] == binary][0]
        ours = effective_settings(pod.argv, pod.env, defaults)
        for name, service in services.items():
            command = service.get("command") or []
            if command[:1] != [binary]:
                continue
            theirs = effective_settings(command, service.get("environment") or {}, defaults)
            differ = {k: (ours.get(k), theirs.get(k)) for k in set(ours) | set(theirs)
                      if ours.get(k) != theirs.get(k)}
            if differ:
                fail("docker-compose.yml's %s and deploy/k8s/base's %s train differently "
                     "(flag: (k8s, compose)): %s" % (name, pod.name, differ))
    print("docker-compose.yml: its servers and workers train with the base's settings")


# ---- The README's commands ----------------------------------------------------------------------

def readme_section():
    with open(os.path.join(SOURCE, "README.md")) as f:
        text = f.read()
    start = text.index("\n## Kubernetes\n")
    return text[start:text.index("\n## ", start + 1)]


def readme_block(containing):
    """The code block of the README's Kubernetes section that contains `containing`."""
    blocks = re.findall(r"^```\n(.*?)^```$", readme_section(), re.S | re.M)
    found = [b for b in blocks if containing in b]
    if len(found) != 1:
        fail("README, Kubernetes: %d code blocks contain %r" % (len(found), containing))
    return found[0]


def logical_lines(block):
    """Shell lines with backslash continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def check_readme_commands(rendered, version):
    """The README's image tags are the manifests' version; its own overlay renders with the
    registry's image; its new-run selectors delete every claim the StatefulSet makes and the
    objects that cannot change in place."""
    tags = {t.rstrip(".") for t in re.findall(r"\bps:([\w.]+)", readme_section())}
    if tags != {version}:
        fail("README, Kubernetes: image tags %s, the manifests' version is %s" % (tags, version))
    check_readme_overlay(version)
    new_run = logical_lines(readme_block("kubectl delete -n ps pvc"))
    delete_objects, delete_claims = new_run[0], new_run[1]
    if "--cascade=foreground" not in delete_objects:
        fail("README: the new run deletes the claims before the shards' pods are gone")
    objects_selector = k8s_checks.parse_selector(shlex.split(delete_objects)[
        shlex.split(delete_objects).index("-l") + 1])
    claims_selector = k8s_checks.parse_selector(shlex.split(delete_claims)[
        shlex.split(delete_claims).index("-l") + 1])
    for where, objects in rendered.items():
        for labels in k8s_checks.claim_labels(objects):
            if not selects(claims_selector, labels):
                fail("README: `%s` leaves %s's claims (labels %s)" % (delete_claims, where, labels))
        for o in objects:
            if o["kind"] in ("Job", "StatefulSet", "ConfigMap") and not selects(
                    objects_selector, o["metadata"].get("labels", {})):
                fail("README: `%s` leaves %s %s" % (delete_objects, o["kind"],
                                                    o["metadata"]["name"]))
    print("README, Kubernetes: image %s; its overlay renders; the new run deletes every shard's "
          "claim after its pod" % version)


def check_readme_overlay(version):
    """The README's own overlay, written as the README writes it into a copy of deploy/k8s,
    renders and runs the registry's image of this version."""
    block = readme_block("overlays/mine/kustomization.yaml")
    heredoc = re.search(r"^(mkdir .*<<'K'\n.*?^K$)", block, re.S | re.M).group(1)
    root = tempfile.mkdtemp(prefix="ps_k8s_readme_")
    try:
        shutil.copytree(K8S, os.path.join(root, "deploy", "k8s"))
        subprocess.run(["bash", "-ec", heredoc], cwd=root, check=True)
        objects = manifests.render(os.path.join(root, "deploy", "k8s", "overlays", "mine"))
        images = {p.container["image"] for p in manifests.pods(objects)}
        if images != {"registry.example.com/ps:%s" % version}:
            fail("README's overlay runs %s" % images)
        check_objects("README's overlay", objects)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def readme_secrets(folder):
    """The certificate, tokens and Secrets the README's recipe makes: its commands run as
    written in `folder`, its `kubectl create secret` lines with --dry-run=client. Returns
    {Secret name: {key: bytes}} and checks the TLS Secret's type and keys."""
    os.makedirs(folder)
    lines = logical_lines(readme_block("openssl genpkey"))
    first_kubectl = [i for i, line in enumerate(lines) if line.startswith("kubectl")][0]
    subprocess.run(["bash", "-ec", "\n".join(lines[:first_kubectl])], cwd=folder, check=True,
                   capture_output=True)
    secrets = {}
    for line in lines[first_kubectl:]:
        if not line.startswith("kubectl create secret"):
            continue  # apply and get need a cluster
        out = subprocess.run(shlex.split(line) + ["--dry-run=client", "-o", "json"], cwd=folder,
                             capture_output=True, text=True,
                             env=dict(os.environ, KUBECONFIG=os.devnull))
        if out.returncode != 0:
            fail("README: `%s` failed:\n%s" % (line, out.stderr))
        secret = json.loads(out.stdout)
        secrets[secret["metadata"]["name"]] = (
            secret.get("type"), {k: base64.b64decode(v) for k, v in secret["data"].items()})
    tls_type, tls = secrets["ps-tls"]
    if tls_type != "kubernetes.io/tls" or not {"tls.crt", "tls.key", "ca.crt"} <= set(tls):
        fail("README: Secret ps-tls is %s with keys %s, not kubernetes.io/tls with tls.crt, "
             "tls.key, ca.crt" % (tls_type, sorted(tls)))
    data = {name: data for name, (_, data) in secrets.items()}
    save_secrets(folder, data)
    return data


def save_secrets(folder, secrets):
    """secrets.json in `folder`, read back by load_secrets (for the namespaced runs)."""
    with open(os.path.join(folder, "secrets.json"), "w") as f:
        json.dump({n: {k: v.decode() for k, v in d.items()} for n, d in secrets.items()}, f)


def load_secrets(folder):
    with open(os.path.join(folder, "secrets.json")) as f:
        return {n: {k: v.encode() for k, v in d.items()} for n, d in json.load(f).items()}


def old_recipe_secrets(folder, secrets):
    """The README's Secrets, but with a certificate for *.ps-server, as the recipe was."""
    os.makedirs(folder)
    certs.make_server_certificate(folder, OLD_RECIPE_NAMES)
    read = lambda name: open(os.path.join(folder, name), "rb").read()  # noqa: E731
    out = copy.deepcopy(secrets)
    out["ps-tls"] = {"tls.crt": read("server.pem"), "tls.key": read("server.key"),
                     "ca.crt": read("ca.pem")}
    save_secrets(folder, out)
    return out


def outside_worker_command():
    """The README's command for a worker outside the cluster, as argv."""
    return shlex.split(logical_lines(readme_block("--rank=2"))[0])


def certificate_matches(pem_path, host):
    out = subprocess.run(["openssl", "x509", "-in", pem_path, "-noout", "-checkhost", host],
                         capture_output=True, text=True, check=True)
    return "does match certificate" in out.stdout


def check_certificate_names(rendered, secrets_dir, old_dir):
    """The README's certificate names every host in every TLS kustomization's PS_SERVERS, in the
    short form the workers dial and the .svc forms, and the outside workers' names; the old
    recipe's *.ps-server names none of the shards (the check can fail)."""
    pem = os.path.join(secrets_dir, "server.pem")
    outside = [s.rsplit(":", 1)[0] for s in flag(outside_worker_command(), "servers").split(",")]
    checked = 0
    for where, objects in rendered.items():
        workers = [p for p in manifests.pods(objects) if p.argv[0] == "ps-worker"]
        if not flag(workers[0].argv, "tls_ca"):
            continue
        dialled = [s.rsplit(":", 1)[0] for s in workers[0].env["PS_SERVERS"].split(",")]
        hosts = dialled + [n for forms in shard_names(objects, NAMESPACE) for n in forms] + outside
        for host in hosts:
            if not certificate_matches(pem, host):
                fail("README's certificate does not name %s (%s)" % (host, where))
        for host in dialled:
            if certificate_matches(os.path.join(old_dir, "server.pem"), host):
                fail("a *.ps-server certificate matches %s: the check proves nothing" % host)
        checked += len(hosts)
    print("README's certificate: all %d names the workers dial match (openssl -checkhost); "
          "*.ps-server matches none of the shards" % checked)


# ---- 3. The pods as local processes -------------------------------------------------------------

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


def fill_secrets(cluster, work, secrets):
    for pod in cluster.servers + cluster.workers:
        manifests.fill_secret_volumes(
            pod, lambda mount, pod=pod: os.path.join(work, pod.name, mount["name"]), secrets)


def new_local_cluster(objects, work, secrets, pod_index_label=True):
    """The pods of `objects` on loopback, with `secrets` where they mount them; and each
    server's port."""
    os.makedirs(work, exist_ok=True)
    sts, _ = server_settings(objects)
    ports = {"%s-%d" % (sts["metadata"]["name"], i): free_port()
             for i in range(sts["spec"]["replicas"])}
    replacements = local_replacements(objects, ports, work)
    cluster = Cluster(objects, BINARIES, work, launch_local, replacements, pod_index_label)
    fill_secrets(cluster, work, secrets)
    return cluster, ports


def rounds_in_run(env):
    """Rounds of a sync run of the built-in data set: epochs x 60,000 / (K x H x batch)."""
    return int(float(env["PS_EPOCHS"]) * 60000) // (
        int(env["PS_NUM_WORKERS"]) * int(env["PS_LOCAL_STEPS"]) * int(env.get("PS_BATCH_SIZE",
                                                                              "32")))


def evict_and_replace(cluster, job, port):
    """Once a third of the rounds are done, SIGTERM the last worker (an eviction or a node
    drain), check what its exit code makes the Job do, and start its replacement: a new pod with
    the same index, as the Job does once the old one has stopped."""
    victim = cluster.workers[-1]
    status = StatusClient("127.0.0.1:%d" % port)

    def version():
        reply = status.get()
        return reply.version if reply is not None else 0
    try:
        third = rounds_in_run(cluster.servers[0].env) // 3
        wait_until(lambda: version() >= third, 300, "a third of the rounds")
    finally:
        status.close()
    proc = cluster.procs[victim.name]
    proc.signal(signal.SIGTERM)
    code = proc.wait(120, victim.name + " after SIGTERM")
    if not cluster.summary(victim)["stopped_early"]:
        fail("%s did not stop early on SIGTERM" % victim.name)
    evicted, deleted = job_outcome(job, code, ["DisruptionTarget"]), job_outcome(job, code)
    if evicted != "Ignore" or deleted != "Count":
        fail("a worker stopped by SIGTERM exits %d: the Job's verdict is %s when it was evicted "
             "and %s when its pod was deleted, expected Ignore and Count (started again, never "
             "counted as done)" % (code, evicted, deleted))
    cluster.start_worker(victim, ["--quiet"])
    return code


def run_base(objects, work, secrets):
    """The whole training run of the base manifests, as local processes."""
    cluster, _ = new_local_cluster(objects, work, secrets)
    results, shards = cluster.run_to_end()
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


def run_with_eviction(objects, work, secrets):
    """The base's run again, one worker evicted midway and replaced by a pod with its index, as
    the Job does: every worker, the replacement too, exits 0 and the run reaches the target.
    (The shards' final versions are printed, not checked: after a replacement they can end one
    round apart, a fault of the sync protocol that this scenario shows and the plain run does
    not.)"""
    cluster, ports = new_local_cluster(objects, work, secrets)
    job = [o for o in objects if o["kind"] == "Job"][0]
    try:
        cluster.start_servers(["--exit_when_done"])
        cluster.wait_healthy()
        cluster.start_workers(["--quiet"])
        code = evict_and_replace(cluster, job, ports[cluster.servers[0].name])
        cluster.wait(cluster.workers, 600)
        cluster.wait(cluster.servers, 60)
        results = [cluster.summary(p) for p in cluster.workers]
        shards = [cluster.summary(p) for p in cluster.servers]
    finally:
        cluster.stop()
    accuracy = min(r["test_accuracy"] for r in results)
    print("k8s base, %s evicted midway (exit %d: the Job starts it again, uncounted) and "
          "replaced: ranks %s finished, test accuracy %.4f, shard versions %s" %
          (cluster.workers[-1].name, code, sorted(r["rank"] for r in results), accuracy,
           [s["version"] for s in shards]))
    if sorted(r["rank"] for r in results) != list(range(len(results))):
        fail("after the replacement, ranks %s finished" % sorted(r["rank"] for r in results))
    if accuracy < ACCURACY_TARGET:
        fail("with a replaced worker, accuracy %.4f below %.2f" % (accuracy, ACCURACY_TARGET))


def check_worker_exit_codes(rendered, work, secrets):
    """The codes ps-worker really exits with meet the Job's podFailurePolicy as intended: a
    configuration it refuses (the external overlay's Job grown to a third worker without a token
    for it) fails the Job; shards that stay away past the retry budget count as one retry."""
    external = copy.deepcopy(rendered["deploy/k8s/overlays/external-workers"])
    job = [o for o in external if o["kind"] == "Job"][0]
    job["spec"]["completions"] = job["spec"]["parallelism"] = 3
    cluster, _ = new_local_cluster(external, os.path.join(work, "no-token"), secrets)
    refused = run_once(cluster, cluster.workers[2], ["--retry_budget=0s"])
    if job_outcome(job, refused) != "FailJob":
        fail("a worker without its token exits %d: the Job's verdict is %s, not FailJob" %
             (refused, job_outcome(job, refused)))
    base = rendered["deploy/k8s/base"]
    base_job = [o for o in base if o["kind"] == "Job"][0]
    cluster, _ = new_local_cluster(base, os.path.join(work, "no-servers"), {})
    gone = run_once(cluster, cluster.workers[0], ["--retry_budget=2s", "--rpc_timeout=1s"])
    if job_outcome(base_job, gone) != "Count":
        fail("a worker whose shards are gone exits %d: the Job's verdict is %s, not Count" %
             (gone, job_outcome(base_job, gone)))
    print("worker exit codes: %d without its token (the Job fails at once), %d when the shards "
          "stay away (counted, retried)" % (refused, gone))


def run_once(cluster, pod, extra_args):
    """The exit code of `pod`'s own command (with `extra_args`), with nothing else running."""
    argv, env = pod.local(BINARIES, cluster.replacements(pod), extra_args)
    proc = Proc(argv, os.path.join(cluster.work, pod.name + ".log"), env=env)
    return proc.wait(60, pod.name)


def run_without_pod_index_label(objects, work):
    """Kubernetes 1.27: no apps.kubernetes.io/pod-index label, so PS_SHARD_INDEX is empty; each
    server must still serve the shard of its pod name's ordinal."""
    cluster, _ = new_local_cluster(objects, work, {}, pod_index_label=False)
    try:
        if any(p.env["PS_SHARD_INDEX"] != "" for p in cluster.servers):
            fail("the 1.27 pods still get a shard index from the label")
        cluster.start_servers()
        lines = cluster.wait_healthy()
        shards = [int(i) for i in re.findall(r"^server \d+: shard (\d+) of", lines, re.M)]
        if shards != [p.index for p in cluster.servers]:
            fail("without the pod-index label the servers serve shards %s:\n%s" % (shards, lines))
    finally:
        cluster.stop()
    print("k8s base without the pod-index label (1.27): servers %s serve shards %s" %
          ([p.name for p in cluster.servers], shards))


def start_servers_of(where, objects, work, secrets):
    """Every server of an overlay starts with its settings and passes the workers' own health
    check (over TLS and with a token where the overlay says so; on loopback, the certificate is
    checked against the first shard's name); SIGTERM then stops each with exit 0."""
    cluster, _ = new_local_cluster(objects, work, secrets)
    tls = flag(cluster.workers[0].argv, "tls_ca")
    extra = ["--tls_server_name=" + shard_names(objects)[0]] if tls else []
    try:
        cluster.start_servers()
        cluster.wait_healthy(extra_args=extra)
        for proc in cluster.procs.values():
            proc.signal(signal.SIGTERM)
        cluster.wait(cluster.servers, 60)
        print("k8s %s: %d servers started with its settings, healthy, stopped cleanly" %
              (where, len(cluster.servers)))
    finally:
        cluster.stop()


# ---- 4. By name, over TLS, in network namespaces ------------------------------------------------

def run_by_name(secrets_dir, work):
    """Step 4, in namespaces of its own: tests/netns_run.sh runs this file again with --by-name.
    Exit 77 (no root or unshare) skips it, and says so."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([os.path.join(here, "netns_run.sh"), sys.executable, __file__,
                          "--by-name", BUILD, SOURCE, secrets_dir, work])
    if out.returncode == 77:
        print("SKIP (part): workers by name over TLS need network namespaces (root and unshare)")
    elif out.returncode != 0:
        fail("workers by name over TLS: exit %d (above)" % out.returncode)


def by_name_main(secrets_dir, work):
    from harness.netns import Network, bind_hosts_file
    os.makedirs(work, exist_ok=True)
    objects = manifests.render(os.path.join(K8S, "overlays", "external-workers"))
    net = Network()
    pods = manifests.pods(objects)
    servers = [p for p in pods if p.argv[0] == "ps-server"]
    for number, pod in enumerate(servers):
        net.add_host(pod.name, 10 + number)
    net.add_host("in-cluster", 30)  # where the Job's worker pods run
    net.add_host("outside", 31)     # a machine outside the cluster
    names = {n: servers[i].name for i, forms in enumerate(shard_names(objects, NAMESPACE))
             for n in forms}
    outside = outside_worker_command()
    for i, address in enumerate(flag(outside, "servers").split(",")):
        names[address.rsplit(":", 1)[0]] = servers[i].name
    hosts = os.path.join(work, "hosts")
    net.hosts_file(hosts, names)
    bind_hosts_file(hosts)
    for client in ("in-cluster", "outside"):
        for pod in servers:
            net.check_route(client, net.hosts[pod.name])
    by_name_with(objects, net, load_secrets(secrets_dir), secrets_dir, outside,
                 os.path.join(work, "readme-cert"), expect_ok=True)
    by_name_with(objects, net, load_secrets(os.path.join(secrets_dir, "old")), None, None,
                 os.path.join(work, "old-cert"), expect_ok=False)


def by_name_with(objects, net, secrets, secrets_dir, outside, work, expect_ok):
    """The overlay's shards in their namespaces with `secrets`; every in-cluster worker's health
    check by the names of PS_SERVERS and by the .svc forms, and the outside worker's command,
    each from a namespace of its own. With the old certificate, they must fail by gRPC's
    peer-name check."""
    def launch(pod, argv, env, log_path):
        host = pod.name if pod.argv[0] == "ps-server" else "in-cluster"
        return net.run(host, argv, log_path, env=env)

    def replacements(pod):  # only the volumes: names and addresses are the manifests' own
        return [(m["mountPath"], os.path.join(work, pod.name, m["name"]))
                for m in pod.container.get("volumeMounts", [])]
    os.makedirs(work)
    cluster = Cluster(objects, BINARIES, work, launch, replacements)
    fill_secrets(cluster, work, secrets)
    check = ["--health_check", "--retry_budget=0s", "--rpc_timeout=5s"]
    try:
        cluster.start_servers()
        wait_until(lambda: all("event=listening" in p.text() for p in cluster.procs.values()),
                   60, "the shards to listen")
        if not expect_ok:
            failed = health_check(cluster, cluster.workers[0], [], check, ok=False)
            if "is not in peer certificate" not in failed:
                fail("with a *.ps-server certificate the worker failed otherwise:\n" + failed)
            print("by name, *.ps-server certificate: the worker fails (Peer name ... is not in "
                  "peer certificate)")
            return
        for pod in cluster.workers:
            health_check(cluster, pod, [], check)
        for form in (1, 2):
            servers = ",".join("%s:50051" % forms[form]
                               for forms in shard_names(objects, NAMESPACE))
            health_check(cluster, cluster.workers[0], ["--servers=" + servers], check)
        outside_health_check(net, outside, secrets_dir, work, check)
        print("by name over TLS (README's certificate): workers %s by PS_SERVERS, by the .svc and "
              ".svc.cluster.local names, and the outside worker's command by %s" %
              ([p.name for p in cluster.workers], flag(outside, "servers")))
    finally:
        cluster.stop()


def health_check(cluster, pod, override, check, ok=True):
    """The worker pod's own command with --health_check (and `override`) from its namespace;
    fails unless it exits 0 (ok) or non-zero (not ok). Returns its output."""
    argv, env = pod.local(BINARIES, cluster.replacements(pod), override + check)
    log = os.path.join(cluster.work, "%s-check.log" % pod.name)
    code = cluster.launch(pod, argv, env, log).wait(60, pod.name + " health check")
    with open(log) as f:
        text = f.read()
    if (code == 0) != ok:
        fail("%s health check %s exited %d:\n%s" % (pod.name, override, code, text[-3000:]))
    return text


def outside_health_check(net, outside, secrets_dir, work, check):
    """The README's outside worker command, its files from the recipe's folder, as a health
    check from the namespace "outside"."""
    argv = [BINARIES["ps-worker"]] + [
        re.sub(r"^(--tls_ca=|--token_file=)(.*)$",
               lambda m: m.group(1) + os.path.join(secrets_dir, m.group(2)), a)
        for a in outside[1:]] + check
    proc = net.run("outside", argv, os.path.join(work, "outside.log"))
    if proc.wait(60, "outside worker") != 0:
        fail("the outside worker's health check failed:\n" + proc.text()[-3000:])


# ---- main ---------------------------------------------------------------------------------------

def render_and_check(work, version):
    rendered = {}
    for where, path in kustomizations(work):
        objects = manifests.render(path)
        lines = manifests.validate(objects, SOURCE, os.path.join(BUILD, "k8s-validate"))
        check_objects(where, objects)
        move = check_meaning(where, objects, version)
        print("%s: %d objects valid (%s); what they mean checked (a shard's move off a lost "
              "node: up to %d s)" % (where, len(lines),
                                     ", ".join(l.split(" ", 1)[1] for l in lines), move))
        rendered[where] = objects
    return rendered


def main():
    if BY_NAME:
        return by_name_main(ARGS[2], ARGS[3])
    if not shutil.which("kubectl"):
        print("SKIP: kubectl not found (not in Debian 12; see deploy/install-deps.sh)")
        sys.exit(77)
    version = project_version()
    work = tempfile.mkdtemp(prefix="ps_k8s_")
    try:
        rendered = render_and_check(work, version)
        check_compose_agrees(rendered["deploy/k8s/base"])
        check_readme_commands(rendered, version)
        secrets_dir = os.path.join(work, "secrets")
        secrets = readme_secrets(secrets_dir)
        old_recipe_secrets(os.path.join(secrets_dir, "old"), secrets)
        check_certificate_names(rendered, secrets_dir, os.path.join(secrets_dir, "old"))
        run_base(rendered["deploy/k8s/base"], os.path.join(work, "base"), secrets)
        run_with_eviction(rendered["deploy/k8s/base"], os.path.join(work, "eviction"), secrets)
        check_worker_exit_codes(rendered, os.path.join(work, "exit-codes"), secrets)
        run_without_pod_index_label(rendered["deploy/k8s/base"], os.path.join(work, "1.27"))
        for where, objects in rendered.items():
            if "overlays" in where:
                start_servers_of(where, objects, os.path.join(work, where.replace("/", "_")),
                                 secrets)
        run_by_name(secrets_dir, os.path.join(work, "by-name"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
