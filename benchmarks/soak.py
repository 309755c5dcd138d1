"""Soak: a daemon at the nominal rate for a long time; RSS, latency and accounting sampled as it runs.

    python benchmarks/soak.py                        # one hour of full CSPAD frames at 120 Hz
    python benchmarks/soak.py --seconds 60 --kind region --rate 500

Every window (default 10 s) prints and records: frames sent and decided, fallback keeps, the
daemon's resident memory (from /proc), and the window's p50/p99 verdict latency. Saves JSON and a
PNG; exits non-zero if any frame was lost (sent but undecided) or kept by fallback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from hitveto_client.veto import VetoClient
from hitveto.serving.launcher import DaemonProcess, start_daemon
from hitveto_client.protocol import JUDGED, EventKey

SHAPES = {"region": (350, 350), "full": (32, 185, 388)}


def soak(seconds: float, rate_hz: float, shape: tuple[int, ...], window_s: float, log_dir: Path) -> dict:
    rng = np.random.default_rng(0)
    images = [rng.poisson(3.0, shape).astype(np.int16) for _ in range(8)]
    daemon = start_daemon("model.device=cpu", log_path=log_dir / "soak-daemon.log")
    windows, latencies, fallback = [], [], 0
    try:
        with VetoClient(daemon.ingest, daemon.publish, deadline_ms=2000) as veto:
            veto.wait_subscribed()
            t0 = next_window = time.monotonic()
            i = 0
            while (now := time.monotonic()) < t0 + seconds:
                due = t0 + i / rate_hz
                for d in veto.poll(max(0, int((due - now) * 1000))):
                    if d.reason in JUDGED:
                        latencies.append(d.latency_s)
                    else:
                        fallback += 1
                if time.monotonic() < due:
                    continue
                veto.send(EventKey(run=1, pulse_id=i), images[i % len(images)])
                i += 1
                if now >= next_window:
                    windows.append(_window(now - t0, veto, daemon, latencies, fallback))
                    latencies, next_window = [], next_window + window_s
            veto.flush()
            windows.append(_window(time.monotonic() - t0, veto, daemon, latencies, fallback))
            counts = veto.counts
    finally:
        daemon.stop()
    return {"seconds": seconds, "rate_hz": rate_hz, "shape": list(shape), "sent": counts.sent,
            "decided": counts.decided, "lost": counts.sent - counts.decided,
            "fallback_keeps": counts.kept_fallback, "windows": windows}


def _window(t: float, veto: VetoClient, daemon: DaemonProcess, latencies: list[float], fallback: int) -> dict:
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1e3) if latencies else (float("nan"),) * 2
    w = {"t_s": round(t, 1), "sent": veto.counts.sent, "decided": veto.counts.decided,
         "fallback": fallback, "rss_mb": round(daemon.rss_mb(), 1), "p50_ms": round(float(p50), 2),
         "p99_ms": round(float(p99), 2)}
    print(f"t {w['t_s']:7.1f} s  sent {w['sent']:8d}  decided {w['decided']:8d}  fallback {fallback:4d}  "
          f"daemon RSS {w['rss_mb']:7.1f} MB  p50 {w['p50_ms']:6.2f} ms  p99 {w['p99_ms']:6.2f} ms", flush=True)
    return w


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    w = result["windows"]
    t = [x["t_s"] for x in w]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(t, [x["rss_mb"] for x in w], "o-")
    a.set(xlabel="time (s)", ylabel="daemon RSS (MB)", title="memory")
    b.plot(t, [x["p99_ms"] for x in w], "o-", label="p99")
    b.plot(t, [x["p50_ms"] for x in w], "x--", label="p50")
    b.set(xlabel="time (s)", ylabel="verdict latency (ms)", title="latency per window")
    b.legend()
    fig.suptitle(f"soak: {result['rate_hz']:.0f} frames/s of {tuple(result['shape'])}, "
                 f"{result['sent']} sent, {result['lost']} lost, {result['fallback_keeps']} kept by fallback")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3600.0)
    p.add_argument("--rate", type=float, default=120.0)
    p.add_argument("--kind", choices=sorted(SHAPES), default="full")
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = soak(args.seconds, args.rate, SHAPES[args.kind], args.window, args.out)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / "soak.png")
    ok = result["lost"] == 0 and result["fallback_keeps"] == 0
    print(f"soak {'OK' if ok else 'FAILED'}: {result['sent']} sent, {result['lost']} lost, "
          f"{result['fallback_keeps']} kept by fallback")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
