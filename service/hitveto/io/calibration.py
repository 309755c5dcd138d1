"""Calibration constants of a detector, and raw frames calibrated with them.

A DAQ writer holds raw frames: ADC counts on top of each pixel's pedestal (900-1700 ADU on a CSPAD).
The model judges calibrated frames, as psana's `det.raw.calib` gives them:

    calibrated = (raw - pedestal) - common mode of the pixel's ASIC,   0 where the status is bad

and for a gain-switching detector (Jungfrau, ePix10ka: hitveto_client.detectors), each pixel in the
gain stage its raw word's gain bits name, as psana's Jungfrau calib does:

    calibrated = (ADC - pedestal[stage]) * gain_factor[stage]   keV, 0 where bad or the bits invalid

Constants come from a dark run (`hitveto dark`: frames with no beam, so each pixel's mean is its
pedestal, its spread its noise) and are valid for a range of runs. One file, `.npz`:

    format       CONSTANTS_FORMAT (an int; bumped when the meaning changes)
    detector     e.g. "cspad"
    pedestal     float32, the raw frame's shape: ADU; (stages, *shape) for gain-switching detectors
    gain_factor  gain-switching detectors only: float32, (stages, *shape), keV per ADC (psana's)
    noise        float32, the raw frame's shape: rms ADU in the dark (the first stage's)
    status       uint16, same shape: 0 good, else CXI bits (MASK_HOT, MASK_DEAD)
    common_mode  "asic_dark_peak" (each ASIC's offset: the mean of its sampled pixels within
                 COMMON_MODE_WINDOW noise rms of it, found in COMMON_MODE_PASSES passes from 0,
                 so that pixels lit by photons do not count; psana's CSPAD common mode works so
                 too) or "none"
    runs         [first, last]: the runs the constants are valid for (last -1: open-ended)
    source       what they were made from (the dark runs' names)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hitveto.models import kernels
from hitveto_client import detectors

CONSTANTS_FORMAT = 2  # 2: gain-switching detectors' stages (format 1 files read as ever)
READS_FORMATS = (1, 2)
ASIC_COLS = 194  # a CSPAD 2x1 is two ASICs of 185 x 194
COMMON_MODE_STRIDE = 4  # every 4th row and column: 1/16 of an ASIC's pixels give its offset
COMMON_MODE_WINDOW = 3.0  # noise rms: a photon (~7 rms on a CSPAD in high gain) falls outside
COMMON_MODE_PASSES = 2
COMMON_MODE_MIN_SHARE = 0.1  # of an ASIC's sample in the window, or its offset is left at 0
COMMON_MODES = ("asic_dark_peak", "none")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Constants:
    detector: str
    pedestal: np.ndarray
    noise: np.ndarray
    status: np.ndarray
    common_mode: str = "asic_dark_peak"
    runs: tuple[int, int] = (0, -1)
    source: str = ""
    gain_factor: np.ndarray | None = None
    _bad: np.ndarray = field(init=False, repr=False)  # flat indices of the pixels the status flags
    _bad_mask: np.ndarray = field(init=False, repr=False)  # uint8, 1 where the status flags a pixel
    _pedestal16: np.ndarray = field(init=False, repr=False)  # the pedestal rounded, for int16 frames
    _window: np.ndarray = field(init=False, repr=False)  # per ASIC: COMMON_MODE_WINDOW x its noise

    def __post_init__(self) -> None:
        if self.common_mode not in COMMON_MODES:
            raise ValueError(f"common mode {self.common_mode!r}: one of {COMMON_MODES}")
        frame = self.noise.shape
        pedestal = frame if self.gain_factor is None else self.gain_factor.shape
        if self.status.shape != frame or self.pedestal.shape != pedestal or pedestal[-len(frame) :] != frame:
            raise ValueError("pedestal (per stage), gain factor, noise and status differ in shape")
        if self.gain_factor is not None and self.common_mode != "none":
            raise ValueError("gain-switching detectors: common mode 'none' (psana's default for them)")
        object.__setattr__(self, "_bad", np.flatnonzero(self.status))
        object.__setattr__(self, "_bad_mask", (self.status != 0).astype(np.uint8))
        pedestal16 = np.zeros(0, np.int16)  # gain stages: calibrated in float32, no int16 pedestal
        if self.gain_factor is None:
            pedestal16 = np.clip(np.rint(self.pedestal), -(1 << 15), (1 << 15) - 1).astype(np.int16)
        object.__setattr__(self, "_pedestal16", pedestal16)
        noise = np.median(_asic_sample(self.noise), axis=-1, keepdims=True)
        object.__setattr__(self, "_window", (COMMON_MODE_WINDOW * noise).astype(np.float32))

    @property
    def shape(self) -> tuple[int, ...]:
        """The raw frame's."""
        return tuple(self.noise.shape)

    @property
    def calibrated_noise(self) -> np.ndarray:
        """The dark noise in the calibrated unit (ADU, or keV through the first stage's gain)."""
        return self.noise if self.gain_factor is None else self.noise * self.gain_factor[0]

    def covers(self, run: int) -> bool:
        first, last = self.runs
        return first <= run and (last < 0 or run <= last)

    def save(self, path: Path) -> None:
        stages: dict[str, Any] = {} if self.gain_factor is None else {"gain_factor": self.gain_factor}
        np.savez_compressed(
            path,
            format=CONSTANTS_FORMAT,
            detector=self.detector,
            pedestal=self.pedestal.astype(np.float32),
            noise=self.noise.astype(np.float32),
            status=self.status.astype(np.uint16),
            common_mode=self.common_mode,
            runs=np.array(self.runs, dtype=np.int64),
            source=self.source,
            **stages,
        )


def load(path: Path) -> Constants:
    """Constants from a file `Constants.save` (or `hitveto dark`) wrote; ValueError if not such."""
    with np.load(path, allow_pickle=False) as z:
        version = int(z["format"]) if "format" in z else None
        if version not in READS_FORMATS:
            raise ValueError(f"{path}: calibration constants format {version}, this reads {READS_FORMATS}")
        first, last = (int(r) for r in z["runs"])
        return Constants(
            detector=str(z["detector"]),
            pedestal=z["pedestal"].astype(np.float32),
            noise=z["noise"].astype(np.float32),
            status=z["status"].astype(np.uint16),
            common_mode=str(z["common_mode"]),
            runs=(first, last),
            source=str(z["source"]),
            gain_factor=z["gain_factor"].astype(np.float32) if "gain_factor" in z else None,
        )


def calibrate(raw: np.ndarray, constants: Constants) -> np.ndarray:
    """A raw frame calibrated, pedestal and common mode subtracted, bad pixels 0.

    int16 raw frames (the CSPAD's) give int16 ADU, rounded as the DAQ's own integers are, which the
    model was trained on: all in 16-bit integers, 1.3 ms a CSPAD frame on one core, and the pool
    after it 1.8 ms instead of 4.2 on floats. Other dtypes give float32."""
    if raw.shape != constants.shape:
        raise ValueError(f"raw frame {raw.shape} != the constants' {constants.shape}")
    if constants.gain_factor is not None:
        return _calibrate_stages(raw, constants)
    whole = raw.dtype == np.int16
    if whole:
        out = np.subtract(raw, constants._pedestal16)  # a pedestal >= 0 under a 14-bit ADC: no wrap
    else:
        out = np.subtract(raw, constants.pedestal, dtype=np.float32)
    if constants.common_mode == "asic_dark_peak":
        view = asics(out)
        offset = _dark_peak(_asic_sample(out), constants._window).reshape(len(view), 1, -1, 1)
        view -= (np.rint(offset) if whole else offset).astype(out.dtype)
    out.flat[constants._bad] = 0
    return out


def calibrate_pooled(
    raw: np.ndarray, constants: Constants, pool: int, sample_stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """An int16 raw frame calibrated and pooled for the raw layout, exactly
    `preprocess.pool_panels(calibrate(raw, constants), pool)`, in one call that holds no
    interpreter lock and never writes the calibrated frame (kernels.calibrate_pool); with the
    calibrated frame's every `sample_stride`-th row and column (the guard's sample), shaped as the
    raw stack's. A gain-switching detector's uint16 words: kernels.calibrate_stages_pool, float32."""
    if constants.gain_factor is not None:
        return _calibrate_stages_pooled(raw, constants, pool, sample_stride)
    if raw.dtype != np.int16 or raw.shape != constants.shape:
        raise ValueError(f"raw frame {raw.dtype}{raw.shape}: int16 {constants.shape} expected")
    panels = raw.reshape(-1, *raw.shape[-2:])
    n, rows, cols = panels.shape
    pedestal, bad = (a.reshape(panels.shape) for a in (constants._pedestal16, constants._bad_mask))
    passes = COMMON_MODE_PASSES if constants.common_mode == "asic_dark_peak" else 0
    per_row = asics(raw).shape[2]
    pooled = np.empty((n, rows // pool, cols // pool), np.int32)
    s = sample_stride
    sample = np.empty((n, -(-rows // s), -(-cols // s)), np.int16)
    mode = kernels.CommonMode(stride=COMMON_MODE_STRIDE, passes=passes, min_share=COMMON_MODE_MIN_SHARE)
    kernels.calibrate_pool(
        panels, pedestal, bad, constants._window, cols // per_row, mode, pool, pooled, s, sample
    )
    return pooled.reshape(n * (rows // pool), cols // pool), sample.reshape(
        *raw.shape[:-2], *sample.shape[1:]
    )


def fuses(raw: np.ndarray, constants: Constants) -> bool:
    """Whether calibrate_pooled takes this raw stack: the CSPAD's int16, or the uint16 words of a
    gain-switching detector."""
    if raw.ndim < 3 or raw.shape != constants.shape:
        return False
    return raw.dtype == (np.int16 if constants.gain_factor is None else np.uint16)


def _calibrate_stages_pooled(
    raw: np.ndarray, constants: Constants, pool: int, sample_stride: int
) -> tuple[np.ndarray, np.ndarray]:
    bits = _gain_bits(raw, constants)
    assert constants.gain_factor is not None
    n, rows, cols = raw.shape
    pooled = np.empty((n, rows // pool, cols // pool), np.float32)
    sample = np.empty((n, -(-rows // sample_stride), -(-cols // sample_stride)), np.float32)
    bad = constants._bad_mask
    kernels.calibrate_stages_pool(
        raw, stage_of_codes(bits), constants.pedestal, constants.gain_factor, bad, bits.data_bits, pool,
        pooled, sample_stride, sample,
    )  # fmt: skip
    return pooled.reshape(n * (rows // pool), cols // pool), sample


def _gain_bits(raw: np.ndarray, constants: Constants) -> detectors.GainBits:
    """The detector's gain bits; ValueError for a frame that is not its raw words."""
    detector = detectors.get(constants.detector)
    if detector.gain is None:
        raise ValueError(f"constants with gain stages for {constants.detector}, which has one gain")
    if raw.dtype != detector.raw_dtype or raw.shape != constants.shape:
        expected = f"{detector.raw_dtype}{constants.shape}"
        raise ValueError(f"{raw.dtype}{raw.shape} frame: {detector.name} raw frames are {expected}")
    return detector.gain


def _calibrate_stages(raw: np.ndarray, constants: Constants) -> np.ndarray:
    """A gain-switching detector's raw words calibrated (float32 keV), as psana's Jungfrau calib
    computes them (tests/test_gain_stages.py checks against its formula in numpy); compiled: 10x
    numpy's ~150 ms a Jungfrau 4M frame."""
    assert constants.gain_factor is not None
    bits = _gain_bits(raw, constants)
    out = np.empty(raw.shape, np.float32)
    stages, bad = stage_of_codes(bits), constants._bad_mask
    kernels.calibrate_stages(raw, stages, constants.pedestal, constants.gain_factor, bad, bits.data_bits, out)
    return out


def stage_of_codes(bits: detectors.GainBits) -> np.ndarray:
    """uint8 lookup: gain-bit code -> stage, len(stages) where the code names none."""
    table = np.full(1 << (16 - bits.data_bits), len(bits.stage_codes), np.uint8)
    table[list(bits.stage_codes)] = np.arange(len(bits.stage_codes))
    return table


def _dark_peak(sample: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Each ASIC's offset, (asics, 1), from its (asics, n) sample: kernels.dark_peak (compiled:
    0.77 ms a CSPAD frame in numpy's element-wise passes)."""
    return kernels.dark_peak(sample, window, COMMON_MODE_PASSES, COMMON_MODE_MIN_SHARE)


def asics(frame: np.ndarray) -> np.ndarray:
    """(rows of ASICs, asic rows, asics per row, asic columns) view: a known detector's raw stack
    as its description tiles it (a Jungfrau module: 2 x 4 ASICs of 256 x 256); other frames by
    the CSPAD's rule, a panel holding two 194-column ASICs side by side, or one."""
    rows, cols = frame.shape[-2:]
    known = detectors.of_shape(frame.shape[-3:]) if frame.ndim >= 3 else None
    if known is not None:
        asic_rows, asic_cols = known.asic_shape
    else:
        asic_rows, asic_cols = rows, ASIC_COLS if cols % ASIC_COLS == 0 else cols
    return frame.reshape(-1, asic_rows, cols // asic_cols, asic_cols)


def _asic_sample(frame: np.ndarray) -> np.ndarray:
    """(asics, n) every COMMON_MODE_STRIDE-th row and column of each ASIC."""
    sample = asics(frame)[:, ::COMMON_MODE_STRIDE, :, ::COMMON_MODE_STRIDE]
    return sample.transpose(0, 2, 1, 3).reshape(sample.shape[0] * sample.shape[2], -1)
