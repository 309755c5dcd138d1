"""An inference thread: takes due batches, judges them with its engine, emits verdicts. A daemon
runs one per engine (device), all fed by the same batcher.

Frames that waited longer than the latency budget are kept (overload) instead of judged, so the
latency of judged frames stays bounded whatever the offered load. A model that raises gets its whole
batch kept (model_error). A new engine is swapped in between two batches, so a reload drops nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from service.audit import AuditSample
from service.batcher import Batcher, Pending
from service.engine import Engine
from service.metrics import Metrics
from service.protocol import Reason, Verdict

log = logging.getLogger(__name__)
TICK_S = 0.1


class Watcher(Protocol):
    """Sees each judged frame after its verdict is out (shadow peakfinder8, drift); never blocks."""

    def offer(self, region: np.ndarray, score: float, hit: bool) -> None: ...


class InferenceLoop:
    def __init__(self, *, engine: Engine, batcher: Batcher, metrics: Metrics,
                 publish: Callable[[Verdict], None], latency_budget_ms: float,
                 audit: AuditSample = AuditSample(0.0), watchers: Sequence[Watcher] = (),
                 name: str = "hitveto-infer") -> None:
        self.engine = engine
        self._next_engine: Engine | None = None
        self._batcher = batcher
        self._metrics = metrics
        self._publish = publish
        self._budget_s = latency_budget_ms / 1000.0
        self.audit = audit                 # replaced whole by learn mode
        self._watchers = watchers
        self.judged = 0                    # frames this loop's engines scored
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def swap(self, engine: Engine) -> None:
        """Serve `engine` from the next batch on (thread-safe)."""
        self._next_engine = engine

    def _run(self) -> None:
        while not self.stop.is_set():
            self.judge(self._batcher.next_batch(TICK_S))
        while batch := self._batcher.drain(self._batcher.max_batch):  # SIGTERM: judge the rest
            self.judge(batch, stale_ok=True)

    def judge(self, batch: list[Pending], stale_ok: bool = False) -> None:
        if self._next_engine is not None:
            self.engine, self._next_engine = self._next_engine, None
        self._metrics.queue_depth.set(self._batcher.depth())
        if not batch:
            return
        now = self._batcher.clock()
        fresh = []
        for p in batch:
            if stale_ok or now - p.arrived_s <= self._budget_s:
                fresh.append(p)
            else:
                self._keep(p, Reason.OVERLOAD)
        if fresh:
            self._infer(fresh)

    def _infer(self, batch: list[Pending]) -> None:
        engine = self.engine
        t0 = time.perf_counter()
        try:
            scores = engine.infer([p.region for p in batch])
        except Exception:  # any model failure: keep the whole batch, keep serving
            log.exception("model %s failed on a batch of %d; kept", engine.version, len(batch))
            for p in batch:
                self._keep(p, Reason.MODEL_ERROR)
            return
        seconds = time.perf_counter() - t0
        self.judged += len(batch)
        self._metrics.inference.observe(seconds)
        self._metrics.batch_size.observe(len(batch))
        judged = [(p, score, score >= engine.threshold) for p, score in zip(batch, scores.tolist())]
        for p, score, hit in judged:
            audited = not hit and self.audit.picks(p.key)
            self._publish(Verdict(key=p.key, keep=hit or audited, hit=hit, score=score,
                                  threshold=engine.threshold, model_version=engine.version,
                                  reason=Reason.AUDIT if audited else Reason.MODEL,
                                  sent_ns=p.sent_ns, received_ns=p.received_ns,
                                  inference_ms=seconds * 1e3))
        for p, score, hit in judged:        # after the whole batch's verdicts are out
            self._watch(p.region, score, hit)

    def _watch(self, region: np.ndarray, score: float, hit: bool) -> None:
        for watcher in self._watchers:
            try:
                watcher.offer(region, score, hit)
            except Exception:     # a watcher's failure must not reach the verdicts
                log.exception("watcher %s failed; the frame's verdict is out", type(watcher).__name__)

    def _keep(self, p: Pending, reason: Reason) -> None:
        self._publish(Verdict.fail_open(p.key, reason, model_version=self.engine.version,
                                        threshold=self.engine.threshold, sent_ns=p.sent_ns,
                                        received_ns=p.received_ns))
