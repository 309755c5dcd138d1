"""Training and validation data: every event of the runs as a model input (the region), with its
peakfinder8 count (cached beside the run: labelling is the slow part) and the simulator's truth."""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hitveto.io import calibration, sources
from hitveto.io.calibration import Constants
from hitveto.io.peaks import PeakFinderParams, detector_peak_finder, region_peak_finder
from hitveto.models import preprocess
from hitveto_client import detectors


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelledFrames:
    regions: np.ndarray  # (N, H, W) model inputs, ADU
    peaks: np.ndarray  # peakfinder8 count per frame
    n_crystals: np.ndarray  # simulator truth, -1 where unknown
    strong_spots: np.ndarray  # simulator truth: strong spots on the run's pixels, -1 where unknown
    kinds: np.ndarray  # simulator frame kind, -1 where unknown
    runs: tuple[str, ...]
    truth: dict[str, np.ndarray] = dataclasses.field(
        default_factory=dict
    )  # every truth field, -1 where unknown


def input_spec(
    roi_size: int, adu_per_photon: float, layout: str = "roi", detector: str = "cspad"
) -> preprocess.InputSpec:
    """A detector's model input: the roi_size region round the beam, or (raw) every panel, pooled."""
    from hitveto.io import geometry

    raw_shape = detectors.get(detector).raw_shape
    if layout == "raw":
        return preprocess.full_frame_spec(detector, raw_shape, adu_per_photon)
    return preprocess.InputSpec(
        detector=detector,
        raw_shape=raw_shape,
        roi_shape=(roi_size, roi_size),
        roi_index=geometry.roi_index(roi_size, detector),
        adu_per_photon=adu_per_photon,
    )


def detector_of_runs(paths: tuple[Path, ...]) -> str:
    """The detector the runs' sidecars name (the CSPAD where they name none); ValueError if two."""
    named = {sources.detector_of(p) for p in paths}
    if len(named) != 1:
        raise ValueError(f"the runs come from {sorted(named)}: a model serves one detector")
    return named.pop()


def load_runs(
    paths: tuple[Path, ...],
    spec: preprocess.InputSpec,
    params: PeakFinderParams,
    limit: int | None = None,
    spill: Path | None = None,
    count_peaks: bool = True,
    constants: Constants | None = None,
) -> LabelledFrames:
    """Regions, peak counts and truth of every event of the runs (progress bar per run).

    With `spill` (a folder) the regions go to a file there and come back memory-mapped, so runs
    larger than memory train: only the batches in use are read in. A run whose sidecar gives
    another gain than the spec's is rescaled to the spec's (gain_scale). Without `count_peaks` the peak
    counts are -1 unless cached (peakfinder8 on a whole CSPAD frame costs ~0.1 s). Raw runs (their
    sidecar says so) are calibrated with `constants` on the way, as the daemon calibrates them.
    """
    counter = peak_counter(spec, params) if count_peaks else lambda frame, roi: -1
    regions = _Regions(spill)
    peaks: list[int] = []
    truths: list[dict[str, int]] = []
    for path in paths:
        calibrate_with = _calibration_for(path, spec, constants)
        stored = sources.run_file(path)
        cache = _peak_cache(stored, params, limit, spec, calibrate_with)
        counted = list(np.load(cache)) if cache.exists() else None
        start = len(peaks)
        to_model_gain = gain_scale(path, spec)
        for i, ev in enumerate(
            tqdm(
                sources.events(path, limit=limit),
                desc=f"label {stored.name}",
                unit="frame",
                leave=False,
                mininterval=1.0,
            )
        ):
            roi = model_input(ev.image, spec, calibrate_with)
            regions.add(roi if to_model_gain is None else to_model_gain(roi))
            frame = ev.image
            if counted is None and count_peaks and calibrate_with is not None:
                frame = calibration.calibrate(frame, calibrate_with)  # peakfinder8 reads calibrated pixels
            peaks.append(counted[i] if counted is not None else counter(frame, roi))
            truths.append(ev.truth)
        if counted is None and count_peaks:
            np.save(cache, np.array(peaks[start:]))
    names = {"n_crystals", "n_strong_spots", "kind"}.union(*truths)
    truth = {k: np.array([t.get(k, -1) for t in truths], dtype=np.int64) for k in sorted(names)}
    return LabelledFrames(
        regions=regions.array(),
        peaks=np.array(peaks),
        n_crystals=truth["n_crystals"],
        strong_spots=truth["n_strong_spots"],
        kinds=truth["kind"],
        runs=tuple(str(p) for p in paths),
        truth=truth,
    )


def model_input(frame: np.ndarray, spec: preprocess.InputSpec, constants: Constants | None) -> np.ndarray:
    """The model's input of a frame, calibrated first when constants are given (in one pass where
    the daemon does it in one: calibration.calibrate_pooled gives exactly the same)."""
    if constants is None:
        return preprocess.region(frame, spec)
    if spec.layout == "raw" and calibration.fuses(frame, constants):
        return calibration.calibrate_pooled(frame, constants, spec.pool, GUARD_STRIDE)[0]
    return preprocess.region(calibration.calibrate(frame, constants), spec)


GUARD_STRIDE = 8  # the guard's sample, which training does not use


def _calibration_for(path: Path, spec: preprocess.InputSpec, constants: Constants | None) -> Constants | None:
    """The constants a run's frames are calibrated with: none for a calibrated run, `constants`
    for a raw one (its sidecar says so); ValueError for a raw run without them, and for a dark."""
    readout = sources.run_info(path).get("readout", "calib")
    if readout == "calib":
        return None
    if readout == "raw" and constants is not None and constants.detector == spec.detector:
        return constants
    raise ValueError(
        f"{path}: a {readout} run (ADC counts on the pedestals); models learn calibrated frames: "
        "simulate with --readout calib, or give the constants of its dark (hitveto dark; train --constants)"
    )


class _Regions:
    """Model inputs gathered in memory, or written to a file and memory-mapped."""

    def __init__(self, spill: Path | None) -> None:
        self._file = (
            tempfile.NamedTemporaryFile(dir=spill, suffix=".regions", delete=False)
            if spill is not None
            else None
        )
        self._kept: list[np.ndarray] = []
        self._first: np.ndarray | None = None
        self.n = 0

    def add(self, roi: np.ndarray) -> None:
        if self._first is None:
            self._first = np.array(roi)
        elif roi.shape != self._first.shape or roi.dtype != self._first.dtype:
            raise ValueError(
                f"region {roi.dtype}{roi.shape} differs from the first, "
                f"{self._first.dtype}{self._first.shape}"
            )
        if self._file is not None:
            self._file.write(np.ascontiguousarray(roi).tobytes())
        else:
            self._kept.append(np.array(roi))
        self.n += 1

    def array(self) -> np.ndarray:
        if self._file is None:
            return np.stack(self._kept)
        self._file.close()
        if self._first is None:
            raise ValueError("no frames in these runs")
        return np.memmap(
            self._file.name, dtype=self._first.dtype, mode="r", shape=(self.n, *self._first.shape)
        )


def peak_counter(
    spec: preprocess.InputSpec, params: PeakFinderParams
) -> Callable[[np.ndarray, np.ndarray], int]:
    """count(frame, model input): peakfinder8 on the region the model sees, or (raw) on every pixel."""
    if spec.layout == "raw":
        finder = detector_peak_finder(params, spec.detector)
        return lambda frame, _: finder.count(frame)
    finder = region_peak_finder(spec, params)
    return lambda _, roi: finder.count(roi)


def _peak_cache(
    path: Path,
    params: PeakFinderParams,
    limit: int | None,
    spec: preprocess.InputSpec,
    constants: Constants | None = None,
) -> Path:
    """Where a run's peak counts for these peakfinder8 settings (and, for a raw run, the constants
    it is calibrated with) are kept: labelling is the slow part."""
    what: tuple[object, ...] = (dataclasses.astuple(params), limit, path.stat().st_size)
    if constants is not None:
        what += (hashlib.sha256(constants.pedestal.tobytes()).hexdigest(),)
    if spec.layout == "raw":  # counted on the whole detector
        what += ("raw",)
    key = hashlib.sha256(repr(what).encode())
    return path.with_name(f"{path.name}.pf8-{key.hexdigest()[:12]}.npy")


def gain_scale(path: Path, spec: preprocess.InputSpec) -> Callable[[np.ndarray], np.ndarray] | None:
    """ADU at the run's gain (its sidecar's) -> ADU at the model's, or None where they agree or the
    run does not say: runs of several gain modes train one model on one photon scale, so that a
    strong spot (>= 15 photons) looks the same in every run."""
    gain = sources.run_info(path).get("adu_per_photon")
    if gain is None or np.isclose(gain, spec.adu_per_photon):
        return None
    scale = spec.adu_per_photon / float(gain)

    def rescale(roi: np.ndarray) -> np.ndarray:
        scaled = roi * scale
        if roi.dtype.kind in "iu":  # integer ADU stay integers (keV floats stay as they are)
            limits = np.iinfo(roi.dtype)
            scaled = np.clip(np.rint(scaled), limits.min, limits.max)
        return scaled.astype(roi.dtype)

    return rescale


def adu_from_runs(paths: tuple[Path, ...]) -> float:
    gain = sources.sidecar_gain(paths)
    if gain is None:
        gains = {sources.run_info(p).get("adu_per_photon") for p in paths}
        raise ValueError(
            f"cannot tell ADU per photon from the runs' sidecars ({gains}); pass --adu-per-photon "
            "(the model's: each run with a sidecar is rescaled to it)"
        )
    return gain
