"""`hitveto threshold`: a model's threshold calibrated again on other runs; the weights stay."""

from __future__ import annotations

import numpy as np

from hitveto.io.peaks import PeakFinderParams
from hitveto.models import artifact
from hitveto.models.engine import Engine
from hitveto.offline.datasets import load_runs
from hitveto.offline.threshold import recalibrate
from hitveto.sim.run import simulate_runs


def test_the_new_threshold_keeps_the_target_share_of_the_runs_hits(tmp_path):
    (run,) = simulate_runs(tmp_path, runs=[9], n_frames=40, preset="lysozyme", fmt="cxi", seed=12)
    out = tmp_path / "recalibrated.pt"
    text = recalibrate(artifact.DEFAULT_ARTIFACT, (run,), out, target_sensitivity=0.995, min_peaks=10)
    old, new = artifact.read(artifact.DEFAULT_ARTIFACT), artifact.read(out)
    data = load_runs((run,), new.spec, PeakFinderParams(), count_peaks=False)
    scores_old = Engine(old, device="cpu").score(list(data.regions))
    scores_new = Engine(new, device="cpu").score(list(data.regions))
    assert np.array_equal(scores_old, scores_new)  # the same weights
    hits = data.strong_spots >= 10
    assert hits.sum() >= 3
    # fewer than 200 hits: 0.995 of them is all of them, and the threshold the lowest hit's score
    assert new.info.threshold == scores_new[hits].min()
    record = new.info.training["threshold_calibration"]
    assert record["replaces"] == old.info.threshold and record["hits"] == int(hits.sum())
    assert new.info.version == old.info.version and new.sha256 != old.sha256
    assert f"-> {new.info.threshold:.4g}" in text
