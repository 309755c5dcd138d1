"""Runs as real xtc2 files, written with psana's DgramEdit and read back with psana.DataSource.

A run is written as the DAQ lays it out, so that both of psana's ways in work:

    <dir>/<exp>-r<run:04d>-s000-c000.xtc2                   the run (bigdata)
    <dir>/smalldata/<exp>-r<run:04d>-s000-c000.smd.xtc2     its index, from the wheel's `smdwriter`

`read_run(file)` opens `DataSource(files=...)` (serial); `read_experiment_run(dir, experiment=,
run=)` opens `DataSource(exp=, run=, dir=)`, which needs the index and is the mode that runs in
parallel under `mpirun` (offline it relies on `hitveto.io.psana_import`'s logbook workaround). psana
finds a run's files by run number alone, so keep one experiment per directory.

Dgrams: Configure declares the detector (`xtc2_layouts`: a Jungfrau's or an ePix10ka's raw stack
as the DAQ's segments of its own dettype, anything else in hitveto's container) and `runinfo`
(expt, runnum); then BeginRun (runinfo), BeginStep, Enable, one L1Accept per frame, Disable,
EndStep, EndRun. Always `skip_calib_load="all"`: offline, psana must not look for SLAC's
calibration database.

Every run, simulated or a beamline's, is read as psana users read it: a DAQ detector through
`run.Detector(name).raw.raw(evt)`, the raw stack as recorded.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hitveto.io import xtc2_layouts
from hitveto.io.psana_import import import_psana, psana_tool
from hitveto.io.xtc2_layouts import CONTAINER, RESERVED, TRUTH_DETECTOR

log = logging.getLogger("hitveto.xtc2")
DEFAULT_EXPERIMENT, DEFAULT_RUN = "xpptut15", 1
DAQ_NAME = re.compile(r"(?P<exp>.+)-r(?P<run>\d{4})-s\d{3}-c\d{3}\.xtc2")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEvent:
    timestamp: int  # the event's xtc2 timestamp (unique, increasing)
    pulse_id: int  # 0, 1, 2, ... within the run
    image: np.ndarray  # the detector frame (read-only when read from a file)
    truth: dict[str, int] = field(default_factory=dict)  # simulator truth; {} for real data
    run: int = 0  # the run number its BeginRun carries; 0 when unknown


def run_path(directory: Path, experiment: str, run: int) -> Path:
    """Where a run's xtc2 file goes in an experiment directory."""
    return Path(directory) / f"{experiment}-r{run:04d}-s000-c000.xtc2"


def smalldata_path(path: Path) -> Path:
    """The smalldata index psana looks for beside a run file."""
    path = Path(path)
    return path.parent / "smalldata" / f"{path.name.removesuffix('.xtc2')}.smd.xtc2"


def write_run(
    path: Path,
    events: Iterable[RunEvent],
    *,
    detector: str = "cspad",
    experiment: str | None = None,
    run: int | None = None,
) -> int:
    """Write the events as one xtc2 run plus its smalldata index (streaming); returns the count.

    experiment and run default to those in a DAQ-style file name, else xpptut15 and 1. The first
    event fixes the image dtype and shape and the truth fields; an event that differs, or a
    timestamp that does not increase, raises ValueError and leaves no file behind.
    """
    path = Path(path)
    experiment, run = _run_identity(path, experiment, run)
    events = iter(events)
    first = next(events, None)
    if first is None:
        raise ValueError(f"{path}: a run needs at least one event")
    if first.timestamp < 4:
        raise ValueError(f"{path}: first timestamp {first.timestamp} leaves no room for transitions")
    smd = smalldata_path(path)
    tmp, smd_tmp = (p.with_name(f".{p.name}.{os.getpid()}.tmp") for p in (path, smd))
    smd.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as out:
            n = _write_dgrams(out, first, events, detector, experiment, run)
        _index(tmp, smd_tmp)
        tmp.replace(path)
        smd_tmp.replace(smd)
    finally:
        for p in (tmp, smd_tmp):
            p.unlink(missing_ok=True)
    return n


def _write_dgrams(
    out, first: RunEvent, events: Iterator[RunEvent], detector: str, experiment: str, run: int
) -> int:
    de = import_psana("psana.dgramedit")
    T = de.PyTransitionId
    buf = bytearray(first.image.nbytes + (1 << 20))  # one dgram at a time: a frame plus headers

    def save(dgram) -> None:
        dgram.save(buf)
        out.write(memoryview(buf)[: dgram.size])

    ts = first.timestamp - 4  # the transitions take the timestamps before the first event
    config = de.DgramEdit(transition_id=T.Configure, ts=ts)
    layout = xtc2_layouts.declare(de, config, detector, first)
    info = config.Detector(
        de.DetectorDef("runinfo", "runinfo", ""),
        de.AlgDef("runinfo", 0, 0, 1),
        {"expt": (str, 1), "runnum": (np.uint32, 0)},
    )
    save(config)
    begin_run = de.DgramEdit(transition_id=T.BeginRun, config_dgramedit=config, ts=ts + 1)
    info.runinfo.expt, info.runinfo.runnum = experiment, run
    begin_run.adddata(info.runinfo)
    save(begin_run)
    for i, tid in enumerate((T.BeginStep, T.Enable), start=2):
        save(de.DgramEdit(transition_id=tid, config_dgramedit=config, ts=ts + i))
    n, ts = 0, first.timestamp - 1
    for ev in _chain(first, events):
        _check(ev, first, ts)
        dgram = de.DgramEdit(transition_id=T.L1Accept, config_dgramedit=config, ts=ev.timestamp)
        layout.fill(dgram, ev)
        save(dgram)
        n, ts = n + 1, ev.timestamp
    for i, tid in enumerate((T.Disable, T.EndStep, T.EndRun), start=1):
        save(de.DgramEdit(transition_id=tid, config_dgramedit=config, ts=ts + i))
    return n


def _check(ev: RunEvent, first: RunEvent, previous_ts: int) -> None:
    if ev.timestamp <= previous_ts:
        raise ValueError(f"pulse {ev.pulse_id}: timestamp {ev.timestamp} <= {previous_ts}")
    if ev.image.dtype != first.image.dtype or ev.image.shape != first.image.shape:
        raise ValueError(
            f"pulse {ev.pulse_id}: image {ev.image.dtype}{ev.image.shape} differs "
            f"from the run's {first.image.dtype}{first.image.shape}"
        )
    if ev.truth.keys() != first.truth.keys():
        raise ValueError(
            f"pulse {ev.pulse_id}: truth fields {sorted(ev.truth)} differ "
            f"from the run's {sorted(first.truth)}"
        )


def _index(bigdata: Path, out: Path) -> None:
    """The smalldata index, by the psana wheel's own `smdwriter` (milliseconds per run)."""
    smdwriter = psana_tool("smdwriter")
    done = subprocess.run(
        [str(smdwriter), "-f", str(bigdata), "-o", str(out)], capture_output=True, text=True
    )
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"{smdwriter} failed on {bigdata}: {done.stderr.strip() or done.stdout}")


def read_run(path: Path, *, detector: str = "cspad") -> Iterator[RunEvent]:
    """The events of one xtc2 file, through psana (serial); truth fields where the file has them.

    Reads the file's first run only: a DAQ file holds one, and asking psana for another reads
    past the end, which costs a second ("Problem reading dgram header.").
    """
    ds = import_psana().DataSource(files=[str(path)], skip_calib_load="all")
    run = next(ds.runs(), None)
    if run is not None:
        yield from _events(run, detector, parallel=False)


def read_experiment_run(
    directory: Path, *, experiment: str, run: int, detector: str = "cspad", batch_size: int = 10
) -> Iterator[RunEvent]:
    """The events of one run in an experiment directory, via `DataSource(exp=, run=, dir=)`.

    Under mpirun call it on every rank: each big-data rank yields its share (batches of
    batch_size events), the others yield nothing.
    """
    psana = import_psana()
    ds = psana.DataSource(
        exp=experiment, run=run, dir=str(directory), skip_calib_load="all", batch_size=batch_size
    )
    parallel = import_psana("mpi4py.MPI").COMM_WORLD.Get_size() > 1
    for r in ds.runs():
        yield from _events(r, detector, parallel=parallel)


def read_live(tag: str, *, detector: str = "cspad", runs: int | None = None) -> Iterator[RunEvent]:
    """Events from psana's live shared-memory mode (`DataSource(shmem=tag)`).

    The frames come from a monitoring server on this node (the DAQ's, or the wheel's `shmemServer`
    replaying a file; see `shmem.serve`). This is psana's monitoring path: its reader thread
    keeps only the newest event, so a consumer slower than the stream sees a sample (see
    docs/CLIENTS.md). Between runs psana waits for the next one; `runs` stops after that many
    (None: until the caller stops iterating).
    """
    ds = import_psana().DataSource(shmem=tag, skip_calib_load="all")
    latest, stale = 0, 0
    try:
        for n, r in enumerate(ds.runs(), start=1):
            for ev in _events(r, detector, parallel=False):
                # The monitor passes transitions and events on separately: a server that starts
                # over (a replayed file) can show the next run's events before this EndRun.
                if ev.timestamp <= latest:
                    stale += 1
                    continue
                latest = ev.timestamp
                yield ev
            if runs is not None and n >= runs:
                return
    finally:
        if stale:
            log.warning("live mode: %d events with a timestamp not after the previous one, dropped", stale)
        # psana's reader thread reconnects, holding the GIL, when the server goes away: stop it
        # while the server is still there, or this process freezes.
        ds.dm.close_reader()


def _events(run, detector: str, *, parallel: bool) -> Iterator[RunEvent]:
    """The detector's frames: a DAQ's as psana users read them (`run.Detector(name).raw.raw(evt)`,
    the raw stack in its own dtype), or hitveto's container's `image`; with the pulse id and truth
    of hitveto's container where the run has them, else the event count as pulse id (-1 under MPI,
    where a rank sees only its share) and no truth."""
    number = int(getattr(run, "runnum", 0) or 0)
    if _algorithm(run, detector) == "raw":
        image_of = run.Detector(detector).raw.raw
        container = TRUTH_DETECTOR if TRUTH_DETECTOR in detectors(run) else None
    else:
        image_of = getattr(run.Detector(detector), CONTAINER[0]).image
        container = detector
    read_truth = _truth_reader(run, container)
    for i, evt in enumerate(run.events()):
        image = image_of(evt)
        if image is None:  # an event without this detector
            continue
        pulse_id, truth = read_truth(evt)
        if pulse_id is None:  # the count is the id, which holds only when one reader sees all
            pulse_id = -1 if parallel else i
        yield RunEvent(timestamp=int(evt.timestamp), pulse_id=pulse_id, image=image, run=number, truth=truth)


def _truth_reader(run, container: str | None) -> Callable[[Any], tuple[int | None, dict[str, int]]]:
    """An event's pulse id (None where not stored) and truth fields, from hitveto's container."""
    if container is None:
        return lambda evt: (None, {})
    fields = _fields(run, container)
    data = getattr(run.Detector(container), CONTAINER[0])
    names = [name for name in fields if name not in RESERVED]
    has_pulse_id = "pulse_id" in fields

    def read(evt) -> tuple[int | None, dict[str, int]]:
        pulse_id = int(data.pulse_id(evt)) if has_pulse_id else None
        return pulse_id, {name: int(getattr(data, name)(evt)) for name in names}

    return read


def detectors(run) -> dict[str, str]:
    """The run's readable detectors: name -> psana dettype (e.g. {"jungfrau": "jungfrau"})."""
    found = {}
    for config in run.configs:
        software = getattr(config, "software", None)
        for name in [n for n in dir(software) if not n.startswith("_")]:
            segments = getattr(software, name)
            segment = next(iter(segments.values()), None) if isinstance(segments, dict) else None
            if hasattr(segment, CONTAINER[0]) or hasattr(segment, "raw"):
                found[name] = getattr(segment, "dettype", "?")
    return found


def _algorithm(run, detector: str) -> str:
    """How the run stores this detector: hitveto's container ("xtc1dump") or a DAQ's ("raw")."""
    for config in run.configs:
        segments = getattr(getattr(config, "software", None), detector, None)
        if segments:
            segment = next(iter(segments.values()))
            for algorithm in (CONTAINER[0], "raw"):
                if hasattr(segment, algorithm):
                    return algorithm
    have = ", ".join(f"{n} ({t})" for n, t in sorted(detectors(run).items())) or "none"
    raise DetectorNotInRun(f"no detector {detector!r} in this run; it has: {have} (--detector NAME)")


class DetectorNotInRun(ValueError):
    """The detector asked for is not in the run (the message lists those that are)."""


def _fields(run, detector: str) -> list[str]:
    """The data fields this run declares for hitveto's container, from its Configure.

    Not `run.detinfo`, nor the detector's accessors: psana keeps those from runs opened earlier
    in the same process, so they may name fields this run lacks.
    """
    for config in run.configs:
        segments = getattr(getattr(config, "software", None), detector, None)
        if segments:
            declared = getattr(next(iter(segments.values())), CONTAINER[0])
            return [n for n in dir(declared) if not n.startswith("_") and n not in ("software", "version")]
    raise DetectorNotInRun(f"{detector}/{CONTAINER[0]}: not in this run's Configure")


def _run_identity(path: Path, experiment: str | None, run: int | None) -> tuple[str, int]:
    named = DAQ_NAME.fullmatch(path.name)
    if named is None:
        return experiment or DEFAULT_EXPERIMENT, DEFAULT_RUN if run is None else run
    exp, number = named["exp"], int(named["run"])
    if (experiment or exp, number if run is None else run) != (exp, number):
        raise ValueError(f"{path.name} names experiment {exp} run {number}, not {experiment} run {run}")
    return exp, number


def _chain(first: RunEvent, rest: Iterator[RunEvent]) -> Iterator[RunEvent]:
    yield first
    yield from rest
