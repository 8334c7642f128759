"""What rendered deploy/k8s manifests must mean for a real cluster, checked offline with
harness/k8s_semantics.py: each check_* function takes a kustomization's name (for messages) and its
objects, and fails with what a cluster would do wrong. Used by tests/k8s_test.py."""
import ipaddress
import re

from harness import manifests
from harness.cluster import server_settings
from harness.k8s_semantics import (Peer, allowed_disruptions, duration_seconds, ingress_allowed,
                                   job_outcome, selects)
from harness.procs import fail

RECOMMENDED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                      "app.kubernetes.io/component", "app.kubernetes.io/part-of",
                      "app.kubernetes.io/version", "app.kubernetes.io/managed-by")
# Labels a selector may use: they never change over the life of the objects (a selector cannot be
# edited, so one with the version would make every upgrade a new StatefulSet).
STABLE_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/component"}
STS_POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"

# A shard's move off a lost node, from the cluster's defaults: the node is marked unreachable
# (kube-controller-manager --node-monitor-grace-period, 50 s from 1.32, 40 s before), its pods are
# evicted once their toleration of node.kubernetes.io/unreachable runs out (300 s, added by the
# DefaultTolerationSeconds admission plugin unless the pod says otherwise), the attach-detach
# controller force-detaches the volume after maxWaitForUnmountDuration (6 min), then the pod
# starts on another node within its startup probe's budget.
NODE_MONITOR_GRACE_S = 50
DEFAULT_UNREACHABLE_TOLERATION_S = 300
FORCE_DETACH_S = 360


def _job(objects):
    jobs = manifests.by_kind(objects, "Job")
    if len(jobs) != 1:
        fail("expected one Job, found %d" % len(jobs))
    return jobs[0]


def _pod_labels(objects):
    """(pod, labels) of every pod, with the labels the controllers add."""
    out = []
    for pod in manifests.pods(objects):
        owner = [o for o in objects if o["metadata"]["name"] == pod.workload and
                 o["kind"] in ("StatefulSet", "Job")][0]
        labels = dict(owner["spec"]["template"]["metadata"].get("labels", {}))
        if owner["kind"] == "StatefulSet":
            labels[STS_POD_NAME_LABEL] = pod.name
            labels[manifests.POD_INDEX_LABEL] = str(pod.index)
        out.append((pod, labels, owner["kind"]))
    return out


def check_image(where, objects, version):
    """Every container runs the image of this version, and is not pulled when the node has it:
    `latest` (or no tag) makes the kubelet pull on every start, which fails for an image loaded
    onto the nodes (kind load) and that no registry has."""
    for pod in manifests.pods(objects):
        image, policy = pod.container["image"], pod.container.get("imagePullPolicy")
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else "latest"
        if tag != version:
            fail("%s: pod %s runs %s, not the project's version %s" % (where, pod.name, image,
                                                                        version))
        if policy != "IfNotPresent":
            fail("%s: pod %s has imagePullPolicy %s, not IfNotPresent" % (where, pod.name, policy))


def check_labels(where, objects, version):
    """Kubernetes' recommended labels on every object and pod template, the version label equal
    to the image's, and selectors only on labels that never change."""
    templates = [(o["kind"] + " " + o["metadata"]["name"] + " (pods)",
                  o["spec"]["template"]["metadata"].get("labels", {}))
                 for o in objects if o["kind"] in ("StatefulSet", "Job")]
    for what, labels in [(o["kind"] + " " + o["metadata"]["name"], o["metadata"].get("labels", {}))
                         for o in objects] + templates:
        missing = [k for k in RECOMMENDED_LABELS if k not in labels]
        if missing:
            fail("%s: %s lacks the recommended labels %s" % (where, what, missing))
        if labels["app.kubernetes.io/version"] != version:
            fail("%s: %s has version label %s, the image is %s" %
                 (where, what, labels["app.kubernetes.io/version"], version))
    for what, selector in _selectors(objects):
        keys = set((selector.get("matchLabels") or {}).keys()) | {
            e["key"] for e in selector.get("matchExpressions") or []}
        if not keys <= STABLE_LABELS | {STS_POD_NAME_LABEL}:
            fail("%s: %s selects by %s, which can change" %
                 (where, what, sorted(keys - STABLE_LABELS)))


def _selectors(objects):
    out = []
    for o in objects:
        name, spec = o["kind"] + " " + o["metadata"]["name"], o.get("spec", {})
        if o["kind"] == "Service" and spec.get("selector"):
            out.append((name, {"matchLabels": spec["selector"]}))
        for key in ("selector", "podSelector"):
            if isinstance(spec.get(key), dict) and o["kind"] != "Service":
                out.append((name + " " + key, spec[key]))
        for c in spec.get("template", {}).get("spec", {}).get("topologySpreadConstraints", []):
            out.append((name + " topology spread", c["labelSelector"]))
    return out


def check_selectors(where, objects):
    """Each selector selects exactly the pods it is meant for: the StatefulSet, the headless
    Service, the disruption budget and the shards' spread select every server pod and no worker;
    the workers' spread every worker pod and no server."""
    pods = _pod_labels(objects)
    servers = [labels for _, labels, kind in pods if kind == "StatefulSet"]
    workers = [labels for _, labels, kind in pods if kind == "Job"]
    sts, service = server_settings(objects)
    server_selectors = [("the StatefulSet", sts["spec"]["selector"]),
                        ("Service " + service["metadata"]["name"],
                         {"matchLabels": service["spec"]["selector"]})]
    server_selectors += [("PodDisruptionBudget " + o["metadata"]["name"], o["spec"]["selector"])
                         for o in manifests.by_kind(objects, "PodDisruptionBudget")]
    server_selectors += [("the shards' topology spread", c["labelSelector"]) for c in
                         sts["spec"]["template"]["spec"].get("topologySpreadConstraints", [])]
    job = _job(objects)
    worker_selectors = [("the workers' topology spread", c["labelSelector"]) for c in
                        job["spec"]["template"]["spec"].get("topologySpreadConstraints", [])]
    for selectors, own, other in ((server_selectors, servers, workers),
                                  (worker_selectors, workers, servers)):
        for what, selector in selectors:
            if not all(selects(selector, labels) for labels in own) or any(
                    selects(selector, labels) for labels in other):
                fail("%s: %s does not select exactly its own pods" % (where, what))


def check_servers(where, objects):
    """The shards as a production cluster needs them: spread over nodes and zones (soft, so that
    a one-node cluster runs), memory request = limit, a new template applied only when a pod is
    deleted, volumes kept when the StatefulSet is deleted or scaled, and names in DNS before the
    pods are Ready."""
    sts, service = server_settings(objects)
    spec = sts["spec"]
    pod_spec = spec["template"]["spec"]
    keys = {c["topologyKey"]: c for c in pod_spec.get("topologySpreadConstraints", [])}
    for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone"):
        if key not in keys or keys[key]["whenUnsatisfiable"] != "ScheduleAnyway":
            fail("%s: the shards are not spread over %s (ScheduleAnyway)" % (where, key))
    for container in pod_spec["containers"]:
        resources = container["resources"]
        if resources["requests"]["memory"] != resources["limits"]["memory"]:
            fail("%s: shard memory request %s != limit %s: the kubelet would evict a shard "
                 "early under memory pressure" % (where, resources["requests"]["memory"],
                                                  resources["limits"]["memory"]))
    if spec.get("updateStrategy", {}).get("type") != "OnDelete":
        fail("%s: a settings change would roll the shards under a running job (updateStrategy "
             "%s)" % (where, spec.get("updateStrategy")))
    retention = spec.get("persistentVolumeClaimRetentionPolicy", {})
    if retention != {"whenDeleted": "Retain", "whenScaled": "Retain"}:
        fail("%s: the checkpoints' retention is %s, not Retain on deletion and scale-down" %
             (where, retention))
    if service["spec"].get("publishNotReadyAddresses") is not True:
        fail("%s: Service %s hides a shard's name until its pod is Ready" %
             (where, service["metadata"]["name"]))


def check_disruption_budget(where, objects):
    """A drain may evict no healthy shard (every worker needs every shard), may evict a shard that
    is not Ready, and the budget covers no worker (their disruptions are the Job's to absorb)."""
    budgets = manifests.by_kind(objects, "PodDisruptionBudget")
    pods = _pod_labels(objects)
    servers = [labels for _, labels, kind in pods if kind == "StatefulSet"]
    workers = [labels for _, labels, kind in pods if kind == "Job"]
    covering = [b for b in budgets if allowed_disruptions(b, servers) is not None]
    if len(covering) != 1:
        fail("%s: %d PodDisruptionBudgets cover the shards, expected 1" % (where, len(covering)))
    budget = covering[0]
    if allowed_disruptions(budget, servers) != 0:
        fail("%s: a drain may evict %d healthy shards at once" %
             (where, allowed_disruptions(budget, servers)))
    if budget["spec"].get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
        fail("%s: a shard that is not Ready would block every drain" % where)
    if any(allowed_disruptions(b, workers) is not None for b in budgets):
        fail("%s: a PodDisruptionBudget covers the workers" % where)


def check_job(where, objects):
    """The Job survives what a cluster does to pods: a disrupted pod is not counted, a refused
    configuration fails the Job at once, retries are per worker and scale with K, and the Job
    gives up only when too few workers are left for the quorum."""
    job = _job(objects)
    spec = job["spec"]
    server_env = [p for p in manifests.pods(objects)
                  if p.workload != job["metadata"]["name"]][0].env
    k_total, quorum = int(server_env["PS_NUM_WORKERS"]), int(server_env.get("PS_MIN_QUORUM", "1"))
    completions, per_index = spec["completions"], spec.get("backoffLimitPerIndex")
    if spec["template"]["spec"].get("restartPolicy") != "Never":
        fail("%s: podFailurePolicy and backoffLimitPerIndex need restartPolicy Never" % where)
    if not per_index:
        fail("%s: no backoffLimitPerIndex: one worker's failures use up every worker's" % where)
    if spec.get("backoffLimit") != per_index * completions:
        fail("%s: backoffLimit %s, expected completions x backoffLimitPerIndex = %d" %
             (where, spec.get("backoffLimit"), per_index * completions))
    if spec.get("maxFailedIndexes") != k_total - quorum or k_total - quorum > completions:
        fail("%s: maxFailedIndexes %s, expected PS_NUM_WORKERS - PS_MIN_QUORUM = %d (<= %d)" %
             (where, spec.get("maxFailedIndexes"), k_total - quorum, completions))
    if spec.get("podReplacementPolicy") != "Failed":
        fail("%s: podReplacementPolicy %s (podFailurePolicy needs Failed)" %
             (where, spec.get("podReplacementPolicy")))
    if spec.get("ttlSecondsAfterFinished", 0) < 3600:
        fail("%s: ttlSecondsAfterFinished %s: the finished Job stays forever or goes before its "
             "logs can be read" % (where, spec.get("ttlSecondsAfterFinished")))
    for code in (1, 2, 137, 143):
        if job_outcome(job, code, ["DisruptionTarget"]) != "Ignore":
            fail("%s: an evicted worker that exits %d counts against the Job (%s)" %
                 (where, code, job_outcome(job, code, ["DisruptionTarget"])))


def check_retry_budget(where, objects):
    """The workers keep retrying a shard while it moves off a lost node, instead of exiting and
    using up their Job's retries."""
    sts, _ = server_settings(objects)
    pod_spec = sts["spec"]["template"]["spec"]
    toleration = [t.get("tolerationSeconds") for t in pod_spec.get("tolerations", [])
                  if t.get("key") == "node.kubernetes.io/unreachable"]
    evict_after = toleration[0] if toleration else DEFAULT_UNREACHABLE_TOLERATION_S
    startup = pod_spec["containers"][0]["startupProbe"]
    start = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    move = NODE_MONITOR_GRACE_S + evict_after + FORCE_DETACH_S + start
    job = _job(objects)
    for pod in manifests.pods(objects):
        if pod.workload == job["metadata"]["name"]:
            budget = duration_seconds(pod.env.get("PS_RETRY_BUDGET", "60s"))
            if budget < move:
                fail("%s: worker %s gives up after %d s, a shard's move off a lost node takes "
                     "up to %d s" % (where, pod.name, budget, move))
    return move


def _peers(objects):
    """Connections to try: from each kind of pod, and from addresses outside the cluster."""
    job = _job(objects)
    worker_labels = job["spec"]["template"]["metadata"]["labels"]
    ranges = [r for o in manifests.by_kind(objects, "Service")
              for r in o["spec"].get("loadBalancerSourceRanges", [])]
    inside = [str(next(ipaddress.ip_network(r).hosts())) for r in ranges]
    return {
        "worker": Peer(worker_labels),
        "prometheus": Peer({"app.kubernetes.io/name": "prometheus"},
                           {"kubernetes.io/metadata.name": "monitoring"}, same_namespace=False),
        "other pod": Peer({"app": "something-else"}),
        "other namespace": Peer(worker_labels, {"kubernetes.io/metadata.name": "elsewhere"},
                                same_namespace=False),
        "allowed range": Peer(address=inside[0]) if inside else None,
        "the internet": Peer(address="198.51.100.7"),
    }


def check_network_policy(where, objects):
    """Who gets in, as the network plugin would decide it: the workers to the shards' gRPC port,
    Prometheus to their metrics port, the external Services' source ranges to gRPC, nobody else
    to any port of a shard, and nobody at all to a worker."""
    pods = _pod_labels(objects)
    peers = _peers(objects)
    for pod, labels, kind in pods:
        ports = {p["name"]: p["containerPort"] for p in pod.container.get("ports", [])}
        ports.setdefault("none", 8080)  # a port the container does not name
        for peer_name, peer in peers.items():
            if peer is None:
                continue
            for port_name, number in ports.items():
                expected = kind == "StatefulSet" and (port_name, peer_name) in (
                    ("grpc", "worker"), ("metrics", "prometheus"), ("grpc", "allowed range"))
                if ingress_allowed(objects, peer, labels, pod.container, number) != expected:
                    fail("%s: %s -> %s port %s (%d) is %s, expected %s" %
                         (where, peer_name, pod.name, port_name, number,
                          "allowed" if not expected else "refused",
                          "allowed" if expected else "refused"))


def check_external_services(where, objects):
    """Each LoadBalancer Service exposes one shard's gRPC port (not its plaintext health port) to
    the source ranges it lists, keeps the client's address, and the NetworkPolicy lets exactly
    those ranges in (checked in check_network_policy)."""
    sts, _ = server_settings(objects)
    shards = [(pod, labels) for pod, labels, kind in _pod_labels(objects) if kind == "StatefulSet"]
    external = [o for o in manifests.by_kind(objects, "Service")
                if o["spec"].get("type") in ("LoadBalancer", "NodePort")]
    served = []
    for service in external:
        name, spec = service["metadata"]["name"], service["spec"]
        ranges = spec.get("loadBalancerSourceRanges") or []
        if not ranges or any(ipaddress.ip_network(r).prefixlen == 0 for r in ranges):
            fail("%s: Service %s is open to the whole internet (loadBalancerSourceRanges %s)" %
                 (where, name, ranges))
        if spec.get("externalTrafficPolicy") != "Local":
            fail("%s: Service %s hides the client's address from the NetworkPolicy" % (where, name))
        selected = [pod for pod, labels in shards if selects({"matchLabels": spec["selector"]},
                                                             labels)]
        if len(selected) != 1:
            fail("%s: Service %s selects %d shards, not one" % (where, name, len(selected)))
        if [p["targetPort"] for p in spec["ports"]] != ["grpc"]:
            fail("%s: Service %s exposes %s, not only the gRPC port" %
                 (where, name, [p["targetPort"] for p in spec["ports"]]))
        served.append(selected[0].name)
    if external and sorted(served) != sorted(pod.name for pod, _ in shards):
        fail("%s: the external Services serve %s, not every shard once" % (where, served))


def check_tls_secrets(where, objects):
    """TLS files come from Secret keys of type kubernetes.io/tls (tls.crt, tls.key, ca.crt), the
    keys cert-manager writes, and the flags point at them."""
    for pod in manifests.pods(objects):
        mounts = {m["name"]: m["mountPath"] for m in pod.container.get("volumeMounts", [])}
        files = {}
        for name, volume in pod.volumes.items():
            for item in (volume.get("secret") or {}).get("items", []):
                files["%s/%s" % (mounts[name], item["path"])] = item["key"]
        for flag in ("tls_cert", "tls_key", "tls_ca"):
            value = [a.split("=", 1)[1] for a in pod.argv if a.startswith("--%s=" % flag)]
            if not value:
                continue
            expected = {"tls_cert": "tls.crt", "tls_key": "tls.key", "tls_ca": "ca.crt"}[flag]
            if files.get(value[0]) != expected:
                fail("%s: pod %s --%s=%s is Secret key %s, not %s" %
                     (where, pod.name, flag, value[0], files.get(value[0]), expected))


def check_podmonitor(where, objects):
    """A PodMonitor, where there is one, scrapes every shard at the port and path its scrape
    annotations give (the metrics endpoint), and no worker."""
    sts, _ = server_settings(objects)
    annotations = sts["spec"]["template"]["metadata"].get("annotations", {})
    for monitor in [o for o in objects if o["kind"] == "PodMonitor"]:
        pods = _pod_labels(objects)
        selected = [kind for _, labels, kind in pods
                    if selects(monitor["spec"]["selector"], labels)]
        if selected.count("StatefulSet") != sts["spec"]["replicas"] or "Job" in selected:
            fail("%s: PodMonitor %s selects %s" % (where, monitor["metadata"]["name"], selected))
        ports = {p["name"]: p["containerPort"]
                 for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            if ports.get(endpoint["port"]) != int(annotations["prometheus.io/port"]) or (
                    endpoint.get("path") != annotations["prometheus.io/path"]):
                fail("%s: PodMonitor endpoint %s is not the shards' metrics port and path" %
                     (where, endpoint))


def claim_labels(objects):
    """The labels of the volume claims the StatefulSet makes: its claim template's, and its
    selector's, which the StatefulSet controller adds."""
    sts, _ = server_settings(objects)
    out = []
    for template in sts["spec"]["volumeClaimTemplates"]:
        labels = dict(template["metadata"].get("labels", {}))
        labels.update(sts["spec"]["selector"].get("matchLabels", {}))
        out.append(labels)
    return out


def parse_selector(text):
    """kubectl's -l k=v,k2=v2 as a LabelSelector."""
    pairs = [p.split("=", 1) for p in text.split(",")]
    if any(len(p) != 2 or not re.fullmatch(r"[\w./-]+", p[0]) for p in pairs):
        fail("unsupported label selector %r" % text)
    return {"matchLabels": dict(pairs)}
