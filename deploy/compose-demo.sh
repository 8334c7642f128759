#!/usr/bin/env bash
# `make compose-demo`: builds the images, runs docker-compose.yml (2 shards, 3 workers, Prometheus)
# until every worker is done, prints each worker's summary, and tears everything down (down -v).
# With a Docker engine it uses Docker (`docker compose`, else docker-compose). Without one it runs
# the same file with podman in a private store (tests/container_test.py --demo, which also checks
# the checkpoints and Prometheus).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker info >/dev/null 2>&1; then
  echo "compose-demo: no Docker engine; using podman (a private store in ~/.cache/ps-containers)"
  exec /usr/bin/python3 tests/container_test.py "$PWD" --demo
fi
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
project=psdemo
cleanup() { "${compose[@]}" -p "$project" down -v --timeout 20 >/dev/null 2>&1 || true; }
trap cleanup EXIT

"${compose[@]}" -p "$project" up -d --build
for worker in worker-0 worker-1 worker-2; do
  id=$("${compose[@]}" -p "$project" ps -q "$worker")
  echo "compose-demo: waiting for $worker"
  code=$(docker wait "$id")
  [ "$code" = 0 ] || { docker logs "$id" | tail -20; echo "compose-demo: $worker exited $code" >&2; exit 1; }
  docker logs "$id" 2>&1 | grep '^summary ' | tail -1 | /usr/bin/python3 -c '
import json, sys
s = json.loads(sys.stdin.read()[len("summary "):])
print("compose-demo: %s: test accuracy %.4f after %d rounds, uplink %.1fx and downlink %.1fx smaller"
      % (sys.argv[1], s["test_accuracy"], s["rounds"], s["uplink_compression"],
         s["downlink_compression"]))' "$worker"
done
