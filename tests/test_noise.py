"""Detector response: Poisson statistics, read noise, common mode, fixed bad pixels, saturation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from hitveto.sim.noise import fixed_pattern, poisson, to_adu
from hitveto.sim.params import PRESETS, RunParams

RUN = PRESETS["lysozyme"]
RAW = (32, 185, 388)


def quiet(run: RunParams = RUN, **detector) -> RunParams:
    """A detector with only the effects named in `detector` switched on."""
    off = {
        "gain_rms": 0.0,
        "read_noise_adu": 0.0,
        "pedestal_residual_adu": 0.0,
        "common_mode_adu": 0.0,
        "row_common_mode_adu": 0.0,
        "hot_pixel_fraction": 0.0,
        "dead_pixel_fraction": 0.0,
    }
    return dataclasses.replace(run, detector=dataclasses.replace(run.detector, **(off | detector)))


@pytest.mark.parametrize("mean", [0.05, 0.7, 3.0, 40.0])
def test_photon_counts_have_poisson_variance(mean):
    run = quiet(adu_per_photon=10.0)
    adu = to_adu(np.full((400, 500), mean, np.float32), run, np.random.default_rng(1))
    counts = adu / 10.0
    assert np.array_equal(counts, np.round(counts))
    tolerance = 5 * math.sqrt(mean / counts.size) + 5 * math.sqrt(2 * mean**2 / counts.size)
    assert abs(counts.mean() - mean) < tolerance and abs(counts.var() - mean) < 3 * tolerance


def test_poisson_sampler_matches_the_distribution():
    lam = np.full(400_000, 0.7, np.float32)
    observed = np.bincount(poisson(lam, np.random.default_rng(2)).astype(int), minlength=6)[:6]
    expected = lam.size * np.array([math.exp(-0.7) * 0.7**k / math.factorial(k) for k in range(6)])
    assert np.all(np.abs(observed - expected) < 5 * np.sqrt(expected) + 3)


def test_read_noise_is_gaussian_with_the_configured_rms():
    adu = to_adu(np.zeros((300, 400), np.float32), quiet(read_noise_adu=6.0), np.random.default_rng(3))
    assert abs(adu.mean()) < 0.1 and abs(adu.std() - 6.0) < 0.1
    beyond = math.erfc(12.5 / 6.0 / math.sqrt(2))  # |adu| >= 13 after rounding: ~2.08 sigma
    assert abs(np.mean(np.abs(adu) > 12) - beyond) < 0.004


def test_common_mode_is_constant_along_each_asic_row():
    adu = to_adu(
        np.zeros(RAW, np.float32),
        quiet(common_mode_adu=20.0, row_common_mode_adu=2.0),
        np.random.default_rng(4),
    ).astype(int)
    asics = adu.reshape(32, 185, 2, 194)
    assert np.all(asics.max(axis=3) == asics.min(axis=3))
    assert asics[..., 0].std() > 10


def test_hot_pixels_stay_put_across_frames():
    run = quiet(hot_pixel_fraction=1e-4, hot_pixel_adu=3000.0, read_noise_adu=4.0)
    photons = np.full(RAW, 0.2, np.float32)
    hot = [set(np.flatnonzero(to_adu(photons, run, np.random.default_rng(i)) > 1000)) for i in (5, 6)]
    assert len(hot[0]) > 100
    assert len(hot[0] ^ hot[1]) <= 0.02 * len(hot[0])  # only those within noise of the cut differ
    assert hot[0] <= set(fixed_pattern(run.detector, run.seed, RAW).hot)
    other = set(
        np.flatnonzero(to_adu(photons, dataclasses.replace(run, seed=1), np.random.default_rng(5)) > 1000)
    )
    assert len(other & hot[0]) < 0.1 * len(hot[0])


def test_dead_pixels_see_no_photons():
    run = quiet(dead_pixel_fraction=1e-3)
    adu = to_adu(np.full(RAW, 5.0, np.float32), run, np.random.default_rng(7)).ravel()
    dead = fixed_pattern(run.detector, run.seed, RAW).dead
    assert len(dead) > 1000 and np.all(adu[dead] == 0)
    assert np.median(np.delete(adu, dead)) == 5 * run.detector.adu_per_photon


def test_bright_pixels_saturate_within_int16():
    adu = to_adu(np.full((50, 60), 1e5, np.float32), RUN, np.random.default_rng(8))
    dead = fixed_pattern(RUN.detector, RUN.seed, (50, 60)).dead
    assert adu.dtype == np.int16
    assert np.all(np.delete(adu.ravel(), dead) == RUN.detector.saturation_adu)


def test_same_generator_gives_the_same_adu():
    photons = np.random.default_rng(0).exponential(0.5, (350, 350)).astype(np.float32)
    a = to_adu(photons, RUN, np.random.default_rng([9, 1]))
    b = to_adu(photons, RUN, np.random.default_rng([9, 1]))
    c = to_adu(photons, RUN, np.random.default_rng([9, 2]))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
