"""The DAQ writer loop: stream frames through the veto, write what it keeps, account for every frame.

Frames come from any iterable (a replay of a run, a live DAQ); decisions come from the VetoClient,
so a frame without a verdict in time is written anyway (fail-open) with its reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from hitveto_client.protocol import JUDGED, EventKey
from hitveto_client.veto import Decision, VetoClient


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    key: EventKey
    image: np.ndarray
    truth: dict[str, int] = field(default_factory=dict)
    photon_energy_ev: float | None = None  # the pulse's own, where the source has it
    distance_m: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    sent: int
    hits_kept: int
    misses_dropped: int
    kept_by_reason: dict[str, int]  # fail-open keeps
    audited: int
    written: int
    elapsed_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    files: list[str]
    rejected: dict[str, int] = field(default_factory=dict)  # malformed messages, by reason
    classes: dict[str, int] = field(default_factory=dict)  # judged frames called each verdict class
    not_written: int = 0  # kept frames the writer could not store (lost hits)
    write_error: str = ""  # why the first of them was not stored

    @property
    def ok(self) -> bool:
        """Every frame accounted for and every kept frame on disk."""
        return self.accounted and self.not_written == 0

    @property
    def kept_fallback(self) -> int:
        return sum(self.kept_by_reason.values())

    @property
    def accounted(self) -> bool:
        return self.sent == self.hits_kept + self.misses_dropped + self.audited + self.kept_fallback

    def lines(self) -> list[str]:
        rate = self.sent / self.elapsed_s if self.elapsed_s else 0.0
        fallback = ", ".join(f"{k} {v}" for k, v in sorted(self.kept_by_reason.items())) or "none"
        return [
            f"frames sent        {self.sent}",
            f"verdicts (model)   {self.hits_kept + self.misses_dropped + self.audited}: "
            f"{self.hits_kept} hits kept, {self.misses_dropped} misses dropped, "
            f"{self.audited} misses kept for audit",
            f"kept by fallback   {self.kept_fallback} ({fallback})",
            *(
                [f"verdict classes    {', '.join(f'{k} {v}' for k, v in sorted(self.classes.items()))}"]
                if self.classes
                else []
            ),
            f"frames written     {self.written} "
            f"({100 * (1 - self.written / max(1, self.sent)):.1f}% data reduction)",
            *(
                [f"NOT WRITTEN        {self.not_written} kept frames ({self.write_error})"]
                if self.not_written
                else []
            ),
            f"accounting         sent {self.sent} = {self.hits_kept} + {self.misses_dropped} + "
            f"{self.audited} + {self.kept_fallback}: {'OK' if self.accounted else 'MISMATCH'}",
            *(
                [
                    f"rejected           {sum(self.rejected.values())} malformed messages "
                    f"({', '.join(f'{k} {v}' for k, v in sorted(self.rejected.items()))})"
                ]
                if self.rejected
                else []
            ),
            f"throughput         {rate:.1f} frames/s over {self.elapsed_s:.2f} s",
            f"verdict latency    p50 {self.latency_p50_ms:.2f} ms, p99 {self.latency_p99_ms:.2f} ms",
            f"output             {', '.join(self.files) or '(nothing kept)'}",
        ]


def stream(
    frames: Iterable[Frame | None],
    veto: VetoClient,
    writer,
    *,
    rate_hz: float = 0.0,
    on_decision: Callable[[Decision], None] | None = None,
) -> Summary:
    """Send each frame, write each kept one to `writer` (a CxiWriter or None); returns the summary.

    rate_hz > 0 paces the stream like a detector; 0 sends as fast as the daemon takes them. A None
    from `frames` means no frame yet: decisions due meanwhile (verdicts, deadlines) are written.
    `on_decision` sees every decision, kept or not (e.g. to log every verdict).
    """
    truths: dict[tuple, Frame] = {}  # frames awaiting their decision (for what is stored beside them)
    latencies: list[float] = []
    written = i = 0
    t0 = time.monotonic()
    for frame in frames:
        if frame is None:
            written += _settle(veto.poll(), writer, truths, latencies, on_decision)
            continue
        due = t0 + i / rate_hz if rate_hz > 0 else 0.0
        i += 1
        while (wait := due - time.monotonic()) > 0:  # pace on verdicts, not on a sleep
            written += _settle(veto.poll(max(1, int(wait * 1000))), writer, truths, latencies, on_decision)
        truths[frame.key.as_tuple()] = frame
        veto.send(frame.key, frame.image)
        written += _settle(veto.poll(), writer, truths, latencies, on_decision)
    written += _settle(veto.flush(), writer, truths, latencies, on_decision)
    elapsed = time.monotonic() - t0
    c = veto.counts
    p50, p99, pmax = np.percentile(latencies, [50, 99, 100]) * 1e3 if latencies else (float("nan"),) * 3
    return Summary(
        sent=c.sent,
        hits_kept=c.hits,
        misses_dropped=c.misses,
        audited=c.audited,
        kept_by_reason={str(k): v for k, v in c.kept_by_reason.items()},
        classes=dict(c.classes),
        written=written,
        elapsed_s=elapsed,
        latency_p50_ms=float(p50),
        latency_p99_ms=float(p99),
        latency_max_ms=float(pmax),
        files=[str(p) for p in getattr(writer, "files", [])],
        not_written=getattr(writer, "not_written", 0),
        write_error=getattr(writer, "error", ""),
    )


def _settle(
    decisions: list[Decision],
    writer,
    truths: dict,
    latencies: list[float],
    on_decision: Callable[[Decision], None] | None,
) -> int:
    written = 0
    for d in decisions:
        if on_decision is not None:
            on_decision(d)
        frame = truths.pop(d.key.as_tuple(), None)
        if d.reason in JUDGED:
            latencies.append(d.latency_s)
        if d.keep and writer is not None:
            v = d.verdict
            written += writer.write(
                d.image,
                run=d.key.run,
                pulse_id=d.key.pulse_id,
                timestamp=d.key.timestamp,
                score=v.score if v else float("nan"),
                keep_reason=d.reason.value,
                model_version=v.model_version if v else "",
                threshold=v.threshold if v else float("nan"),
                truth=frame.truth if frame else {},
                photon_energy_ev=frame.photon_energy_ev if frame else None,
                distance_m=frame.distance_m if frame else None,
                class_scores=v.class_scores if v else {},
            )
    return written
