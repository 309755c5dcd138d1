"""Dynamic batching: a batch closes at max_batch frames or max_delay after its first frame.

No sockets and no model here; the clock is injected so the policy can be tested without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hitveto_client.protocol import PROTOCOL_VERSION, EventKey, Reason, Verdict


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Pending:
    """A decoded, preprocessed frame waiting for inference."""

    key: EventKey
    region: np.ndarray
    sent_ns: int
    received_ns: int
    arrived_s: float  # batcher clock at offer
    version: int = PROTOCOL_VERSION  # the frame's protocol version: its verdict answers in it

    def kept(self, reason: Reason, *, model_version: str, threshold: float) -> Verdict:
        """The keep verdict for this frame when it is not judged (overload, shutdown, errors)."""
        return Verdict.fail_open(
            self.key,
            reason,
            model_version=model_version,
            threshold=threshold,
            sent_ns=self.sent_ns,
            received_ns=self.received_ns,
            version=self.version,
        )


class Batcher:
    """Bounded FIFO feeding the inference thread; offer() never blocks."""

    def __init__(
        self,
        *,
        max_batch: int,
        max_delay_ms: float,
        max_queue: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.clock = clock
        self._queue: deque[Pending] = deque()
        self._ready = threading.Condition()

    def offer(self, item: Any) -> bool:
        """Queue a frame; False when the queue is full (the caller answers it with a keep)."""
        with self._ready:
            if len(self._queue) >= self.max_queue:
                return False
            self._queue.append(item)
            if len(self._queue) >= self.max_batch or len(self._queue) == 1:
                self._ready.notify()
            return True

    def depth(self) -> int:
        return len(self._queue)

    def due_in(self) -> float | None:
        """Seconds until the current batch is due (0 = now), None when the queue is empty."""
        if not self._queue:
            return None
        if len(self._queue) >= self.max_batch:
            return 0.0
        return max(0.0, self._queue[0].arrived_s + self.max_delay_s - self.clock())

    def next_batch(self, timeout_s: float) -> list[Pending]:
        """Block until a batch is due, at most timeout_s; returns [] on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._ready:
            while (wait := self.due_in()) != 0.0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._ready.wait(left if wait is None else min(wait, left))
            return self._take(self.max_batch)

    def drain(self, n: int) -> list[Pending]:
        """Up to n queued frames at once, whether due or not (used at shutdown)."""
        with self._ready:
            return self._take(n)

    def _take(self, n: int) -> list[Pending]:
        return [self._queue.popleft() for _ in range(min(n, len(self._queue)))]
