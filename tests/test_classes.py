"""Verdict classes: the simulator's delivery events and their truth, the class heads trained on
them beside an unchanged hit score, and their report (docs/MODEL.md, "Verdict classes")."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from hitveto.models import artifact
from hitveto.models.engine import Engine
from hitveto.offline import class_report
from hitveto.offline.classes import ClassConfig, train_classes
from hitveto.offline.evaluate import evaluate_runs
from hitveto.offline.rebuild import trainable
from hitveto.sim import delivery
from hitveto.sim.params import PRESETS
from hitveto.sim.run import frames, simulate_runs

CLASS_MIX = {
    "hit_fraction": 0.3,
    "ice_miss_fraction": 0.3,
    "blank_fraction": 0.4,
    "streak_fraction": 0.3,
    "ice_crystallite_fraction": 0.5,
}


def _params(n: int, seed: int, **mix: float):
    params = PRESETS["lysozyme"]
    return dataclasses.replace(params, seed=seed, n_frames=n, mix=dataclasses.replace(params.mix, **mix))


def test_ice_crystallites_lie_on_the_ice_rings():
    run = PRESETS["thermolysin"]
    refl = delivery.ice_crystallites(run, np.random.default_rng(3), 200, pulse=1.0)
    k = 1.0 / run.beam.wavelength_a
    s = np.linalg.norm(k * refl.direction - np.array([0.0, 0.0, k]), axis=1)  # |k_out - k_in|
    nearest = np.abs(1.0 / s[:, None] - np.asarray(run.mix.ice_d_spacings_a)[None, :]).min(axis=1)
    assert nearest.max() < 1e-6
    low, high = run.mix.ice_spot_photons
    assert (refl.photons >= low).all() and (refl.photons <= high).all()
    assert len(np.unique(np.round(np.arctan2(refl.direction[:, 1], refl.direction[:, 0]), 2))) > 150


def test_delivery_events_leave_their_truth_and_their_light():
    events = list(frames(_params(60, seed=5, **CLASS_MIX), "raw"))
    truth = {k: np.array([ev.truth[k] for ev in events]) for k in events[0].truth}
    level = np.array([np.median(ev.image) for ev in events])
    blank, miss = truth["blank"] == 1, (truth["n_crystals"] == 0) & (truth["blank"] == 0)
    assert blank.sum() >= 5 and (truth["n_crystals"][blank] == 0).all() and (truth["ice"][blank] == 0).all()
    assert np.median(level[blank]) < 0.5 * np.median(level[miss])  # no water ring: air alone
    assert (truth["streak_per_sr"][blank] == 0).all()
    bright = truth["streak_per_sr"] >= delivery.JET_STREAK_PER_SR
    assert bright.any() and ((truth["jet_streak"] == 1) == bright).all()
    crystallites = truth["ice_spots"] > 0
    assert crystallites.any() and (truth["ice"][crystallites] == 1).all()
    assert (truth["ice_ring_per_sr"][crystallites] == 0).all()  # spots instead of rings
    assert (truth["lattices"] <= truth["n_crystals"]).all()


def test_ice_forms_from_the_frame_asked():
    events = list(frames(_params(80, seed=9), "roi", ice_from=40))
    ice = np.array([ev.truth["ice"] for ev in events])
    assert ice[:40].sum() == 0 and ice[40:].mean() > 0.5


def test_the_full_detector_network_is_rebuilt_with_its_scores():
    shipped = artifact.read(artifact.DEFAULT_ARTIFACT)
    rng = np.random.default_rng(0)
    pooled = list(rng.integers(0, 4000, (6, *shipped.spec.roi_shape)).astype(np.int32))
    net = trainable(shipped, shipped.info.adu_per_photon)
    import torch

    with torch.no_grad():
        rebuilt = net.eval()(torch.from_numpy(np.stack(pooled))).numpy()
    assert np.allclose(rebuilt, Engine(shipped, device="cpu").infer(pooled), atol=1e-5)


@pytest.mark.slow  # ~40 s: 240 simulated CSPAD frames, features, heads, evaluation
def test_class_heads_learn_beside_an_unchanged_hit_score(tmp_path):
    runs = tmp_path / "runs"
    (train,) = simulate_runs(runs, runs=[1], n_frames=160, fmt="cxi", seed=31, mix=CLASS_MIX)
    (val,) = simulate_runs(runs, runs=[2], n_frames=80, fmt="cxi", seed=32, mix=CLASS_MIX)
    out = tmp_path / "classes.pt"
    path, report = train_classes(
        ClassConfig(model=artifact.DEFAULT_ARTIFACT, train=(train,), val=(val,), out=out, epochs=40)
    )
    model = artifact.read(path)
    assert model.info.classes == ("multiple", "ice", "jet_streak", "blank")
    assert set(model.info.class_thresholds) == set(model.info.classes)
    blank = model.info.validation["classes"]["blank"]
    assert blank["with"] >= 5 and blank["auc"] >= 0.95  # the easiest class: no water ring at all

    from hitveto.models import preprocess
    from hitveto.sim.run import frames as sim_frames

    served = artifact.read(artifact.DEFAULT_ARTIFACT)
    pooled = [
        preprocess.region(ev.image, served.spec)
        for ev in sim_frames(_params(24, seed=32, **CLASS_MIX), "raw")
    ]
    hit, classes = Engine(model, device="cpu").infer_with_classes(pooled)
    assert classes.shape == (24, 4) and ((classes >= 0) & (classes <= 1)).all()
    assert np.abs(hit - Engine(served, device="cpu").infer(pooled)).max() < 1e-5
    assert "hit scores against" in report

    text = evaluate_runs(path, (val,), out_dir=tmp_path / "eval")
    assert "Verdict classes" in text and (tmp_path / "eval" / "classes.png").stat().st_size > 10_000


def test_class_labels_follow_a_crystallographers_definitions():
    truth = {
        "n_crystals": np.array([0, 1, 2, 2, 0, 0, 0, 0]),
        "lattices": np.array([0, 1, 2, 1, 0, 0, 0, 0]),
        "ice": np.array([0, 0, 0, 0, 1, 1, 1, 0]),
        "ice_spots": np.array([0, 0, 0, 0, 0, 4, 25, 0]),
        "jet_streak": np.array([0, 0, 0, 0, 0, 0, 0, 1]),
        "blank": np.array([1, 0, 0, 0, 0, 0, 0, 0]),
    }
    y = class_report.class_labels(truth, ("multiple", "ice", "jet_streak", "blank"))
    assert np.isnan(y[0, 0]) and y[1, 0] == 0 and y[2, 0] == 1 and y[3, 0] == 0  # one lattice found
    assert y[4, 1] == 1 and np.isnan(y[5, 1]) and y[6, 1] == 1 and y[0, 1] == 0
    assert y[7, 2] == 1 and y[0, 3] == 1 and y[1, 3] == 0


@pytest.mark.slow  # ~90 s: 900 simulated CSPAD frames streamed at 60 Hz
def test_the_demo_with_ice_from_frame_n_fires_the_ice_alert_within_its_window(tmp_path):
    """`hitveto demo --ice-from N` against a real Prometheus with the shipped rules (the ice
    alert's `for:` shortened to 5 s): the alert fires after ice forms, within the rule's 1-minute
    window of the first iced frame being judged, and not before."""
    import yaml

    from hitveto.serving.sockets import free_tcp_endpoint

    from helpers import DEPLOY, prometheus

    groups = yaml.safe_load((DEPLOY / "prometheus" / "hitveto.rules.yml").read_text())
    for rule in (r for g in groups["groups"] for r in g["rules"] if r.get("alert") == "HitvetoIceRateHigh"):
        rule["for"] = "5s"
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(groups))
    port = int(free_tcp_endpoint().rsplit(":", 1)[1])
    onset, frames, rate = 240, 900, 60
    with prometheus(tmp_path, port, rules=rules) as prom:
        done = subprocess.run(
            [sys.executable, "-m", "hitveto.cli", "demo", "--workdir", str(tmp_path / "demo"),
             "--frames", str(frames), "--rate", str(rate), "--ice-from", str(onset),
             "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        judged = _series(prom, 'sum(hitveto_verdicts_total{reason=~"model|audit"})')
        fired = _series(prom, 'ALERTS{alertname="HitvetoIceRateHigh", alertstate="firing"}')
    assert "verdict classes    " in done.stdout and "ice " in done.stdout
    iced_at = min(t for t, n in judged if n >= onset)  # the first iced frame judged (1 s scrapes)
    assert fired, "the ice alert never fired"
    first_fired = min(t for t, _ in fired)
    assert iced_at - 1 <= first_fired <= iced_at + 60


def _series(prom: str, expr: str) -> list[tuple[float, float]]:
    """(time, value) of every sample of `expr` over the last 10 minutes, all series together."""
    from helpers import query

    result = query(prom, f"({expr})[10m:1s]")["result"]
    return [(float(t), float(v)) for series in result for t, v in series["values"]]
