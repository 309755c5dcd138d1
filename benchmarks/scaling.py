"""Scaling: 1, 2 and 4 daemon processes behind one client on loopback (ZMQ PUSH deals the frames).

    python benchmarks/scaling.py [--quick] [--daemons 1 2 4] [--kinds ...] [--no-tuning]

For each frame kind and number of daemons, steps up the offered rate (a few seconds a step) and
reports the highest rate sustained with nothing lost: at least 99.5 % of the frames judged by a
model, the rest kept by fallback and counted. Kinds: the 350x350 CSPAD region and the full CSPAD
raw stack with the shipped model, and a 64x64 on-detector ROI with the same compact CNN (untrained:
its cost is what matters) to find the message-rate ceiling. Each daemon runs one ingest worker and
one single-threaded engine. First, one daemon on region frames with its workers, engines and
threads varied (the tuning). Prints the tables, saves JSON and a PNG; the capacity model in
docs/SCALING.md is computed from these figures.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from hitveto.serving.launcher import start_daemon

from common import SHAPES, figure, machine, parser, record
from e2e import measure

KINDS = {**SHAPES, "roi64": (64, 64)}
RATES = {
    "region": [250, 500, 750, 1000, 1500, 2000, 3000],
    "full": [60, 120, 180, 240, 320, 400, 500, 600, 800],
    "roi64": [1000, 2000, 4000, 6000, 8000, 12000, 16000, 24000],
}
DAEMON = [
    "model.device=cpu",
    "model.threads=1",
    "ingest.workers=1",
    "batch.max_batch=64",
    "batch.max_delay_ms=5",
    "batch.latency_budget_ms=500",
]
# One daemon, region frames: how to spend this machine's cores inside a daemon.
TUNING = {
    "1 worker, 1 engine x 1 thread": ["ingest.workers=1", "model.threads=1"],
    "2 workers, 1 engine x 1 thread": ["ingest.workers=2", "model.threads=1"],
    "2 workers, 1 engine x 2 threads": ["ingest.workers=2", "model.threads=2"],
    "2 workers, 2 engines x 1 thread": ["ingest.workers=2", "model.threads=1", "model.device=cpu,cpu"],
}
CLEAN = 0.005  # at most this share kept by fallback for a rate to count as sustained


def small_roi_artifact(folder: Path) -> Path:
    """The compact CNN on a 64x64 region that arrives already cut (raw shape = region shape)."""
    import torch

    from hitveto.models import artifact, networks

    net = networks.build("compact", 64, adu_per_photon=35.0).eval()
    info = artifact.ModelInfo(
        version="compact-roi64-untrained",
        architecture="compact",
        detector="cspad",
        raw_shape=(64, 64),
        roi_shape=(64, 64),
        adu_per_photon=35.0,
        threshold=0.5,
    )
    return artifact.save(
        folder / "roi64.pt", torch.jit.freeze(torch.jit.script(net)), info, np.arange(64 * 64).reshape(64, 64)
    )


def sustained(
    kind: str, n: int, seconds: float, artifact: Path | None, log_dir: Path, settings: list[str] = DAEMON
) -> dict:
    daemons = [
        start_daemon(*settings, artifact=artifact, log_path=log_dir / f"scaling-{kind}-{n}-{i}.log")
        for i in range(n)
    ]
    best, steps = None, []
    try:
        both = SimpleNamespace(ingest=[d.ingest for d in daemons], publish=[d.publish for d in daemons])
        measure(both, KINDS[kind], RATES[kind][0], 1.0)  # warm-up, not reported
        for rate in RATES[kind]:
            row = measure(both, KINDS[kind], rate, seconds)
            steps.append(row)
            clean = row["fallback_keeps"] <= CLEAN * row["frames"] and row["achieved_hz"] >= 0.95 * rate
            print(
                f"{kind:6s} daemons {n}: offered {rate:5d}/s -> {row['achieved_hz']:7.1f}/s, fallback "
                f"{row['fallback_keeps']:5d} of {row['frames']:6d}, p99 {row['p99_ms']:7.1f} ms"
                f"{'' if clean else '  (not sustained)'}",
                flush=True,
            )
            if not clean:
                break
            best = row
    finally:
        for d in daemons:
            d.stop()
    return {
        "kind": kind,
        "daemons": n,
        "sustained_hz": best["achieved_hz"] if best else 0.0,
        "p99_ms": best["p99_ms"] if best else None,
        "frame_bytes": int(np.prod(KINDS[kind])) * 2,
        "steps": steps,
    }


def plot(rows: list[dict], path: Path) -> None:
    with figure(path, len(KINDS), dpi=110, figsize=(4.2 * len(KINDS), 3.8)) as (fig, axes):
        for ax, kind in zip(axes, KINDS):
            rs = [r for r in rows if r["kind"] == kind]
            if not rs:
                continue
            n = [r["daemons"] for r in rs]
            ax.plot(n, [r["sustained_hz"] for r in rs], "o-", label="measured")
            ax.plot(n, [rs[0]["sustained_hz"] * k for k in n], "k:", label="linear from 1")
            ax.set(title=f"{kind} {KINDS[kind]}", xlabel="daemons", ylabel="frames/s sustained", xticks=n)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.suptitle(f"daemons on one {os.cpu_count()}-core machine, loopback")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--quick", action="store_true", help="2 s steps instead of 4 s")
    p.add_argument("--daemons", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--kinds", nargs="+", choices=sorted(KINDS), default=list(KINDS))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--no-tuning", action="store_true", help="skip the one-daemon tuning sweep")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = 2.0 if args.quick else 4.0
    tuning = (
        []
        if args.no_tuning
        else [
            {"config": name, **sustained("region", 1, seconds, None, args.out, DAEMON + extra)}
            for name, extra in TUNING.items()
        ]
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        roi64 = small_roi_artifact(Path(tmp))
        for kind in args.kinds:
            for n in args.daemons:
                rows.append(sustained(kind, n, seconds, roi64 if kind == "roi64" else None, args.out))
    one = {r["kind"]: r["sustained_hz"] for r in rows if r["daemons"] == args.daemons[0]}
    print("\nkind    daemons  sustained/s  efficiency  p99 ms")
    for r in rows:
        eff = r["sustained_hz"] / (one[r["kind"]] * r["daemons"] / args.daemons[0]) if one[r["kind"]] else 0
        r["efficiency"] = round(eff, 2)
        print(f"{r['kind']:7s} {r['daemons']:7d}  {r['sustained_hz']:11.1f}  {eff:10.2f}  {r['p99_ms']}")
    print("\none daemon, region frames:")
    for t in tuning:
        print(f"  {t['config']:34s} {t['sustained_hz']:7.1f}/s  p99 {t['p99_ms']} ms")
    meta = machine(seconds_per_step=seconds, daemon=DAEMON)
    result = {"meta": meta, "rows": rows, "tuning": tuning}
    record(args.out / "scaling-cpu.json", result, lambda png: plot(rows, png), say=True)


if __name__ == "__main__":
    main()
