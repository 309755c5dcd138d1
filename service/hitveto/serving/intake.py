"""Intake: the ingest socket, the proxy that hands its frames on, and the ingest workers.

    DAQ PUSH ──▶ PULL (bind) ─proxy─▶ inproc PUSH ──▶ N IngestWorkers ──▶ Batcher

The proxy only moves messages (no GIL-heavy work), so the socket keeps reading while the workers
decode; closing is the first phase of the daemon's drain: wait until no frame arrived for
IDLE_BEFORE_CLOSE_S, stop the proxy, then the workers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from hitveto.config import IngestConfig
from hitveto.models.artifact import Artifact
from hitveto.serving.batcher import Batcher
from hitveto.serving.guard import InputGuard
from hitveto.serving.ingest import IngestWorker, forward_frames
from hitveto.serving.metrics import Metrics
from hitveto.serving.sockets import bind
from hitveto.serving.supervise import Supervised
from hitveto_client.protocol import MAX_FRAME_BYTES, MAX_HEADER_BYTES, Verdict

BACKEND = "inproc://hitveto-frames"
STEER = "inproc://hitveto-proxy-control"
# Frames between the proxy and the workers. Small, so that a backlog waits in the ingest socket
# (ingest.rcvhwm, then the senders' own queues) and the daemon's memory stays bounded by the config:
# (ingest.rcvhwm + 2 * INTERNAL_HWM * workers + batch.max_queue) frames.
INTERNAL_HWM = 16
IDLE_BEFORE_CLOSE_S = 0.05  # intake is closed once no frame arrived for this long while draining
# A message part larger than a frame can be is refused by ZMQ before it is read whole.
MAX_MESSAGE_BYTES = MAX_FRAME_BYTES + MAX_HEADER_BYTES


class Intake:
    """Binds the ingest endpoint and runs the proxy and the workers (all Supervised)."""

    def __init__(
        self,
        context: zmq.Context[Any],
        cfg: IngestConfig,
        *,
        curve: dict[int, Any],
        batcher: Batcher,
        metrics: Metrics,
        publish: Callable[[Verdict], None],
        artifact: Callable[[], Artifact],
        guard: InputGuard,
        draining: threading.Event,
    ) -> None:
        self._context, self._cfg, self._curve = context, cfg, curve
        self._guard = guard
        self._batcher, self._metrics, self._publish = batcher, metrics, publish
        self._artifact, self._draining = artifact, draining
        self.workers: list[IngestWorker] = []

    def start(self, watch: Callable[[zmq.Socket[Any]], None]) -> str:
        """Bind, start the proxy and the workers; the bound endpoint. `watch` sees the socket first
        (the handshake monitor)."""
        front, endpoint = bind(
            self._context,
            zmq.PULL,
            self._cfg.endpoint,
            hwm=self._cfg.rcvhwm,
            options={zmq.MAXMSGSIZE: MAX_MESSAGE_BYTES, **self._curve},
        )
        back, _ = bind(self._context, zmq.PUSH, BACKEND, hwm=INTERNAL_HWM)
        self._steer = self._context.socket(zmq.PAIR)
        self._steer.bind(STEER)
        steered = self._context.socket(zmq.PAIR)
        steered.connect(STEER)
        watch(front)
        self.proxy = Supervised(
            "hitveto-proxy",
            lambda: forward_frames(front, back, steered),
            on_crash=self._metrics.thread_crashed,
        )
        self.proxy.start()
        self.workers = [self._worker(i) for i in range(max(1, self._cfg.workers))]
        for w in self.workers:
            w.thread.start()
        return endpoint

    @property
    def threads(self) -> list[Supervised]:
        return [self.proxy, *(w.thread for w in self.workers)]

    def close(self, end: float) -> None:
        """Once the stream has paused (or at `end`, a monotonic time), stop the proxy and workers."""
        while time.monotonic() < end and any(
            time.monotonic() - w.last_frame_s < IDLE_BEFORE_CLOSE_S for w in self.workers
        ):
            time.sleep(IDLE_BEFORE_CLOSE_S / 5)
        try:
            self._steer.send(b"TERMINATE", zmq.NOBLOCK)
        except zmq.Again:  # the proxy is gone already
            pass
        self.proxy.join(max(0.1, end - time.monotonic()))
        for w in self.workers:
            w.stop.set()
            w.thread.join(max(0.1, end - time.monotonic()))
        self._steer.close(linger=0)

    def _worker(self, i: int) -> IngestWorker:
        sock = self._context.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, INTERNAL_HWM)
        sock.connect(BACKEND)
        return IngestWorker(
            sock=sock,
            batcher=self._batcher,
            metrics=self._metrics,
            publish=self._publish,
            artifact=self._artifact,
            guard=self._guard,
            draining=self._draining,
            name=f"hitveto-ingest-{i}",
        )
