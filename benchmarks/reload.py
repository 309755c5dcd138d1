"""Hot reloads under load: does swapping the model cost a frame or a judgement?

    python benchmarks/reload.py                       # 500 Hz region frames, 24 s, 4 reloads
    python benchmarks/reload.py --rate 120 --kind full --compare OTHER.json   # overlay another run

A daemon process serves the shipped model; a client streams frames at a steady rate while another
thread reloads the model through the control socket every few seconds (the configured file, as
SIGHUP does). Each second records the judged and fallback counts and the judged frames' p99
latency. What should hold: every frame decided, none kept by `overload` because of a reload (the
new model is warmed beside the old one and swapped in between two batches). The first START_S
seconds (the stream's own start-up) are reported apart.

Prints a table, saves JSON and a PNG (judged p99 per second, reloads marked) under
benchmarks/results/reload-<kind>.*; `--compare` overlays another run's JSON (e.g. from an older
commit) on the PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hitveto_client.veto import VetoClient  # noqa: E402
from hitveto.serving.control import request  # noqa: E402
from hitveto.serving.launcher import start_daemon  # noqa: E402
from hitveto_client.protocol import JUDGED, EventKey  # noqa: E402

SHAPES = {"region": (350, 350), "full": (32, 185, 388)}
START_S = 4.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--kind", choices=sorted(SHAPES), default="region")
    ap.add_argument("--seconds", type=float, default=24.0)
    ap.add_argument("--reloads", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--compare", type=Path, default=None, help="another run's JSON to overlay")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    images = [rng.poisson(3.0, SHAPES[args.kind]).astype(np.int16) * 30 for _ in range(8)]
    reload_at = reload_starts(args.seconds, args.reloads)
    daemon = start_daemon("shadow.workers=0", "audit.fraction=0")
    windows, reasons, reload_s = [], Counter(), []
    try:
        with VetoClient(daemon.ingest, daemon.publish, deadline_ms=5000) as veto:
            veto.wait_subscribed()
            t0 = window_start = time.monotonic()
            sent, latencies, window = 0, [], Counter()
            reloader = threading.Thread(target=_reload, args=(daemon.control, t0, reload_at, reload_s))
            reloader.start()               # its own thread: the stream must not wait for a reload
            while (now := time.monotonic()) < t0 + args.seconds:
                due = t0 + sent / args.rate
                for d in veto.poll(max(0, int((due - time.monotonic()) * 1000))):
                    _count(d, reasons, window, latencies)
                if time.monotonic() >= due:
                    veto.send(EventKey(run=1, pulse_id=sent), images[sent % len(images)])
                    sent += 1
                if now - window_start >= 1.0:
                    windows.append({"t_s": round(now - t0, 1), **window,
                                    "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 1)
                                    if latencies else None})
                    window_start, latencies, window = now, [], Counter()
            for d in veto.flush(timeout_s=10):
                _count(d, reasons, window, latencies)
            counts = veto.counts
            reloader.join()
    finally:
        daemon.stop()
    after_start = sum(w.get("overload", 0) for w in windows if w["t_s"] > START_S)
    result = {"kind": args.kind, "rate_hz": args.rate, "seconds": args.seconds, "sent": counts.sent,
              "decided": counts.decided, "reasons": dict(reasons), "reload_s": reload_s,
              "overload_after_start": after_start, "windows": windows}
    for w in windows:
        print(w)
    print(json.dumps({k: v for k, v in result.items() if k != "windows"}))
    out = args.out or Path(__file__).parent / "results" / f"reload-{args.kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    runs = [("this run", result)] + ([(args.compare.stem, json.loads(args.compare.read_text()))]
                                     if args.compare else [])
    plot(runs, reload_starts(args.seconds, args.reloads), out.with_suffix(".png"))
    lost = counts.sent - counts.decided
    return 1 if lost or after_start else 0


def reload_starts(seconds: float, reloads: int) -> list[float]:
    return [START_S + (seconds - START_S) * k / reloads for k in range(reloads)]


def plot(runs: list[tuple[str, dict]], starts: list[float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for label, r in runs:
        w = [x for x in r["windows"] if x["p99_ms"] is not None]
        kept = sum(x.get("overload", 0) for x in r["windows"] if x["t_s"] > START_S)
        ax.plot([x["t_s"] for x in w], [x["p99_ms"] for x in w], "o-",
                label=f"{label}: {kept} kept by overload after {START_S:.0f} s")
    for t in starts:
        ax.axvline(t, color="grey", ls=":", lw=1)
    r = runs[0][1]
    ax.set(xlabel="time (s); dotted: a reload starts", ylabel="judged p99 per second (ms)",
           title=f"hot reloads under {r['rate_hz']:.0f} {r['kind']} frames/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _reload(control: str, t0: float, at: list[float], seconds: list[float]) -> None:
    for t in at:
        time.sleep(max(0.0, t0 + t - time.monotonic()))
        r0 = time.monotonic()
        reply = request(control, "reload", timeout_s=60)
        seconds.append(round(time.monotonic() - r0, 2))
        assert reply["ok"], reply


def _count(d, reasons: Counter, window: Counter, latencies: list[float]) -> None:
    reasons[d.reason.value] += 1
    window["judged" if d.reason in JUDGED else d.reason.value] += 1
    if d.reason in JUDGED:
        latencies.append(d.latency_s)


if __name__ == "__main__":
    sys.exit(main())
