"""The README's first command: a simulated CSPAD run streamed through a real daemon to the hit writer."""

from __future__ import annotations

import logging
from pathlib import Path

from hitveto.io import crystfel, sources
from hitveto.offline.indexing import indexamajig_options
from hitveto.offline.replay import frames_of, replay
from hitveto.serving.launcher import start_daemon
from hitveto.sim.params import PRESETS
from hitveto.sim.run import simulate_runs
from hitveto_client.hitwriter import Summary

log = logging.getLogger(__name__)
CELL = "lysozyme.cell"


def run_demo(workdir: Path, *, n_frames: int = 240, rate_hz: float = 120.0) -> Summary:
    """Simulate (or reuse) run 1, start `hitveto serve` with the shipped model, replay, write hits."""
    workdir = Path(workdir)
    (run_path,) = simulate_runs(
        workdir / "runs", runs=[1], n_frames=n_frames, preset="lysozyme", layout="raw", fmt="xtc2", seed=2026
    )
    crystal = PRESETS["lysozyme"].crystal  # what the user knows of their sample: its unit cell
    (workdir / "hits").mkdir(parents=True, exist_ok=True)
    (workdir / "hits" / CELL).write_text(crystfel.cell_text(crystal.cell_a, crystal.cell_angles_deg))
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
            experiment=sources.experiment(run_path),
        )
    finally:
        daemon.stop()


def index_command(workdir: Path, indexamajig: str = "indexamajig") -> str:
    """The one command that indexes the demo's hits with CrystFEL (docs/CLIENTS.md shows it)."""
    hits = Path(workdir) / "hits"
    return (
        f"{indexamajig} -i {hits}/hits.lst -g {hits}/hits.geom -p {hits}/{CELL} -o {hits}/hits.stream "
        f"-j 2 {' '.join(indexamajig_options(PRESETS['lysozyme'].detector.adu_per_photon))}"
    )
