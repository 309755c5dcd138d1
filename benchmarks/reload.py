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
benchmarks/results/reload/<kind>.*; `--compare` overlays another run's JSON (e.g. from an older
commit) on the PNG.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from hitveto.serving.control import request

from common import SHAPES, Pacer, Tally, figure, parser, poisson_images, record, serving

START_S = 4.0


def main() -> int:
    ap = parser(__doc__)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--kind", choices=sorted(SHAPES), default="region")
    ap.add_argument("--seconds", type=float, default=24.0)
    ap.add_argument("--reloads", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--compare", type=Path, default=None, help="another run's JSON to overlay")
    args = ap.parse_args()
    result = stream(args.kind, args.rate, args.seconds, args.reloads)
    for w in result["windows"]:
        print(w)
    print(json.dumps({k: v for k, v in result.items() if k != "windows"}))
    out = args.out or Path(__file__).parent / "results" / "reload" / f"{args.kind}.json"
    runs = [("this run", result)] + (
        [(args.compare.stem, json.loads(args.compare.read_text()))] if args.compare else []
    )
    record(out, result, lambda png: plot(runs, reload_starts(args.seconds, args.reloads), png))
    return 1 if result["sent"] - result["decided"] or result["overload_after_start"] else 0


def stream(kind: str, rate_hz: float, seconds: float, reloads: int) -> dict:
    """Stream `kind` frames at rate_hz for `seconds` while another thread reloads the model `reloads`
    times; one record per second."""
    images = [image * 30 for image in poisson_images(SHAPES[kind], 8)]
    windows, reload_s = [], []

    def close(t: float, _span: float, w: Tally) -> None:
        windows.append({"t_s": round(t, 1), **w.outcomes(), **w.latency_ms(99, ndigits=1, empty=None)})

    with serving("shadow.workers=0", "audit.fraction=0", client={"deadline_ms": 5000}) as (daemon, veto):
        pacer = Pacer(veto, images)
        at = (time.monotonic(), reload_starts(seconds, reloads), reload_s)
        reloader = threading.Thread(target=_reload, args=(daemon.control, *at))
        reloader.start()  # its own thread: the stream must not wait for a reload
        pacer.run(rate_hz, seconds, close)
        pacer.flush(timeout_s=10)
        counts = veto.counts
        reloader.join()
    after_start = sum(w.get("overload", 0) for w in windows if w["t_s"] > START_S)
    return {
        "kind": kind,
        "rate_hz": rate_hz,
        "seconds": seconds,
        "sent": counts.sent,
        "decided": counts.decided,
        "reasons": {r.value: n for r, n in pacer.total.reasons.items()},
        "reload_s": reload_s,
        "overload_after_start": after_start,
        "windows": windows,
    }


def reload_starts(seconds: float, reloads: int) -> list[float]:
    return [START_S + (seconds - START_S) * k / reloads for k in range(reloads)]


def plot(runs: list[tuple[str, dict]], starts: list[float], path: Path) -> None:
    with figure(path, figsize=(8, 3.5)) as (_fig, ax):
        for label, r in runs:
            w = [x for x in r["windows"] if x["p99_ms"] is not None]
            kept = sum(x.get("overload", 0) for x in r["windows"] if x["t_s"] > START_S)
            ax.plot(
                [x["t_s"] for x in w],
                [x["p99_ms"] for x in w],
                "o-",
                label=f"{label}: {kept} kept by overload after {START_S:.0f} s",
            )
        for t in starts:
            ax.axvline(t, color="grey", ls=":", lw=1)
        r = runs[0][1]
        ax.set(
            xlabel="time (s); dotted: a reload starts",
            ylabel="judged p99 per second (ms)",
            title=f"hot reloads under {r['rate_hz']:.0f} {r['kind']} frames/s",
        )
        ax.legend()


def _reload(control: str, t0: float, at: list[float], seconds: list[float]) -> None:
    for t in at:
        time.sleep(max(0.0, t0 + t - time.monotonic()))
        r0 = time.monotonic()
        reply = request(control, "reload", timeout_s=60)
        seconds.append(round(time.monotonic() - r0, 2))
        assert reply["ok"], reply


if __name__ == "__main__":
    sys.exit(main())
