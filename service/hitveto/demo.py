"""The README's first command: a simulated run streamed through a real daemon to the hit writer.

The CSPAD's run comes calibrated (as psana's calib gives it). A gain-switching detector's run comes
as its DAQ records it, raw words with gain bits, with a forced-gain dark before it: the demo makes
the constants from the dark (`hitveto dark`) and the daemon calibrates every frame with them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hitveto.io import calibration, crystfel, sources
from hitveto.models import artifact
from hitveto.offline.dark import dark_constants
from hitveto.offline.indexing import indexamajig_options
from hitveto.offline.replay import frames_of, replay
from hitveto.serving.launcher import start_daemon
from hitveto.sim.params import PRESETS, on_detector
from hitveto.sim.run import gain_file, simulate_runs
from hitveto_client import detectors
from hitveto_client.hitwriter import Summary

log = logging.getLogger(__name__)
CELL = "lysozyme.cell"


def run_demo(
    workdir: Path,
    *,
    n_frames: int = 240,
    rate_hz: float = 120.0,
    detector: str = "cspad",
    ice_from: int | None = None,
    metrics_port: int | None = None,
) -> Summary:
    """Simulate (or reuse) run 1, start `hitveto serve` with the detector's shipped model, replay,
    write hits. ice_from: ice forms in the jet from that frame on (the ice alert's demo);
    metrics_port: where the daemon's metrics are (default: any free port)."""
    workdir = Path(workdir)
    raw = detectors.get(detector).gain is not None
    (run_path,) = simulate_runs(
        workdir / "runs",
        runs=[1],
        n_frames=n_frames,
        preset="lysozyme",
        fmt="xtc2",
        seed=2026,
        detector=detector,
        readout="raw" if raw else "calib",
        ice_from=ice_from,
    )
    settings, constants = ["model.device=auto"], None
    if raw:
        constants_path = _constants_from_dark(workdir, detector)
        settings.append(f"calib.constants={constants_path}")
        constants = calibration.load(constants_path)
    crystal = PRESETS["lysozyme"].crystal  # what the user knows of their sample: its unit cell
    (workdir / "hits").mkdir(parents=True, exist_ok=True)
    (workdir / "hits" / CELL).write_text(crystfel.cell_text(crystal.cell_a, crystal.cell_angles_deg))
    log.info("starting the daemon with the shipped model")
    daemon = start_daemon(
        *settings,
        artifact=artifact.SHIPPED[detector],
        log_path=workdir / "daemon.log",
        metrics_port=metrics_port,
    )
    try:
        log.info(
            "daemon READY: frames %s, verdicts %s, metrics :%d",
            daemon.ingest,
            daemon.publish,
            daemon.metrics_port,
        )
        return replay(
            frames_of([run_path], detector=detector),
            frames_endpoint=daemon.ingest,
            verdicts_endpoint=daemon.publish,
            out_dir=workdir / "hits",
            rate_hz=rate_hz,
            experiment=sources.experiment(run_path),
            constants=constants,
        )
    finally:
        daemon.stop()


def _constants_from_dark(workdir: Path, detector: str) -> Path:
    """A forced-gain dark of the same detector unit, and the constants `hitveto dark` makes of it."""
    (dark,) = simulate_runs(
        workdir / "runs", runs=[0], n_frames=DARK_FRAMES, fmt="xtc2", detector=detector, readout="dark"
    )
    path = workdir / "constants.npz"
    log.info("calibration constants from the dark run %s", dark.name)
    dark_constants([dark], detector=detector, gain=np.load(gain_file(dark))).save(path)
    return path


DARK_FRAMES = 60  # a third of them in each gain stage


def index_command(workdir: Path, indexamajig: str = "indexamajig", detector: str = "cspad") -> str:
    """The one command that indexes the demo's hits with CrystFEL (docs/CLIENTS.md shows it)."""
    hits = Path(workdir) / "hits"
    adu_per_photon = on_detector(PRESETS["lysozyme"], detector).detector.adu_per_photon
    return (
        f"{indexamajig} -i {hits}/hits.lst -g {hits}/hits.geom -p {hits}/{CELL} -o {hits}/hits.stream "
        f"-j 2 {' '.join(indexamajig_options(adu_per_photon))}"
    )
