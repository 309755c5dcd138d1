"""End-to-end throughput and latency: client -> daemon process -> verdict -> subscriber, on loopback.

For each frame kind (350x350 region, full calibrated CSPAD stack, full raw CSPAD stack: ADC counts
on ~1,200 ADU pedestals, calibrated by the daemon with `calib.constants`) and batching setting,
sweeps the offered rate and reports the frames/s sustained with nothing lost (every frame judged by
the model, none kept by fallback) and the p50/p99/max verdict latency seen by the client. Saves
JSON and a PNG.

    python benchmarks/e2e.py [--quick] [--artifact model.pt] [--kinds region full raw] [--device cpu|cuda]
                             [--out benchmarks/results]

Without --artifact, region frames go to the shipped region model and full and raw frames to the
shipped full-detector model.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from hitveto.io.calibration import Constants
from hitveto.models import artifact
from hitveto.serving.launcher import start_daemon
from hitveto_client.hitwriter import Frame, stream
from hitveto_client.protocol import EventKey

from common import SHAPES, figure, machine, parser, poisson_images, record, subscribed

KINDS = {**SHAPES, "raw": SHAPES["full"]}  # frame kind -> shape
PEDESTAL_ADU = 1200  # raw frames: the Poisson counts on this pedestal


def frames(kind: str, n: int, pool: int = 16):
    """n frames cycling through a pool of Poisson images (generation stays out of the timing)."""
    images = poisson_images(KINDS[kind], pool)
    if kind == "raw":
        images = [image + np.int16(PEDESTAL_ADU) for image in images]
    return [Frame(key=EventKey(run=1, pulse_id=i), image=images[i % pool]) for i in range(n)]


def raw_constants(path: Path) -> Path:
    """Constants for the raw frames: their pedestal, 4 ADU of noise, no bad pixel."""
    shape = SHAPES["full"]
    Constants(
        detector="cspad",
        pedestal=np.full(shape, PEDESTAL_ADU, np.float32),
        noise=np.full(shape, 4.0, np.float32),
        status=np.zeros(shape, np.uint16),
        source="benchmarks/e2e.py",
    ).save(path)
    return path


def measure(daemon, kind: str, rate_hz: float, seconds: float) -> dict:
    n = int(rate_hz * seconds) if rate_hz else int(2000 * seconds if kind == "region" else 150 * seconds)
    with subscribed(daemon, deadline_ms=2000, max_pending=100_000) as veto:
        summary = stream(frames(kind, n), veto, None, rate_hz=rate_hz)
    lost = summary.kept_fallback
    return {
        "offered_hz": rate_hz or None,
        "frames": summary.sent,
        "achieved_hz": round(summary.sent / summary.elapsed_s, 1),
        "fallback_keeps": lost,
        "kept_by_reason": summary.kept_by_reason,
        "p50_ms": round(summary.latency_p50_ms, 3),
        "p99_ms": round(summary.latency_p99_ms, 3),
        "max_ms": round(summary.latency_max_ms, 3),
    }


def sweep(
    kind: str, settings: dict[str, str], rates: list[float], seconds: float, model, device, log_dir: Path
) -> list[dict]:
    sets = [f"{k}={v}" for k, v in settings.items()] + [f"model.device={device}"]
    daemon = start_daemon(*sets, artifact=model, log_path=log_dir / f"daemon-{kind}.log")
    rows = []
    try:
        measure(daemon, kind, rates[0] or 100, 1.0)  # warm-up, not reported: steady state only
        for rate in rates:
            row = {"kind": kind, **settings, **measure(daemon, kind, rate, seconds)}
            rows.append(row)
            print(
                f"{kind:6s} {settings} offered {rate or 'max':>6} Hz -> {row['achieved_hz']:8.1f} Hz, "
                f"fallback {row['fallback_keeps']:5d}, p50 {row['p50_ms']:7.2f} ms, "
                f"p99 {row['p99_ms']:7.2f} ms, max {row['max_ms']:7.2f} ms",
                flush=True,
            )
    finally:
        daemon.stop()
    return rows


def plot(rows: list[dict], path: Path) -> None:
    with figure(path, 3, dpi=120, figsize=(16, 4.2)) as (_fig, axes):
        for ax, kind in zip(axes, KINDS):
            groups = {}
            for r in rows:
                if r["kind"] == kind:
                    groups.setdefault(
                        f"batch {r['batch.max_batch']}, wait {r['batch.max_delay_ms']} ms", []
                    ).append(r)
            for label, rs in groups.items():
                ax.plot([r["achieved_hz"] for r in rs], [r["p99_ms"] for r in rs], "o-", label=f"{label} p99")
                ax.plot(
                    [r["achieved_hz"] for r in rs],
                    [r["p50_ms"] for r in rs],
                    "x--",
                    alpha=0.6,
                    label=f"{label} p50",
                )
            ax.set(
                title=f"{kind} frames {KINDS[kind]}",
                xlabel="frames/s through the daemon",
                ylabel="verdict latency (ms)",
                yscale="log",
            )
            ax.grid(alpha=0.3)
            if groups:  # a kind not sent (--kinds) leaves its panel empty
                ax.legend(fontsize=7)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="short runs, fewer points")
    p.add_argument("--artifact", type=Path)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--kinds",
        nargs="+",
        choices=list(KINDS),
        default=list(KINDS),
        help="frame kinds to send: a full-detector model (--layout raw) judges full frames only",
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = 2.0 if args.quick else 5.0
    plan = [
        ("region", {"batch.max_batch": 1, "batch.max_delay_ms": 0.0}, [500, 1000, 0]),
        ("region", {"batch.max_batch": 32, "batch.max_delay_ms": 2.0}, [500, 1000, 2000, 0]),
        ("region", {"batch.max_batch": 64, "batch.max_delay_ms": 5.0}, [1000, 2000, 0]),
        ("full", {"batch.max_batch": 1, "batch.max_delay_ms": 0.0}, [120, 240]),
        ("full", {"batch.max_batch": 8, "batch.max_delay_ms": 2.0}, [60, 120, 240, 0]),
        ("full", {"batch.max_batch": 32, "batch.max_delay_ms": 5.0}, [120, 240, 360, 0]),
        ("raw", {"batch.max_batch": 1, "batch.max_delay_ms": 0.0, "calib.constants": ""}, [120, 240, 0]),
        ("raw", {"batch.max_batch": 32, "batch.max_delay_ms": 5.0, "calib.constants": ""}, [120, 240, 0]),
    ]
    rows = []
    for kind, settings, rates in (step for step in plan if step[0] in args.kinds):
        if "calib.constants" in settings:
            settings = {**settings, "calib.constants": str(raw_constants(args.out / "e2e-raw-constants.npz"))}
        shipped = artifact.REGION_ARTIFACT if kind == "region" else artifact.DEFAULT_ARTIFACT
        rows += sweep(kind, settings, rates, seconds, args.artifact or shipped, args.device, args.out)
    meta = machine(processor=platform.processor(), device=args.device, seconds_per_point=seconds)
    record(
        args.out / f"e2e-{args.device}.json",
        {"meta": meta, "rows": rows},
        lambda png: plot(rows, png),
        say=True,
    )


if __name__ == "__main__":
    main()
