"""psana's peakfinder8: finds Bragg-like spots on a noisy background, nothing on background alone."""

from __future__ import annotations

import numpy as np

from service.peaks import PeakFinder, PeakFinderParams


def frame_with_spots(n_spots: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frame = rng.normal(0, 4, (350, 350)) + rng.poisson(0.2, (350, 350)) * 35.0
    rows, cols = np.indices(frame.shape)
    centres = rng.uniform(30, 320, (n_spots, 2))
    for r, c in centres:
        frame += 60 * 35 / (2 * np.pi * 1.2**2) * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 1.2**2))
    return frame.astype(np.float32)


def finder() -> PeakFinder:
    rows, cols = np.indices((350, 350))
    radius = np.hypot(rows - 175, cols - 175).astype(np.float32)
    return PeakFinder(np.ones((350, 350), bool), radius, PeakFinderParams())


def test_counts_synthetic_spots():
    pf = finder()
    for n in (5, 20, 40):
        assert abs(pf.count(frame_with_spots(n, seed=n)) - n) <= max(1, n // 10)


def test_background_alone_has_no_peaks():
    assert finder().count(frame_with_spots(0)) == 0


def test_masked_pixels_are_ignored():
    rows, cols = np.indices((350, 350))
    radius = np.hypot(rows - 175, cols - 175).astype(np.float32)
    mask = np.ones((350, 350), bool)
    mask[:, :175] = False
    frame = frame_with_spots(30, seed=3)
    found = PeakFinder(mask, radius, PeakFinderParams()).find(frame)
    assert len(found) > 5 and (found[:, 0] >= 175).all()


def test_raw_stack_is_searched_panel_by_panel():
    from service import geometry
    pixels = geometry.pixel_map("raw", 0.1)
    raw = np.random.default_rng(4).normal(0, 4, geometry.RAW_SHAPE).astype(np.float32)
    raw[7, 90, 200] += 3000
    raw[7, 90, 201] += 1500
    found = PeakFinder(pixels.mask, geometry.radius_px(pixels), PeakFinderParams()).find(raw)
    assert len(found) == 1 and abs(found[0, 1] - (7 * 185 + 90)) < 1 and abs(found[0, 0] - 200.3) < 1
