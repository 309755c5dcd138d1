"""psana's peakfinder8: finds Bragg-like spots on a noisy background, nothing on background alone."""

from __future__ import annotations

import numpy as np
import pytest

from hitveto.io import geometry
from hitveto.io.peaks import PeakFinder, PeakFinderParams, count_peaks, find_peaks

ADU = 35.0  # per photon, the defaults' gain


def frame_with_spots(n_spots: int, seed: int = 0, shape=(350, 350)) -> tuple[np.ndarray, np.ndarray]:
    """Read noise plus sparse single photons, and n Gaussian spots of 60 photons; (frame, centres)."""
    rng = np.random.default_rng(seed)
    frame = rng.normal(0, 4, shape) + rng.poisson(0.2, shape) * ADU
    rows, cols = np.indices(shape)
    centres = rng.uniform(30, min(shape) - 30, (n_spots, 2))
    for r, c in centres:
        frame += 60 * ADU / (2 * np.pi * 1.2**2) * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 2.88)
    return frame.astype(np.float32), centres


@pytest.mark.parametrize("n", [5, 20, 40])
def test_counts_synthetic_spots_on_the_region(n):
    frame, centres = frame_with_spots(n, seed=n)
    found = find_peaks(frame, None, PeakFinderParams())
    assert abs(len(found) - n) <= max(1, n // 10)
    nearest = np.hypot(*(found[:, None, 1::-1] - centres[None]).transpose(2, 0, 1)).min(axis=1)
    assert np.median(nearest) < 0.5  # at the spots' centres (columns, rows)


def test_background_alone_has_no_peaks():
    assert count_peaks(frame_with_spots(0)[0], geometry.roi_index(350) >= 0, PeakFinderParams()) == 0


def test_masked_pixels_are_ignored():
    mask = np.ones((350, 350), bool)
    mask[:, :175] = False
    found = find_peaks(frame_with_spots(30, seed=3)[0], mask, PeakFinderParams())
    assert len(found) > 5 and (found[:, 0] >= 175).all()


def test_raw_stack_is_searched_panel_by_panel():
    raw = np.random.default_rng(4).normal(0, 4, geometry.RAW_SHAPE).astype(np.float32)
    raw[7, 90, 200] += 3000
    raw[7, 90, 201] += 1500
    found = find_peaks(raw, None, PeakFinderParams())
    assert len(found) == 1 and abs(found[0, 1] - (7 * 185 + 90)) < 1 and abs(found[0, 0] - 200.3) < 1


def test_resolution_limits_and_gain_scaling():
    frame, _ = frame_with_spots(30, seed=5)
    radius = np.hypot(*(np.indices(frame.shape) - 174.5)).astype(np.float32)
    inner = PeakFinder(np.ones(frame.shape, bool), radius, PeakFinderParams(max_res=100)).find(frame)
    assert len(inner) and (np.hypot(inner[:, 0] - 174.5, inner[:, 1] - 174.5) < 101).all()
    assert PeakFinderParams.for_gain(10.0).adc_threshold == pytest.approx(150 / 3.5)
    assert count_peaks(frame, None, PeakFinderParams(max_num_peaks=4)) == 4


def test_wrong_frame_shape_is_refused():
    finder = PeakFinder(np.ones((8, 8), bool), np.ones((8, 8), np.float32), PeakFinderParams())
    with pytest.raises(ValueError, match="frame shape"):
        finder.find(np.zeros((8, 9), np.float32))
