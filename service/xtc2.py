"""Runs as real xtc2 files, written with psana's DgramEdit and read back with psana.DataSource.

Layout written: Configure (one detector, dettype `generic_container`, algorithm `xtc1dump` 0.1.0, the
psana detector class for containers of named arrays), BeginRun, BeginStep, Enable, one L1Accept per
frame (fields `image` and one int64 scalar per truth field), Disable, EndStep, EndRun. Files are
named `<exp>-r<run:04d>-s000-c000.xtc2`, the DAQ's naming, so they sit in an experiment directory.
Reading opens `DataSource(files=..., skip_calib_load="all")`: offline, psana must not look for
SLAC's calibration database.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ALGORITHM = ("xtc1dump", 0, 1, 0)
BUFFER_BYTES = 64_000_000          # DgramEdit's default dgram limit; a CSPAD frame is 4.6 MB


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEvent:
    timestamp: int                  # the event's xtc2 timestamp (unique, increasing)
    pulse_id: int                   # 0, 1, 2, ... within the run
    image: np.ndarray               # the detector frame
    truth: dict[str, int] = field(default_factory=dict)   # simulator truth; {} for real data


class _Writer:
    """Serialises DgramEdit dgrams into one reusable buffer and appends them to the file."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")
        self._buf = bytearray(BUFFER_BYTES)

    def save(self, dgram) -> None:
        dgram.save(self._buf)
        self._file.write(memoryview(self._buf)[: dgram.size])

    def close(self) -> None:
        self._file.close()


def write_run(path: Path, events: Iterable[RunEvent], *, detector: str = "cspad") -> int:
    """Write the events as one xtc2 run (streaming); returns how many were written.

    The first event fixes the image dtype and rank and the truth fields for the whole run.
    """
    from psana.dgramedit import AlgDef, DetectorDef, DgramEdit
    from psana.dgramedit import PyTransitionId as T

    events = iter(events)
    first = next(events, None)
    if first is None:
        raise ValueError(f"{path}: a run needs at least one event")
    out = _Writer(Path(path))
    ts = first.timestamp - 8  # transitions take the timestamps just before the first event
    fields = {"image": (first.image.dtype.type, first.image.ndim),
              **{name: (np.int64, 0) for name in first.truth}}
    config = DgramEdit(transition_id=T.Configure, ts=ts)
    det = config.Detector(DetectorDef(detector, "generic_container", "hitveto-sim"),
                          AlgDef(*ALGORITHM), fields)
    out.save(config)
    for tid in (T.BeginRun, T.BeginStep, T.Enable):
        ts += 1
        out.save(DgramEdit(transition_id=tid, config_dgramedit=config, ts=ts))
    n = 0
    try:
        for ev in _chain(first, events):
            dgram = DgramEdit(transition_id=T.L1Accept, config_dgramedit=config, ts=ev.timestamp)
            data = getattr(det, ALGORITHM[0])
            data.image = np.ascontiguousarray(ev.image)
            for name in first.truth:
                setattr(data, name, int(ev.truth[name]))
            dgram.adddata(data)
            out.save(dgram)
            n, ts = n + 1, ev.timestamp
        for tid in (T.Disable, T.EndStep, T.EndRun):
            ts += 1
            out.save(DgramEdit(transition_id=tid, config_dgramedit=config, ts=ts))
    finally:
        out.close()
    return n


def read_run(path: Path, *, detector: str = "cspad") -> Iterator[RunEvent]:
    """The events of one xtc2 file, through psana; truth fields where the file has them."""
    from psana import DataSource

    ds = DataSource(files=[str(path)], skip_calib_load="all")
    run = next(ds.runs())
    det = getattr(run.Detector(detector), ALGORITHM[0])
    names: list[str] | None = None
    for pulse_id, evt in enumerate(run.events()):
        image = det.image(evt)
        if image is None:
            continue
        if names is None:
            names = _truth_fields(det, evt)
        yield RunEvent(timestamp=int(evt.timestamp), pulse_id=pulse_id, image=image,
                       truth={n: int(getattr(det, n)(evt)) for n in names})


def _truth_fields(det, evt) -> list[str]:
    """The scalar fields this run's events carry.

    psana keeps field accessors from runs opened earlier in the same process, so a name listed on
    the detector may be absent from this file's events: keep those that answer.
    """
    names = []
    for name in dir(det):
        if name.startswith("_") or name in ("config", "image"):
            continue
        try:
            value = getattr(det, name)(evt)
        except AttributeError:
            continue
        if np.ndim(value) == 0:
            names.append(name)
    return names


def _chain(first: RunEvent, rest: Iterator[RunEvent]) -> Iterator[RunEvent]:
    yield first
    yield from rest
