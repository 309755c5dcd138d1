"""The verdict PUB socket, owned by one thread; every verdict passes here and is counted here.

Producers (ingest workers, the inference thread) hand verdicts over a thread-safe queue, because a
ZMQ socket must not be shared between threads. PUB never blocks: a subscriber that stops reading
loses verdicts beyond its HWM (its writer then keeps those frames by fallback), the daemon does not.
"""

from __future__ import annotations

import queue
import threading
import time

import zmq

from service.metrics import Metrics
from service.protocol import Verdict

_STOP = object()


class Publisher:
    def __init__(self, sock: zmq.Socket, metrics: Metrics) -> None:
        self._sock = sock
        self._metrics = metrics
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hitveto-publish", daemon=True)
        self.published = 0

    def start(self) -> None:
        self._thread.start()

    def put(self, verdict: Verdict) -> None:
        """Thread-safe; never blocks."""
        self._queue.put(verdict)

    def close(self, timeout_s: float = 5.0) -> None:
        """Publish everything already put, then stop the thread (the socket is closed by its owner)."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (verdict := self._next()) is not _STOP:
            if verdict is None:
                continue
            now = time.time_ns()
            self._sock.send(verdict.to_wire_at(now))
            self._metrics.count_verdict(verdict.keep, verdict.reason.value)
            if verdict.received_ns:
                self._metrics.latency.observe((now - verdict.received_ns) / 1e9)
            self.published += 1

    def _next(self) -> object:
        """The next verdict; None after a quiet second, used to discard subscription notices."""
        try:
            return self._queue.get(timeout=1.0)
        except queue.Empty:
            while self._sock.poll(0, zmq.POLLIN):  # XPUB reports (un)subscriptions; we need none
                self._sock.recv()
            return None
