"""Peak finding with psana's peakfinder8 (Cheetah's algorithm): labels, and the baseline hit finder.

peakfinder8 works on a "slab": panels stacked vertically, each asic_ny x asic_nx. A raw CSPAD stack
(32, 185, 388) is 32 panels of 185 x 388; a region (350, 350) or any other 2-D frame is one panel.
It needs each pixel's radius from the beam (pixels) for its radial background statistics, and a
mask of good pixels. The psana wheel's build is `psana.peakfinder8.peakfinder_8`, OM's Cython
wrapper (psana/peakFinder/peakfinder8.pyx); it returns at most max_num_peaks peaks.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
from dataclasses import dataclass

import numpy as np

from hitveto.models.preprocess import InputSpec
from hitveto_client import detectors

PHOTONS_AT_THRESHOLD = 150.0 / 35.0  # the default threshold, in photons
MIN_PEAKS_FOR_HIT = 10  # peakfinder8 as a hit finder: Cheetah/OM's usual "min peaks" floor


@dataclass(frozen=True, slots=True, kw_only=True)
class PeakFinderParams:
    """peakfinder8's knobs with Cheetah/OM names; defaults for CSPAD high gain (~35 ADU/photon).

    The simulator's frames use 35 ADU/photon; use `for_gain` for another detector gain.
    """

    adc_threshold: float = 150.0  # ADU a peak pixel must exceed (~4 photons)
    minimum_snr: float = 5.0  # over the local background's rms
    min_pixel_count: int = 2
    max_pixel_count: int = 60
    local_bg_radius: int = 4  # pixels
    min_res: int = 0  # pixels from the beam
    max_res: int = 2000
    max_num_peaks: int = 2048  # peakfinder8 stops counting here

    @classmethod
    def for_gain(cls, adu_per_photon: float, **overrides) -> PeakFinderParams:
        """Defaults with the ADU threshold at the same number of photons for this gain."""
        return dataclasses.replace(cls(adc_threshold=PHOTONS_AT_THRESHOLD * adu_per_photon), **overrides)


class PeakFinder:
    """peakfinder8 for one frame layout; mask and radius map are prepared once."""

    def __init__(self, mask: np.ndarray, radius_px: np.ndarray, params: PeakFinderParams) -> None:
        from hitveto.io.psana_import import import_psana

        self._pf8 = import_psana("psana.peakfinder8").peakfinder_8
        if mask.shape != radius_px.shape or mask.ndim not in (2, 3):
            raise ValueError(f"mask {mask.shape} and radius {radius_px.shape}: need one 2-D or 3-D shape")
        self.params = params
        self.shape = mask.shape
        self._panels = mask.shape[0] if mask.ndim == 3 else 1
        self._asic_ny, self._asic_nx = mask.shape[-2:]
        keep = mask & (radius_px >= params.min_res) & (radius_px <= params.max_res)
        self._mask = np.ascontiguousarray(_slab(keep), dtype=np.int8)
        self._radius = np.array(_slab(radius_px), dtype=np.float32, order="C")  # own, writable

    def find(self, frame: np.ndarray) -> np.ndarray:
        """(n, 3) float64: slab column, slab row, integrated intensity (ADU, background subtracted).

        The slab row of a raw stack is panel * 185 + row.
        """
        if frame.shape != self.shape:
            raise ValueError(f"frame shape {frame.shape} != peak finder layout {self.shape}")
        p = self.params
        data = _writable_float32(_slab(frame))
        found = self._pf8(
            p.max_num_peaks,
            data,
            self._mask,
            self._radius,
            self._asic_nx,
            self._asic_ny,
            1,
            self._panels,
            p.adc_threshold,
            p.minimum_snr,
            p.min_pixel_count,
            p.max_pixel_count,
            p.local_bg_radius,
        )
        return np.column_stack(found[:3]) if len(found[0]) else np.empty((0, 3))

    def count(self, frame: np.ndarray) -> int:
        return len(self.find(frame))


def region_peak_finder(spec: InputSpec, params: PeakFinderParams) -> PeakFinder:
    """peakfinder8 on a model's region: real pixels only, radii from the detector's geometry."""
    from hitveto.io import geometry

    pixels = geometry.pixel_map("roi", distance_m=0.1, roi_size=spec.roi_shape[0], detector=spec.detector)
    return PeakFinder(np.asarray(spec.roi_index) >= 0, geometry.radius_px(pixels), params)


def detector_peak_finder(params: PeakFinderParams, detector: str = "cspad") -> PeakFinder:
    """peakfinder8 on a detector's whole raw stack, radii from its geometry."""
    from hitveto.io import geometry

    radius = geometry.radius_px(geometry.pixel_map("raw", distance_m=0.1, detector=detector))
    return PeakFinder(np.ones(radius.shape, bool), radius, params)


def region_counter_pool(
    spec: InputSpec, params: PeakFinderParams, workers: int, nice: int = 0
) -> concurrent.futures.ProcessPoolExecutor:
    """Processes counting peaks in regions (submit `count_in_region`): peakfinder8 holds the GIL,
    so threads would not run it in parallel. Started, with psana imported, before this returns."""
    # spawn, not fork: a daemon has threads and ZMQ sockets that a fork would copy half-alive
    pool = concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_counter,
        initargs=(spec, params, nice),
    )
    for started in [pool.submit(os.getpid) for _ in range(workers)]:
        started.result(timeout=120)
    return pool


_counter: PeakFinder | None = None


def _start_counter(spec: InputSpec, params: PeakFinderParams, nice: int) -> None:
    global _counter
    os.nice(nice)
    _counter = region_peak_finder(spec, params)


def count_in_region(region: np.ndarray) -> int:
    """Peaks in one region, in a region_counter_pool process."""
    assert _counter is not None  # the pool's initializer made it
    return _counter.count(region)


def find_peaks(
    frame: np.ndarray, mask: np.ndarray | None, params: PeakFinderParams, radius_px: np.ndarray | None = None
) -> np.ndarray:
    """peakfinder8 on one frame: (n, 3) slab column, slab row, integrated intensity.

    mask: True = good pixel; None = all. radius_px: default from the CSPAD geometry for the raw
    stack and the (n, n) region round the beam, else the distance from the frame's centre.
    """
    radius = default_radius(frame.shape) if radius_px is None else radius_px
    good = np.ones(frame.shape, bool) if mask is None else np.asarray(mask, bool)
    return PeakFinder(good, radius, params).find(frame)


def count_peaks(
    frame: np.ndarray, mask: np.ndarray | None, params: PeakFinderParams, radius_px: np.ndarray | None = None
) -> int:
    """Number of peaks peakfinder8 finds (at most params.max_num_peaks); see `find_peaks`."""
    return len(find_peaks(frame, mask, params, radius_px))


@functools.cache
def default_radius(shape: tuple[int, ...]) -> np.ndarray:
    """Radius map (pixels, float32, read-only) for a frame shape; see `find_peaks`."""
    from hitveto.io import geometry

    detector = detectors.of_shape(shape)
    if detector is not None:
        radius = geometry.radius_px(geometry.pixel_map("raw", 0.1, detector=detector.name))
    elif len(shape) == 2 and shape[0] == shape[1]:
        radius = geometry.radius_px(geometry.pixel_map("roi", 0.1, roi_size=shape[0]))
    elif len(shape) == 2:
        rows, cols = np.indices(shape)
        radius = np.hypot(rows - (shape[0] - 1) / 2, cols - (shape[1] - 1) / 2).astype(np.float32)
    else:
        raise ValueError(f"no default radius map for frame shape {shape}")
    radius.setflags(write=False)
    return radius


def _writable_float32(a: np.ndarray) -> np.ndarray:
    # The Cython wrapper takes typed memoryviews, which refuse read-only buffers (frames read
    # through psana, cached maps) even though peakfinder8 never writes to them.
    out = np.ascontiguousarray(a, dtype=np.float32)
    return out if out.flags.writeable else out.copy()


def _slab(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])
