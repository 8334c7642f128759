#!/usr/bin/env bash
# Installs the Debian 12 packages the project needs to build, test and run the demo
# (libzip for numpy .npz model files; clang-14 and its runtime for the sanitized build and the fuzzer, openssl for the TLS tests,
# prometheus for promtool, which checks the metrics endpoint, docker-compose, podman (runc,
# netavark, aardvark-dns, iptables, uidmap) and mmdebstrap to build the images and run
# docker-compose.yml for real (tests/container_test.py), node and npm to validate the Kubernetes manifests, iproute2 for the tests
# with several hosts in network namespaces, python3-dev, pybind11-dev, python3-torch and python3-venv
# for the Python package slowlink, its torch wrapper and `pip install ./python`, python3-matplotlib
# for the experiments' plots: make reproduce-stich-quick is part of make test).
# --bench is kept for the benchmarks' targets; it adds nothing any more.
# Idempotent: does nothing (and needs no network) when everything is already there.
set -euo pipefail

packages=(
  build-essential cmake pkg-config ccache
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libeigen3-dev libgtest-dev libgmock-dev libbenchmark-dev prometheus-cpp-dev libzip-dev
  dataset-fashion-mnist
  zlib1g-dev iperf3 python3 python3-grpcio python3-protobuf python3-numpy python3-dev pybind11-dev
  python3-pytest python3-torch python3-venv python3-matplotlib
  clang-14 libclang-rt-14-dev openssl prometheus docker-compose python3-yaml iproute2
  podman runc netavark aardvark-dns iptables mmdebstrap uidmap
)
# Node.js may come from elsewhere (NodeSource ships npm inside its nodejs, which Debian's npm
# conflicts with): Debian's only when there is no node at all.
command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)
# kubectl (for `kubectl kustomize`) is not in Debian 12: it comes from Kubernetes' own apt
# repository (pkgs.k8s.io). Without it tests/k8s_test.py reports itself skipped.
command -v kubectl >/dev/null ||
  echo "install-deps: kubectl not found; install it from pkgs.k8s.io to test deploy/k8s" >&2

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
