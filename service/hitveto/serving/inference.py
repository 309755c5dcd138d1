"""An inference thread: takes due batches, judges them with its engine, emits verdicts. A daemon
runs one per engine (device), all fed by the same batcher.

Frames that waited longer than the latency budget are kept (overload) instead of judged, so the
latency of judged frames stays bounded whatever the offered load. A model that raises, or any error
while its verdicts are made, gets the whole batch kept (model_error); a score that is not a number
is no verdict: that frame is kept (bad_score). A judged verdict also carries the model's verdict
classes (ice, jet streak...): information for people; keep or drop stays the hit score's alone. A
new engine is swapped in between two batches, so a reload drops nothing.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from hitveto.models.engine import ModelEngine
from hitveto.serving.audit import NO_AUDIT, AuditSample
from hitveto.serving.batcher import Batcher, Pending
from hitveto.serving.metrics import Metrics
from hitveto.serving.supervise import Supervised
from hitveto_client.protocol import Reason, Verdict

log = logging.getLogger(__name__)
TICK_S = 0.1
CLASS_THRESHOLD = 0.5  # for a verdict class whose threshold the artifact does not give


class Watcher(Protocol):
    """Sees each judged frame after its verdict is out (shadow peakfinder8, drift); never blocks."""

    def offer(self, region: np.ndarray, score: float, hit: bool) -> None: ...


class InferenceLoop:
    def __init__(
        self,
        *,
        engine: ModelEngine,
        batcher: Batcher,
        metrics: Metrics,
        publish: Callable[[Verdict], None],
        latency_budget_ms: float,
        audit: AuditSample = NO_AUDIT,
        watchers: Sequence[Watcher] = (),
        name: str = "hitveto-infer",
    ) -> None:
        self.engine = engine
        self._next_engine: ModelEngine | None = None
        self._batcher = batcher
        self._metrics = metrics
        self._publish = publish
        self._budget_s = latency_budget_ms / 1000.0
        self.audit = audit  # replaced whole by learn mode
        self._watchers = watchers
        self.judged = 0  # frames this loop's engines scored
        self.stop = threading.Event()
        self.thread = Supervised(name, self._run, on_crash=metrics.thread_crashed)

    def swap(self, engine: ModelEngine) -> None:
        """Serve `engine` from the next batch on (thread-safe)."""
        self._next_engine = engine

    def _run(self) -> None:
        while not self.stop.is_set():
            self._judge_or_keep(self._batcher.next_batch(TICK_S))
        while batch := self._batcher.drain(self._batcher.max_batch):  # SIGTERM: judge the rest
            self._judge_or_keep(batch, stale_ok=True)

    def _judge_or_keep(self, batch: list[Pending], stale_ok: bool = False) -> None:
        """judge(), and a batch it fails on is kept: a frame taken from the batcher is answered."""
        try:
            self.judge(batch, stale_ok)
        except Exception:
            log.exception("judging a batch of %d failed; kept", len(batch))
            self._metrics.internal_errors.labels("inference").inc()
            self._keep_all(batch, Reason.MODEL_ERROR)

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
            scores, class_probabilities = engine.infer_with_classes([p.region for p in batch])
        except Exception:  # any model failure: keep the whole batch, keep serving
            log.exception("model %s failed on a batch of %d; kept", engine.version, len(batch))
            self._keep_all(batch, Reason.MODEL_ERROR)
            return
        seconds = time.perf_counter() - t0
        try:  # all verdicts made before any is out: a failure keeps the whole batch, once
            verdicts = [
                self._verdict(p, score, class_scores(engine, probabilities), engine, seconds * 1e3)
                for p, score, probabilities in zip(
                    batch, scores.tolist(), class_probabilities.tolist(), strict=True
                )
            ]
        except Exception:
            log.exception("verdicts for a batch of %d failed; kept", len(batch))
            self._metrics.internal_errors.labels("inference").inc()
            self._keep_all(batch, Reason.MODEL_ERROR)
            return
        self.judged += len(batch)
        self._metrics.inference.observe(seconds)
        self._metrics.batch_size.observe(len(batch))
        for verdict in verdicts:
            self._publish(verdict)
        for p, v in zip(batch, verdicts):  # after the whole batch's verdicts are out
            if v.reason is not Reason.BAD_SCORE:
                self._watch(p.region, v.score, v.hit)

    def _verdict(
        self, p: Pending, score: float, by_class: dict[str, float], engine: ModelEngine, inference_ms: float
    ) -> Verdict:
        if not math.isfinite(score):  # kept, and said why: a NaN must not read as a miss
            hit, keep, reason, by_class = False, True, Reason.BAD_SCORE, {}  # not judged: no classes
        else:
            hit = score >= engine.threshold
            audited = not hit and self.audit.picks(p.key)
            keep, reason = hit or audited, Reason.AUDIT if audited else Reason.MODEL
        return Verdict(
            key=p.key,
            keep=keep,
            hit=hit,
            score=score,
            threshold=engine.threshold,
            model_version=engine.version,
            reason=reason,
            sent_ns=p.sent_ns,
            received_ns=p.received_ns,
            inference_ms=inference_ms,
            classes=called(by_class, engine.artifact.info.class_thresholds),
            class_scores=by_class,
            version=p.version,
        )

    def _watch(self, region: np.ndarray, score: float, hit: bool) -> None:
        for watcher in self._watchers:
            try:
                watcher.offer(region, score, hit)
            except Exception:  # a watcher's failure must not reach the verdicts
                log.exception("watcher %s failed; the frame's verdict is out", type(watcher).__name__)

    def _keep_all(self, batch: list[Pending], reason: Reason) -> None:
        for p in batch:
            self._keep(p, reason)

    def _keep(self, p: Pending, reason: Reason) -> None:
        self._publish(p.kept(reason, model_version=self.engine.version, threshold=self.engine.threshold))


def class_scores(engine: ModelEngine, probabilities: list[float]) -> dict[str, float]:
    """Each verdict class's probability by name (none for a model without class heads)."""
    return dict(zip(engine.classes, probabilities, strict=True))


def called(scores: dict[str, float], thresholds: dict[str, float]) -> tuple[str, ...]:
    """The classes whose probability reached its threshold; a NaN reaches none."""
    return tuple(name for name, p in scores.items() if p >= thresholds.get(name, CLASS_THRESHOLD))
