"""The README's first command: a simulated CSPAD run streamed through a real daemon to the hit writer."""

from __future__ import annotations

import logging
from pathlib import Path

from hitveto.offline.replay import frames_of, replay
from hitveto.serving.launcher import start_daemon
from hitveto.sim.run import simulate_runs
from hitveto_client.hitwriter import Summary

log = logging.getLogger(__name__)


def run_demo(workdir: Path, *, n_frames: int = 240, rate_hz: float = 120.0) -> Summary:
    """Simulate (or reuse) run 1, start `hitveto serve` with the shipped model, replay, write hits."""
    workdir = Path(workdir)
    (run_path,) = simulate_runs(
        workdir / "runs", runs=[1], n_frames=n_frames, preset="lysozyme", layout="raw", fmt="xtc2", seed=2026
    )
    log.info("starting the daemon with the shipped model")
    daemon = start_daemon("model.device=auto", log_path=workdir / "daemon.log")
    try:
        log.info(
            "daemon READY: frames %s, verdicts %s, metrics :%d",
            daemon.ingest,
            daemon.publish,
            daemon.metrics_port,
        )
        return replay(
            frames_of([run_path]),
            frames_endpoint=daemon.ingest,
            verdicts_endpoint=daemon.publish,
            out_dir=workdir / "hits",
            rate_hz=rate_hz,
        )
    finally:
        daemon.stop()
