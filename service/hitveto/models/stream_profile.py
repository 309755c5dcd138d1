"""The training profile: six statistics of the frames a model was trained on, and how far a
stream has moved from them.

The trainer measures the STATISTICS on every training frame and stores their distribution in the
artifact (the profile): the model's score and verdict, the mean intensity and the background level
(photons per pixel, mean and median), and the shares of saturated and of zero (masked or dead)
pixels, each over the region's real pixels. The daemon's drift monitor (serving/drift.py) measures
the same on a sample of the live stream and scores each statistic by its population stability index
(PSI) against the profile: sum over bins of (live - trained) * ln(live / trained), the bins being
the training deciles. By the usual reading, PSI < 0.1 is no shift, 0.1-0.25 a moderate one, > 0.25
a shift the model was not trained for (the alert's level).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hitveto.models.preprocess import InputSpec

ALERT_PSI = 0.25  # the alert level (deploy/prometheus/alerts.yml)
STATISTICS = ("score", "hit", "intensity", "background", "saturated", "masked")
SATURATION_ADU = 15000.0  # CSPAD: a 14-bit ADC less its pedestal
FLOOR = 1e-3  # an empty bin counts as this share (PSI is infinite otherwise)
MEDIAN_STRIDE = 7  # the background median is taken on every 7th real pixel


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """Bins and trained shares per statistic; bin i holds values in (edges[i-1], edges[i]]."""

    edges: dict[str, list[float]]
    expected: dict[str, list[float]]
    frames: int
    saturation_adu: float = SATURATION_ADU

    def to_dict(self) -> dict:
        return {
            "edges": self.edges,
            "expected": self.expected,
            "frames": self.frames,
            "saturation_adu": self.saturation_adu,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        return cls(
            edges=d["edges"],
            expected=d["expected"],
            frames=d["frames"],
            saturation_adu=d.get("saturation_adu", SATURATION_ADU),
        )


def frame_statistics(
    regions: Sequence[np.ndarray] | np.ndarray,
    scores: np.ndarray,
    threshold: float,
    spec: InputSpec,
    saturation_adu: float = SATURATION_ADU,
) -> np.ndarray:
    """(N, 6): the STATISTICS of each of N ADU regions, given the model's scores."""
    real = spec.real_pixels()
    return np.array(
        [
            statistics_row(r, s, threshold, real, spec.adu_per_photon, saturation_adu)
            for r, s in zip(regions, scores)
        ]
    ).reshape(-1, len(STATISTICS))


def statistics_row(
    region: np.ndarray,
    score: float,
    threshold: float,
    real: np.ndarray,
    adu_per_photon: float,
    saturation_adu: float,
) -> np.ndarray:
    """The STATISTICS of one region; `real`: flat indices of its real (not gap) pixels."""
    px = region.reshape(-1)[real]
    return np.array(
        [
            score,
            float(score >= threshold),
            px.mean(dtype=np.float64) / adu_per_photon,
            float(np.median(px[::MEDIAN_STRIDE])) / adu_per_photon,
            np.count_nonzero(px >= saturation_adu) / px.size,
            np.count_nonzero(px == 0) / px.size,
        ]
    )


def profile(stats: np.ndarray) -> Profile:
    """The training profile from frame_statistics(): decile bins and the training shares in them."""
    edges, expected = {}, {}
    for name, values in zip(STATISTICS, stats.T):
        cuts = [0.5] if name == "hit" else np.unique(np.quantile(values, np.linspace(0.1, 0.9, 9)))
        edges[name] = [float(c) for c in cuts]
        expected[name] = shares(values, edges[name]).tolist()
    return Profile(edges=edges, expected=expected, frames=len(stats))


def shares(values: np.ndarray, edges: list[float]) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    return counts / max(1, len(values))


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e, a = np.maximum(expected, FLOOR), np.maximum(actual, FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def drift_scores(prof: Profile, stats: np.ndarray) -> dict[str, float]:
    """PSI of each statistic of (N, 6) frame statistics against the profile."""
    return {
        name: psi(np.array(prof.expected[name]), shares(values, prof.edges[name]))
        for name, values in zip(STATISTICS, stats.T)
    }
