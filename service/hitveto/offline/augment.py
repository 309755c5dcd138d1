"""Training-time augmentation: what a new run will bring that the training runs did not."""

from __future__ import annotations

import numpy as np

HOT_PIXELS_PER_FRAME = 40  # ~3e-4 of a 350x350 region: more than a CSPAD's, on purpose
HOT_PIXEL_MEAN_ADU = 2000.0


def augment(
    regions: np.ndarray, rng: np.random.Generator, gain_range: float = 1.0, hot_pixels: bool = True
) -> np.ndarray:
    """A copy with fresh hot (unless `hot_pixels` is off) and dead pixels in each frame, and with
    gain_range > 1 each frame's ADU scaled by a log-uniform factor in [1 / gain_range, 1] (rounded,
    as a lower gain reads).

    Every run has its own fixed hot pixels; a model that saw only the training runs' ones takes a
    new run's for Bragg peaks (the study's drop in held-out specificity). Single bright pixels in
    random places on hits and misses alike teach it that one pixel is not a peak. Not so for the
    full-detector layout: its pool caps a lone bright pixel (preprocess.pool_panels), and a bright
    pooled pixel there is what a spot looks like.
    """
    out = regions.copy()
    n, h, w = out.shape
    if gain_range > 1.0:
        gains = np.exp(-rng.uniform(0.0, np.log(gain_range), n))
        out = np.rint(out * gains[:, None, None]).astype(regions.dtype)
    for i in range(n):
        k = rng.poisson(HOT_PIXELS_PER_FRAME)
        flat = out[i].reshape(-1)
        if hot_pixels:
            flat[rng.integers(0, h * w, k)] = np.minimum(rng.exponential(HOT_PIXEL_MEAN_ADU, k), 15000)
        flat[rng.integers(0, h * w, k // 2)] = 0
    return out
