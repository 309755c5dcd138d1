"""Gain-switching detectors (Jungfrau 4M): raw words with gain bits from the simulator, constants
per stage from a forced-gain dark, and calibration (numpy and the fused kernel) back to keV."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hitveto.io import calibration, sources
from hitveto.io.peaks import PeakFinderParams, detector_peak_finder
from hitveto.models import preprocess
from hitveto.offline.dark import dark_constants
from hitveto.offline.datasets import input_spec, load_runs
from hitveto.serving.guard import InputGuard
from hitveto.sim.noise import fixed_pattern, stage_maps
from hitveto.sim.params import PRESETS, on_detector
from hitveto.sim.run import frames, gain_file, simulate_runs
from hitveto_client import detectors

JUNGFRAU = detectors.JUNGFRAU4M
BITS = JUNGFRAU.gain
assert BITS is not None


def params(seed: int, n: int):
    run = on_detector(PRESETS["lysozyme"], "jungfrau4m")
    return dataclasses.replace(
        run, seed=seed, n_frames=n, detector=dataclasses.replace(run.detector, unit_seed=1)
    )


@pytest.fixture(scope="module")
def dark(tmp_path_factory):
    """Constants from a 30-frame forced-gain dark of unit 1 (10 frames a stage), and the run."""
    folder = tmp_path_factory.mktemp("jungfrau-dark")
    (run,) = simulate_runs(folder, runs=[1], n_frames=30, readout="dark", detector="jungfrau4m", fmt="cxi")
    return dark_constants([run], detector="jungfrau4m", gain=np.load(gain_file(run))), run


@pytest.fixture(scope="module")
def hit():
    """A strong hit of unit 1, raw and calibrated (the same photons and noise)."""
    run = params(seed=5, n=3)
    raw, calibrated = (list(frames(run, "raw", readout)) for readout in ("raw", "calib"))
    best = max(range(3), key=lambda i: calibrated[i].truth["n_strong_spots"])
    return raw[best].image, calibrated[best].image


def test_bright_pixels_switch_gain_stage_and_darks_force_each_stage(hit):
    raw, kev = hit
    stage = calibration.stage_of_codes(BITS)[raw >> BITS.data_bits]
    assert raw.dtype == np.uint16 and raw.shape == JUNGFRAU.raw_shape
    assert set(np.unique(stage)) == {0, 1, 2}  # a strong hit's brightest spots reach the third stage
    # stage 0 holds the background; a pixel switches where its charge passes 14000 ADC of stage 0:
    # (14000 - its pedestal, 2500-3500) / ~40 ADC per keV, 255-295 keV
    assert kev[stage == 0].max() < 300 and kev[stage > 0].min() > 250
    dark = [e.image for e in frames(params(seed=9, n=6), "raw", "dark")]
    codes = [np.unique(d >> BITS.data_bits).tolist() for d in dark]
    assert codes == [[0], [0], [1], [1], [3], [3]]  # each third of the run forced to one stage


def test_dark_recovers_each_stages_pedestals_and_the_bad_pixels(dark):
    constants, run = dark
    pattern = dataclasses.replace(params(0, 1).detector)
    pedestal, gain = stage_maps(pattern, JUNGFRAU.raw_shape)
    good = constants.status == 0
    # 10 frames a stage, ~8 ADC noise in stage 0: the mean within ~2.5 ADC; stages 1 and 2 hold
    # sub-ADC noise, so within the rounding of a pedestal
    error = np.abs(constants.pedestal - pedestal)[:, good]
    assert np.percentile(error[0], 99) < 10 and np.percentile(error[1:], 99) < 1.0
    np.testing.assert_allclose(constants.gain_factor, 1 / gain, rtol=1e-6)
    fixed = fixed_pattern(pattern, 1, JUNGFRAU.raw_shape)
    flagged = np.flatnonzero(constants.status.ravel())
    assert np.isin(fixed.dead, flagged).mean() == 1.0
    assert np.isin(fixed.hot, flagged).mean() > 0.85  # the hot pixels' excess is exponential
    assert len(flagged) < 1.2 * (len(fixed.dead) + len(fixed.hot))


def test_raw_words_calibrate_back_to_the_keV_they_were_made_of(dark, hit):
    constants, _ = dark
    raw, kev = hit
    out = calibration.calibrate(raw, constants)
    stage = calibration.stage_of_codes(BITS)[raw >> BITS.data_bits]
    good = constants.status == 0
    # stage 0: pedestal error and rounding of ~0.1 keV (a hot pixel's dark current the dark takes
    # out: the calibrated simulation keeps it); switched pixels: their ADC's rounding, < 1 %
    low = good & (stage == 0)
    assert np.median(np.abs(out - kev)[low]) < 0.1
    high = good & (stage > 0)
    assert np.abs(out - kev)[high].max() < 0.01 * kev[high].min() + 10
    assert np.all(out[~good] == 0)


def psana_calib(raw: np.ndarray, constants: calibration.Constants) -> np.ndarray:
    """psana's Jungfrau calibration (UtilsJungfrau.calib_jungfrau_single_panel) in numpy, status 0."""
    gbits = raw >> 14
    stage = np.select([gbits == 0, gbits == 1, gbits == 3], [0, 1, 2], default=-1)
    pick = np.where(stage < 0, 0, stage)[None]
    pedestal = np.take_along_axis(constants.pedestal, pick, 0)[0]
    factor = np.take_along_axis(constants.gain_factor, pick, 0)[0]
    out = ((raw & 0x3FFF).astype(np.float32) - pedestal) * factor
    return np.where((stage < 0) | (constants.status != 0), np.float32(0), out)


def test_the_kernels_give_what_psanas_formula_gives(dark, hit):
    constants, _ = dark
    raw = hit[0].copy()
    raw[0, 0, :5] = (2 << BITS.data_bits) | 100  # gain code 10: never valid, calibrated to 0
    raw.setflags(write=False)  # as a frame decoded from a ZeroMQ message
    pooled, sample = calibration.calibrate_pooled(raw, constants, 4, 8)
    calibrated = calibration.calibrate(raw, constants)
    assert np.array_equal(calibrated, psana_calib(raw, constants))
    assert np.all(calibrated[0, 0, :5] == 0)
    assert np.array_equal(pooled, preprocess.pool_panels(calibrated, 4))
    assert np.array_equal(sample, calibrated[..., ::8, ::8])
    with pytest.raises(ValueError, match="uint16"):
        calibration.calibrate(raw.astype(np.int16), constants)


def test_constants_with_stages_survive_a_file_and_refuse_what_does_not_fit(dark, tmp_path):
    constants, _ = dark
    constants.save(tmp_path / "jf.npz")
    loaded = calibration.load(tmp_path / "jf.npz")
    assert loaded.shape == JUNGFRAU.raw_shape and loaded.common_mode == "none"
    assert np.array_equal(loaded.pedestal, constants.pedestal)
    assert np.array_equal(loaded.gain_factor, constants.gain_factor)
    with pytest.raises(ValueError, match="common mode"):
        dataclasses.replace(loaded, common_mode="asic_dark_peak")
    with pytest.raises(ValueError, match="shape"):
        dataclasses.replace(loaded, gain_factor=loaded.gain_factor[:2, :4])
    with pytest.raises(ValueError, match="gain map"):
        dark_constants([], detector="jungfrau4m")


def test_the_guard_calibrates_raw_words_and_refuses_them_uncalibrated(dark, hit, tmp_path):
    constants, _ = dark
    constants.save(tmp_path / "jf.npz")
    spec = preprocess.full_frame_spec("jungfrau4m", JUNGFRAU.raw_shape, 9.5)
    raw, _ = hit
    calibrated_guard = InputGuard(str(tmp_path / "jf.npz"), spec)
    model_input, fit = calibrated_guard.prepare(raw, {}, spec)
    assert fit and model_input.shape == spec.roi_shape and model_input.dtype == np.float32
    _, fit = InputGuard("", spec).prepare(raw, {}, spec)  # raw words judged as keV: refused
    assert not fit


def test_the_trainer_calibrates_raw_runs_as_the_daemon_does(dark, tmp_path):
    constants, _ = dark
    (raw,) = simulate_runs(
        tmp_path, runs=[3], n_frames=3, readout="raw", detector="jungfrau4m", fmt="cxi", seed=6
    )
    spec = input_spec(350, 9.5, "raw", "jungfrau4m")
    params = PeakFinderParams.for_gain(9.5)
    data = load_runs((raw,), spec, params, constants=constants)
    frames_in = [e.image for e in sources.events(raw)]
    expected = [calibration.calibrate_pooled(f, constants, 4, 8)[0] for f in frames_in]
    assert np.array_equal(np.asarray(data.regions), np.stack(expected))
    finder = detector_peak_finder(params, "jungfrau4m")  # on the calibrated pixels, not the words
    assert list(data.peaks) == [finder.count(calibration.calibrate(f, constants)) for f in frames_in]
    with pytest.raises(ValueError, match="constants"):  # raw words are never learnt as they are
        load_runs((raw,), spec, PeakFinderParams.for_gain(9.5), count_peaks=False)
