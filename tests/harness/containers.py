"""A private podman engine for the container tests and `make compose-demo`.

Nothing in /etc changes and no other podman user is touched: podman is configured entirely through
CONTAINERS_CONF, CONTAINERS_STORAGE_CONF and CONTAINERS_REGISTRIES_CONF, pointing at files written
into a run folder. Two folders are used:
- the cache (PS_CONTAINER_CACHE, default ~/.cache/ps-containers): the image store, the base
  image's root filesystem and the compiler cache of the image build, kept between runs so that a
  warm run takes seconds (`make container-clean` removes it). podman's own state lives there too,
  because podman refuses a store whose state folders moved.
- the run folder: configuration, the Docker-API socket, logs; removed by close().

Docker's API is served by `podman system service`, so Debian's docker-compose runs the project's
docker-compose.yml unchanged. Without systemd podman runs no health checks itself; a thread runs
them every 2 s for the containers of one compose project (labels set by docker-compose).
"""
import os
import shutil
import subprocess
import tempfile
import threading
import time

CACHE = os.environ.get("PS_CONTAINER_CACHE", os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ps-containers"))
BASE_TAGS = ["docker.io/library/debian:bookworm", "docker.io/library/debian:bookworm-slim"]
PACKAGES = ["podman", "runc", "netavark", "aardvark-dns", "iptables", "mmdebstrap",
            "docker-compose", "uidmap"]


def services_running(services, binary):
    """The names of a compose file's services whose command runs `binary`, sorted."""
    return sorted(n for n, s in services.items() if s.get("command", [""])[0] == binary)


def missing_tools():
    """What of deploy/install-deps.sh's container packages is not installed."""
    tools = {"podman": "podman", "runc": "runc", "mmdebstrap": "mmdebstrap",
             "docker-compose": "docker-compose", "iptables": "iptables"}
    return [t for t in tools if shutil.which(t) is None]


class Engine:
    """One podman store and one API service; use as a context manager."""

    def __init__(self, cache=CACHE, log=print):
        self.cache = cache
        self.log = log
        self.run = tempfile.mkdtemp(prefix="ps_containers_")
        self.socket = os.path.join(self.run, "podman.sock")
        for folder in ["storage", "state/run", "state/tmp", "state/networks", "ccache"]:
            os.makedirs(os.path.join(cache, folder), exist_ok=True)
        self._write_config()
        self.env = dict(os.environ,
                        CONTAINERS_CONF=os.path.join(self.run, "containers.conf"),
                        CONTAINERS_STORAGE_CONF=os.path.join(self.run, "storage.conf"),
                        CONTAINERS_REGISTRIES_CONF=os.path.join(self.run, "registries.conf"),
                        DOCKER_HOST="unix://" + self.socket)
        self.env.pop("DOCKER_CONFIG", None)
        self._service = None
        self._pump = None
        self._stop = threading.Event()

    def _write_config(self):
        state = os.path.join(self.cache, "state")
        files = {
            # The machine's hard open-files limit is below podman's default (1048576), which
            # makes every container fail to start ("error setting rlimit type 7").
            "containers.conf": """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{run}/events.log"
tmp_dir = "{state}/tmp"
[network]
network_config_dir = "{state}/networks"
""",
            "storage.conf": """[storage]
driver = "overlay"
graphroot = "{cache}/storage"
runroot = "{state}/run"
""",
            # No registry is reachable: images are local, short names resolve to docker.io's.
            "registries.conf": """unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
""",
        }
        for name, text in files.items():
            with open(os.path.join(self.run, name), "w") as f:
                f.write(text.format(run=self.run, state=state, cache=self.cache))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def podman(self, *args, check=True, timeout=600):
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError("podman %s failed (%d):\n%s" % (" ".join(args), result.returncode,
                                                              result.stderr[-3000:]))
        return result

    def start_service(self):
        """The Docker API on self.socket, for docker-compose."""
        log = open(os.path.join(self.run, "service.log"), "w")
        self._service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", "unix://" + self.socket], env=self.env,
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not os.path.exists(self.socket):
            if self._service.poll() is not None or time.time() > deadline:
                raise RuntimeError("podman system service did not start:\n" +
                                   open(log.name).read()[-2000:])
            time.sleep(0.1)

    def ensure_base_images(self):
        """debian:bookworm and -slim made locally (mmdebstrap, once) when the store lacks them."""
        if all(self.podman("image", "exists", t, check=False).returncode == 0 for t in BASE_TAGS):
            return
        rootfs = os.path.join(self.cache, "bookworm-minbase.tar")
        if os.path.isdir(rootfs):  # what an unnamed format made of it before: a directory
            shutil.rmtree(rootfs)
        if not os.path.exists(rootfs):
            self.log("containers: making the base image with mmdebstrap (about a minute, once)")
            # --format: mmdebstrap guesses it from the name, and "x.tar.partial" it takes for a
            # directory.
            partial = rootfs + ".partial"
            if os.path.isdir(partial):
                shutil.rmtree(partial)
            subprocess.run(["mmdebstrap", "--variant=minbase", "--format=tar", "--quiet",
                            "bookworm", partial], check=True)
            os.rename(partial, rootfs)
        self.podman("import", rootfs, BASE_TAGS[0])
        for tag in BASE_TAGS[1:]:
            self.podman("tag", BASE_TAGS[0], tag)

    def build(self, dockerfile, tag, context):
        """`podman build` with the compiler cache mounted at /ccache (deploy/Dockerfile uses it)."""
        started = time.time()
        out = os.path.join(self.run, "build-%s.log" % tag.replace(":", "_").replace("/", "_"))
        with open(out, "w") as log:
            result = subprocess.run(
                ["podman", "build", "--pull=never", "--layers", "-f", dockerfile, "-t", tag,
                 "-v", os.path.join(self.cache, "ccache") + ":/ccache", context],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise RuntimeError("building %s failed:\n%s" % (tag, open(out).read()[-4000:]))
        self.log("containers: built %s in %.0f s" % (tag, time.time() - started))

    def project_containers(self, project, all_states=True):
        args = ["ps", "-q", "--filter", "label=com.docker.compose.project=" + project]
        return self.podman(*args + (["-a"] if all_states else [])).stdout.split()

    def run_health_checks(self, project):
        """What a systemd timer does for podman elsewhere: each container's health check every 2 s
        (one thread per engine, for every container of `project`)."""
        if self._pump is not None:
            return

        def pump():
            while not self._stop.wait(2):
                try:
                    for cid in self.project_containers(project, all_states=False):
                        self.podman("healthcheck", "run", cid, check=False, timeout=30)
                except (RuntimeError, subprocess.TimeoutExpired):
                    pass  # a container that went away in between; next time
        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()

    def leftovers(self):
        """Containers, pods, volumes and networks (beside podman's own) in this store."""
        found = {
            "containers": self.podman("ps", "-aq").stdout.split(),
            "pods": self.podman("pod", "ps", "-q").stdout.split(),
            "volumes": self.podman("volume", "ls", "-q").stdout.split(),
            "networks": [n for n in self.podman("network", "ls", "--format",
                                                "{{.Name}}").stdout.split() if n != "podman"],
        }
        return {k: v for k, v in found.items() if v}

    def close(self):
        self._stop.set()
        if self._pump is not None:
            self._pump.join(timeout=35)
        if self._service is not None and self._service.poll() is None:
            self._service.terminate()
            try:
                self._service.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._service.kill()
        shutil.rmtree(self.run, ignore_errors=True)
