#!/usr/bin/env bash
# Install hitveto and everything it needs on a Debian machine (run as root, or with sudo for apt).
#   bash deploy/install.sh            daemon, trainer, clients, psana, test tools
# psana needs Kerberos headers to build one dependency and an MPI library (the mpich wheel);
# Prometheus (with promtool) is what the metrics tests scrape with.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
if ! dpkg -s libkrb5-dev prometheus >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq libkrb5-dev prometheus >/dev/null
fi
PY=${PYTHON:-python3}
# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0"
$PY -m pip install -q --disable-pip-version-check -e ".[service,psana,test]"
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
echo "hitveto installed: $(command -v hitveto || echo "$PY -m hitveto.cli")"
