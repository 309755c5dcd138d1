"""The DAQ-side veto client: send frames, receive verdicts, decide keep or drop, fail-open.

Imports only numpy, pyzmq and msgpack (through hitveto_client.protocol), so it embeds in a DAQ writer.
Every frame sent is decided exactly once: by its verdict, or kept when no verdict arrives before the
deadline, when the daemon cannot take it, or when too many frames await verdicts.

    with VetoClient("tcp://daq-veto:5550", "tcp://daq-veto:5551") as veto:
        veto.send(key, image)
        for decision in veto.poll():
            if decision.keep:
                writer.write(decision.image, decision.key)
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import zmq

from hitveto_client.protocol import (
    WELCOME,
    EventKey,
    ProtocolError,
    Reason,
    Verdict,
    decode_verdict,
    encode_frame,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CurveKeys:
    """A client keypair and the daemon's public key (z85 bytes), for CURVE-protected daemons."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_files(cls, server_public_file: str, client_secret_file: str) -> CurveKeys:
        import zmq.auth

        server_public, _ = zmq.auth.load_certificate(server_public_file)
        public, secret = zmq.auth.load_certificate(client_secret_file)
        if secret is None:
            raise ValueError(f"{client_secret_file}: no secret key in it (the client's *.key_secret)")
        return cls(server_public=server_public, public=public, secret=secret)

    def apply(self, sock: zmq.Socket) -> None:
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    key: EventKey
    image: np.ndarray
    keep: bool
    reason: Reason  # MODEL or AUDIT when judged; anything else is a fail-open keep
    verdict: Verdict | None  # None when kept without a verdict
    latency_s: float  # send to decision


@dataclass(slots=True)
class ClientCounts:
    sent: int = 0
    hits: int = 0  # kept because the model called a hit
    misses: int = 0  # dropped because the model called a miss
    audited: int = 0  # called a miss, kept for the audit sample
    kept_by_reason: Counter = field(default_factory=Counter)  # fail-open keeps, by reason
    late_verdicts: int = 0  # verdicts for frames already kept by the deadline
    foreign_verdicts: int = 0  # verdicts for frames this client did not send
    bad_verdicts: int = 0
    classes: Counter = field(default_factory=Counter)  # judged frames called each verdict class

    @property
    def kept_fallback(self) -> int:
        return sum(self.kept_by_reason.values())

    @property
    def decided(self) -> int:
        return self.hits + self.misses + self.audited + self.kept_fallback


@dataclass(slots=True)
class _Waiting:
    key: EventKey
    image: np.ndarray
    sent_s: float


class VetoClient:
    """Client of one veto daemon; a context manager. Not thread-safe: one DAQ thread uses it."""

    def __init__(
        self,
        frames_endpoint: str | Sequence[str],
        verdicts_endpoint: str | Sequence[str],
        *,
        deadline_ms: float = 1000.0,
        max_pending: int = 10_000,
        sndhwm: int = 1000,
        curve: CurveKeys | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        frames_to, verdicts_from = endpoint_list(frames_endpoint), endpoint_list(verdicts_endpoint)
        self._own_context = context is None
        self._context = context or zmq.Context()
        self._push = self._context.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, sndhwm)
        self._push.setsockopt(zmq.LINGER, 0)
        if len(frames_to) > 1:
            # Many daemons: PUSH deals frames round-robin among connected ones only, so a dead
            # daemon's share goes to the others instead of queueing for its return.
            self._push.setsockopt(zmq.IMMEDIATE, 1)
        self._sub = self._context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(self._push)
            curve.apply(self._sub)
        for endpoint in frames_to:
            self._push.connect(endpoint)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        for endpoint in verdicts_from:
            self._sub.connect(endpoint)
        self.endpoints = (frames_to, verdicts_from)
        self._welcomes = 0
        self.deadline_s = deadline_ms / 1000.0
        self.max_pending = max_pending
        self.counts = ClientCounts()
        self._waiting: OrderedDict[tuple, _Waiting] = OrderedDict()  # in send order
        self._expired: OrderedDict[tuple, None] = OrderedDict()  # recently kept by deadline
        self._ready: list[Decision] = []
        self.subscribed = False

    def wait_subscribed(self, timeout_s: float = 10.0) -> None:
        """Block until every daemon's verdict socket has welcomed this client (TimeoutError if not)."""
        end = time.monotonic() + timeout_s
        while not self.subscribed:
            left_ms = int((end - time.monotonic()) * 1000)
            if left_ms <= 0:
                raise TimeoutError(f"no welcome from verdict socket {self.endpoints[1]} within {timeout_s} s")
            self._receive(left_ms)

    def send(self, key: EventKey, image: np.ndarray, meta: dict | None = None) -> None:
        """Send one frame without copying; it is kept (fail-open) if the daemon cannot take it."""
        if len(self._waiting) >= self.max_pending:  # bound memory: oldest waiting frame is kept now
            oldest, waiting = self._waiting.popitem(last=False)
            self._fallback(oldest, waiting, Reason.NO_VERDICT)
        self.counts.sent += 1
        if key.as_tuple() in self._waiting:  # its verdict could not be told from the other's
            self._keep_unsent(key, image, Reason.DUPLICATE)
            return
        now = time.monotonic()
        try:
            self._push.send_multipart(encode_frame(key, image, meta=meta), copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:  # daemon gone or saturated beyond HWM: never stall the DAQ
            self._keep_unsent(key, image, Reason.OVERLOAD)
            return
        self._waiting[key.as_tuple()] = _Waiting(key=key, image=image, sent_s=now)

    def poll(self, timeout_ms: int = 0) -> list[Decision]:
        """Decisions made since the last call: verdicts received and deadlines passed."""
        self._receive(timeout_ms)
        self._expire(time.monotonic())
        ready, self._ready = self._ready, []
        return ready

    def flush(self, timeout_s: float | None = None) -> list[Decision]:
        """Wait until every frame sent is decided (at most the deadline, or timeout_s); all decisions."""
        end = time.monotonic() + (self.deadline_s if timeout_s is None else timeout_s) + 0.01
        out = []
        while self._waiting and time.monotonic() < end:
            out += self.poll(timeout_ms=max(1, int((end - time.monotonic()) * 1000)))
        for key in list(self._waiting):
            self._fallback(key, self._waiting.pop(key), Reason.NO_VERDICT)
        return out + self.poll()

    @property
    def pending(self) -> int:
        return len(self._waiting)

    def _receive(self, timeout_ms: int) -> None:
        if not self._sub.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                raw = self._sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_message(raw)

    def _on_message(self, raw: bytes) -> None:
        if raw == WELCOME:
            self._welcomes += 1
            self.subscribed = self._welcomes >= len(self.endpoints[1])
            return
        try:
            verdict = decode_verdict(raw)
        except ProtocolError:
            self.counts.bad_verdicts += 1
            return
        waiting = self._waiting.pop(verdict.key.as_tuple(), None)
        if waiting is None:
            self._count_unmatched(verdict)
            return
        latency = time.monotonic() - waiting.sent_s
        if verdict.reason is Reason.MODEL:
            self.counts.hits += verdict.keep
            self.counts.misses += not verdict.keep
        elif verdict.reason is Reason.AUDIT:
            self.counts.audited += 1
        else:
            self.counts.kept_by_reason[verdict.reason] += 1
        self.counts.classes.update(verdict.classes)
        self._ready.append(
            Decision(
                key=verdict.key,
                image=waiting.image,
                keep=verdict.keep,
                reason=verdict.reason,
                verdict=verdict,
                latency_s=latency,
            )
        )

    def _count_unmatched(self, verdict: Verdict) -> None:
        if verdict.key.as_tuple() in self._expired:
            self.counts.late_verdicts += 1
        else:
            self.counts.foreign_verdicts += 1

    def _expire(self, now: float) -> None:
        while self._waiting:
            key, waiting = next(iter(self._waiting.items()))
            if now - waiting.sent_s < self.deadline_s:
                return
            del self._waiting[key]
            self._fallback(key, waiting, Reason.NO_VERDICT)

    def _keep_unsent(self, key: EventKey, image: np.ndarray, reason: Reason) -> None:
        self.counts.kept_by_reason[reason] += 1
        self._ready.append(
            Decision(key=key, image=image, keep=True, reason=reason, verdict=None, latency_s=0.0)
        )

    def _fallback(self, key: tuple, waiting: _Waiting, reason: Reason) -> None:
        self._expired[key] = None
        while len(self._expired) > 4 * self.max_pending:  # remember recent expiries, bounded
            self._expired.popitem(last=False)
        self.counts.kept_by_reason[reason] += 1
        self._ready.append(
            Decision(
                key=waiting.key,
                image=waiting.image,
                keep=True,
                reason=reason,
                verdict=None,
                latency_s=time.monotonic() - waiting.sent_s,
            )
        )

    def close(self) -> None:
        """Close the sockets; the context only if this client created it."""
        self._push.close(linger=0)
        self._sub.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> VetoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def endpoint_list(given: str | Sequence[str]) -> list[str]:
    """One endpoint, several, or a comma-separated list (as the command line gives them)."""
    items = given.split(",") if isinstance(given, str) else list(given)
    endpoints = [e.strip() for e in items if e.strip()]
    if not endpoints:
        raise ValueError(f"no endpoint in {given!r}")
    return endpoints
