"""Peak finding with psana's peakfinder8 (Cheetah's algorithm): labels, and the baseline hit finder.

peakfinder8 works on a "slab": panels stacked vertically, each asic_ny x asic_nx. A raw CSPAD stack
(32, 185, 388) is 32 panels of 185 x 388; a region (350, 350) is one panel. It needs each pixel's
radius from the beam (pixels) for its radial background statistics, and a mask of good pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True, kw_only=True)
class PeakFinderParams:
    """peakfinder8's knobs with Cheetah/OM names; defaults for CSPAD high gain (~35 ADU/photon)."""

    adc_threshold: float = 150.0        # ADU a peak pixel must exceed (~4 photons)
    minimum_snr: float = 5.0            # over the local background's rms
    min_pixel_count: int = 2
    max_pixel_count: int = 60
    local_bg_radius: int = 4
    min_res: int = 0                    # pixels from the beam
    max_res: int = 2000
    max_num_peaks: int = 2048


class PeakFinder:
    """peakfinder8 for one frame layout; mask and radius map are prepared once."""

    def __init__(self, mask: np.ndarray, radius_px: np.ndarray, params: PeakFinderParams) -> None:
        from psana.peakfinder8 import peakfinder_8

        self._pf8 = peakfinder_8
        self.params = params
        self.shape = mask.shape
        panel = mask.shape[-2:]
        self._panels = int(np.prod(mask.shape[:-2])) if mask.ndim > 2 else 1
        self._asic_ny, self._asic_nx = panel
        keep = mask & (radius_px >= params.min_res) & (radius_px <= params.max_res)
        self._mask = np.ascontiguousarray(self._slab(keep), dtype=np.int8)
        self._radius = np.ascontiguousarray(self._slab(radius_px), dtype=np.float32)

    def find(self, frame: np.ndarray) -> np.ndarray:
        """(n, 3): slab column, slab row, integrated intensity (ADU) of each peak."""
        if frame.shape != self.shape:
            raise ValueError(f"frame shape {frame.shape} != peak finder layout {self.shape}")
        p = self.params
        data = np.ascontiguousarray(self._slab(frame), dtype=np.float32)
        found = self._pf8(p.max_num_peaks, data, self._mask, self._radius, self._asic_nx,
                          self._asic_ny, 1, self._panels, p.adc_threshold, p.minimum_snr,
                          p.min_pixel_count, p.max_pixel_count, p.local_bg_radius)
        return np.column_stack(found[:3]) if len(found[0]) else np.empty((0, 3))

    def count(self, frame: np.ndarray) -> int:
        return len(self.find(frame))

    def _slab(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(-1, a.shape[-1])
