"""psana's live shared-memory mode, served: the wheel's `shmemServer` replays a run file as a DAQ
node's monitor would, and what it leaves behind is removed (`xtc2.read_live` reads it)."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from pathlib import Path

from hitveto.io.psana_import import psana_tool


def serve(
    path: Path, tag: str, *, rate_hz: float = 0.0, clients: int = 1, buffers: int = 8, loops: int = 1
) -> subprocess.Popen:
    """Start the psana wheel's `shmemServer` serving one run file under `tag`, as a live DAQ would.

    It waits for `clients` readers and serves the run to each, `loops` times over. Stop it only
    after its readers stopped (see `read_live`), then call `remove`: it leaves its shared
    memory (`/dev/shm/PdsMonitorSharedMemory_<tag>`) behind.
    """
    largest = max(_dgram_sizes(Path(path)))
    cmd = [
        str(psana_tool("shmemServer")),
        "-p",
        tag,
        "-n",
        str(buffers),
        "-s",
        hex(largest + 4096),
        "-f",
        str(path),
        "-c",
        str(clients),
        "-L",
        str(loops),
    ]
    if rate_hz > 0:
        cmd += ["-r", str(int(rate_hz))]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


# A shmemServer's POSIX message queues (one per client too) outlive it. Left behind they filled the
# quota (fs.mqueue.queues_max 256: ~50 servers); later servers failed ("mq_open: No space left on
# device") and their readers waited for ever.
SHMEM_QUEUES = ("PdsFromMonitorDiscovery_{tag}", "PdsRequestQueue_{tag}", "PdsShuffleQueue_{tag}")
MAX_CLIENT_QUEUES = 64


def remove(tag: str) -> None:
    """Remove what a stopped shmemServer left under `tag`: its shared memory and message queues."""
    Path(f"/dev/shm/PdsMonitorSharedMemory_{tag}").unlink(missing_ok=True)
    queues = [name.format(tag=tag) for name in SHMEM_QUEUES]
    queues += [f"PdsToMonitorEvQueue_{tag}_{i}" for i in range(MAX_CLIENT_QUEUES)]
    unlink = _mq_unlink()
    for name in queues:
        unlink(f"/{name}".encode())  # -1 (ENOENT) for a queue that is not there: nothing to do


@functools.cache
def _mq_unlink():
    import ctypes
    import ctypes.util

    librt = ctypes.CDLL(ctypes.util.find_library("rt") or "librt.so.1", use_errno=True)
    unlink = librt.mq_unlink
    unlink.argtypes, unlink.restype = [ctypes.c_char_p], ctypes.c_int
    return unlink


def _dgram_sizes(path: Path) -> Iterator[int]:
    """Each dgram's size, from its header: 12 bytes of timestamp and env, then the Xtc, whose
    extent (bytes 20-23) counts its own 12-byte header."""
    with open(path, "rb") as f:
        while len(header := f.read(24)) == 24:
            extent = int.from_bytes(header[20:24], "little")
            yield 12 + extent
            f.seek(extent - 12, 1)
