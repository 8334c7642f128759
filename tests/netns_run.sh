#!/usr/bin/env bash
# Runs a command inside a private network namespace and a private mount namespace of its own
# (shared/TESTING.md): the command starts with only a loopback interface and no route, so nothing it
# sends can leave the machine; the namespaces it makes with `ip netns add` are registered in a
# private /run/netns and end with it, and a bind mount over /etc/hosts is seen by it alone.
# Usage: tests/netns_run.sh COMMAND [ARGS...]. Exits 77 (ctest: skipped) without root or unshare.
set -euo pipefail
if [ "$(id -u)" -ne 0 ] || ! unshare --net --mount true 2>/dev/null; then
  echo "SKIP: network namespaces need root and unshare" >&2
  exit 77
fi
for tool in ip tc; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool not found (iproute2)" >&2; exit 77; }
done
mkdir -p /run/netns
# What the namespaces were outside, so that tests/harness/netns.py can check it is inside new ones.
NETNS_RUN_OUTER_NET=$(readlink /proc/self/ns/net) NETNS_RUN_OUTER_MNT=$(readlink /proc/self/ns/mnt)
export NETNS_RUN_OUTER_NET NETNS_RUN_OUTER_MNT
exec unshare --net --mount --propagation private -- bash -c '
  set -e
  mount -t tmpfs tmpfs /run/netns
  ip link set lo up
  exec "$@"' netns_run "$@"
