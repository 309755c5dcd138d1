"""Drift alarms: the shipped model's training profile holds for a new run of its experiment and not
for a detector moved from 10 to 12 cm; in a real Prometheus the alert fires for the shifted stream
and not for the nominal one."""

from __future__ import annotations

import numpy as np

from hitveto.models import artifact, stream_profile
from hitveto.models.engine import Engine

from helpers import daemons_under_alerts, firing, paced_stream, simulated_regions, wait_for

WATCHED = {"shadow.workers": 0, "drift.sample_hz": 1000.0, "drift.min_frames": 100}


def test_psi_is_near_zero_on_the_training_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    trained = rng.normal(0, 1, (5000, len(stream_profile.STATISTICS)))
    prof = stream_profile.profile(trained)
    assert all(len(prof.expected[n]) == len(prof.edges[n]) + 1 for n in stream_profile.STATISTICS)
    same = stream_profile.drift_scores(prof, rng.normal(0, 1, (1000, len(stream_profile.STATISTICS))))
    shifted = stream_profile.drift_scores(prof, rng.normal(1.0, 1, (1000, len(stream_profile.STATISTICS))))
    assert max(same.values()) < 0.05 and min(shifted.values()) > stream_profile.ALERT_PSI


def shipped_scores(images) -> dict[str, float]:
    shipped = artifact.read(artifact.REGION_ARTIFACT)
    scores = Engine(shipped, device="cpu").infer(list(images))
    stats = stream_profile.frame_statistics(images, scores, shipped.info.threshold, shipped.spec)
    return stream_profile.drift_scores(stream_profile.Profile.from_dict(shipped.info.profile), stats)


def test_the_shipped_profile_holds_for_a_new_run_and_not_for_a_moved_detector():
    nominal = shipped_scores(simulated_regions(seed=17, n=300))
    moved = shipped_scores(simulated_regions(seed=17, n=300, distance_m=0.12))
    assert max(nominal.values()) < stream_profile.ALERT_PSI, nominal
    assert max(moved.values()) > stream_profile.ALERT_PSI, moved


def test_a_shifted_stream_raises_the_drift_alert_in_a_real_prometheus_and_a_nominal_one_not(tmp_path):
    shipped = [artifact.REGION_ARTIFACT] * 2
    with daemons_under_alerts(tmp_path, shipped, **WATCHED) as ((nominal, shifted), prom):
        paced_stream(nominal, simulated_regions(seed=17, n=300), rate_hz=200)
        paced_stream(shifted, simulated_regions(seed=17, n=300, distance_m=0.12), rate_hz=200)
        wait_for(prom, "count(hitveto_drift_window_frames >= 100) == 2")
        wait_for(prom, 'ALERTS{alertname="HitvetoInputDrift", alertstate="firing"}')
        fired = firing(prom, "HitvetoInputDrift")
        scores = {
            name: {
                stat: d.metrics.registry.get_sample_value("hitveto_drift_score", {"statistic": stat})
                for stat in stream_profile.STATISTICS
            }
            for name, d in (("nominal", nominal), ("shifted", shifted))
        }
    assert fired == {f"127.0.0.1:{shifted.endpoints.metrics_port}"}, (fired, scores)
    nominal_psi, shifted_psi = (max(scores[name].values()) for name in ("nominal", "shifted"))
    assert nominal_psi < stream_profile.ALERT_PSI < shifted_psi, scores
