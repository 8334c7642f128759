"""The pods of rendered Kubernetes manifests run as processes on this machine: the server shards
(StatefulSet pods), then, once every shard passes the workers' own health check, the workers
(Indexed Job pods). Where a process runs (loopback, or a network namespace per pod) and how names
and volumes map are the caller's choice: `launch(pod, argv, env, log_path)` starts a process and
`replacements(pod)` gives the (old, new) strings applied to its arguments and environment.
pod_index_label=False makes the pods as Kubernetes 1.27 would, without the pod-index label."""
import json
import os

from harness.manifests import one, pods as manifest_pods
from harness.procs import fail, wait_until


def server_settings(objects):
    """The StatefulSet, its headless Service, and the ConfigMap data servers and workers read."""
    sts = [o for o in objects if o["kind"] == "StatefulSet"]
    if len(sts) != 1:
        fail("expected one StatefulSet, found %d" % len(sts))
    sts = sts[0]
    service = one(objects, "Service", sts["spec"]["serviceName"])
    return sts, service


class Cluster:
    def __init__(self, objects, binaries, work_dir, launch, replacements, pod_index_label=True):
        self.binaries = binaries
        self.work = work_dir
        self.launch = launch
        self.replacements = replacements
        self.sts, self.service = server_settings(objects)
        all_pods = manifest_pods(objects, pod_index_label)
        self.servers = [p for p in all_pods if p.workload == self.sts["metadata"]["name"]]
        self.workers = [p for p in all_pods if p.workload != self.sts["metadata"]["name"]]
        self.procs = {}  # pod name -> Proc

    def _start(self, pod, extra_args):
        argv, env = pod.local(self.binaries, self.replacements(pod), extra_args)
        proc = self.launch(pod, argv, env, os.path.join(self.work, pod.name + ".log"))
        self.procs[pod.name] = proc
        return proc

    def summary_path(self, pod):
        return os.path.join(self.work, pod.name + ".json")

    def start_servers(self, extra_args=()):
        for pod in self.servers:
            self._start(pod, ["--summary_json=" + self.summary_path(pod)] + list(extra_args))

    def wait_healthy(self, timeout=60, extra_args=()):
        """Until the first worker's own command with --health_check (and `extra_args`) passes
        (every shard answers: it has loaded its model), as a container health check would run
        it. Returns what the last check printed: one line per shard."""
        pod = self.workers[0]
        probe = os.path.join(self.work, "health")

        def healthy():
            for name, proc in self.procs.items():
                if not proc.alive():
                    fail("%s exited with %s:\n%s" % (name, proc.popen.returncode,
                                                      proc.text()[-3000:]))
            argv, env = pod.local(self.binaries, self.replacements(pod),
                                  ["--health_check", "--retry_budget=0s", "--rpc_timeout=2s"] +
                                  list(extra_args))
            return self.launch(pod, argv, env, probe).popen.wait(timeout=30) == 0
        wait_until(healthy, timeout, "every server shard to pass the health check", poll=0.2)
        with open(probe) as f:
            return f.read()

    def start_workers(self, extra_args=()):
        for pod in self.workers:
            self.start_worker(pod, extra_args)

    def start_worker(self, pod, extra_args=()):
        """One worker pod: also a replacement for one that ended (its log and summary are
        written anew)."""
        self._start(pod, ["--summary_json=" + self.summary_path(pod)] + list(extra_args))

    def wait(self, pods, timeout, expect_code=0):
        for pod in pods:
            code = self.procs[pod.name].wait(timeout, pod.name)
            if code != expect_code:
                fail("%s exited with %d, expected %d; log:\n%s" %
                     (pod.name, code, expect_code, self.procs[pod.name].text()[-3000:]))

    def run_to_end(self, timeout=600):
        """Servers (--exit_when_done), then workers once healthy; waits for all of them to exit 0
        and returns the workers' and the servers' summaries."""
        try:
            self.start_servers(["--exit_when_done"])
            self.wait_healthy()
            self.start_workers(["--quiet"])
            self.wait(self.workers, timeout)
            self.wait(self.servers, 60)
            return ([self.summary(p) for p in self.workers],
                    [self.summary(p) for p in self.servers])
        finally:
            self.stop()

    def summary(self, pod):
        with open(self.summary_path(pod)) as f:
            return json.load(f)

    def stop(self):
        for proc in self.procs.values():
            proc.stop()
