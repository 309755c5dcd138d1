"""The one place psana is imported: lazily, with its MPI shared memory made unable to leak.

Importing psana initialises MPI (mpi4py, the `mpich` wheel), and MPICH creates a 4 MB POSIX
shared-memory segment `/dev/shm/mpich_shm_*` that it removes only in MPI_Finalize, which runs at a
clean interpreter exit. A process that is killed (SIGTERM, SIGKILL), leaves through `os._exit` (a
forked worker) or aborts an MPI job leaves the segment behind. Every process on a node has attached
the segment by the time MPI_Init returns, so we unlink it right after the import: the mappings stay
valid, and nothing is left on disk however the process ends.

It also makes `DataSource(exp=..., run=..., dir=...)` work offline (see `_scan_dir_offline`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

SHM_PREFIX = "/dev/shm/mpich_shm_"


def import_psana(module: str = "psana") -> ModuleType:
    """psana, or one of its submodules (e.g. "psana.dgramedit"), imported on first use."""
    _initialise()
    return importlib.import_module(module)


@functools.cache
def _initialise() -> None:
    importlib.import_module("psana")
    unlink_mpich_segments()
    _scan_dir_offline()


def psana_tool(name: str) -> Path:
    """One of the C++ tools the psana wheel ships in site-packages/bin (not on PATH)."""
    spec = importlib.util.find_spec("psana")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("psana is not installed (pip install psana mpich)")
    return Path(spec.origin).parents[1] / "bin" / name


def mapped_mpich_segments() -> list[Path]:
    """The MPICH shared-memory files this process has mapped and that still exist."""
    with open("/proc/self/maps") as maps:
        paths = {line.split(maxsplit=5)[5].strip() for line in maps if SHM_PREFIX in line}
    # An unlinked file shows as "<path> (deleted)": nothing left to remove.
    return sorted(Path(p) for p in paths if not p.endswith("(deleted)"))


def unlink_mpich_segments() -> list[Path]:
    """Unlink this process's MPICH segments; returns those removed (another rank may win the race)."""
    removed = []
    for path in mapped_mpich_segments():
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def _scan_dir_offline() -> None:
    """With an explicit `dir`, find a run's files on disk without asking SLAC's logbook.

    psana asks the logbook web service for the run's file list before it scans `dir`, outside any
    try/except: offline, `DataSource(exp=..., dir=...)` dies with a requests ConnectionError. With
    `dir` given (and not live mode) psana already falls back to the disk scan when the logbook's
    list does not match, so skipping the query changes nothing but the network call.
    """
    from psana.psexp.ds_base import DataSourceBase

    original = DataSourceBase._get_file_info_from_db
    if getattr(original, "_hitveto_offline", False):
        return

    def file_info(self, runnum):
        if self.dir and not self.live:
            return {}
        return original(self, runnum)

    file_info._hitveto_offline = True  # type: ignore[attr-defined]  # marks the patch as ours
    DataSourceBase._get_file_info_from_db = file_info
