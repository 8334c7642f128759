"""Kubernetes manifests as local processes. render() runs `kubectl kustomize`; validate() checks the
objects against the Kubernetes schemas (tests/k8s/validate.mjs, npm package kubernetes-models);
pods() lists the pods the StatefulSets and Indexed Jobs would create, with the command line and
environment the kubelet would give their container (envFrom ConfigMaps, env with fieldRef to the
pod's name and labels, JOB_COMPLETION_INDEX, $(VAR) in command and args). Tests run those, so the
manifests cannot drift from the binaries."""
import json
import os
import re
import shutil
import subprocess

import yaml

from harness.procs import fail

POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"


def render(kustomization_dir):
    if not shutil.which("kubectl"):
        fail("kubectl not found (it renders the kustomizations)")
    out = subprocess.run(["kubectl", "kustomize", kustomization_dir], capture_output=True,
                         text=True)
    if out.returncode != 0:
        fail("kubectl kustomize %s failed:\n%s" % (kustomization_dir, out.stderr))
    return [o for o in yaml.safe_load_all(out.stdout) if o]


def validate(objects, source_dir, work_dir):
    """Validates `objects` with tests/k8s/validate.mjs; returns its output lines. The npm packages
    are installed once into work_dir (npm ci: exactly the versions of package-lock.json)."""
    if not shutil.which("node") or not shutil.which("npm"):
        fail("node and npm are needed to validate the manifests (deploy/install-deps.sh)")
    here = os.path.join(source_dir, "tests", "k8s")
    os.makedirs(work_dir, exist_ok=True)
    for name in ("package.json", "package-lock.json", "validate.mjs"):
        shutil.copy(os.path.join(here, name), work_dir)
    stamp = os.path.join(work_dir, "node_modules", ".package-lock.json")
    if not os.path.exists(stamp) or os.path.getmtime(stamp) < os.path.getmtime(
            os.path.join(here, "package-lock.json")):
        npm = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=work_dir,
                             capture_output=True, text=True)
        if npm.returncode != 0:
            fail("npm ci in %s failed:\n%s%s" % (work_dir, npm.stdout, npm.stderr))
    path = os.path.join(work_dir, "objects.json")
    with open(path, "w") as f:
        json.dump(objects, f)
    out = subprocess.run(["node", os.path.join(work_dir, "validate.mjs"), path],
                         capture_output=True, text=True)
    if out.returncode != 0:
        fail("objects do not validate against the Kubernetes schemas:\n%s%s" %
             (out.stdout, out.stderr))
    return out.stdout.splitlines()


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(found) != 1:
        fail("expected one %s named %s, found %d" % (kind, name, len(found)))
    return found[0]


class Pod:
    """One pod of a workload: its name, index, container spec, argv and environment."""

    def __init__(self, workload, index, name, container, volumes, env):
        self.workload = workload  # the StatefulSet's or Job's name
        self.index = index
        self.name = name
        self.container = container
        self.volumes = volumes  # the pod's volumes, by name
        self.env = env
        self.argv = [expand(a, env) for a in container.get("command", []) +
                     container.get("args", [])]

    def local(self, binaries, replacements, extra_args=()):
        """argv and environment to run this pod here: the binary from `binaries` (by the name the
        container runs), every (old, new) of `replacements` applied to arguments and variable
        values (addresses, volume paths), and nothing else of this process's environment but PATH.
        """
        def fix(s):
            for old, new in replacements:
                s = s.replace(old, new)
            return s
        if self.argv[0] not in binaries:
            fail("pod %s runs %s, not one of %s" % (self.name, self.argv[0], list(binaries)))
        argv = [binaries[self.argv[0]]] + [fix(a) for a in self.argv[1:]] + list(extra_args)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        env.update({k: fix(v) for k, v in self.env.items()})
        return argv, env


def fill_secret_volumes(pod, folder_of_mount, secrets):
    """Writes what each Secret volume of `pod` holds (its items, or all keys) into the folder its
    mount maps to here. `secrets`: Secret name -> {key: bytes}."""
    for mount in pod.container.get("volumeMounts", []):
        secret = pod.volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            continue
        if secret["secretName"] not in secrets:
            fail("pod %s mounts Secret %s, which the test does not make" %
                 (pod.name, secret["secretName"]))
        data = secrets[secret["secretName"]]
        items = secret.get("items") or [{"key": k, "path": k} for k in data]
        folder = folder_of_mount(mount)
        os.makedirs(folder, exist_ok=True)
        for item in items:
            if item["key"] not in data:
                fail("Secret %s has no key %s" % (secret["secretName"], item["key"]))
            with open(os.path.join(folder, item["path"]), "wb") as f:
                f.write(data[item["key"]])


def expand(value, env):
    """Kubernetes' $(VAR) expansion in command, args and env values; $$ escapes."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def _container_env(container, config_maps, metadata):
    """The container's environment as the kubelet sets it. A fieldRef to a label the pod does not
    have gives "", as the kubelet does (the pod-index label before Kubernetes 1.28)."""
    env = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref is None or ref["name"] not in config_maps:
            fail("envFrom %s: only ConfigMaps of these manifests are supported" % source)
        env.update({source.get("prefix", "") + k: v for k, v in config_maps[ref["name"]].items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
            continue
        source = var.get("valueFrom", {})
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            label = re.fullmatch(r"metadata\.labels\['([^']+)'\]", path)
            if path == "metadata.name":
                env[var["name"]] = metadata["name"]
            elif label:
                env[var["name"]] = metadata["labels"].get(label.group(1), "")
            else:
                fail("env %s: fieldRef %s is not supported here (pod %s)" %
                     (var["name"], path, metadata["name"]))
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[var["name"]] = config_maps[ref["name"]][ref["key"]]
        else:
            fail("env %s: unsupported source %s" % (var["name"], source))
    return env


def pods(objects, pod_index_label=True):
    """The pods of every StatefulSet and Indexed Job, in order, as Pod objects. Without
    pod_index_label, StatefulSet pods lack apps.kubernetes.io/pod-index, as before Kubernetes
    1.28."""
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in by_kind(objects, "ConfigMap")}
    out = []
    for o in objects:
        name, spec = o["metadata"]["name"], o.get("spec", {})
        if o["kind"] == "StatefulSet":
            count = spec.get("replicas", 1)
        elif o["kind"] == "Job":
            if spec.get("completionMode") != "Indexed":
                fail("Job %s is not an Indexed Job" % name)
            count = spec["completions"]
        else:
            continue
        template = spec["template"]
        containers = template["spec"]["containers"]
        if len(containers) != 1:
            fail("%s %s: expected one container, found %d" % (o["kind"], name, len(containers)))
        for i in range(count):
            # Job pods' real names have a random suffix too.
            pod_name = "%s-%d" % (name, i)
            labels = dict(template.get("metadata", {}).get("labels", {}))
            env = {}
            if o["kind"] == "StatefulSet" and pod_index_label:
                labels[POD_INDEX_LABEL] = str(i)
            else:
                env["JOB_COMPLETION_INDEX"] = str(i)
            env.update(_container_env(containers[0], config_maps,
                                      {"name": pod_name, "labels": labels}))
            volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
            out.append(Pod(name, i, pod_name, containers[0], volumes, env))
    return out
