"""Compiled kernels (numba) for the per-frame hot path: the raw layout's pool, and the same pool fused
with the calibration of raw frames.

numpy's element-wise pool made ten passes over a frame, each into a fresh temporary, with the
interpreter lock taken between them: 1.8 ms a calibrated CSPAD frame, and calibration before it
another 1.4 ms and a 4.6 MB frame written. These read each pixel once and release the lock
(`nogil`), so the daemon's ingest threads pool in parallel. They give exactly what the numpy
version gives (tests/test_kernels.py): every model was trained on that. Integer frames of 16 bits
only (the CSPAD's int16, calibrated or raw); float frames keep numpy's version, whose float32
rounding the models learnt.

The pool, per panel (preprocess.pool_panels says why): each 2x2 block summed, the sum capped at
three times what the block holds outside its brightest pixel, then the max over (pool/2)^2 blocks.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np


def _numba_cache() -> str:
    """Where numba keeps the compiled kernels: hitveto's cache folder (`$HITVETO_CACHE` or
    ~/.cache/hitveto), else the temporary folder. numba refuses to import a module whose kernels it
    can cache nowhere, and a sandboxed daemon (deploy/systemd: read-only install, no home) has
    neither the in-tree __pycache__ nor a user cache."""
    base = Path(os.environ.get("HITVETO_CACHE") or Path.home() / ".cache" / "hitveto")
    for folder in (base / "numba", Path(tempfile.gettempdir()) / f"hitveto-numba-{os.getuid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
            return str(folder)
        except OSError:
            continue
    return ""


# numba reads it once, when first imported: nothing in hitveto imports numba before this module
os.environ.setdefault("NUMBA_CACHE_DIR", _numba_cache())

import numba  # noqa: E402


class CommonMode(NamedTuple):
    """How calibrate_pool finds each ASIC's common mode (calibration.py's COMMON_MODE_*)."""

    stride: int  # every stride-th row and column of the ASIC
    passes: int  # 0: no common mode
    min_share: float


@numba.njit(nogil=True, cache=True)
def pool(panels: np.ndarray, size: int, out: np.ndarray) -> None:  # pragma: no cover (compiled)
    """Integer panels (n, rows, cols) pooled size x size into out (n, rows // size, cols // size),
    int32."""
    n, rows, cols = panels.shape
    half, width = size // 2, cols // size
    blocks = np.empty(width * half, np.int64)  # one row of 2x2 blocks
    for p in range(n):
        for i in range(rows // size):
            for a in range(half):
                r = i * size + 2 * a
                _capped_blocks(panels[p, r], panels[p, r + 1], blocks)
                _max_into(out[p, i], blocks, half, a == 0)


@numba.njit(nogil=True, cache=True)
def pool_raw(
    raw: np.ndarray,
    pedestal: np.ndarray,
    offset: np.ndarray,
    bad: np.ndarray,
    size: int,
    out: np.ndarray,
) -> None:  # pragma: no cover (compiled)
    """Raw int16 panels (n, rows, cols) calibrated and pooled in one pass into out (int32).

    Each pixel is raw - pedestal - offset, in int16 as calibration.calibrate computes it, and 0
    where `bad` (uint8) is set; `offset` (n, cols) int16 is each column's ASIC common mode."""
    n, rows, cols = raw.shape
    half, width = size // 2, cols // size
    blocks = np.empty(width * half, np.int64)
    top, bottom = np.empty(cols, np.int16), np.empty(cols, np.int16)
    for p in range(n):
        for i in range(rows // size):
            for a in range(half):
                r = i * size + 2 * a
                _calibrate_row(raw[p, r], pedestal[p, r], offset[p], bad[p, r], top)
                _calibrate_row(raw[p, r + 1], pedestal[p, r + 1], offset[p], bad[p, r + 1], bottom)
                _capped_blocks(top, bottom, blocks)
                _max_into(out[p, i], blocks, half, a == 0)


@numba.njit(nogil=True, cache=True)
def calibrate_pool(
    raw: np.ndarray,
    pedestal: np.ndarray,
    bad: np.ndarray,
    window: np.ndarray,
    asic_cols: int,
    common_mode: CommonMode,
    size: int,
    out: np.ndarray,
    sample_stride: int,
    sample: np.ndarray,
) -> None:  # pragma: no cover (compiled)
    """Everything a raw int16 frame (n, rows, cols) needs before the model, in one call that holds
    no interpreter lock: each ASIC's common mode (from every `common_mode.stride`-th pixel of
    raw - pedestal, `window` (asics, 1) as dark_peak takes it; none if `common_mode.passes` is 0),
    the pool (size x size) of the calibrated frame into out (pool_raw), and the calibrated frame's every
    `sample_stride`-th row and column into `sample` for the guard."""
    n, rows, cols = raw.shape
    offsets = np.zeros((n, cols), np.int16)
    if common_mode.passes > 0:
        _common_mode_offsets(raw, pedestal, window, asic_cols, common_mode, offsets)
    pool_raw(raw, pedestal, offsets, bad, size, out)
    s = sample_stride
    for p in range(n):
        for i in range(sample.shape[1]):
            _calibrate_row(
                raw[p, i * s, ::s], pedestal[p, i * s, ::s], offsets[p, ::s], bad[p, i * s, ::s], sample[p, i]
            )


@numba.njit(nogil=True, cache=True)
def calibrate_stages_pool(
    raw: np.ndarray,
    stages: np.ndarray,
    pedestal: np.ndarray,
    factor: np.ndarray,
    bad: np.ndarray,
    data_bits: int,
    size: int,
    out: np.ndarray,
    sample_stride: int,
    sample: np.ndarray,
) -> None:  # pragma: no cover (compiled)
    """A gain-switching detector's raw words (n, rows, cols) uint16 calibrated and pooled in one
    call that holds no interpreter lock, exactly as calibration.calibrate then the pool of float
    frames give it: each pixel (ADC - pedestal[stage]) * factor[stage] in float32, the stage
    `stages[raw >> data_bits]` (uint8; past the last stage: an invalid code, 0), 0 where `bad`;
    pooled size x size into out (float32), and every `sample_stride`-th row and column into
    `sample` (float32) for the guard."""
    n, rows, cols = raw.shape
    half, width = size // 2, cols // size
    blocks = np.empty(width * half, np.float32)
    top, bottom = np.empty(cols, np.float32), np.empty(cols, np.float32)
    mask = (1 << data_bits) - 1
    for p in range(n):
        for i in range(rows // size):
            for a in range(half):
                r = i * size + 2 * a
                _calibrate_stage_row(
                    raw[p, r], stages, pedestal[:, p, r], factor[:, p, r], bad[p, r], data_bits, mask, top
                )
                r += 1
                _calibrate_stage_row(
                    raw[p, r], stages, pedestal[:, p, r], factor[:, p, r], bad[p, r], data_bits, mask, bottom
                )
                for k in range(len(blocks)):
                    blocks[k] = _capped_block_float(
                        top[2 * k], top[2 * k + 1], bottom[2 * k], bottom[2 * k + 1]
                    )
                _max_into(out[p, i], blocks, half, a == 0)
        s = sample_stride
        for i in range(sample.shape[1]):  # only the sampled pixels, as calibrate_pool's sample
            r = i * s
            ped, fac = pedestal[:, p, r, ::s], factor[:, p, r, ::s]
            _calibrate_stage_row(
                raw[p, r, ::s], stages, ped, fac, bad[p, r, ::s], data_bits, mask, sample[p, i]
            )


@numba.njit(nogil=True, cache=True)
def calibrate_stages(
    raw: np.ndarray,
    stages: np.ndarray,
    pedestal: np.ndarray,
    factor: np.ndarray,
    bad: np.ndarray,
    data_bits: int,
    out: np.ndarray,
) -> None:  # pragma: no cover (compiled)
    """calibrate_stages_pool's calibration alone: the whole frame (n, rows, cols) into out
    (float32), for what stores calibrated frames (hit files)."""
    mask = (1 << data_bits) - 1
    for p in range(raw.shape[0]):
        for r in range(raw.shape[1]):
            _calibrate_stage_row(
                raw[p, r], stages, pedestal[:, p, r], factor[:, p, r], bad[p, r], data_bits, mask, out[p, r]
            )


@numba.njit(inline="always")
def _calibrate_stage_row(raw, stages, pedestal, factor, bad, data_bits, mask, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    n_stages = pedestal.shape[0]
    for c in range(len(out)):
        stage = stages[raw[c] >> data_bits]
        if bad[c] or stage >= n_stages:
            out[c] = np.float32(0)
        else:
            out[c] = (np.float32(raw[c] & mask) - pedestal[stage, c]) * factor[stage, c]


@numba.njit(inline="always")
def _capped_block_float(x0, x1, x2, x3):  # type: ignore[no-untyped-def]  # pragma: no cover
    # in float32, in the order preprocess._pool_chunk adds: columns' top + bottom, then the pair
    total = (x0 + x2) + (x1 + x3)
    brightest = max(max(x0, x2), max(x1, x3))
    return min(total, (total - brightest) * np.float32(3))


@numba.njit(inline="always")
def _common_mode_offsets(raw, pedestal, window, asic_cols, common_mode, offsets):  # type: ignore[no-untyped-def]  # pragma: no cover
    # the sample in calibration._asic_sample's order: panel, ASIC, then its rows and columns
    n, rows, cols = raw.shape
    per_row, stride = cols // asic_cols, common_mode.stride
    sample_rows, sample_cols = -(-rows // stride), -(-asic_cols // stride)
    sample = np.empty((n * per_row, sample_rows * sample_cols), np.int16)
    for p in range(n):
        for a in range(per_row):
            k = 0
            for r in range(0, rows, stride):
                for c in range(a * asic_cols, (a + 1) * asic_cols, stride):
                    sample[p * per_row + a, k] = np.int16(raw[p, r, c] - pedestal[p, r, c])
                    k += 1
    peaks = dark_peak(sample, window, common_mode.passes, common_mode.min_share)
    for p in range(n):
        for a in range(per_row):
            offsets[p, a * asic_cols : (a + 1) * asic_cols] = np.int16(np.rint(peaks[p * per_row + a, 0]))


@numba.njit(nogil=True, cache=True)
def dark_peak(
    sample: np.ndarray, window: np.ndarray, passes: int, min_share: float
) -> np.ndarray:  # pragma: no cover
    """Each ASIC's common-mode offset (asics, 1) float32 from its (asics, n) sample: the mean of the
    pixels within `window` (asics, 1) of the offset, in `passes` passes from 0 (a pixel lit by a
    photon lies outside); 0 where fewer than `min_share` of the sample are inside. Sums in float64:
    for float samples the offset may differ in its last bit from numpy's float32 sums."""
    asics, n = sample.shape
    out = np.zeros((asics, 1), np.float32)
    for k in range(asics):
        offset = np.float32(0)
        for _ in range(passes):
            count, total = 0, 0.0
            for x in sample[k]:
                if abs(np.float32(x) - offset) < window[k, 0]:
                    count += 1
                    total += x
            offset = np.float32(total / count) if count >= min_share * n and count > 0 else np.float32(0)
        out[k, 0] = offset
    return out


@numba.njit(inline="always")
def _calibrate_row(raw, pedestal, offset, bad, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    for c in range(len(out)):
        value = np.int16(np.int16(raw[c] - pedestal[c]) - offset[c])  # int16 wraps, as numpy's
        out[c] = 0 if bad[c] else value


@numba.njit(inline="always")
def _capped_blocks(top, bottom, blocks):  # type: ignore[no-untyped-def]  # pragma: no cover
    for k in range(len(blocks)):  # along the rows: the loop the compiler vectorises
        blocks[k] = _capped_block(top[2 * k], top[2 * k + 1], bottom[2 * k], bottom[2 * k + 1])


@numba.njit(inline="always")
def _max_into(best, blocks, half, first):  # type: ignore[no-untyped-def]  # pragma: no cover
    for j in range(len(best)):
        m = blocks[j * half]
        for b in range(1, half):
            m = max(m, blocks[j * half + b])
        best[j] = m if first else max(best[j], m)


@numba.njit(inline="always")
def _capped_block(x0, x1, x2, x3):  # type: ignore[no-untyped-def]  # pragma: no cover
    # in 64-bit integers: exact, as numpy's int32 sums are for 16-bit pixels
    total = np.int64(x0) + np.int64(x1) + np.int64(x2) + np.int64(x3)
    brightest = max(max(x0, x1), max(x2, x3))
    return min(total, (total - np.int64(brightest)) * 3)


def warm_up() -> float:
    """Compile (or load from numba's cache) what frames will call, read-only frames included (a
    frame decoded from a ZeroMQ message is read-only: another signature), so that the first frames
    do not wait ~1 s for the compiler; seconds taken."""
    t0 = time.perf_counter()
    out = np.empty((1, 1, 1), np.int32)
    for dtype in (np.int16, np.uint16):
        for writeable in (True, False):
            panels = np.zeros((1, 4, 4), dtype)
            panels.setflags(write=writeable)
            pool(panels, 4, out)
            if dtype == np.int16:  # raw frames: calibrated on the way
                bad, window = np.zeros((1, 4, 4), np.uint8), np.ones((1, 1), np.float32)
                sample = np.empty((1, 1, 1), np.int16)
                mode = CommonMode(stride=4, passes=2, min_share=0.1)
                calibrate_pool(panels, np.zeros_like(panels), bad, window, 4, mode, 4, out, 4, sample)
                dark_peak(np.zeros((1, 4), np.int16), window, 2, 0.1)  # calibrate()'s
                dark_peak(np.zeros((1, 4), np.float32), window, 2, 0.1)
            else:  # gain-switching detectors' raw words
                _warm_up_stages(panels)
    return time.perf_counter() - t0


def _warm_up_stages(words: np.ndarray) -> None:
    constants = np.zeros((1, *words.shape), np.float32)
    bad, table = np.zeros(words.shape, np.uint8), np.zeros(4, np.uint8)
    pooled = np.empty((1, 1, 1), np.float32)
    calibrate_stages_pool(words, table, constants, constants, bad, 14, 4, pooled, 4, pooled.copy())
    calibrate_stages(words, table, constants, constants, bad, 14, np.empty(words.shape, np.float32))
