"""Drift: is the stream still what the model was trained on?

A sample of the live stream (at most drift.sample_hz frames/s) is measured in the monitor's own
thread, with the statistics the trainer stored in the artifact (models/stream_profile.py); the
PSI of each against the training profile is a gauge (`hitveto_drift_score{statistic}`), and an
alert fires above stream_profile.ALERT_PSI.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from hitveto.config import DriftConfig
from hitveto.models.preprocess import InputSpec
from hitveto.models.stream_profile import Profile, drift_scores, statistics_row
from hitveto.serving.metrics import Metrics
from hitveto.serving.supervise import Supervised

log = logging.getLogger(__name__)
BURST = 32  # frames measured back to back (a batch) before the rate applies


class DriftMonitor:
    """Measures a sample of the live stream (at most sample_hz) in its own thread; PSI gauges."""

    def __init__(
        self, settings: DriftConfig, *, prof: Profile, spec: InputSpec, threshold: float, metrics: Metrics
    ) -> None:
        self._metrics = metrics
        self._rate_hz = settings.sample_hz
        self._tokens, self._last_s = float(BURST), time.monotonic()
        self._window = settings.window
        self._min_frames = settings.min_frames
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()  # frames, or a Profile to use
        self._waiting = threading.BoundedSemaphore(BURST)
        self.use(prof, spec, threshold)
        self.stop = threading.Event()
        self.thread = Supervised("hitveto-drift", self._run, on_crash=metrics.thread_crashed)

    def use(self, prof: Profile, spec: InputSpec, threshold: float) -> None:
        """Score against this profile from now on (a reload); the window starts afresh."""
        self._inbox.put((prof, spec, threshold))

    def offer(self, region: np.ndarray, score: float, hit: bool) -> None:
        """Measure this frame if the sample rate allows and the thread keeps up; never blocks."""
        now = time.monotonic()  # a token bucket: sample_hz on average, BURST at once
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
                self._scoring = (prof, spec, threshold, spec.real_pixels())
                self._rows: deque[np.ndarray] = deque(maxlen=self._window)
                self._measured = 0
                self._metrics.drift_score.clear()
                continue
            self._waiting.release()
            self._measure(*item)

    def _measure(self, region: np.ndarray, score: float) -> None:
        prof, spec, threshold, real = self._scoring
        self._rows.append(
            statistics_row(region, score, threshold, real, spec.adu_per_photon, prof.saturation_adu)
        )
        self._measured += 1
        if len(self._rows) >= self._min_frames and self._measured % 10 == 0:  # every 10th frame
            for name, value in drift_scores(prof, np.array(self._rows)).items():
                self._metrics.drift_score.labels(name).set(value)
            self._metrics.drift_window.set(len(self._rows))
