"""Training and validation data: every event of the runs as a model input (the region), with its
peakfinder8 count (cached beside the run: labelling is the slow part) and the simulator's truth."""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hitveto.io import sources
from hitveto.io.peaks import PeakFinderParams, region_peak_finder
from hitveto.models import preprocess


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelledFrames:
    regions: np.ndarray  # (N, H, W) model inputs, ADU
    peaks: np.ndarray  # peakfinder8 count per frame
    n_crystals: np.ndarray  # simulator truth, -1 where unknown
    strong_spots: np.ndarray  # simulator truth: strong spots on the run's pixels, -1 where unknown
    kinds: np.ndarray  # simulator frame kind, -1 where unknown
    runs: tuple[str, ...]


def input_spec(roi_size: int, adu_per_photon: float) -> preprocess.InputSpec:
    from hitveto.io import geometry

    return preprocess.InputSpec(
        detector="cspad",
        raw_shape=geometry.RAW_SHAPE,
        roi_shape=(roi_size, roi_size),
        roi_index=geometry.roi_index(roi_size),
        adu_per_photon=adu_per_photon,
    )


def load_runs(
    paths: tuple[Path, ...],
    spec: preprocess.InputSpec,
    params: PeakFinderParams,
    limit: int | None = None,
    spill: Path | None = None,
) -> LabelledFrames:
    """Regions, peak counts and truth of every event of the runs (progress bar per run).

    With `spill` (a folder) the regions go to a file there and come back memory-mapped, so runs
    larger than memory train: only the batches in use are read in.
    """
    finder = region_peak_finder(spec, params)
    regions = _Regions(spill)
    peaks: list[int] = []
    crystals: list[int] = []
    spots: list[int] = []
    kinds: list[int] = []
    for path in paths:
        stored = sources.run_file(path)
        cache = _peak_cache(stored, params, limit)
        counted = list(np.load(cache)) if cache.exists() else None
        start = len(peaks)
        for i, ev in enumerate(
            tqdm(
                sources.events(path, limit=limit),
                desc=f"label {stored.name}",
                unit="frame",
                leave=False,
                mininterval=1.0,
            )
        ):
            roi = preprocess.region(ev.image, spec)
            regions.add(roi)
            peaks.append(counted[i] if counted is not None else finder.count(roi))
            crystals.append(ev.truth.get("n_crystals", -1))
            spots.append(ev.truth.get("n_strong_spots", -1))
            kinds.append(ev.truth.get("kind", -1))
        if counted is None:
            np.save(cache, np.array(peaks[start:]))
    return LabelledFrames(
        regions=regions.array(),
        peaks=np.array(peaks),
        n_crystals=np.array(crystals),
        strong_spots=np.array(spots),
        kinds=np.array(kinds),
        runs=tuple(str(p) for p in paths),
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


def _peak_cache(path: Path, params: PeakFinderParams, limit: int | None) -> Path:
    """Where a run's peak counts for these peakfinder8 settings are kept (labelling is the slow part)."""
    key = hashlib.sha256(repr((dataclasses.astuple(params), limit, path.stat().st_size)).encode())
    return path.with_name(f"{path.name}.pf8-{key.hexdigest()[:12]}.npy")


def adu_from_runs(paths: tuple[Path, ...]) -> float:
    gain = sources.sidecar_gain(paths)
    if gain is None:
        gains = {sources.run_info(p).get("adu_per_photon") for p in paths}
        raise ValueError(
            f"cannot tell ADU per photon from the runs' sidecars ({gains}); pass --adu-per-photon"
        )
    return gain
