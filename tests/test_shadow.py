"""The shadow peakfinder8: its estimates are Wilson bounds over a sliding window; beside the shipped
model it sees nothing wrong, beside a deliberately weakened one (threshold raised) its sensitivity
estimate drops and the alert fires in a real Prometheus."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hitveto.io.peaks import PeakFinderParams, region_peak_finder
from hitveto.models import artifact
from hitveto.models.engine import Engine
from hitveto.offline.labels import MIN_PEAKS_FOR_HIT
from hitveto.serving.audit import wilson
from hitveto.serving.shadow import ShadowWindow

from helpers import daemons_under_alerts, firing, paced_stream, simulated_regions, wait_for

SHADOWED = {"shadow.workers": 1, "drift.enabled": False}


def test_window_estimates_are_wilson_bounds_and_slide():
    window = ShadowWindow(100)
    for i in range(150):  # the first 50 pairs slide out
        window.add(model_hit=i >= 50 and i % 5 != 0, pf8_hit=i >= 50 and i % 2 == 0)
    e = window.estimates()
    last = [(i % 5 != 0, i % 2 == 0) for i in range(50, 150)]
    tp = sum(m and p for m, p in last)
    hits = sum(p for _, p in last)
    assert len(window) == 100 and e["sensitivity"].value == tp / hits
    assert (e["sensitivity"].lower, e["sensitivity"].upper) == wilson(tp, hits)
    assert e["hit_rate_peakfinder8"].value == hits / 100
    assert e["specificity"].value == sum(not m and not p for m, p in last) / (100 - hits)


def weakened(tmp_path, images) -> tuple:
    """The shipped model with its threshold raised just above the median score of peakfinder8's
    hits: it keeps at most half of them (all but none where that median is 1, as scores saturate)."""
    shipped = artifact.read(artifact.REGION_ARTIFACT)
    finder = region_peak_finder(shipped.spec, PeakFinderParams.for_gain(shipped.info.adu_per_photon))
    pf8_hits = np.array([finder.count(i) >= MIN_PEAKS_FOR_HIT for i in images])
    scores = Engine(shipped, device="cpu").infer(list(images))
    threshold = float(np.nextafter(np.median(scores[pf8_hits]), 2.0))
    return artifact.rewrite(shipped, tmp_path / "weak.pt", threshold=threshold), pf8_hits.sum()


def bounds(daemon, gauge: str = "hitveto_shadow_sensitivity") -> dict[str, float]:
    reg = daemon.metrics.registry
    return {b: reg.get_sample_value(gauge, {"bound": b}) for b in ("value", "lower", "upper")}


def window_frames(*daemons) -> list[float | None]:
    return [d.metrics.registry.get_sample_value("hitveto_shadow_window_frames") for d in daemons]


def hit_rate(daemon, method: str) -> float | None:
    return daemon.metrics.registry.get_sample_value(
        "hitveto_shadow_hit_rate", {"method": method, "bound": "value"}
    )


@pytest.mark.slow  # ~16 s
def test_shadow_sees_the_shipped_model_keep_hits_and_a_weakened_one_lose_them(tmp_path):
    images = simulated_regions(seed=17, n=300)
    weak, pf8_hits = weakened(tmp_path, images)
    assert pf8_hits >= 30  # the stream has hits to lose
    models = [artifact.REGION_ARTIFACT, weak]
    with daemons_under_alerts(tmp_path, models, **SHADOWED) as ((good, bad), prom):
        for daemon in (good, bad):
            counts = paced_stream(daemon, images, rate_hz=100)
            assert counts.sent == counts.decided == 300 and counts.kept_fallback == 0
        deadline = time.monotonic() + 30  # the last frames' peakfinder8 may still run
        while time.monotonic() < deadline and min(window_frames(good, bad)) < 60:
            time.sleep(0.2)
        wait_for(prom, 'ALERTS{alertname="HitvetoVetoLosingHits", alertstate="firing"}')
        fired = firing(prom, "HitvetoVetoLosingHits")
        shadowed = window_frames(good, bad)
        good_s, bad_s = bounds(good), bounds(bad)
        rates = {
            name: [hit_rate(d, method) for method in ("model", "peakfinder8")]
            for name, d in (("shipped", good), ("weakened", bad))
        }
        print(
            f"shadowed {shadowed}; sensitivity shipped {good_s}, weakened {bad_s}; "  # for the docs
            f"specificity shipped {bounds(good, 'hitveto_shadow_specificity')}; hit rates {rates}"
        )
    assert min(shadowed) >= 60, shadowed
    assert good_s["upper"] >= 0.99 and good_s["value"] >= 0.95, good_s
    assert bad_s["upper"] < 0.99 and bad_s["value"] < 0.8, bad_s
    assert fired == {f"127.0.0.1:{bad.endpoints.metrics_port}"}
