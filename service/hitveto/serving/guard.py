"""What a frame goes through before the model: calibration of raw frames, and a guard that refuses
to judge what the model was not trained on.

Raw frames (ADC counts on the pixels' pedestals, as a DAQ writer holds them) are calibrated on
arrival with the configured constants (`calib.constants`, from `hitveto dark`), unless their header
says they are calibrated already (`meta.calibrated = true`). The model was trained on calibrated
frames: pedestal 0, a few photons at most in an empty pixel.

The guard checks that level, cheaply (the median of a 1-in-64 sample of each panel: ~0.3 ms a CSPAD
frame): a frame where a quarter of the panels sit more than LEVEL_LIMIT_PHOTONS from zero is not a
calibrated frame (raw, or a gain mode the model does not know). Where the daemon calibrates, it
also checks the same sample's negative tail against the constants' noise (`noise_ok`): the ASIC's
common mode takes out a wrong dark's level, not its pixel-to-pixel error. A frame that fails is
kept with reason `out_of_distribution` and counted, not judged: a mistaken setup costs storage,
not hits. Measured, raw CSPAD frames judged as if calibrated lost
every hit (issue #21).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from hitveto.io import calibration
from hitveto.io.calibration import Constants
from hitveto.models.preprocess import InputSpec

LEVEL_LIMIT_PHOTONS = 4.0  # a calibrated panel's median: ~0 (water rings and streaks: < 2 photons)
PANEL_SHARE = 0.25  # of panels off level make the frame out of distribution
SAMPLE_STRIDE = 8  # rows and columns: the level's sample
BAND_ROWS = 50  # frames that are not a stack of panels (the region) are checked in bands of rows
NEGATIVE_SIGMA = 5.0  # a calibrated pixel falls this far below 0 by noise alone once in ~3 million
NEGATIVE_SHARE = 0.01  # of the sample below that: the pedestals are not this detector's now


class ConstantsMismatch(ValueError):
    pass


class InputGuard:
    """Calibrates raw frames and judges their level; `constants` can be swapped while serving."""

    def __init__(self, constants_path: str, spec: InputSpec, *, check_level: bool = True) -> None:
        self._lock = threading.Lock()
        self.check_level = check_level
        self.constants: Constants | None = None
        self._floor: np.ndarray = np.zeros(0, np.float32)  # -NEGATIVE_SIGMA x the sample's noise
        if constants_path:
            self.load(Path(constants_path), spec)

    def load(self, path: Path, spec: InputSpec) -> Constants:
        """New constants (a new dark mid-shift), checked against the model's detector, then swapped
        in: frames in flight finish with the constants they started with."""
        constants = calibration.load(path)
        if constants.detector != spec.detector or constants.shape != tuple(spec.raw_shape):
            raise ConstantsMismatch(
                f"{path}: constants for {constants.detector} {constants.shape}, the model reads "
                f"{spec.detector} {tuple(spec.raw_shape)}"
            )
        floor = -NEGATIVE_SIGMA * constants.calibrated_noise[..., ::SAMPLE_STRIDE, ::SAMPLE_STRIDE]
        with self._lock:
            self.constants, self._floor = constants, floor
        return constants

    def prepare(self, image: np.ndarray, meta: dict[str, Any], spec: InputSpec) -> tuple[np.ndarray, bool]:
        """The frame as the model takes it, and whether it is fit to be judged (the checks)."""
        with self._lock:
            constants, floor = self.constants, self._floor
        if constants is None or meta.get("calibrated") is True or image.shape != constants.shape:
            return image, not self.check_level or level_ok(image, spec.adu_per_photon)
        if spec.layout == "raw" and calibration.fuses(image, constants):  # one pass to the input
            pooled, sample = calibration.calibrate_pooled(image, constants, spec.pool, SAMPLE_STRIDE)
            return pooled, not self.check_level or _sample_ok(sample, floor, spec.adu_per_photon)
        image = calibration.calibrate(image, constants)
        if not self.check_level:
            return image, True
        return image, level_ok(image, spec.adu_per_photon) and noise_ok(image, floor)


def _sample_ok(sample: np.ndarray, floor: np.ndarray, adu_per_photon: float) -> bool:
    """level_ok and noise_ok on a calibrated stack's every SAMPLE_STRIDE-th row and column."""
    return _panels_level_ok(sample, adu_per_photon) and _noise_sample_ok(sample, floor)


def level_ok(image: np.ndarray, adu_per_photon: float) -> bool:
    """True when at most PANEL_SHARE of the panels have a median level beyond the limit (and for
    what has no panels, a frame of one axis or none: the shape check rejects it next)."""
    if image.ndim < 2 or image.size == 0:
        return True
    if image.ndim >= 3:
        return _panels_level_ok(image[..., ::SAMPLE_STRIDE, ::SAMPLE_STRIDE], adu_per_photon)
    bands = range(0, image.shape[0], BAND_ROWS)
    levels = np.array([np.median(image[r : r + BAND_ROWS : SAMPLE_STRIDE, ::SAMPLE_STRIDE]) for r in bands])
    return _levels_ok(levels, adu_per_photon)


def _panels_level_ok(sample: np.ndarray, adu_per_photon: float) -> bool:
    """level_ok on a stack's sample: each panel's median against the limit."""
    panels = sample.reshape(-1, sample.shape[-2] * sample.shape[-1])
    if panels.dtype.kind == "f":  # np.median: a panel with a NaN (psana's bad pixels) has no level
        return _levels_ok(np.median(panels, axis=1), adu_per_photon)
    # integers: the same medians from numpy's vectorised sort, 10x faster than np.median's partition
    ordered, n = np.sort(panels, axis=1), panels.shape[1]
    return _levels_ok(ordered[:, [(n - 1) // 2, n // 2]].mean(axis=1), adu_per_photon)


def _levels_ok(levels: np.ndarray, adu_per_photon: float) -> bool:
    off = np.abs(levels) > LEVEL_LIMIT_PHOTONS * adu_per_photon
    return bool(off.mean() <= PANEL_SHARE)


def noise_ok(image: np.ndarray, floor: np.ndarray) -> bool:
    """True unless more than NEGATIVE_SHARE of the sampled pixels lie NEGATIVE_SIGMA of their noise
    below 0. Photons only add; a wrong dark (another unit, an old one, another gain mode) leaves
    pixel pedestals off by more than the noise both ways, which the ASIC's common mode cannot
    take out: measured, another unit's dark put 49 % of the sampled pixels there, the right one none."""
    return _noise_sample_ok(image[..., ::SAMPLE_STRIDE, ::SAMPLE_STRIDE], floor)


def _noise_sample_ok(sample: np.ndarray, floor: np.ndarray) -> bool:
    return bool((sample < floor).mean() <= NEGATIVE_SHARE)
