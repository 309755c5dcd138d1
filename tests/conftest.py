"""Shared fixtures. The plain helpers they build on (artifacts, a daemon on loopback ports, clients,
a real Prometheus) are in tests/helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import make_artifact


@pytest.fixture(autouse=True, scope="session")
def no_leftover_mpich_segments():
    """psana's MPI must not leave /dev/shm/mpich_shm_* segments behind (they fill /dev/shm).

    A segment is named after its process id (hex); this process's own is removed at its exit.
    """
    before = set(Path("/dev/shm").glob("mpich_shm_*"))
    yield
    left = {
        p
        for p in set(Path("/dev/shm").glob("mpich_shm_*")) - before
        if int(p.name.split("_")[2], 16) != os.getpid()
    }
    assert not left, f"leftover MPI shared memory: {sorted(map(str, left))}"


@pytest.fixture
def tiny_artifact(tmp_path: Path) -> Path:
    """An untrained artifact for the small test layout (tests/helpers.py RAW, ROI); threshold 0.5."""
    return make_artifact(tmp_path / "tiny.pt")


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A bound unix datagram socket standing in for systemd's NOTIFY_SOCKET, which the environment
    names for the test's duration (a daemon reads it at start)."""
    import socket

    path = str(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        yield sock
