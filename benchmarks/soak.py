"""Soak: a daemon at the nominal rate for a long time; RSS, latency and accounting sampled as it runs.

    python benchmarks/soak.py                        # one hour of full CSPAD frames at 120 Hz
    python benchmarks/soak.py --seconds 60 --kind region --rate 500

Every window (default 10 s) prints and records: frames sent and decided, fallback keeps, the
daemon's resident memory (from /proc), and the window's p50/p99 verdict latency. Saves JSON and a
PNG; exits non-zero if any frame was lost (sent but undecided) or kept by fallback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from hitveto.serving.launcher import DaemonProcess
from hitveto_client.veto import VetoClient

from common import SHAPES, Pacer, Tally, figure, parser, poisson_images, record, serving


def soak(seconds: float, rate_hz: float, shape: tuple[int, ...], window_s: float, log_dir: Path) -> dict:
    windows = []
    log = log_dir / "soak-daemon.log"
    with serving("model.device=cpu", log_path=log, client={"deadline_ms": 2000}) as (daemon, veto):
        pacer = Pacer(veto, poisson_images(shape, 8))

        def sample(t: float, _span: float, window: Tally) -> None:
            windows.append(_window(t, veto, daemon, window, pacer.total.kept))

        t0 = time.monotonic()
        sample(0.0, 0.0, Tally())
        pacer.run(rate_hz, seconds, sample, window_s)
        pacer.flush()
        sample(time.monotonic() - t0, 0.0, pacer.window)
        counts = veto.counts
    return {
        "seconds": seconds,
        "rate_hz": rate_hz,
        "shape": list(shape),
        "sent": counts.sent,
        "decided": counts.decided,
        "lost": counts.sent - counts.decided,
        "fallback_keeps": counts.kept_fallback,
        "windows": windows,
    }


def _window(t: float, veto: VetoClient, daemon: DaemonProcess, window: Tally, fallback: int) -> dict:
    w = {
        "t_s": round(t, 1),
        "sent": veto.counts.sent,
        "decided": veto.counts.decided,
        "fallback": fallback,
        "rss_mb": round(daemon.rss_mb(), 1),
        **window.latency_ms(50, 99),
    }
    print(
        f"t {w['t_s']:7.1f} s  sent {w['sent']:8d}  decided {w['decided']:8d}  fallback {fallback:4d}  "
        f"daemon RSS {w['rss_mb']:7.1f} MB  p50 {w['p50_ms']:6.2f} ms  p99 {w['p99_ms']:6.2f} ms",
        flush=True,
    )
    return w


def plot(result: dict, path: Path) -> None:
    w = result["windows"]
    t = [x["t_s"] for x in w]
    with figure(path, 2, figsize=(10, 3.5)) as (fig, (a, b)):
        a.plot(t, [x["rss_mb"] for x in w], "o-")
        a.set(xlabel="time (s)", ylabel="daemon RSS (MB)", title="memory")
        b.plot(t, [x["p99_ms"] for x in w], "o-", label="p99")
        b.plot(t, [x["p50_ms"] for x in w], "x--", label="p50")
        b.set(xlabel="time (s)", ylabel="verdict latency (ms)", title="latency per window")
        b.legend()
        fig.suptitle(
            f"soak: {result['rate_hz']:.0f} frames/s of {tuple(result['shape'])}, "
            f"{result['sent']} sent, {result['lost']} lost, {result['fallback_keeps']} kept by fallback"
        )


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--seconds", type=float, default=3600.0)
    p.add_argument("--rate", type=float, default=120.0)
    p.add_argument("--kind", choices=sorted(SHAPES), default="full")
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = soak(args.seconds, args.rate, SHAPES[args.kind], args.window, args.out)
    record(args.out / "soak.json", result, lambda png: plot(result, png))
    ok = result["lost"] == 0 and result["fallback_keeps"] == 0
    print(
        f"soak {'OK' if ok else 'FAILED'}: {result['sent']} sent, {result['lost']} lost, "
        f"{result['fallback_keeps']} kept by fallback"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
