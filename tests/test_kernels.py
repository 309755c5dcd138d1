"""The compiled kernels give exactly what numpy's element-wise versions give: every model learnt those."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hitveto.io import calibration
from hitveto.models import kernels, preprocess

SHAPE = (6, 37, 52)  # rows and columns not multiples of the pool: the remainders are dropped


def numpy_pool(stack: np.ndarray, pool: int) -> np.ndarray:
    """preprocess.pool_panels's element-wise version, on all panels at once."""
    panels = stack.reshape(-1, *stack.shape[-2:])
    n, rows, cols = panels.shape
    return preprocess._pool_chunk(panels, pool, np.int32).reshape(n * (rows // pool), cols // pool)


def frame(dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    image = rng.integers(-300 if info.min < 0 else 0, 4000, SHAPE).astype(dtype)
    image[0, :2, :9] = info.max  # extremes: the sums must not wrap
    image[1, 3, 3:7] = info.min
    image[2, 10, 10] = 30000  # a lone bright pixel: capped
    return image


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
@pytest.mark.parametrize("pool", [2, 4, 6])
@pytest.mark.parametrize("writeable", [True, False])
def test_the_pool_kernel_equals_numpys(dtype, pool, writeable):
    image = frame(dtype, seed=pool)
    image.setflags(write=writeable)  # frames decoded from a message are read-only
    got = preprocess.pool_panels(image, pool)
    assert got.dtype == np.int32 and np.array_equal(got, numpy_pool(image, pool))


def constants(common_mode: str, shape=(4, 40, 2 * calibration.ASIC_COLS)) -> calibration.Constants:
    rng = np.random.default_rng(3)  # by default two ASICs a row, as a CSPAD 2x1
    status = np.zeros(shape, np.uint16)
    status.flat[rng.choice(status.size, 200, replace=False)] = 0x4  # hot: zeroed
    return calibration.Constants(
        detector="cspad",
        pedestal=rng.normal(1300, 200, shape).astype(np.float32),
        noise=np.full(shape, 15, np.float32),
        status=status,
        common_mode=common_mode,
    )


@pytest.mark.parametrize("common_mode", calibration.COMMON_MODES)
def test_raw_frames_calibrated_and_pooled_in_one_pass_equal_the_two_steps(common_mode):
    c = constants(common_mode)
    rng = np.random.default_rng(4)
    asic_offsets = rng.normal(0, 30, (4, 1, 2, 1))  # each ASIC's common mode
    raw = (
        c.pedestal
        + rng.normal(0, 15, c.shape)
        + np.repeat(asic_offsets, calibration.ASIC_COLS, axis=3).reshape(4, 1, -1)
    )
    raw = raw.astype(np.int16)
    raw[1, 8:12, 100:104] += 3000  # a spot
    raw[2, 0, :5] = -32768  # below the pedestal by more than int16 holds: wraps, as numpy's
    raw.setflags(write=False)
    pooled, sample = calibration.calibrate_pooled(raw, c, 4, 8)
    calibrated = calibration.calibrate(raw, c)
    assert np.array_equal(pooled, preprocess.pool_panels(calibrated, 4))
    assert np.array_equal(pooled, numpy_pool(calibrated, 4))
    assert np.array_equal(sample, calibrated[..., ::8, ::8])


def test_only_int16_frames_of_the_constants_shape_are_calibrated_in_one_pass():
    c = constants("none")
    with pytest.raises(ValueError, match="int16"):
        calibration.calibrate_pooled(np.zeros(c.shape, np.float32), c, 4, 8)
    with pytest.raises(ValueError, match="int16"):
        calibration.calibrate_pooled(np.zeros((4, 40, 10), np.int16), c, 4, 8)


def test_the_common_mode_kernel_finds_each_asics_dark_peak_as_numpy_does():
    rng = np.random.default_rng(5)
    truth = rng.normal(0, 12, (6, 1)).astype(np.float32)  # within the window of 0
    sample = (truth + rng.normal(0, 10, (6, 500))).astype(np.float32)
    sample[:, :60] += 400  # photons: outside the window, not counted
    sample[5] += 1e4  # nothing near 0 in the first pass: too few inside, the offset stays 0
    window = np.full((6, 1), 30.0, np.float32)
    offset = np.zeros((6, 1))
    for _ in range(calibration.COMMON_MODE_PASSES):  # the element-wise reference, in float64
        inside = np.abs(sample - offset) < window
        mean = np.where(inside, sample, 0).sum(axis=1, keepdims=True) / np.maximum(
            inside.sum(axis=1, keepdims=True), 1
        )
        offset = np.where(inside.mean(axis=1, keepdims=True) >= calibration.COMMON_MODE_MIN_SHARE, mean, 0)
    got = kernels.dark_peak(sample, window, calibration.COMMON_MODE_PASSES, calibration.COMMON_MODE_MIN_SHARE)
    assert got.shape == (6, 1) and got[5, 0] == 0
    np.testing.assert_allclose(got, offset, atol=1e-3)
    np.testing.assert_allclose(got[:5], truth[:5], atol=3.0)  # the ASICs' offsets found


@pytest.mark.parametrize("writable", [True, False])
def test_kernels_find_a_cache_where_the_install_and_home_are_read_only(tmp_path, writable):
    # numba refuses to import a module whose kernels it can cache nowhere (a sandboxed daemon)
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    cache = tmp_path / "cache" if writable else blocked / "cache"  # under a file: cannot be made
    code = (
        "import os, numpy as np; from hitveto.models import kernels; "
        "out = np.empty((1, 1, 1), np.int32); kernels.pool(np.ones((1, 4, 4), np.int16), 4, out); "
        "print(os.environ['NUMBA_CACHE_DIR'], out[0, 0, 0])"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(HITVETO_CACHE=str(cache), HOME=str(blocked), TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    folder, value = done.stdout.split()
    assert value == "4"  # 2x2 blocks of ones: each sums to 4, under its cap of 3 x 3
    expected = cache / "numba" if writable else tmp_path / "tmp" / f"hitveto-numba-{os.getuid()}"
    assert Path(folder) == expected and any(expected.iterdir())  # compiled kernels kept there


def test_a_single_panel_frame_is_calibrated_and_pooled_in_one_pass_too():
    c = constants("asic_dark_peak", shape=(37, 2 * calibration.ASIC_COLS))  # 2-D: one panel
    raw = (c.pedestal + np.random.default_rng(6).normal(0, 15, c.shape)).astype(np.int16)
    pooled, sample = calibration.calibrate_pooled(raw, c, 4, 8)
    calibrated = calibration.calibrate(raw, c)
    assert np.array_equal(pooled, preprocess.pool_panels(calibrated, 4))
    assert np.array_equal(sample, calibrated[::8, ::8])
