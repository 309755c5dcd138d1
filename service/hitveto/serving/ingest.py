"""Ingest workers: receive frames, decode and check them, cut the model's region, hand to the batcher.

Each worker thread owns one PULL socket connected to the daemon's internal frame fan-out. ZMQ
receives without holding the GIL and numpy's gather releases it, so threads scale decoding until
inference (which also releases the GIL) takes the cores. A frame that cannot be judged is answered
at once with a keep verdict; nothing here raises out of the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import zmq

from hitveto.models.artifact import Artifact
from hitveto.models.preprocess import InputMismatch, masked_region
from hitveto.serving.batcher import Batcher, Pending
from hitveto.serving.guard import InputGuard
from hitveto.serving.metrics import Metrics
from hitveto.serving.supervise import Supervised
from hitveto_client.protocol import (
    PROTOCOL_VERSION,
    EventKey,
    FrameHeader,
    ProtocolError,
    Reason,
    Verdict,
    decode_frame,
    peek_key,
)

log = logging.getLogger(__name__)
POLL_MS = 50


class IngestWorker:
    def __init__(
        self,
        *,
        sock: zmq.Socket[Any],
        batcher: Batcher,
        metrics: Metrics,
        publish: Callable[[Verdict], None],
        artifact: Callable[[], Artifact],
        guard: InputGuard,
        draining: threading.Event,
        name: str,
    ) -> None:
        self._sock = sock
        self._batcher = batcher
        self._metrics = metrics
        self._publish = publish
        self._artifact = artifact  # the current model's artifact (changes on reload)
        self._guard = guard
        self._draining = draining
        self.last_frame_s = time.monotonic()
        self.stop = threading.Event()
        self.thread = Supervised(name, self._run, on_crash=metrics.thread_crashed)

    def _run(self) -> None:
        # Restarted as it is after a crash (Supervised): the socket is closed on a clean stop only.
        while not self.stop.is_set():
            if self._sock.poll(POLL_MS, zmq.POLLIN):
                self.handle(self._sock.recv_multipart(copy=False))
        while self._sock.poll(0, zmq.POLLIN):  # intake is closed: answer what is still queued
            self.handle(self._sock.recv_multipart(copy=False))
        self._sock.close(linger=0)

    def handle(self, parts: list[zmq.Frame]) -> None:
        """One message in, exactly one outcome: queued, or answered with a keep, or counted as bad.
        An answer is in the frame's protocol version: a v1 sender reads v1 verdicts only."""
        received_ns = time.time_ns()
        self.last_frame_s = time.monotonic()
        self._metrics.frames.inc()
        artifact = self._artifact()
        key, version = None, PROTOCOL_VERSION
        try:
            header, image = decode_frame(parts)
            key, version = header.key, header.version
            if key.detector != artifact.spec.detector:
                raise ProtocolError(
                    "unknown_detector",
                    f"detector {key.detector!r}, model serves {artifact.spec.detector!r}",
                    key,
                    version,
                )
            image, unjudged = self._prepare(header, image, artifact)
            if unjudged is not None:
                self._unjudged(header, unjudged, received_ns, artifact)
                return
            roi, nonfinite = masked_region(image, artifact.spec)
        except ProtocolError as exc:
            self._reject(exc.reason, exc.key, str(exc), received_ns, artifact, version=exc.version)
            return
        except InputMismatch as exc:
            self._reject("bad_shape", key, str(exc), received_ns, artifact, version=version)
            return
        except Exception:  # a bug must cost one frame (kept), never the worker: count and go on
            log.exception("internal error on a frame; kept")
            self._metrics.internal_errors.labels("ingest").inc()
            self._reject(
                "internal_error",
                key or peek_key(parts),
                "internal error",
                received_ns,
                artifact,
                reason=Reason.MODEL_ERROR,
                version=version,
            )
            return
        if nonfinite:
            self._metrics.nonfinite_frames.inc()
        pending = Pending(
            key=header.key,
            region=roi,
            sent_ns=header.sent_ns,
            received_ns=received_ns,
            arrived_s=self._batcher.clock(),
            version=version,
        )
        if self._draining.is_set():
            self._keep(pending, Reason.SHUTDOWN, artifact)
        elif not self._batcher.offer(pending):
            self._keep(pending, Reason.OVERLOAD, artifact)

    def _prepare(
        self, header: FrameHeader, image: np.ndarray, artifact: Artifact
    ) -> tuple[np.ndarray, Reason | None]:
        """The frame calibrated where it must be, and why it is kept unjudged, if it is: the daemon
        is draining, the queue is full (decided before the pixels are touched: a saturated daemon
        must not spend milliseconds on a frame it will not judge), or the guard finds it out of
        distribution."""
        if self._draining.is_set():
            return image, Reason.SHUTDOWN
        if self._batcher.depth() >= self._batcher.max_queue:
            return image, Reason.OVERLOAD
        image, fit = self._guard.prepare(image, header.meta, artifact.spec)
        if not fit:
            self._metrics.out_of_distribution.inc()
            return image, Reason.OUT_OF_DISTRIBUTION
        return image, None

    def _unjudged(self, header: FrameHeader, reason: Reason, received_ns: int, artifact: Artifact) -> None:
        self._publish(
            Verdict.fail_open(
                header.key,
                reason,
                model_version=artifact.served_version,
                threshold=artifact.info.threshold,
                sent_ns=header.sent_ns,
                received_ns=received_ns,
                version=header.version,
            )
        )

    def _reject(
        self,
        label: str,
        key: EventKey | None,
        detail: str,
        received_ns: int,
        artifact: Artifact,
        reason: Reason = Reason.MALFORMED,
        version: int = PROTOCOL_VERSION,
    ) -> None:
        self._metrics.bad_frames.labels(label).inc()
        log.debug("bad frame: %s", detail)
        if key is not None:  # answerable: the writer keeps it rather than waiting for the deadline
            self._publish(
                Verdict.fail_open(
                    key,
                    reason,
                    model_version=artifact.served_version,
                    threshold=artifact.info.threshold,
                    received_ns=received_ns,
                    version=version,
                )
            )

    def _keep(self, p: Pending, reason: Reason, artifact: Artifact) -> None:
        self._publish(
            p.kept(reason, model_version=artifact.served_version, threshold=artifact.info.threshold)
        )


def forward_frames(front: zmq.Socket[Any], back: zmq.Socket[Any], steer: zmq.Socket[Any]) -> None:
    """Frames from the ingest socket to the workers, until TERMINATE on `steer`."""
    while True:
        try:
            zmq.proxy_steerable(front, back, None, steer)
            break
        except zmq.Again:  # reported on CURVE client connections (issue #18): nothing to read
            continue  # after all, so go on rather than leave the daemon deaf
        except zmq.ContextTerminated:
            break
    try:
        # Terminated at shutdown: pass on what already waits in the ingest socket (at most its
        # HWM), so that the workers answer it rather than the senders' deadlines.
        for _ in range(cast(int, front.getsockopt(zmq.RCVHWM))):
            if not front.poll(0, zmq.POLLIN):
                break
            back.send_multipart(front.recv_multipart(copy=False), copy=False)
    except zmq.ContextTerminated:
        pass
    finally:
        back.close(linger=1000)  # frames passed on must reach the workers
        front.close(linger=0)
        steer.close(linger=0)
