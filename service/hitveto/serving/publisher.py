"""The verdict PUB socket, owned by one thread; every verdict passes here and is counted here.

Producers (ingest workers, the inference thread) hand verdicts over a thread-safe queue, because a
ZMQ socket must not be shared between threads. PUB never blocks: a subscriber that stops reading
loses verdicts beyond its HWM (its writer then keeps those frames by fallback), the daemon does not.

Subscribers are admitted here (XPUB in manual mode): at most `max_subscribers`, so that the memory
subscribers can pin is bounded (each at most `publish.sndhwm` verdicts). One over the limit still
gets the welcome but no verdicts (its writer keeps every frame by deadline); it is counted and
logged, and admitted when it reconnects after another has left. Subscribers are told apart by their
connection's file descriptor; the socket's monitor reports when one leaves (and, with CURVE, the
refused handshakes on this socket).
"""

from __future__ import annotations

import logging
import queue
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from hitveto.serving.metrics import Metrics
from hitveto.serving.security import REFUSED
from hitveto.serving.sockets import readable
from hitveto.serving.supervise import Supervised
from hitveto_client.protocol import Verdict

log = logging.getLogger(__name__)


class _Stop:
    """What close() queues behind the last verdict."""


_STOP = _Stop()
IDLE_S = 0.05


class Publisher:
    def __init__(self, sock: zmq.Socket[Any], metrics: Metrics, max_subscribers: int) -> None:
        self._sock = sock  # an XPUB with XPUB_MANUAL and XPUB_VERBOSER set
        self._metrics = metrics
        self._max_subscribers = max_subscribers
        self._events = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | REFUSED)
        self._admitted: set[int] = set()  # the connections (fds) that get verdicts
        self._queue: queue.SimpleQueue[Verdict | _Stop] = queue.SimpleQueue()
        self.thread = Supervised("hitveto-publish", self._run, on_crash=metrics.thread_crashed)
        self.published = 0

    def start(self) -> None:
        self.thread.start()

    def put(self, verdict: Verdict) -> None:
        """Thread-safe; never blocks."""
        self._queue.put(verdict)

    def close(self, timeout_s: float = 5.0) -> None:
        """Publish everything already put, then stop the thread (the socket is closed by its owner)."""
        self._queue.put(_STOP)
        self.thread.join(timeout_s)

    def _run(self) -> None:
        # Restarted as it is after a crash (Supervised): the monitor is closed on a clean stop only.
        while not isinstance(verdict := self._next(), _Stop):
            if verdict is None:
                continue
            try:
                wire = verdict.to_wire_at(now := time.time_ns())
            except Exception:  # one verdict that cannot be sent must not stop the others
                log.exception(
                    "verdict for %s not publishable; its writer keeps it by deadline",
                    getattr(verdict, "key", "?"),
                )
                self._metrics.internal_errors.labels("publish").inc()
                continue
            self._admit_subscribers()  # before the send: a new subscriber gets this one
            self._sock.send(wire)
            self._metrics.count_verdict(verdict.keep, verdict.reason.value, verdict.classes)
            if verdict.received_ns:
                self._metrics.latency.observe((now - verdict.received_ns) / 1e9)
            self.published += 1
        self._events.close(linger=0)

    def _next(self) -> Verdict | _Stop | None:
        """The next verdict; None after a quiet 50 ms, in which subscribers are admitted."""
        try:
            return self._queue.get(timeout=IDLE_S)
        except queue.Empty:
            self._admit_subscribers()
            return None

    def _admit_subscribers(self) -> None:
        """Departures first (a new connection may reuse a departed one's fd), then the XPUB's
        subscribe notices (first byte 1): a subscription is applied only while under the limit."""
        while readable(self._events):  # no Poller object per verdict
            event = recv_monitor_message(self._events)
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self._admitted.discard(event["value"])
            elif event["event"] & REFUSED:
                self._metrics.auth_failures.inc()
        while readable(self._sock):
            notice = self._sock.recv(copy=False)
            if notice.bytes[:1] == b"\x01":
                self._subscribe(notice)
        self._metrics.subscribers.set(len(self._admitted))

    def _subscribe(self, notice: zmq.Frame) -> None:
        try:
            fd = notice.get(zmq.SRCFD)
        except zmq.ZMQError:  # inproc: no connection to count, and only this process reaches it
            fd = None
        if fd is not None and fd not in self._admitted and len(self._admitted) >= self._max_subscribers:
            self._metrics.subscribers_refused.inc()
            log.warning(
                "subscriber refused: already %d (publish.max_subscribers); it gets no "
                "verdicts and keeps its frames by deadline",
                len(self._admitted),
            )
            return
        self._sock.setsockopt(zmq.SUBSCRIBE, notice.bytes[1:])  # applies to the notice's sender
        if fd is not None:
            self._admitted.add(fd)
