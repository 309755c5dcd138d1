"""`hitveto tail`: a live view of a daemon's verdict stream for people at the beamline.

Prints one line per interval: verdicts/s, hit rate, kept-by-fallback share by reason, the
sender-to-publish latency (p50/p99) of the verdicts in that interval, and, for a model with verdict
classes, each class's share of the judged frames (e.g. `ice 12.0%`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from hitveto_client.protocol import JUDGED, WELCOME, ProtocolError, Verdict, decode_verdict
from hitveto_client.veto import endpoint_list


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    seconds: float
    verdicts: int
    hits: int
    judged: int
    by_reason: dict[str, int]
    latency_p50_ms: float
    latency_p99_ms: float
    versions: tuple[str, ...]
    classes: dict[str, int] = field(default_factory=dict)  # judged frames called each class (0 too)

    def class_shares(self) -> dict[str, float]:
        """Each verdict class's share of the judged frames."""
        return {c: n / self.judged for c, n in self.classes.items()} if self.judged else {}

    def line(self) -> str:
        rate = self.verdicts / self.seconds if self.seconds else 0.0
        hit_rate = self.hits / self.judged if self.judged else float("nan")
        fallback = {k: v for k, v in self.by_reason.items() if k not in JUDGED}
        return (
            f"{time.strftime('%H:%M:%S')} {rate:8.1f} verdicts/s  hit rate {100 * hit_rate:5.1f}%  "
            f"kept w/o model {sum(fallback.values()):5d} {fallback or ''}  "
            f"latency p50 {self.latency_p50_ms:6.2f} ms p99 {self.latency_p99_ms:6.2f} ms  "
            f"{','.join(self.versions)}"
            + "".join(f"  {c} {100 * share:.1f}%" for c, share in self.class_shares().items())
        )


def summarise(verdicts: list[Verdict], seconds: float) -> Window:
    reasons = Counter(v.reason.value for v in verdicts)
    judged = [v for v in verdicts if v.reason in JUDGED]
    lat = [(v.published_ns - v.sent_ns) / 1e6 for v in verdicts if v.sent_ns]
    p50, p99 = np.percentile(lat, [50, 99]) if lat else (float("nan"), float("nan"))
    called = Counter(c for v in judged for c in v.classes)
    served = {c for v in judged for c in v.class_scores} | called.keys()  # classes at 0 shown too
    return Window(
        seconds=seconds,
        verdicts=len(verdicts),
        hits=sum(v.hit for v in judged),
        judged=len(judged),
        by_reason=dict(reasons),
        latency_p50_ms=float(p50),
        latency_p99_ms=float(p99),
        versions=tuple(sorted({v.model_version for v in verdicts})),
        classes={c: called[c] for c in sorted(served)},
    )


def tail(
    endpoint: str,
    *,
    interval_s: float = 1.0,
    windows: int | None = None,
    emit: Callable[[Window], None] = lambda w: print(w.line(), flush=True),
    subscribed: threading.Event | None = None,
) -> None:
    """Subscribe to `endpoint` and emit a Window every interval (forever, or `windows` times).

    `subscribed` is set when the daemon's welcome arrives (from then on no verdict is missed).
    """
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    for one in endpoint_list(endpoint):  # one daemon, or several: "tcp://a:5551,tcp://b:5551"
        sub.connect(one)
    try:
        done = 0
        while windows is None or done < windows:
            start, batch = time.monotonic(), []
            while (left := start + interval_s - time.monotonic()) > 0:
                if sub.poll(int(left * 1000) + 1, zmq.POLLIN):
                    raw = sub.recv()
                    if raw == WELCOME and subscribed is not None:
                        subscribed.set()
                    elif raw != WELCOME:
                        try:
                            batch.append(decode_verdict(raw))
                        except ProtocolError:
                            pass
            emit(summarise(batch, time.monotonic() - start))
            done += 1
    finally:
        sub.close()
