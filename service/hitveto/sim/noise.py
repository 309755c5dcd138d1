"""Detector response: expected photons to pedestal-subtracted CSPAD ADU (int16).

adu = clip(rint(K g + o + n_read + c_asic + c_row), int16 min, saturation_adu) with K ~ Poisson(photons),
g the per-pixel gain (ADU/photon, 0 for dead pixels), o the fixed pedestal residual plus the excess
of hot pixels, n_read Gaussian read noise, and per-frame common-mode offsets per ASIC and per ASIC
row. The fixed pattern (g, o, hot and dead pixels) comes from the run seed, so it is the same in
every frame of a run; everything else comes from the frame's generator. ASICs tile the last two
axes in blocks of `asic_shape` (exact for the raw (32, 185, 388) stack, a stand-in for a region).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from hitveto.sim.params import DetectorParams, RunParams
from hitveto_client import detectors

POISSON_DIRECT_ABOVE = 16.0  # photons; brighter pixels are rare and use numpy's sampler
INT16_MIN, INT16_MAX = -32768, 32767
_FIXED_PATTERN_KEY = 0xDE7EC7  # spawn key of the run's fixed-pattern stream
_PEDESTAL_KEY = 0x9EDE57  # spawn key of the unit's pedestals
_GAIN_KEY = 0x6A1135  # spawn key of the unit's gains per stage


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class FixedPattern:
    """Per-run pixel properties (flat arrays); hot and dead are flat pixel indices."""

    gain: np.ndarray  # float32 ADU per photon, 0 on dead pixels
    offset: np.ndarray  # float32 ADU: pedestal residual, plus the excess of hot pixels
    hot: np.ndarray
    dead: np.ndarray


def to_adu(photons: np.ndarray, run: RunParams, rng: np.random.Generator) -> np.ndarray:
    """Noisy ADU (int16, shape of `photons`) for expected photons per pixel; for a detector
    calibrated in keV (Jungfrau, ePix10k2M) keV as float32, as psana's calib gives them."""
    det = run.detector
    pattern = fixed_pattern(det, pattern_seed(run), photons.shape)
    adu = poisson(np.ravel(photons).astype(np.float32, copy=False), rng)
    adu *= pattern.gain
    adu += pattern.offset
    if det.read_noise_adu > 0:
        adu += np.take(_gauss_table(det.read_noise_adu), rng.integers(0, 1 << 16, adu.size, np.uint16))
    _add_common_mode(adu.reshape(photons.shape), det, rng)
    if detectors.get(det.name).calibrated_unit == "keV":
        return np.minimum(adu, np.float32(det.saturation_adu), out=adu).reshape(photons.shape)
    np.clip(adu, INT16_MIN, min(det.saturation_adu, INT16_MAX), out=adu)
    np.rint(adu, out=adu)
    return adu.astype(np.int16).reshape(photons.shape)


def poisson(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts (float32, flat) of flat float32 means; ~3x faster than `rng.poisson` here.

    Counts arrivals of a unit-rate Poisson process in [0, lam): a pixel has a first photon if an
    Exponential(1) draw e < lam, and then, the process being memoryless, Poisson(lam - e) more.
    Only pixels still counting are touched again, so the cost is one exponential per pixel plus
    one per photon.
    """
    big = np.flatnonzero(lam > POISSON_DIRECT_ABOVE)
    rest = np.where(lam > POISSON_DIRECT_ABOVE, np.float32(0), lam) if big.size else lam
    e = rng.standard_exponential(rest.size, dtype=np.float32)
    first = e < rest
    counts = first.astype(np.float32)
    idx = np.flatnonzero(first)
    rest = rest[idx] - e[idx]
    while idx.size:
        e = rng.standard_exponential(idx.size, dtype=np.float32)
        more = np.flatnonzero(e < rest)
        idx, rest = idx[more], rest[more] - e[more]
        counts[idx] += 1
    if big.size:
        counts[big] = rng.poisson(lam[big])
    return counts


def pattern_seed(run: RunParams) -> int:
    """What the fixed pattern is drawn from: the detector unit's seed where it has one, else the run's."""
    return run.detector.unit_seed if run.detector.unit_seed is not None else run.seed


def to_raw(adu: np.ndarray, run: RunParams, forced_stage: int | None = None) -> np.ndarray:
    """Calibrated ADU (to_adu) as the DAQ reads them: on the unit's pedestals, 14-bit, int16. Dead
    pixels read their pedestal alone (stuck: no noise), as a dark run shows them. A gain-switching
    detector's frames (keV) come as its raw words (to_gain_raw)."""
    det = run.detector
    if det.stage_gain_adu:
        return to_gain_raw(adu, run, forced_stage)
    pedestal = pedestal_map(det, adu.shape)
    raw = adu.astype(np.int32) + pedestal
    dead = fixed_pattern(det, pattern_seed(run), adu.shape).dead
    raw.flat[dead] = pedestal.flat[dead]
    return np.clip(raw, 0, det.adc_max).astype(np.int16)


def to_gain_raw(kev: np.ndarray, run: RunParams, forced_stage: int | None = None) -> np.ndarray:
    """Calibrated keV as a gain-switching detector's DAQ reads them (uint16): each pixel in the
    first stage whose ADC stays under `switch_adc` (or in `forced_stage`, as dark runs force each
    stage in turn), its ADC on that stage's pedestal, the stage's code in the bits above the ADC."""
    det = run.detector
    bits = detectors.get(det.name).gain
    if bits is None:
        raise ValueError(f"{det.name} has one gain: no gain stages to read out")
    pedestal, gain = stage_maps(det, kev.shape)
    stage = np.full(kev.shape, forced_stage or 0, np.intp)
    adc = np.take_along_axis(pedestal, stage[None], 0)[0] + np.take_along_axis(gain, stage[None], 0)[0] * kev
    for k in range(1, len(gain)) if forced_stage is None else ():
        switch = adc > det.switch_adc
        stage[switch] = k
        adc[switch] = pedestal[k][switch] + gain[k][switch] * kev[switch]
    dead = fixed_pattern(det, pattern_seed(run), kev.shape).dead
    adc.flat[dead] = np.take_along_axis(pedestal, stage[None], 0)[0].flat[dead]
    codes = np.array(bits.stage_codes, np.uint16)[stage] << np.uint16(bits.data_bits)
    return codes | np.clip(np.rint(adc), 0, bits.data_mask).astype(np.uint16)


@functools.lru_cache(maxsize=2)
def stage_maps(det: DetectorParams, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The unit's pedestals (ADC) and gains (ADC per keV) of each gain stage, float32, (stages,
    *shape), from `unit_seed`: what its dark runs and its gain calibration measure."""
    stages = range(len(det.stage_gain_adu))
    pedestal = np.stack([pedestal_map(det, shape, k) for k in stages]).astype(np.float32)
    gain = np.empty_like(pedestal)
    for k, nominal in enumerate(det.stage_gain_adu):
        rng = np.random.default_rng(_unit_seed(det, (_GAIN_KEY, k)))
        gain[k] = nominal * (1 + det.stage_gain_rms * rng.standard_normal(shape, dtype=np.float32))
    return pedestal, gain


def _unit_seed(det: DetectorParams, key: tuple[int, ...]) -> np.random.SeedSequence:
    if det.unit_seed is None:
        raise ValueError("raw readout needs the detector unit's seed (DetectorParams.unit_seed)")
    return np.random.SeedSequence(det.unit_seed, spawn_key=key)


@functools.lru_cache(maxsize=4)
def pedestal_map(det: DetectorParams, shape: tuple[int, ...], stage: int = 0) -> np.ndarray:
    """The unit's pedestals (int32 ADU) of a gain stage: a level per ASIC, a spread per pixel,
    from `unit_seed`."""
    rng = np.random.default_rng(_unit_seed(det, (_PEDESTAL_KEY,) if stage == 0 else (_PEDESTAL_KEY, stage)))
    rows, cols = shape[-2:]
    asic_rows, asic_cols = det.asic_shape
    levels = rng.uniform(
        *det.pedestal_adu, (math.prod(shape[:-2]), -(-rows // asic_rows), -(-cols // asic_cols))
    )
    per_pixel = np.repeat(np.repeat(levels, asic_rows, axis=1), asic_cols, axis=2)[:, :rows, :cols]
    spread = det.pedestal_spread_adu * rng.standard_normal(per_pixel.shape)
    return np.rint(per_pixel + spread).astype(np.int32).reshape(shape)


@functools.lru_cache(maxsize=4)
def fixed_pattern(det: DetectorParams, seed: int, shape: tuple[int, ...]) -> FixedPattern:
    """The run's gain map, pedestal residuals, hot and dead pixels, from `seed` alone (cached)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_FIXED_PATTERN_KEY,)))
    n = math.prod(shape)
    gain = det.adu_per_photon * (1.0 + det.gain_rms * rng.standard_normal(n, dtype=np.float32))
    offset = det.pedestal_residual_adu * rng.standard_normal(n, dtype=np.float32)
    n_hot, n_dead = round(n * det.hot_pixel_fraction), round(n * det.dead_pixel_fraction)
    bad = rng.choice(n, size=n_hot + n_dead, replace=False)
    hot, dead = np.sort(bad[:n_hot]), np.sort(bad[n_hot:])
    offset[hot] += rng.exponential(det.hot_pixel_adu, hot.size).astype(np.float32)
    gain[dead] = 0.0
    offset[dead] = 0.0
    return FixedPattern(gain=gain.astype(np.float32), offset=offset, hot=hot, dead=dead)


@functools.lru_cache(maxsize=4)
def _gauss_table(sigma: float) -> np.ndarray:
    """Normal quantiles at (i + 0.5) / 2^16 times sigma: a uint16 draw indexes a Gaussian sample.

    Read-out is integer ADU anyway, and a table lookup costs a third of `standard_normal`.
    """
    z = np.linspace(-6.0, 6.0, 48001)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    p = (np.arange(1 << 16) + 0.5) / (1 << 16)
    return (sigma * np.interp(p, cdf, z)).astype(np.float32)


def _add_common_mode(adu: np.ndarray, det: DetectorParams, rng: np.random.Generator) -> None:
    """Per-frame offsets per ASIC and per ASIC row, added in place to an (..., rows, cols) view."""
    rows, cols = adu.shape[-2:]
    stack = adu.reshape(-1, rows, cols)
    asic_rows, asic_cols = det.asic_shape
    n_blocks = -(-cols // asic_cols)
    per_asic = det.common_mode_adu * rng.standard_normal((len(stack), -(-rows // asic_rows), n_blocks))
    per_row = det.row_common_mode_adu * rng.standard_normal((len(stack), rows, n_blocks))
    offsets = (np.repeat(per_asic, asic_rows, axis=1)[:, :rows] + per_row).astype(np.float32)
    for b in range(n_blocks):
        stack[:, :, b * asic_cols : (b + 1) * asic_cols] += offsets[:, :, b : b + 1]
