"""What a Kubernetes cluster would decide from rendered manifests, computed offline, so that a test
can check what the manifests mean rather than only their shape: whether a label selector selects
a pod, what a Job does with a failed pod (podFailurePolicy), whether a NetworkPolicy lets a
connection in, how many pods a PodDisruptionBudget lets a drain evict. Each follows the rules of
the Kubernetes API reference for the fields these manifests use, and fails on fields it does not
know, so that a new field cannot be passed over silently."""
import ipaddress
import re

from harness.procs import fail


def parse_duration(text):
    """A duration as the binaries' flags take them (20s, 15m, 1h30m, 500ms) in seconds, or None
    for anything else."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3}
    parts = re.findall(r"([\d.]+)(ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * units[u] for n, u in parts)


def duration_seconds(text):
    seconds = parse_duration(text)
    if seconds is None:
        fail("not a duration: %r" % text)
    return seconds


def selects(selector, labels):
    """Whether a LabelSelector (matchLabels, matchExpressions) selects an object with `labels`.
    An empty selector selects everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            fail("unknown selector operator %s" % op)
    return True


def job_outcome(job, exit_code, conditions=()):
    """What the Job controller does with one of `job`'s pods that ended with `exit_code` (of its
    one container) and has the pod `conditions` (types, e.g. "DisruptionTarget"): "Succeeded"
    (exit 0: the index is done), or the action of the first podFailurePolicy rule that matches
    (Ignore, FailJob, FailIndex, Count), or "Count" (counts against the backoff limits) if none
    does."""
    if exit_code == 0:
        return "Succeeded"
    container = job["spec"]["template"]["spec"]["containers"][0]["name"]
    for rule in (job["spec"].get("podFailurePolicy") or {}).get("rules", []):
        on_codes, on_conditions = rule.get("onExitCodes"), rule.get("onPodConditions")
        if on_codes is not None:
            if on_codes.get("containerName", container) != container:
                continue
            inside = exit_code in on_codes["values"]
            if inside == (on_codes["operator"] == "In"):
                return rule["action"]
        elif on_conditions is not None:
            if any(p["type"] in conditions and p.get("status", "True") == "True"
                   for p in on_conditions):
                return rule["action"]
        else:
            fail("podFailurePolicy rule with neither onExitCodes nor onPodConditions: %s" % rule)
    return "Count"


def allowed_disruptions(pdb, pods_labels):
    """How many of the pods (a list of their labels, all healthy) the PodDisruptionBudget lets
    voluntary evictions take at once, or None if it selects none of them."""
    covered = [labels for labels in pods_labels if selects(pdb["spec"]["selector"], labels)]
    if not covered:
        return None
    spec = pdb["spec"]

    def count(value):
        if isinstance(value, str) and value.endswith("%"):
            fail("percentages are not modelled (PodDisruptionBudget %s)" % pdb["metadata"]["name"])
        return int(value)
    if "maxUnavailable" in spec:
        return count(spec["maxUnavailable"])
    return max(0, len(covered) - count(spec["minAvailable"]))


class Peer:
    """Where a connection comes from: a pod (its labels, its namespace's labels, and whether that
    namespace is the destination's), or an address outside the cluster."""

    def __init__(self, labels=None, namespace_labels=None, same_namespace=True, address=None):
        self.labels = labels
        self.namespace_labels = namespace_labels or {}
        self.same_namespace = same_namespace
        self.address = address

    def matches(self, peer):
        if "ipBlock" in peer:
            if self.address is None:
                return False  # pod-to-pod traffic is matched by selectors, not by ipBlock here
            block = peer["ipBlock"]
            address = ipaddress.ip_address(self.address)
            return (address in ipaddress.ip_network(block["cidr"]) and
                    not any(address in ipaddress.ip_network(e) for e in block.get("except", [])))
        if self.labels is None:
            return False  # an outside address has no pod labels
        if "namespaceSelector" in peer:
            if not selects(peer["namespaceSelector"], self.namespace_labels):
                return False
        elif not self.same_namespace:
            return False  # a podSelector alone means the policy's own namespace
        return selects(peer.get("podSelector", {}), self.labels)


def _port_matches(rule_port, port_name, port_number):
    if rule_port.get("protocol", "TCP") != "TCP":
        return False
    value = rule_port.get("port")
    if value is None:
        return True
    if isinstance(value, str):
        return value == port_name
    end = rule_port.get("endPort", value)
    return value <= port_number <= end


def ingress_allowed(objects, peer, pod_labels, container, port_number):
    """Whether the NetworkPolicies of `objects` let `peer` connect to TCP `port_number` of a pod
    with `pod_labels` whose container spec is `container` (named ports resolve against it).
    A pod that no policy with policyTypes Ingress selects accepts everything."""
    names = {p["containerPort"]: p.get("name") for p in container.get("ports", [])}
    policies = [o for o in objects if o["kind"] == "NetworkPolicy" and
                "Ingress" in o["spec"].get("policyTypes", ["Ingress"]) and
                selects(o["spec"]["podSelector"], pod_labels)]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            sources = rule.get("from")
            if sources and not any(peer.matches(s) for s in sources):
                continue
            ports = rule.get("ports")
            if not ports or any(_port_matches(p, names.get(port_number), port_number)
                                for p in ports):
                return True
    return False
