"""Replay runs (xtc2, CXI, or psana's live shared memory) to a veto daemon, writing what it keeps:
a DAQ writer stand-in."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from clients.cxi import CxiWriter
from clients.hitwriter import Frame, Summary, stream
from clients.veto import VetoClient
from service import sources, xtc2
from service.protocol import EventKey

log = logging.getLogger("hitveto.replay")


def frames_of(paths: list[Path], *, detector: str = "cspad", limit: int | None = None) -> Iterator[Frame]:
    """Frames of the runs in order; the run number is the file's own, else its sidecar's, else its
    position in the list (from 1)."""
    for i, path in enumerate(paths):
        sidecar_run = int(sources.run_info(path).get("run", i + 1))
        for ev in sources.events(path, detector=detector, limit=limit):
            yield _frame(ev, ev.run or sidecar_run, detector)


def live_frames(tag: str, *, detector: str = "cspad", runs: int | None = None,
                limit: int | None = None) -> Iterator[Frame]:
    """Frames from psana's shared-memory live mode under `tag`; see `xtc2.read_live`.

    psana may skip events when this reader falls behind: the gaps in the pulse ids are logged.
    """
    seen, first, last = 0, None, None
    try:
        for ev in islice(xtc2.read_live(tag, detector=detector, runs=runs), limit):
            seen, last = seen + 1, ev.pulse_id
            first = ev.pulse_id if first is None else first
            yield _frame(ev, ev.run, detector)
    finally:
        skipped = (last - first + 1 - seen) if seen else 0
        log.info("live mode: %d frames read, %d pulses skipped by psana's monitor", seen, skipped)


def replay(frames: Iterable[Frame], *, frames_endpoint: str, verdicts_endpoint: str,
           out_dir: Path | None = None, rate_hz: float = 0.0, deadline_ms: float = 1000.0) -> Summary:
    """Stream the frames through the daemon; kept frames go to CXI files under out_dir (if given)."""
    with VetoClient(frames_endpoint, verdicts_endpoint, deadline_ms=deadline_ms) as veto:
        veto.wait_subscribed()
        writer = CxiWriter(Path(out_dir) / "hits") if out_dir else None
        try:
            return stream(frames, veto, writer, rate_hz=rate_hz)
        finally:
            if writer is not None:
                writer.close()


def _frame(ev: xtc2.RunEvent, run: int, detector: str) -> Frame:
    key = EventKey(run=run, pulse_id=ev.pulse_id, timestamp=ev.timestamp, detector=detector)
    return Frame(key=key, image=ev.image, truth=ev.truth)
