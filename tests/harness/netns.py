"""Several hosts on one machine: one network namespace per host, each joined to a bridge by a veth
link with its own 10.x address, optionally rate-limited by tbf, and links that can be cut.

Safety (shared/TESTING.md): this must only ever run inside the test's own private network
namespace, made by tests/netns_run.sh (unshare --net). Network() refuses to start anywhere else:
the namespace it starts in must have no interface but lo and no route, so no address used here
can lead off the machine, and every address is checked with `ip route get` before use."""
import ipaddress
import os
import subprocess

from harness.procs import Proc, fail

BRIDGE = "psbr0"


def ip(*args, check=True):
    out = subprocess.run(["ip"] + list(args), capture_output=True, text=True)
    if check and out.returncode != 0:
        fail("ip %s: %s" % (" ".join(args), out.stderr.strip()))
    return out.stdout


def tc(*args):
    out = subprocess.run(["tc"] + list(args), capture_output=True, text=True)
    if out.returncode != 0:
        fail("tc %s: %s" % (" ".join(args), out.stderr.strip()))


def _own_namespace(kind):
    """True if this process is in another `kind` namespace (net, mnt) than the one
    tests/netns_run.sh was started in (it records that one in NETNS_RUN_OUTER_<KIND>)."""
    outer = os.environ.get("NETNS_RUN_OUTER_%s" % kind.upper())
    return bool(outer) and os.readlink("/proc/self/ns/" + kind) != outer


def check_private_namespace():
    """Fails unless this process runs in a network namespace of its own that holds nothing yet:
    only lo, no route."""
    links = [line.split(":")[1].strip() for line in ip("-o", "link", "show").splitlines()]
    routes = (ip("route", "show") + ip("-6", "route", "show")).strip()
    if not _own_namespace("net") or links != ["lo"] or routes:
        fail("not inside a fresh private network namespace (interfaces %s, routes %r): run "
             "this through tests/netns_run.sh" % (links, routes))


class Network:
    """A bridge and the hosts on it. Host h has the address subnet[h] and its end of the link is
    eth0; the other end, v-<name>, sits on the bridge in the private namespace, which itself has
    subnet[1] on the bridge (the test's own vantage point, e.g. to scrape metrics)."""

    def __init__(self, subnet="10.77.0.0/24"):
        check_private_namespace()
        self.subnet = ipaddress.ip_network(subnet)
        self.hosts = {}  # name -> address
        self.observer = str(self.subnet[1])
        ip("link", "add", BRIDGE, "type", "bridge")
        ip("addr", "add", "%s/%d" % (self.observer, self.subnet.prefixlen), "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")

    def add_host(self, name, host_number, rate_mbit=None):
        """A namespace `name` with address subnet[host_number]; with rate_mbit, both directions of
        its link are limited to that rate by tbf (egress on each end of the veth)."""
        address = str(self.subnet[host_number])
        outer = "v-" + name
        if len(outer) > 15:
            fail("host name %s too long for an interface name" % name)
        ip("netns", "add", name)
        ip("link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", name)
        ip("link", "set", outer, "master", BRIDGE)
        ip("link", "set", outer, "up")
        ip("-n", name, "addr", "add", "%s/%d" % (address, self.subnet.prefixlen), "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        ip("-n", name, "link", "set", "lo", "up")
        if rate_mbit:
            # burst: three full-size packets, so that a message of many packets leaves at the
            # link's rate instead of in one burst (tbf's timer is high-resolution: 95.6 Mbit/s of
            # TCP goodput at 100mbit); latency bounds the queue (tbf drops past it).
            limit = ["tbf", "rate", "%dmbit" % rate_mbit, "burst", "4kb", "latency", "25ms"]
            tc("qdisc", "add", "dev", outer, "root", *limit)
            tc("-n", name, "qdisc", "add", "dev", "eth0", "root", *limit)
        self.hosts[name] = address
        return address

    def check_route(self, host, address):
        """Fails unless `address` is reached from `host` (None: from the test itself) over the
        test's own links."""
        if ipaddress.ip_address(address) not in self.subnet:
            fail("%s is outside this test's subnet %s" % (address, self.subnet))
        route = ip("route", "get", address) if host is None else ip("-n", host, "route", "get",
                                                                     address)
        device = BRIDGE if host is None else "eth0"
        if "dev %s" % device not in route and "dev lo" not in route:
            fail("%s would reach %s by %r, not by the test's bridge" % (host, address, route))

    def run(self, host, argv, log_path, env=None):
        """Starts argv inside `host`'s namespace."""
        return Proc(["ip", "netns", "exec", host] + argv, log_path, env=env)

    def cut(self, host):
        """Takes the bridge end of host's link down: nothing passes either way."""
        ip("link", "set", "v-" + host, "down")

    def restore(self, host):
        """Brings a cut link back up (its tbf limits stay as they were)."""
        ip("link", "set", "v-" + host, "up")

    def hosts_file(self, path, names):
        """Writes an /etc/hosts mapping each name in `names` (name -> host) to its address, for a
        bind mount over /etc/hosts in the private mount namespace."""
        with open(path, "w") as f:
            f.write("127.0.0.1 localhost\n")
            for name, host in names.items():
                f.write("%s %s\n" % (self.hosts[host], name))


def bind_hosts_file(path):
    """Makes `path` this mount namespace's /etc/hosts; only in a private mount namespace
    (tests/netns_run.sh), so the machine's own /etc/hosts is never touched."""
    if not _own_namespace("mnt"):
        fail("not inside a private mount namespace: run this through tests/netns_run.sh")
    subprocess.run(["mount", "--bind", path, "/etc/hosts"], check=True)
