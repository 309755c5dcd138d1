#!/usr/bin/env bash
# Install hitveto and everything it needs on a Debian machine (run as root, or with sudo for apt).
#   bash deploy/install.sh            daemon, trainer, clients, psana, test tools
# psana needs Kerberos headers to build one dependency and an MPI library (the mpich wheel);
# Prometheus (with promtool) is what the metrics tests scrape with; the tests build the vendored
# CrystFEL (tests/vendor/) once with meson, ninja and its libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
APT=(libkrb5-dev prometheus
     meson ninja-build pkg-config libhdf5-dev libgsl-dev libfftw3-dev flex bison zlib1g-dev libcjson-dev libzmq3-dev)
if ! dpkg -s "${APT[@]}" >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${APT[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0"
$PY -m pip install -q --disable-pip-version-check -e ".[service,psana,test]"
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
echo "hitveto installed: $(command -v hitveto || echo "$PY -m hitveto.cli")"
