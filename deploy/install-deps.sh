#!/usr/bin/env bash
# Installs the Debian 12 packages the project needs to build, test and run the demo
# (clang-14 and its runtime for the sanitized build and the fuzzer, openssl for the TLS tests,
# prometheus for promtool, which checks the metrics endpoint, docker-compose to check
# docker-compose.yml).
# Idempotent: does nothing (and needs no network) when everything is already there.
set -euo pipefail

packages=(
  build-essential cmake pkg-config ccache
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libeigen3-dev libgtest-dev libgmock-dev libbenchmark-dev
  dataset-fashion-mnist
  zlib1g-dev iperf3 python3 python3-grpcio python3-protobuf
  clang-14 libclang-rt-14-dev openssl prometheus docker-compose python3-yaml
)

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
