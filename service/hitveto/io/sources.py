"""Runs on disk as a stream of events, whatever the format: psana xtc2 or CXI/HDF5.

One interface for the trainer, the replay client and the evaluation: `events(path)` yields
`RunEvent`s (key fields, the detector frame, and simulator truth when the file has it). A run is
named by its file (`.xtc2`, `.cxi`, `.h5`), or, as psana names it, by a dataset string
`exp=EXP:run=N:dir=FOLDER` read through `DataSource(exp=, run=, dir=)` (the experiment directory
with its smalldata index).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hitveto.io.xtc2 import RunEvent
from hitveto_client import detectors
from hitveto_client.cxi import MASK_DEAD, MASK_HOT, MASK_INVALID, Experiment

CXI_SUFFIXES = (".cxi", ".h5", ".hdf5")


def events(path: Path, *, detector: str | None = None, limit: int | None = None) -> Iterator[RunEvent]:
    """Events of one run file, in order; at most `limit`. The detector read from an xtc2 run is
    the one its sidecar names (the CSPAD where none) unless given."""
    dataset = _dataset(path)
    path = Path(path)
    detector = detector or detector_of(path)
    if dataset is not None:
        from hitveto.io.xtc2 import read_experiment_run

        folder, experiment, run = dataset
        stream = read_experiment_run(folder, experiment=experiment, run=run, detector=detector)
    elif path.suffix == ".xtc2":
        from hitveto.io.xtc2 import read_run

        stream = read_run(path, detector=detector)
    elif path.suffix in CXI_SUFFIXES:
        stream = _cxi_events(path)
    else:
        raise ValueError(f"{path}: unknown run format (expected .xtc2 or {', '.join(CXI_SUFFIXES)})")
    for i, event in enumerate(stream):
        if limit is not None and i >= limit:
            return
        yield event


def run_info(path: Path) -> dict[str, Any]:
    """The run's sidecar description (`<file>.json`, written by the simulator), or {}."""
    path = run_file(path)
    sidecar = path.with_suffix(path.suffix + ".json")
    return json.loads(sidecar.read_text()) if sidecar.exists() else {}


def detector_of(path: Path | str) -> str:
    """The detector a run's sidecar names; the CSPAD where it names none."""
    return str(run_info(Path(path)).get("experiment", {}).get("detector", "cspad"))


def experiment(path: Path | str) -> Experiment | None:
    """What indexing needs for a run (energy, distance, gain, bad pixels), from its sidecar; None
    without one. Runs simulated before sidecars described it: from their parameters, no mask."""
    info = run_info(Path(path))
    if "experiment" in info:
        return experiment_of(info["experiment"], info.get("layout", "raw"))
    if "params" not in info:
        return None
    beam, detector = info["params"]["beam"], info["params"]["detector"]
    offset = beam.get("detector_offset_mm", (0.0, 0.0))
    return Experiment(
        photon_energy_ev=beam["photon_energy_ev"],
        distance_m=detector["distance_m"],
        adu_per_photon=detector["adu_per_photon"],
        saturation_adu=detector["saturation_adu"],
        beam_center_m=(offset[0] * 1e-3, offset[1] * 1e-3),
    )


def experiment_of(described: dict[str, Any], layout: str) -> Experiment:
    """An Experiment from a sidecar's description; the mask from its bad pixels (and, for the
    region layout, the region's gaps)."""
    from hitveto.io import geometry

    detector = described.get("detector", "cspad")
    if layout == "raw":
        mask = np.zeros(detectors.get(detector).raw_shape, np.uint16)
    else:
        region = geometry.roi_index(detector=detector)
        mask = np.where(region >= 0, 0, MASK_INVALID).astype(np.uint16)
    mask.flat[described.get("hot_pixels", [])] |= MASK_HOT
    mask.flat[described.get("dead_pixels", [])] |= MASK_DEAD
    x, y = described.get("beam_center_m", (0.0, 0.0))
    return Experiment(
        photon_energy_ev=described["photon_energy_ev"],
        distance_m=described["distance_m"],
        adu_per_photon=described["adu_per_photon"],
        saturation_adu=described.get("saturation_adu", float("inf")),
        beam_center_m=(x, y),
        mask=mask,
        detector=detector,
    )


def sidecar_gain(paths: Iterable[Path | str]) -> float | None:
    """The ADU per photon the runs' sidecars agree on, or None (no sidecar, or they differ)."""
    gains = {run_info(Path(p)).get("adu_per_photon") for p in paths}
    if len(gains) != 1:
        return None
    (gain,) = gains
    return None if gain is None else float(gain)


def run_file(path: Path | str) -> Path:
    """The file that holds a run: the path itself, or a dataset string's xtc2 file."""
    dataset = _dataset(path)
    if dataset is None:
        return Path(path)
    from hitveto.io.xtc2 import run_path

    return run_path(*dataset)


def _dataset(path: Path | str) -> tuple[Path, str, int] | None:
    """(dir, experiment, run) of a dataset string `exp=EXP:run=N:dir=FOLDER`, else None."""
    text = str(path)
    if not text.startswith("exp="):
        return None
    fields = dict(part.split("=", 1) for part in text.split(":") if "=" in part)
    missing = {"exp", "run", "dir"} - fields.keys()
    if missing:
        raise ValueError(f"{text}: dataset string needs exp=, run= and dir= (missing {sorted(missing)})")
    return Path(fields["dir"]), fields["exp"], int(fields["run"])


def _cxi_events(path: Path) -> Iterator[RunEvent]:
    import h5py

    with h5py.File(path, "r") as f:
        data = f["entry_1/data_1/data"]
        event = f.get("entry_1/event")
        truth = f.get("entry_1/sample_1/truth")
        columns = {n: event[n][()] for n in ("pulse_id", "timestamp")} if event else {}
        truth_cols = {n: d[()] for n, d in truth.items()} if truth else {}
        for i in range(data.shape[0]):
            yield RunEvent(
                timestamp=int(columns["timestamp"][i]) if columns else i,
                pulse_id=int(columns["pulse_id"][i]) if columns else i,
                image=data[i],
                truth={n: int(c[i]) for n, c in truth_cols.items()},
            )
