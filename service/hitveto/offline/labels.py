"""Labels from peak counts (the study's quartile protocol, every frame by a floor) and from simulator
truth."""

from __future__ import annotations

import numpy as np

from hitveto.io.peaks import MIN_PEAKS_FOR_HIT as MIN_PEAKS_FOR_HIT  # the hit floor, re-exported

HIT, MISS, UNUSED = 1, 0, -1


def quartile_labels(peak_counts: np.ndarray, seed: int = 0) -> np.ndarray:
    """The study's protocol: top quarter by peak count = hit, bottom quarter = miss, rest unused.

    Ties are broken at random (seeded), so a run where most frames have 0 peaks still yields exactly
    a quarter of misses drawn from those frames.
    """
    n = len(peak_counts)
    jitter = np.random.default_rng(seed).random(n)
    order = np.lexsort((jitter, np.asarray(peak_counts)))
    labels = np.full(n, UNUSED, dtype=np.int8)
    quarter = n // 4
    labels[order[:quarter]] = MISS
    labels[order[n - quarter :]] = HIT
    return labels


def min_peak_labels(peak_counts: np.ndarray, min_peaks: int) -> np.ndarray:
    """All frames labelled: a hit has at least `min_peaks` peaks (an indexability floor)."""
    return (np.asarray(peak_counts) >= min_peaks).astype(np.int8)


def calibrate_threshold(scores: np.ndarray, actual: np.ndarray, target_sensitivity: float) -> float:
    """The highest threshold that keeps at least `target_sensitivity` of the actual hits.

    A frame is kept when score >= threshold, so the threshold is the k-th lowest hit score with
    k = floor((1 - target) * hits): at most that many hits fall below it.
    """
    hit_scores = np.sort(np.asarray(scores)[np.asarray(actual, bool)])
    if hit_scores.size == 0:
        raise ValueError("no hits among the calibration frames")
    return float(hit_scores[int(np.floor((1.0 - target_sensitivity) * hit_scores.size))])


def truth_labels(n_crystals: np.ndarray) -> np.ndarray:
    """Simulator truth: a frame with a crystal in the beam is a hit."""
    return (np.asarray(n_crystals) > 0).astype(np.int8)


def visible_labels(strong_spots: np.ndarray, min_spots: int) -> np.ndarray:
    """Simulator truth of what the pixels show: a hit has at least `min_spots` strong spots on them.

    The simulator counts a spot strong from its expected photons and signal-to-noise
    (sim/physics.py), not from a peak finder: the indexability floor applied to the truth.
    """
    if np.any(np.asarray(strong_spots) < 0):
        raise ValueError("these runs have no simulator truth of strong spots")
    return (np.asarray(strong_spots) >= min_spots).astype(np.int8)


def confusion(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Counts and rates for binary labels (1 = hit); sensitivity = recall of hits."""
    actual, predicted = np.asarray(actual, bool), np.asarray(predicted, bool)
    tp, fn = int((actual & predicted).sum()), int((actual & ~predicted).sum())
    fp, tn = int((~actual & predicted).sum()), int((~actual & ~predicted).sum())
    return {
        "tp": tp,
        "fn": fn,
        "fp": fp,
        "tn": tn,
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
    }


def balanced_accuracy(c: dict[str, float]) -> float:
    """The mean of sensitivity and specificity of a confusion() result."""
    return (c["sensitivity"] + c["specificity"]) / 2


def study_table(c: dict[str, float], title: str) -> str:
    """The confusion matrix in the study's layout: fractions of all frames, actual x prediction."""
    n = max(1, c["tp"] + c["fn"] + c["fp"] + c["tn"])
    return "\n".join(
        [
            f"{title}",
            "                Prediction",
            "Actual          Hit       Miss",
            f"   Hit      {c['tp'] / n:8.5f}   {c['fn'] / n:8.5f}",
            f"   Miss     {c['fp'] / n:8.5f}   {c['tn'] / n:8.5f}",
            f"Sensitivity: {c['sensitivity']:.5f}  Specificity: {c['specificity']:.5f}  (n = {n})",
        ]
    )


PROTOCOLS = {
    "quartile": "peakfinder8 quartiles (study)",
    "min-peaks": "peakfinder8 >= {n} peaks, every frame",
    "truth": "simulator truth: >= {n} strong spots, every frame",
}


def by_protocol(
    protocol: str, peaks: np.ndarray, strong_spots: np.ndarray, *, min_peaks: int, seed: int
) -> np.ndarray:
    """Labels by one of the PROTOCOLS (UNUSED for frames it leaves out)."""
    if protocol == "quartile":
        return quartile_labels(peaks, seed)
    if protocol == "min-peaks":
        return min_peak_labels(peaks, min_peaks)
    if protocol == "truth":
        return visible_labels(strong_spots, min_peaks)
    raise ValueError(f"unknown label protocol {protocol!r}; one of {sorted(PROTOCOLS)}")
