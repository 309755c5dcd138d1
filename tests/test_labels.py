"""Labelling protocols and threshold calibration."""

from __future__ import annotations

import numpy as np
import pytest

from hitveto.offline import labels


def test_quartile_protocol_labels_a_quarter_each_way_even_with_ties():
    peaks = np.r_[np.zeros(70, int), np.arange(1, 31)]  # most frames have no peak
    q = labels.quartile_labels(peaks, seed=1)
    assert (q == labels.HIT).sum() == 25 and (q == labels.MISS).sum() == 25
    assert peaks[q == labels.HIT].min() >= peaks[q == labels.MISS].max()
    assert (peaks[q == labels.MISS] == 0).all()


def test_min_peak_protocol_labels_every_frame():
    assert labels.min_peak_labels(np.array([0, 2, 3, 40]), 3).tolist() == [0, 0, 1, 1]


def test_truth_protocol_counts_the_simulators_strong_spots_and_needs_them():
    assert labels.visible_labels(np.array([0, 2, 10, 11]), 10).tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="no simulator truth"):
        labels.visible_labels(np.array([-1, 12]), 10)  # -1: a run without truth (real data)


@pytest.mark.parametrize("target", [0.9, 0.99, 1.0])
def test_calibrated_threshold_keeps_the_target_share_of_hits(target):
    rng = np.random.default_rng(0)
    actual = rng.random(5000) < 0.3
    scores = np.where(actual, rng.beta(5, 2, 5000), rng.beta(2, 5, 5000))
    t = labels.calibrate_threshold(scores, actual, target)
    kept = (scores[actual] >= t).mean()
    assert kept >= target and kept - target < 0.01 + 1 / actual.sum()


def test_confusion_counts_and_rates():
    c = labels.confusion([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert (c["tp"], c["fn"], c["fp"], c["tn"]) == (2, 1, 1, 1)
    assert c["sensitivity"] == pytest.approx(2 / 3) and c["specificity"] == 0.5
