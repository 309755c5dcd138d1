"""What the benchmark scripts share: their synthetic frames, a daemon with a subscribed client, a
sender paced at a fixed rate that counts the verdicts per window, latency percentiles, timing, the
JSON record (with the machine it ran on) and the PNG figure (Agg backend: no display needed).

The scripts import it as `common` (Python puts a script's own folder first on its path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hitveto.serving.launcher import DaemonProcess, start_daemon
from hitveto_client.protocol import JUDGED, EventKey
from hitveto_client.veto import Decision, VetoClient

SHAPES = {"region": (350, 350), "full": (32, 185, 388)}  # a CSPAD region, a full raw CSPAD stack


def parser(doc: str) -> argparse.ArgumentParser:
    """The script's argument parser; --help shows its docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def poisson_images(shape: tuple[int, ...], n: int, seed: int = 0) -> list[np.ndarray]:
    """n int16 frames of Poisson(3) counts, made before any timing starts (senders cycle them)."""
    rng = np.random.default_rng(seed)
    return [rng.poisson(3.0, shape).astype(np.int16) for _ in range(n)]


def timed(fn: Callable, items: Sequence, repeat: int = 3) -> float:
    """Median over `repeat` passes of the seconds fn(item) takes per item."""
    per = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for it in items:
            fn(it)
        per.append((time.perf_counter() - t0) / len(items))
    return float(np.median(per))


@contextmanager
def subscribed(daemon, **client) -> Iterator[VetoClient]:
    """A VetoClient (VetoClient's keywords) on a daemon's sockets, or on several daemons' (lists),
    once its subscription is confirmed."""
    with VetoClient(daemon.ingest, daemon.publish, **client) as veto:
        veto.wait_subscribed()
        yield veto


@contextmanager
def serving(*settings: str, client: dict, **daemon) -> Iterator[tuple[DaemonProcess, VetoClient]]:
    """A daemon process (start_daemon's settings and keywords) and a subscribed client on it (`client`:
    VetoClient's keywords); the daemon is stopped on the way out."""
    process = start_daemon(*settings, **daemon)
    try:
        with subscribed(process, **client) as veto:
            yield process, veto
    finally:
        process.stop()


class Tally:
    """Verdicts as they come back: how many of each reason, the judged ones' latencies (s), and the
    frames sent meanwhile."""

    def __init__(self) -> None:
        self.reasons: Counter = Counter()
        self.latencies: list[float] = []
        self.sent = 0

    def add(self, decisions: Iterable[Decision]) -> None:
        for d in decisions:
            self.reasons[d.reason] += 1
            if d.reason in JUDGED:
                self.latencies.append(d.latency_s)

    @property
    def judged(self) -> int:
        return len(self.latencies)

    @property
    def kept(self) -> int:
        """Kept by fallback: the verdicts the model did not give."""
        return self.reasons.total() - self.judged

    def outcomes(self) -> dict[str, int]:
        """Counts by outcome, in the order they first came: "judged", or the keep reason's name."""
        out: Counter = Counter()
        for reason, n in self.reasons.items():
            out["judged" if reason in JUDGED else reason.value] += n
        return dict(out)

    def latency_ms(self, *percents: float, ndigits: int = 2, empty: float | None = float("nan")) -> dict:
        """{"p50_ms": ..., "p99_ms": ...} for the percents asked, over the judged latencies, rounded;
        `empty` for each when nothing was judged."""
        if not self.latencies:
            return {f"p{q:g}_ms": empty for q in percents}
        values = np.percentile(self.latencies, percents) * 1e3
        return {f"p{q:g}_ms": round(float(v), ndigits) for q, v in zip(percents, values)}


class Pacer:
    """Sends frames through a client at a fixed rate (pulse ids counting on from run to run) and
    tallies the verdicts: `total` every one polled, `window` those since the last window closed."""

    def __init__(self, veto: VetoClient, images: Sequence[np.ndarray]) -> None:
        self.veto, self.images = veto, images
        self.sent = 0
        self.total, self.window = Tally(), Tally()

    def run(
        self, rate_hz: float | None, seconds: float, on_window: Callable | None = None, window_s: float = 1.0
    ) -> None:
        """Send for `seconds` at rate_hz (None or 0: as fast as the client takes them), waiting on
        verdicts rather than sleeping between sends. Every window_s, on_window(t_s, span_s, window):
        the seconds since this run began, the window's length, its Tally; then a new window begins."""
        t0 = start = time.monotonic()
        first, self.window = self.sent, Tally()
        while (now := time.monotonic()) < t0 + seconds:
            due = t0 + (self.sent - first) / rate_hz if rate_hz else now
            self.count(self.veto.poll(max(0, int((due - now) * 1000))))
            if time.monotonic() >= due:
                self.veto.send(EventKey(run=1, pulse_id=self.sent), self.images[self.sent % len(self.images)])
                self.sent += 1
                self.window.sent += 1
            if on_window is not None and now - start >= window_s:
                on_window(now - t0, now - start, self.window)
                start, self.window = now, Tally()

    def count(self, decisions: list[Decision]) -> None:
        self.total.add(decisions)
        self.window.add(decisions)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for the verdicts still due (VetoClient.flush) and tally them."""
        self.count(self.veto.flush(timeout_s))


def machine(**extra) -> dict:
    """Where and when a measurement ran, then the run's own settings (`extra`)."""
    return {
        "machine": platform.platform(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        **extra,
    }


def record(path: Path, result: dict, plot: Callable[[Path], None] | None = None, say: bool = False) -> None:
    """Save `result` as JSON at `path` (its folder made); with `plot`, plot(png) draws the PNG beside
    it (same name, .png); with `say`, print where they went."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    if plot is not None:
        plot(path.with_suffix(".png"))
    if say:
        print(f"saved {path.with_suffix('')}.json" + (" and .png" if plot is not None else ""))


@contextmanager
def figure(path: Path, ncols: int = 1, *, dpi: int = 100, **subplots) -> Iterator[tuple]:
    """(fig, axes) of a 1 x ncols matplotlib figure (plt.subplots' keywords), laid out and saved as a
    PNG at `path` at the end of the block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, **subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
