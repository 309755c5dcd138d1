"""The shadow peakfinder8: psana's peakfinder8 judges a sample of the stream beside the model, live.

Worker processes, not threads: peakfinder8 holds the GIL for its 5-13 ms per region, which would
stall the daemon's own threads. They run at a lower priority on the cores the daemon leaves free.
The inference loop offers every judged frame; one is taken only while fewer than two wait per
worker, so the share shadowed adapts to the cores there are, and the shadow never queues, never
delays a verdict and never holds a frame (it sees a copy after the verdict is out).

Over a sliding window of the last shadowed frames it estimates, with 95 % Wilson bounds, the
model's sensitivity and specificity against peakfinder8's labels (hit = at least min_peaks peaks in
the model's region), and the hit rate by both. The labels are peakfinder8's, not the truth: what
the gauges show is how far the model departs from the hit finder the beamline already trusts.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from hitveto.config import ShadowConfig
from hitveto.io.peaks import PeakFinderParams, count_in_region, region_counter_pool
from hitveto.models.preprocess import InputSpec
from hitveto.serving.audit import wilson
from hitveto.serving.metrics import Metrics

log = logging.getLogger(__name__)
WAITING_PER_WORKER = 2
NICE = 10  # below the daemon's threads when cores are short
AUTO_MAX_WORKERS = 4  # 400-800 shadowed frames/s: ample for the estimates


def spare_cores(*, ingest_workers: int, cpu_engines: int, cpu_threads: int) -> int:
    """Cores left once the ingest workers, the CPU engines and one for proxy+publisher have theirs
    (at most AUTO_MAX_WORKERS)."""
    left = len(os.sched_getaffinity(0)) - ingest_workers - cpu_engines * max(1, cpu_threads) - 1
    return min(AUTO_MAX_WORKERS, max(0, left))


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    value: float
    lower: float  # 95 % Wilson interval
    upper: float

    @classmethod
    def of(cls, successes: int, n: int) -> Estimate:
        lower, upper = wilson(successes, n)
        return cls(value=successes / n if n else float("nan"), lower=lower, upper=upper)


class ShadowWindow:
    """Confusion counts of model verdict vs peakfinder8 label over the last `size` frames."""

    def __init__(self, size: int) -> None:
        self._pairs: deque[tuple[bool, bool]] = deque(maxlen=size)
        self._counts = {(m, p): 0 for m in (True, False) for p in (True, False)}
        self._lock = threading.Lock()

    def add(self, model_hit: bool, pf8_hit: bool) -> None:
        with self._lock:
            if len(self._pairs) == self._pairs.maxlen:
                self._counts[self._pairs[0]] -= 1
            self._pairs.append((model_hit, pf8_hit))
            self._counts[(model_hit, pf8_hit)] += 1

    def estimates(self) -> dict[str, Estimate]:
        """sensitivity, specificity (against peakfinder8), and hit rate by model and by peakfinder8."""
        with self._lock:
            c, n = dict(self._counts), len(self._pairs)
        pf8_hits = c[(True, True)] + c[(False, True)]
        pf8_misses = c[(True, False)] + c[(False, False)]
        return {
            "sensitivity": Estimate.of(c[(True, True)], pf8_hits),
            "specificity": Estimate.of(c[(False, False)], pf8_misses),
            "hit_rate_model": Estimate.of(c[(True, True)] + c[(True, False)], n),
            "hit_rate_peakfinder8": Estimate.of(pf8_hits, n),
        }

    @property
    def size(self) -> int:
        return self._pairs.maxlen or 0

    def __len__(self) -> int:
        return len(self._pairs)


class ShadowPeakfinder:
    """Takes frames the model judged, when a worker is free; peakfinder8 labels them; updates gauges."""

    def __init__(self, settings: ShadowConfig, *, workers: int, spec: InputSpec, metrics: Metrics) -> None:
        self.workers = workers  # settings.workers, with -1 resolved (watchers.py)
        self.min_peaks = settings.min_peaks
        self.window = ShadowWindow(settings.window)
        self._metrics = metrics
        self._waiting = threading.BoundedSemaphore(WAITING_PER_WORKER * workers)
        self._gain = spec.adu_per_photon
        self._pool = self._start_pool(spec)
        metrics.shadow_target.set(settings.target_sensitivity)
        metrics.shadow_workers.set(workers)

    def _start_pool(self, spec: InputSpec) -> concurrent.futures.ProcessPoolExecutor:
        return region_counter_pool(
            spec, PeakFinderParams.for_gain(spec.adu_per_photon), self.workers, nice=NICE
        )

    def use(self, spec: InputSpec) -> None:
        """Judge a new model from now on (a reload): the window starts afresh. The workers are
        started again (seconds: psana is imported anew) only when the gain, and so peakfinder8's
        threshold, changed; a reload keeps the detector and the region."""
        self.window = ShadowWindow(self.window.size)
        if spec.adu_per_photon == self._gain:
            return
        old, self._pool, self._gain = self._pool, self._start_pool(spec), spec.adu_per_photon
        old.shutdown(wait=False, cancel_futures=True)

    def offer(self, region: np.ndarray, score: float, hit: bool) -> None:
        """Shadow this frame if a worker is free, else let it pass; never blocks."""
        if not self._waiting.acquire(blocking=False):
            return
        try:
            future = self._pool.submit(count_in_region, np.array(region))
        except RuntimeError:  # the pool is shut down (daemon stopping)
            self._waiting.release()
            return
        future.add_done_callback(lambda f: self._done(f, hit))

    def _done(self, future: concurrent.futures.Future[int], model_hit: bool) -> None:
        self._waiting.release()
        if future.cancelled():
            return
        if (exc := future.exception()) is not None:
            log.warning("shadow peakfinder8 failed on a frame: %s", exc)
            self._metrics.shadow_errors.inc()
            return
        pf8_hit = future.result() >= self.min_peaks
        self.window.add(model_hit, pf8_hit)
        self._metrics.shadow_frames.labels("hit" if model_hit else "miss", "hit" if pf8_hit else "miss").inc()
        self._metrics.set_shadow(self.window.estimates(), len(self.window))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
