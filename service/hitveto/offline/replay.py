"""Replay runs (xtc2, CXI, or psana's live shared memory) to a veto daemon, writing what it keeps:
a DAQ writer stand-in."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from hitveto.io import calibration, crystfel, sources, xtc2
from hitveto.io.calibration import Constants
from hitveto.offline.reprocess import Row, write_verdicts
from hitveto.serving.launcher import DaemonProcess, start_daemon
from hitveto_client import detectors
from hitveto_client.cxi import UNKNOWN, CxiWriter, Experiment
from hitveto_client.hitwriter import Frame, Summary, stream
from hitveto_client.protocol import EventKey
from hitveto_client.veto import Decision, VetoClient

log = logging.getLogger("hitveto.replay")


def frames_of(paths: list[Path], *, detector: str = "cspad", limit: int | None = None) -> Iterator[Frame]:
    """Frames of the runs in order; the run number is the file's own, else its sidecar's, else its
    position in the list (from 1)."""
    for i, path in enumerate(paths):
        sidecar_run = int(sources.run_info(path).get("run", i + 1))
        for ev in sources.events(path, detector=detector, limit=limit):
            yield _frame(ev, ev.run or sidecar_run, detector)


def live_frames(
    tag: str, *, detector: str = "cspad", runs: int | None = None, limit: int | None = None
) -> Iterator[Frame]:
    """Frames from psana's shared-memory live mode under `tag`; see `xtc2.read_live`.

    psana may skip events when this reader falls behind: the gaps in the pulse ids are logged.
    """
    seen, first, last = 0, None, None  # pulse ids: int once a frame came
    try:
        for ev in islice(xtc2.read_live(tag, detector=detector, runs=runs), limit):
            seen, last = seen + 1, ev.pulse_id
            first = ev.pulse_id if first is None else first
            yield _frame(ev, ev.run, detector)
    finally:
        skipped = (last - first + 1 - seen) if first is not None and last is not None else 0
        log.info("live mode: %d frames read, %d pulses skipped by psana's monitor", seen, skipped)


def replay(
    frames: Iterable[Frame],
    *,
    frames_endpoint: str,
    verdicts_endpoint: str,
    out_dir: Path | None = None,
    rate_hz: float = 0.0,
    deadline_ms: float = 1000.0,
    verdict_log: Path | None = None,
    experiment: Experiment | None = None,
    constants: Constants | None = None,
) -> Summary:
    """Stream the frames through the daemon; kept frames go to CXI files under out_dir (if given),
    every verdict to the `verdict_log` CSV (if given).

    With the `experiment` (energy, distance, gain, mask) the files carry what indexing needs, and
    `out_dir/hits.geom` is the CrystFEL geometry for them. With `constants` raw frames are stored
    calibrated, their status as the mask, as hit files for indexing hold them (the daemon judged
    them so)."""
    rows: list[Row] = []
    if constants is not None and experiment is not None:
        experiment = dataclasses.replace(experiment, mask=constants.status)

    def log_verdict(d: Decision) -> None:
        v = d.verdict
        rows.append(Row(d.key.pulse_id, d.key.timestamp, v.score if v else float("nan"), bool(v and v.hit)))

    with VetoClient(frames_endpoint, verdicts_endpoint, deadline_ms=deadline_ms) as veto:
        veto.wait_subscribed()
        writer: CxiWriter | _Calibrating | None = None
        if out_dir is not None:
            writer = CxiWriter(Path(out_dir) / "hits", experiment=experiment or UNKNOWN)
            writer = writer if constants is None else _Calibrating(writer, constants)
        try:
            summary = stream(
                frames, veto, writer, rate_hz=rate_hz, on_decision=log_verdict if verdict_log else None
            )
        finally:
            if writer is not None:
                writer.close()
    if verdict_log:
        write_verdicts(Path(verdict_log), rows)
    if experiment is not None and summary.files:
        geom = Path(out_dir or ".") / "hits.geom"
        geom.write_text(crystfel.geometry_for_file(Path(summary.files[0])))
        log.info("CrystFEL geometry for the hits: %s", geom)
    return summary


@contextlib.contextmanager
def private_daemon(
    model: Path, log_path: Path | None = None, constants: Path | None = None
) -> Iterator[DaemonProcess]:
    """A daemon of our own on loopback serving `model` on CPU, one frame per batch: a frame's
    score then depends on the frame and the model only, so every replay gives the same verdicts.
    With `constants` it calibrates raw frames."""
    settings = ["model.device=cpu", "batch.max_batch=1", "model.threads=1"]
    settings += [f"calib.constants={constants}"] if constants else []
    daemon = start_daemon(*settings, artifact=model, log_path=log_path)
    try:
        yield daemon
    finally:
        daemon.stop()


class _Calibrating:
    """A CxiWriter storing raw frames calibrated with the constants the daemon calibrates with."""

    def __init__(self, writer: CxiWriter, constants: Constants) -> None:
        self._writer, self._constants = writer, constants

    def write(self, image: np.ndarray, **columns: Any) -> bool:
        return self._writer.write(calibration.calibrate(image, self._constants), **columns)

    def __getattr__(self, name: str) -> Any:  # files, not_written, error, close
        return getattr(self._writer, name)


def _frame(ev: xtc2.RunEvent, run: int, detector: str) -> Frame:
    name = detectors.describing(detector, ev.image.shape)  # a DAQ's `jungfrau` of 8 modules: jungfrau4m
    key = EventKey(run=run, pulse_id=ev.pulse_id, timestamp=ev.timestamp, detector=name)
    return Frame(key=key, image=ev.image, truth=ev.truth)
