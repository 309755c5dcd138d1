"""CrystFEL as the judge of what is a hit: which frames of a run `indexamajig` indexes.

A frame is a hit for a crystallographer when it indexes. `indexed_frames` runs CrystFEL's
`indexamajig` (its own peakfinder8, then asdf with `--multi`) over every frame of a run and returns,
per event in the run's order, whether it indexed; `hitveto evaluate --crystfel` compares that with
the veto's decisions.

CrystFEL reads CXI files: a CXI run is indexed where it lies; an xtc2 run is first copied to a CXI
file in the work folder (4.6 MB a raw frame). The geometry comes from the run (`hitveto geom`'s,
with the energy and distance written in); the unit cell from `--cell`, or for a simulated run the
simulated crystal's.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hitveto.io import crystfel, sources
from hitveto_client.cxi import CxiWriter, Experiment

log = logging.getLogger(__name__)
# peakfinder8 in photons (the threshold scales with the run's gain): what indexed the project's
# simulated CSPAD hits and found no false lattice in noise (see docs/MODEL.md)
THRESHOLD_PHOTONS = 150 / 35
PEAK_OPTIONS = (
    "--min-snr=5",
    "--min-pix-count=2",
    "--max-pix-count=200",
    "--local-bg-radius=3",
    "--min-res=30",
)
INDEXING_OPTIONS = ("--indexing=asdf", "--multi")
DEFAULT_GAIN = 35.0  # ADU per photon: the CSPAD's high gain, for runs that do not say


def indexamajig_options(adu_per_photon: float) -> list[str]:
    """Peak search and indexing options for frames of this gain."""
    threshold = f"--threshold={THRESHOLD_PHOTONS * adu_per_photon:.0f}"
    return ["--peaks=peakfinder8", threshold, *PEAK_OPTIONS, *INDEXING_OPTIONS]


@dataclass(frozen=True, slots=True, kw_only=True)
class IndexingOptions:
    indexamajig: str = "indexamajig"  # the program: on PATH, or its path
    cell: Path | None = None  # unit cell file; default: the simulated crystal's (sidecar)
    geometry: Path | None = None  # default: `hitveto geom`'s for the run
    jobs: int = os.cpu_count() or 1
    workdir: Path | None = None  # geometry, cell, lists and streams; default: a temporary folder


def indexed_frames(run: Path, options: IndexingOptions = IndexingOptions()) -> np.ndarray:
    """bool per event of `run`, in its order: True where indexamajig indexed the frame."""
    if options.workdir is None:
        with tempfile.TemporaryDirectory(prefix="hitveto-index-") as work:
            return _index(Path(run), options, Path(work))
    options.workdir.mkdir(parents=True, exist_ok=True)
    return _index(Path(run), options, options.workdir)


def _index(run: Path, options: IndexingOptions, work: Path) -> np.ndarray:
    experiment = sources.experiment(run)
    if experiment is None and options.geometry is None:
        raise ValueError(f"{run}: no sidecar to take energy, distance and gain from: give a geometry")
    cxi, n_frames = _as_cxi(run, experiment, work)
    stem = run.name.split(".")[0]
    geometry = options.geometry or _write(work / f"{stem}.geom", _geometry(cxi, experiment))
    cell = options.cell or _write(work / f"{stem}.cell", _simulated_cell(run))
    listing = _write(work / f"{stem}.lst", f"{cxi.resolve()}\n")
    stream = work / f"{stem}.stream"
    gain = experiment.adu_per_photon if experiment is not None else DEFAULT_GAIN
    command = [
        options.indexamajig, "-i", str(listing), "-g", str(geometry), "-o", str(stream), "-p", str(cell),
        "-j", str(options.jobs), *indexamajig_options(gain),
    ]  # fmt: skip
    _run_with_progress(command, n_frames, run.name)
    indexed = np.zeros(n_frames, bool)
    indexed[sorted(indexed_events(stream.read_text()))] = True
    return indexed


def indexed_events(stream: str) -> set[int]:
    """The frame numbers (`Event: //N`) of a CrystFEL stream's chunks that indexed."""
    found = set()
    for chunk in stream.split("----- Begin chunk -----")[1:]:
        event = re.search(r"^Event: //(\d+)", chunk, re.MULTILINE)
        method = re.search(r"^indexed_by = (\S+)", chunk, re.MULTILINE)
        if event and method and method.group(1) != "none":
            found.add(int(event.group(1)))
    return found


def _as_cxi(run: Path, experiment: Experiment | None, work: Path) -> tuple[Path, int]:
    """A CXI file CrystFEL can read holding the run's frames in order, and how many."""
    if run.suffix in sources.CXI_SUFFIXES:
        import h5py

        with h5py.File(run, "r") as f:
            return run, len(f["entry_1/data_1/data"])
    assert experiment is not None  # an xtc2 run without a sidecar has no energy nor distance
    with CxiWriter.single_file(work / run.name.split(".")[0], experiment) as writer:
        for ev in tqdm(sources.events(run), desc=f"copy {run.name} to CXI", unit="frame"):
            if not writer.write(ev.image, run=ev.run, pulse_id=ev.pulse_id, timestamp=ev.timestamp):
                raise OSError(f"{run}: frame {ev.pulse_id} not copied ({writer.error})")
    return writer.files[0], writer.written


def _geometry(cxi: Path, experiment: Experiment | None) -> str:
    """Energy and distance written in from the run's description: runs simulated before the CXI
    files carried them index too; the mask only where the file has one."""
    import h5py

    with h5py.File(cxi, "r") as f:
        shape = f["entry_1/data_1/data"].shape[1:]
        has_mask = crystfel.MASK in f
    assert experiment is not None
    return crystfel.geometry_text(crystfel.layout_of(shape), experiment, from_file=False, has_mask=has_mask)


def _simulated_cell(run: Path) -> str:
    crystal = sources.run_info(run).get("params", {}).get("crystal")
    if crystal is None:
        raise ValueError(f"{run}: not a simulated run: give the unit cell (--cell)")
    return crystfel.cell_text(tuple(crystal["cell_a"]), tuple(crystal["cell_angles_deg"]))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _run_with_progress(command: list[str], n_frames: int, name: str) -> None:
    """indexamajig, its progress lines ("N images processed, ...") shown as a bar."""
    log.info("indexing %s: %s", name, " ".join(command))
    bar = tqdm(total=n_frames, desc=f"index {name}", unit="frame")
    tail: list[str] = []
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail = (tail + [line])[-20:]
            done = re.match(r"(?:Final: )?(\d+) images processed", line)
            if done:
                bar.update(int(done.group(1)) - bar.n)
    bar.close()
    if proc.returncode != 0:
        raise RuntimeError(f"indexamajig failed ({proc.returncode}):\n{''.join(tail)}")
