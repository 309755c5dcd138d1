"""`hitveto simulate`: whole runs of simulated SFX frames, written as psana xtc2 or CXI/HDF5.

Each frame has its own seed (run seed, pulse id), so any frame can be regenerated alone. Next to each
run file a sidecar `<file>.json` records the run parameters, the layout and ADU per photon; an
existing run with the same sidecar is reused rather than simulated again.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hitveto.io import geometry, sources
from hitveto.io.xtc2 import RunEvent
from hitveto.sim.noise import fixed_pattern, pattern_seed, stage_maps, to_adu, to_raw
from hitveto.sim.params import PRESETS, RunParams, on_detector
from hitveto.sim.physics import FrameKind, FrameTruth, simulate_photons
from hitveto_client.cxi import Experiment

EXPERIMENT = "hitveto"
READOUTS = ("calib", "raw", "dark")
DARK = FrameTruth(n_crystals=0, n_strong_spots=0, kind=FrameKind.CLEAN_MISS, ice=False)
NO_ICE: dict[str, Any] = {"ice_miss_fraction": 0.0, "ice_with_hit_fraction": 0.0}  # before ice_from
ICING: dict[str, Any] = {
    "ice_miss_fraction": 0.7,
    "ice_with_hit_fraction": 0.5,
}  # the mix once ice forms (ice_from)
TIMESTAMP_STEP = 1 << 23  # ~120 Hz in xtc2's (seconds << 32 | ns) units; only order matters


def simulate_runs(
    out_dir: Path,
    *,
    runs: list[int],
    n_frames: int,
    preset: str = "lysozyme",
    layout: str = "raw",
    fmt: str = "xtc2",
    seed: int = 0,
    readout: str = "calib",
    unit_seed: int = 1,
    detector: str = "cspad",
    mix: dict[str, Any] | None = None,
    ice_from: int | None = None,
) -> list[Path]:
    """Simulate and write each run; returns the run files. Raw and dark readouts come from the
    detector unit `unit_seed` (the same pedestals and bad pixels in every such run). The preset's
    experiment is recorded by `detector` (its geometry and response: params.on_detector); `mix`
    replaces fields of its frame mix (e.g. {"blank_fraction": 0.1}); with `ice_from`, the jet is
    free of ice before that frame and ices from it on (ICING: most frames show ice rings)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    params = PRESETS[preset] if detector == "cspad" else on_detector(PRESETS[preset], detector)
    if mix:
        unknown = set(mix) - {f.name for f in dataclasses.fields(params.mix)}
        if unknown:
            raise ValueError(
                f"mix fields {sorted(unknown)}: not fields of the frame mix (sim/params.py FrameMix)"
            )
        params = dataclasses.replace(params, mix=dataclasses.replace(params.mix, **mix))
    if readout != "calib":
        params = dataclasses.replace(
            params, detector=dataclasses.replace(params.detector, unit_seed=unit_seed)
        )
    return [
        simulate_run(
            Path(out_dir),
            run=run,
            params=dataclasses.replace(params, seed=seed * 1000 + run, n_frames=n_frames),
            preset=preset,
            layout=layout,
            fmt=fmt,
            readout=readout,
            ice_from=ice_from,
        )
        for run in runs
    ]


def simulate_run(
    out_dir: Path,
    *,
    run: int,
    params: RunParams,
    preset: str,
    layout: str,
    fmt: str,
    readout: str = "calib",
    ice_from: int | None = None,
) -> Path:
    suffix = {"xtc2": "xtc2", "cxi": "cxi"}[fmt]
    path = out_dir / f"{EXPERIMENT}-r{run:04d}-s000-c000.{suffix}"
    description = {
        "run": run,
        "preset": preset,
        "layout": layout,
        "readout": readout,
        "format": fmt,
        "n_frames": params.n_frames,
        "ice_from": ice_from,
        "adu_per_photon": params.detector.adu_per_photon,
        "params": _jsonable(dataclasses.asdict(params)),
        "experiment": describe_experiment(params, layout),
    }
    sidecar = path.with_suffix(path.suffix + ".json")
    if path.exists() and sidecar.exists() and _same_run(sidecar, description):
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    events = tqdm(
        frames(params, layout, readout, ice_from),
        total=params.n_frames,
        desc=f"simulate run {run}",
        unit="frame",
    )
    if fmt == "xtc2":
        from hitveto.io.xtc2 import write_run

        write_run(path, events, detector=params.detector.name)
    else:
        _write_cxi(path, events, run, sources.experiment_of(description["experiment"], layout))
    if readout != "calib" and params.detector.stage_gain_adu:
        shape = geometry.pixel_map(
            layout, params.detector.distance_m, detector=params.detector.name
        ).mask.shape
        np.save(gain_file(path), stage_maps(params.detector, shape)[1])
    description["seconds"] = round(time.perf_counter() - t0, 2)
    sidecar.write_text(json.dumps(description, indent=1))
    return path


def regions(
    preset: str, *, seed: int, n: int, distance_m: float | None = None, ice_miss_fraction: float | None = None
) -> list[np.ndarray]:
    """n frames of a preset in the region layout (350x350 ADU), in memory, optionally with the
    detector at another distance or ice on another share of the misses: streams for tests and
    benchmarks that need no run file."""
    params = dataclasses.replace(PRESETS[preset], seed=seed, n_frames=n)
    if distance_m is not None:
        detector = dataclasses.replace(params.detector, distance_m=distance_m)
        params = dataclasses.replace(params, detector=detector)
    if ice_miss_fraction is not None:
        mix = dataclasses.replace(params.mix, ice_miss_fraction=ice_miss_fraction)
        params = dataclasses.replace(params, mix=mix)
    return [ev.image for ev in frames(params, "roi")]


def frames(
    params: RunParams, layout: str, readout: str = "calib", ice_from: int | None = None
) -> Iterator[RunEvent]:
    """The run's frames as ADU (int16), with truth; gap pixels of the region layout are 0.

    readout: "calib" (pedestal-subtracted, as psana's calib gives them), "raw" (the same on the
    unit's pedestals, as the DAQ records them) or "dark" (raw with the beam off: no photons)."""
    from hitveto.io.geometry import pixel_map

    if readout not in READOUTS:
        raise ValueError(f"readout {readout!r}: one of {READOUTS}")
    pixels = pixel_map(layout, distance_m=params.detector.distance_m, detector=params.detector.name)
    before = dataclasses.replace(params, mix=dataclasses.replace(params.mix, **NO_ICE))
    icy = dataclasses.replace(params, mix=dataclasses.replace(params.mix, **ICING))
    for pulse_id in range(params.n_frames):
        rng = np.random.default_rng([params.seed, pulse_id])
        if readout == "dark":  # the beam off: read-out noise on the pedestals
            photons, truth = np.zeros(pixels.mask.shape, np.float32), DARK
        else:
            now = params if ice_from is None else icy if pulse_id >= ice_from else before
            photons, truth = simulate_photons(pixels, now, rng)
        adu = to_adu(photons, params, rng)
        adu = to_raw(adu, params, _forced_stage(params, pulse_id, readout)) if readout != "calib" else adu
        adu[~pixels.mask] = 0
        yield RunEvent(
            timestamp=(pulse_id + 1) * TIMESTAMP_STEP,
            pulse_id=pulse_id,
            image=adu,
            truth={
                "n_crystals": truth.n_crystals,
                "n_strong_spots": truth.n_strong_spots,
                "kind": int(truth.kind),
                "ice": int(truth.ice),
                "lattices": truth.lattices,
                "ice_spots": truth.ice_spots,
                "ice_ring_per_sr": round(truth.ice_ring_per_sr),
                "jet_streak": int(truth.jet_streak),
                "streak_per_sr": round(truth.streak_per_sr),
                "blank": int(truth.blank),
            },
        )


def _forced_stage(params: RunParams, pulse_id: int, readout: str) -> int | None:
    """A gain-switching detector's dark run forces each gain stage in turn, in equal parts of the
    run (as Jungfrau darks are taken), so that each stage's pedestals can be measured."""
    stages = len(params.detector.stage_gain_adu)
    return pulse_id * stages // params.n_frames if readout == "dark" and stages else None


def gain_file(run_path: Path) -> Path:
    """Where a simulated raw or dark run of a gain-switching detector has its unit's gains (ADC
    per keV, (stages, *raw shape), .npy): what the detector's gain calibration would give."""
    return run_path.with_name(run_path.name + ".gain.npy")


def describe_experiment(params: RunParams, layout: str) -> dict[str, Any]:
    """What indexing needs of a simulated run, for its sidecar (`sources.experiment` reads it): its
    beam, its detector, and as bad pixels the simulator's hot and dead ones (what a dark run's
    status would flag), as flat indices."""
    shape = geometry.pixel_map(layout, params.detector.distance_m, detector=params.detector.name).mask.shape
    pattern = fixed_pattern(params.detector, pattern_seed(params), shape)
    offset_x, offset_y = params.beam.detector_offset_mm
    return {
        "detector": params.detector.name,
        "photon_energy_ev": params.beam.photon_energy_ev,
        "distance_m": params.detector.distance_m,
        "adu_per_photon": params.detector.adu_per_photon,
        "saturation_adu": params.detector.saturation_adu,
        "beam_center_m": [offset_x * 1e-3, offset_y * 1e-3],
        "hot_pixels": pattern.hot.tolist(),
        "dead_pixels": pattern.dead.tolist(),
    }


def _write_cxi(path: Path, events: Iterator[RunEvent], run: int, experiment: Experiment) -> None:
    from hitveto_client.cxi import CxiWriter

    # One run, one file (the path returned, the sidecar beside it): no roll-over at 4 GiB, which
    # left the frames past ~930 raw CSPAD frames in a second file that readers of `path` missed.
    with CxiWriter.single_file(path.with_suffix(""), experiment) as writer:
        for ev in events:
            if not writer.write(
                ev.image,
                run=run,
                pulse_id=ev.pulse_id,
                timestamp=ev.timestamp,
                keep_reason="simulated",
                truth=ev.truth,
            ):
                raise OSError(f"{path}: frame {ev.pulse_id} not written ({writer.error})")
    (written,) = writer.files
    written.rename(path)
    path.with_suffix(".lst").unlink(missing_ok=True)  # the writer's list names the file before rename


def _same_run(sidecar: Path, description: dict) -> bool:
    old = json.loads(sidecar.read_text())
    return all(old.get(k) == v for k, v in description.items())


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value
