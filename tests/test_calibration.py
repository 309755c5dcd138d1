"""Raw frames: constants from a dark run, calibration in the daemon, and the guard that keeps what
is not at a calibrated level (issue #21), on simulated raw and dark runs of one detector unit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hitveto.io import calibration, geometry, sources
from hitveto.io.calibration import ASIC_COLS
from hitveto.models.artifact import DEFAULT_ARTIFACT
from hitveto.offline.dark import dark_constants
from hitveto.serving.control import request
from hitveto.serving.guard import level_ok
from hitveto.sim.noise import fixed_pattern, pedestal_map
from hitveto.sim.params import PRESETS
from hitveto.sim.run import frames, simulate_runs
from hitveto_client.cxi import MASK_DEAD, MASK_HOT
from hitveto_client.protocol import EventKey, Reason

from helpers import daemons_under_alerts, firing, running_daemon, sample, stream, wait_for

UNIT = dataclasses.replace(PRESETS["lysozyme"].detector, unit_seed=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A dark run (120 frames) and a raw data run (40 frames) of detector unit 1, and the constants."""
    out = tmp_path_factory.mktemp("raw")
    (dark,) = simulate_runs(out, runs=[4], n_frames=120, fmt="cxi", readout="dark", seed=3)
    (raw,) = simulate_runs(out, runs=[5], n_frames=40, fmt="cxi", readout="raw", seed=3)
    constants = dark_constants([dark])
    path = out / "dark.npz"
    constants.save(path)
    return raw, path


def test_the_dark_recovers_the_pedestals_within_the_noise_and_flags_the_bad_pixels(runs):
    _, path = runs
    constants = calibration.load(path)
    pattern = fixed_pattern(UNIT, 1, geometry.RAW_SHAPE)
    truth = pedestal_map(UNIT, geometry.RAW_SHAPE) + pattern.offset.reshape(geometry.RAW_SHAPE)
    good = constants.status == 0
    error = np.abs(constants.pedestal - truth)[good]
    # 120 frames: the mean's error is ~noise / 11 (read noise 4 ADU, common mode 3 and 1 ADU)
    assert np.median(error) < 0.5 and np.percentile(error, 99.9) < 2.5
    bad = np.zeros(geometry.RAW_SHAPE, bool)
    bad.flat[np.concatenate([pattern.hot, pattern.dead])] = True
    flagged = constants.status != 0
    assert (flagged & bad).sum() >= 0.95 * bad.sum()
    assert (flagged & ~bad).sum() <= 10  # a good pixel is rarely flagged
    assert ((constants.status & MASK_DEAD) > 0).sum() >= 0.99 * pattern.dead.size
    assert ((constants.status & MASK_HOT) > 0)[~bad].sum() <= 10


def test_raw_frames_calibrated_in_the_daemon_score_as_frames_calibrated_offline(runs):
    raw_run, path = runs
    constants = calibration.load(path)
    raw = [(EventKey(run=5, pulse_id=ev.pulse_id), ev.image) for ev in sources.events(raw_run)]
    offline = [(EventKey(run=6, pulse_id=k.pulse_id), _psana_like(image, constants)) for k, image in raw]
    with running_daemon(DEFAULT_ARTIFACT, **{"calib.constants": str(path), "batch.max_batch": 1}) as daemon:
        _, from_raw = stream(daemon, raw)
        _, calibrated = _stream_calibrated(daemon, offline)
    score = {(d.key.run, d.key.pulse_id): d.verdict.score for d in from_raw + calibrated}
    verdict = {(d.key.run, d.key.pulse_id): d.verdict.hit for d in from_raw + calibrated}
    assert {d.reason for d in from_raw + calibrated} <= {Reason.MODEL}
    assert max(abs(score[(5, k.pulse_id)] - score[(6, k.pulse_id)]) for k, _ in raw) < 1e-3
    assert all(verdict[(5, k.pulse_id)] == verdict[(6, k.pulse_id)] for k, _ in raw)
    assert sum(verdict[(5, k.pulse_id)] for k, _ in raw) > 0  # the hits are there, and kept


def test_raw_frames_without_constants_are_kept_unjudged_and_the_alert_fires(runs, tmp_path):
    raw_run, _ = runs
    raw = [(EventKey(run=5, pulse_id=ev.pulse_id), ev.image) for ev in sources.events(raw_run)]
    with daemons_under_alerts(tmp_path, [DEFAULT_ARTIFACT]) as ((daemon,), prom):
        wait_for(prom, "hitveto_out_of_distribution_frames_total == 0")  # scraped before: a rate
        counts, decisions = stream(daemon, raw)
        counted = sample(daemon, "hitveto_out_of_distribution_frames_total")
        wait_for(prom, 'ALERTS{alertname="HitvetoOutOfDistribution", alertstate="firing"}')
        fired = firing(prom, "HitvetoOutOfDistribution")
    assert all(d.keep and d.reason is Reason.OUT_OF_DISTRIBUTION for d in decisions)  # before: 0 hits kept
    assert counted == len(raw) == counts.sent and fired == {f"127.0.0.1:{daemon.endpoints.metrics_port}"}


def test_a_dark_of_another_detector_unit_is_caught_and_the_right_one_swapped_in_while_serving(runs, tmp_path):
    raw_run, right = runs
    (other,) = simulate_runs(tmp_path, runs=[7], n_frames=20, fmt="cxi", readout="dark", unit_seed=2)
    wrong = tmp_path / "wrong.npz"
    dark_constants([other]).save(wrong)
    raw = [(EventKey(run=5, pulse_id=ev.pulse_id), ev.image) for ev in sources.events(raw_run, limit=10)]
    with running_daemon(DEFAULT_ARTIFACT, **{"calib.constants": str(wrong)}) as daemon:
        _, decisions = stream(daemon, raw)
        swapped = request(daemon.endpoints.control, "calib", constants=str(right))  # the right dark
        _, after = stream(daemon, [(EventKey(run=8, pulse_id=k.pulse_id), image) for k, image in raw])
    assert {d.reason for d in decisions} == {Reason.OUT_OF_DISTRIBUTION}
    assert swapped["ok"] and {d.reason for d in after} == {Reason.MODEL}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_guard_passes_calibrated_frames_of_every_preset(preset):
    params = dataclasses.replace(PRESETS[preset], seed=11, n_frames=6)
    for ev in frames(params, "raw"):
        assert level_ok(ev.image, PRESETS["lysozyme"].detector.adu_per_photon), ev.truth
    assert not level_ok(ev.image + 1200, PRESETS["lysozyme"].detector.adu_per_photon)  # on pedestals


def _psana_like(raw: np.ndarray, constants: calibration.Constants) -> np.ndarray:
    """The reference, written apart from the daemon's code, in float64, one ASIC at a time: the
    pedestal subtracted, the constants' common mode (on every 4th row and column of the ASIC: the
    mean of the pixels within 3 noise rms of the offset, twice from 0), bad pixels 0."""
    out = raw.astype(np.float64) - constants.pedestal
    for panel, noise in zip(out, constants.noise):
        for first in (0, ASIC_COLS):
            asic = panel[:, first : first + ASIC_COLS]
            sample = asic[::4, ::4].ravel()
            window = 3 * np.median(noise[::4, first : first + ASIC_COLS : 4])
            offset = 0.0
            for _ in range(2):
                near = sample[np.abs(sample - offset) < window]
                offset = near.mean() if len(near) >= 0.1 * len(sample) else 0.0
            asic -= offset
    out[constants.status != 0] = 0
    return out.astype(np.float32)


def _stream_calibrated(daemon, items):
    from hitveto_client.veto import VetoClient

    with VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish) as veto:
        veto.wait_subscribed()
        decisions = []
        for key, image in items:
            veto.send(key, image, meta={"calibrated": True})
            decisions += veto.poll()
        decisions += veto.flush(timeout_s=10)
        return veto.counts, decisions


def test_a_dark_psana_processed_converts_from_its_calib_store(runs, tmp_path):
    """A store laid out as psana names it, written by psana's writer, read back through its finder."""
    import subprocess
    import sys

    from hitveto.io.psana_import import import_psana

    _, path = runs
    constants = calibration.load(path)
    store, source = tmp_path / "calib", "CxiDs1.0:Cspad.0"
    writer = import_psana("psana.pscalib.calib.NDArrIO")
    for kind, values in (
        ("pedestals", constants.pedestal),
        ("pixel_rms", constants.noise),
        ("pixel_status", (constants.status != 0).astype(np.float32)),
    ):
        name = store / "CsPad::CalibV1" / source / kind / "3-end.data"  # valid from run 3 on
        name.parent.mkdir(parents=True)
        writer.save_txt(str(name), values.reshape(-1, values.shape[-1]), fmt="%.3f")
    out = tmp_path / "from-psana.npz"
    cli = [sys.executable, "-m", "hitveto.cli", "dark", "--psana-calib", str(store), "--source", source]
    done = subprocess.run(
        [*cli, "--run", "5", "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    back = calibration.load(out)
    assert np.abs(back.pedestal - constants.pedestal).max() < 1e-3
    assert np.array_equal(back.status != 0, constants.status != 0) and back.runs == (3, -1)
    before = subprocess.run(
        [*cli, "--run", "2", "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert before.returncode != 0 and "valid for run 2" in before.stderr  # no dark yet at run 2


def test_models_learn_calibrated_frames_only(tmp_path):
    from hitveto.io.peaks import PeakFinderParams
    from hitveto.models import artifact
    from hitveto.offline.datasets import input_spec, load_runs

    (raw,) = simulate_runs(tmp_path, runs=[7], n_frames=2, fmt="cxi", readout="raw", seed=2)
    with pytest.raises(ValueError, match="raw run"):  # refused by the trainer (and evaluate)
        load_runs((raw,), input_spec(350, 35.0, "raw"), PeakFinderParams())
    shipped = artifact.read(artifact.REGION_ARTIFACT)
    assert shipped.info.input == "calibrated"  # what every artifact records
    other = artifact.rewrite(shipped, tmp_path / "raw-input.pt", input="raw")
    with pytest.raises(artifact.ArtifactError, match="takes 'raw' frames"):
        artifact.read(other)  # refused at load: a daemon will not start or reload with it
