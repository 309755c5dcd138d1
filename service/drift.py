"""Drift: is the stream still what the model was trained on?

The trainer measures six statistics on every training frame and stores their distribution in the
artifact (the profile): the model's score and verdict, the mean intensity and the background level
(photons per pixel, mean and median), and the shares of saturated and of zero (masked or dead)
pixels, each over the region's real pixels. The daemon measures the same on a sample of the live
stream and scores each statistic by its population stability index (PSI) against the profile:
sum over bins of (live - trained) * ln(live / trained), the bins being the training deciles.
By the usual reading, PSI < 0.1 is no shift, 0.1-0.25 a moderate one, > 0.25 a shift the model
was not trained for (the alert's level).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.artifact import Artifact
from service.metrics import Metrics
from service.preprocess import InputSpec, region
from service.supervise import Supervised

log = logging.getLogger(__name__)
STATISTICS = ("score", "hit", "intensity", "background", "saturated", "masked")
SATURATION_ADU = 15000.0        # CSPAD: a 14-bit ADC less its pedestal
ALERT_PSI = 0.25
FLOOR = 1e-3                    # an empty bin counts as this share (PSI is infinite otherwise)
MEDIAN_STRIDE = 7               # the background median is taken on every 7th real pixel
BURST = 32                      # frames measured back to back (a batch) before the rate applies


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """Bins and trained shares per statistic; bin i holds values in (edges[i-1], edges[i]]."""

    edges: dict[str, list[float]]
    expected: dict[str, list[float]]
    frames: int
    saturation_adu: float = SATURATION_ADU

    def to_dict(self) -> dict:
        return {"edges": self.edges, "expected": self.expected, "frames": self.frames,
                "saturation_adu": self.saturation_adu}

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        return cls(edges=d["edges"], expected=d["expected"], frames=d["frames"],
                   saturation_adu=d.get("saturation_adu", SATURATION_ADU))


def frame_statistics(regions: np.ndarray, scores: np.ndarray, threshold: float, spec: InputSpec,
                     saturation_adu: float = SATURATION_ADU) -> np.ndarray:
    """(N, 6): the STATISTICS of each of N ADU regions, given the model's scores."""
    real = np.flatnonzero(spec.roi_index.reshape(-1) >= 0)
    return np.array([statistics_row(r, s, threshold, real, spec.adu_per_photon, saturation_adu)
                     for r, s in zip(regions, scores)]).reshape(-1, len(STATISTICS))


def statistics_row(region: np.ndarray, score: float, threshold: float, real: np.ndarray,
                   adu_per_photon: float, saturation_adu: float) -> np.ndarray:
    """The STATISTICS of one region; `real`: flat indices of its real (not gap) pixels."""
    px = region.reshape(-1)[real]
    return np.array([score, float(score >= threshold),
                     px.mean(dtype=np.float64) / adu_per_photon,
                     float(np.median(px[::MEDIAN_STRIDE])) / adu_per_photon,
                     np.count_nonzero(px >= saturation_adu) / px.size,
                     np.count_nonzero(px == 0) / px.size])


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
    return {name: psi(np.array(prof.expected[name]), shares(values, prof.edges[name]))
            for name, values in zip(STATISTICS, stats.T)}


class DriftMonitor:
    """Measures a sample of the live stream (at most sample_hz) in its own thread; PSI gauges."""

    def __init__(self, *, prof: Profile, spec: InputSpec, threshold: float, metrics: Metrics,
                 sample_hz: float, window: int, min_frames: int) -> None:
        self._metrics = metrics
        self._rate_hz = sample_hz
        self._tokens, self._last_s = float(BURST), time.monotonic()
        self._window = window
        self._min_frames = min_frames
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting = threading.BoundedSemaphore(BURST)
        self.use(prof, spec, threshold)
        self.stop = threading.Event()
        self.thread = Supervised("hitveto-drift", self._run, on_crash=metrics.thread_crashed)

    def use(self, prof: Profile, spec: InputSpec, threshold: float) -> None:
        """Score against this profile from now on (a reload); the window starts afresh."""
        self._inbox.put((prof, spec, threshold))

    def offer(self, region: np.ndarray, score: float, hit: bool) -> None:
        """Measure this frame if the sample rate allows and the thread keeps up; never blocks."""
        now = time.monotonic()        # a token bucket: sample_hz on average, BURST at once
        self._tokens = min(BURST, self._tokens + (now - self._last_s) * self._rate_hz)
        self._last_s = now
        if self._tokens < 1.0 or not self._waiting.acquire(blocking=False):
            return
        self._tokens -= 1.0
        self._inbox.put((region, score))

    def _run(self) -> None:
        # State lives on self, so that a restart after a crash (Supervised) goes on from it.
        while not self.stop.is_set():
            try:
                item = self._inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item[0], Profile):
                prof, spec, threshold = item
                self._scoring = (prof, spec, threshold, np.flatnonzero(spec.roi_index.reshape(-1) >= 0))
                self._rows, self._measured = deque(maxlen=self._window), 0
                self._metrics.drift_score.clear()
                continue
            self._waiting.release()
            self._measure(*item)

    def _measure(self, region: np.ndarray, score: float) -> None:
        prof, spec, threshold, real = self._scoring
        self._rows.append(statistics_row(region, score, threshold, real, spec.adu_per_photon,
                                         prof.saturation_adu))
        self._measured += 1
        if len(self._rows) >= self._min_frames and self._measured % 10 == 0:   # every 10th frame
            for name, value in drift_scores(prof, np.array(self._rows)).items():
                self._metrics.drift_score.labels(name).set(value)
            self._metrics.drift_window.set(len(self._rows))


def profile_runs(art: Artifact, runs: tuple[Path, ...]) -> Profile:
    """The profile of an artifact's training runs, for an artifact made without one."""
    from service import sources
    from service.engine import Engine
    engine = Engine(art, device="cpu", max_batch=64)
    stats = []
    for path in runs:
        events = tqdm(sources.events(path), desc=f"profile {Path(path).name}", unit="frame",
                      mininterval=1.0, leave=False)
        regions = [region(ev.image, art.spec) for ev in events]
        stats.append(frame_statistics(regions, engine.score(regions), art.info.threshold, art.spec))
    return profile(np.concatenate(stats))
