"""Replay recorded runs (xtc2 or CXI) to a veto daemon, writing what it keeps: a DAQ writer stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from clients.cxi import CxiWriter
from clients.hitwriter import Frame, Summary, stream
from clients.veto import VetoClient
from service import sources
from service.protocol import EventKey


def frames_of(paths: list[Path], *, detector: str = "cspad", limit: int | None = None) -> Iterator[Frame]:
    """Frames of the runs in order; the run number is the file's position + its sidecar's run."""
    for i, path in enumerate(paths):
        run = int(sources.run_info(path).get("run", i + 1))
        for ev in sources.events(path, detector=detector, limit=limit):
            key = EventKey(run=run, pulse_id=ev.pulse_id, timestamp=ev.timestamp, detector=detector)
            yield Frame(key=key, image=ev.image, truth=ev.truth)


def replay(paths: list[Path], *, frames_endpoint: str, verdicts_endpoint: str,
           out_dir: Path | None = None, rate_hz: float = 0.0, deadline_ms: float = 1000.0,
           limit: int | None = None) -> Summary:
    """Stream the runs through the daemon; kept frames go to CXI files under out_dir (if given)."""
    with VetoClient(frames_endpoint, verdicts_endpoint, deadline_ms=deadline_ms) as veto:
        veto.wait_subscribed()
        writer = CxiWriter(Path(out_dir) / "hits") if out_dir else None
        try:
            return stream(frames_of(paths, limit=limit), veto, writer, rate_hz=rate_hz)
        finally:
            if writer is not None:
                writer.close()
