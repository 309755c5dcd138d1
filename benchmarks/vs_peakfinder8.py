"""Hit finding speed and agreement: psana's peakfinder8 vs the model, same frames, same cores.

Frames: a simulated run (region layout by default, or full raw CSPAD stacks with --layout raw).
Speed: frames/s of peakfinder8 (one process, one core) and of the model at batch 1 and batched, with
torch on 1 thread and on all cores. Agreement: sensitivity/specificity of each against simulator
truth, two ways: a frame with a crystal is a hit, and a frame with at least 10 strong spots on its
pixels (the indexability floor; the shipped model's definition, docs/MODEL.md) is a hit. Prints a
table, saves JSON and a PNG.

    python benchmarks/vs_peakfinder8.py [--artifact MODEL] [--frames 400] [--layout raw]

The model defaults to the shipped one for the layout: the region model for `roi`, the full-detector
model for `raw`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from hitveto.io import geometry, sources
from hitveto.io.peaks import PeakFinder, PeakFinderParams
from hitveto.models import artifact, preprocess
from hitveto.models.engine import Engine
from hitveto.offline import labels
from hitveto.sim.run import simulate_runs

from common import figure, machine, parser, record, timed


def model_speed(engine: Engine, regions: list[np.ndarray], batch: int) -> float:
    batch = min(batch, len(regions))
    chunks = [regions[i : i + batch] for i in range(0, len(regions) - batch + 1, batch)]
    return timed(engine.infer, chunks) / batch


def speeds(
    art, frames: list[np.ndarray], layout: str, device: str
) -> tuple[dict, np.ndarray, list[np.ndarray], Engine]:
    """frames/s of peakfinder8 and of the model (region cut included); with peakfinder8's peak
    counts per frame, the frames' regions and the last engine."""
    pixels = geometry.pixel_map(layout, 0.1)
    pf8 = PeakFinder(pixels.mask, geometry.radius_px(pixels), PeakFinderParams())
    pf8_s = timed(pf8.count, frames[: min(len(frames), 100 if layout == "raw" else 400)], repeat=1)
    counts = np.array([pf8.count(f) for f in frames])
    rows = {"peakfinder8 (1 core)": {"frames_per_s": 1 / pf8_s, "ms_per_frame": pf8_s * 1e3}}
    regions = [np.ascontiguousarray(preprocess.region(f, art.spec)) for f in frames]
    region_s = timed(lambda f: preprocess.region(f, art.spec), frames, repeat=1)
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        engine = Engine(art, device=device, max_batch=64)
        engine.warm_up()
        for batch in (1, 64):
            s = model_speed(engine, regions, batch) + region_s
            rows[f"model batch {batch}, {threads} thread(s)"] = {
                "frames_per_s": 1 / s,
                "ms_per_frame": s * 1e3,
            }
    return rows, counts, regions, engine


def agreement(events: list, counts: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Sensitivity and specificity of the model and of peakfinder8 against the simulator's truth,
    both ways (a crystal in the frame; at least MIN_PEAKS_FOR_HIT strong spots on its pixels)."""
    truths = {
        "crystal": labels.truth_labels([ev.truth["n_crystals"] for ev in events]),
        "indexable": labels.visible_labels(
            [ev.truth["n_strong_spots"] for ev in events], labels.MIN_PEAKS_FOR_HIT
        ),
    }
    decisions = {
        "model": scores >= threshold,
        f"peakfinder8 >= {labels.MIN_PEAKS_FOR_HIT} peaks": counts >= labels.MIN_PEAKS_FOR_HIT,
        "peakfinder8 >= 3 peaks": counts >= 3,
    }
    return {
        f"{name} vs {kind} truth": labels.confusion(truth, kept)
        for kind, truth in truths.items()
        for name, kept in decisions.items()
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--artifact", type=Path)
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--layout", choices=["roi", "raw"], default="roi")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", type=Path, default=Path("/tmp/hitveto-bench"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    shipped = artifact.DEFAULT_ARTIFACT if args.layout == "raw" else artifact.REGION_ARTIFACT
    art = artifact.read(args.artifact or shipped)
    (run,) = simulate_runs(
        args.work,
        runs=[90 if args.layout == "roi" else 91],
        n_frames=args.frames,
        layout=args.layout,
        fmt="xtc2",
        seed=99,
    )
    events = list(sources.events(run))
    frames = [ev.image for ev in events]
    rows, counts, regions, engine = speeds(art, frames, args.layout, args.device)
    agree = agreement(events, counts, engine.score(regions), art.info.threshold)
    base = rows["peakfinder8 (1 core)"]["frames_per_s"]
    print(
        f"{args.layout} frames {frames[0].shape}, {len(frames)} frames, "
        f"model {art.info.version}, {args.device}"
    )
    for name, r in rows.items():
        print(
            f"  {name:34s} {r['frames_per_s']:10.1f} frames/s  {r['ms_per_frame']:8.3f} ms  "
            f"x{r['frames_per_s'] / base:7.1f} vs peakfinder8"
        )
    for name, c in agree.items():
        print(f"  {name:44s} sensitivity {c['sensitivity']:.4f}  specificity {c['specificity']:.4f}")
    meta = machine(frames=len(frames), shape=list(frames[0].shape), model=art.info.version)
    title = f"{args.layout} frames {tuple(frames[0].shape)}"
    record(
        args.out / f"vs-peakfinder8-{args.layout}-{args.device}.json",
        {"meta": meta, "speed": rows, "agreement": agree},
        lambda png: plot(rows, png, title),
        say=True,
    )


def plot(rows: dict, path: Path, title: str) -> None:
    with figure(path, dpi=110, figsize=(8, 3.6)) as (_fig, ax):
        names = list(rows)
        ax.barh(
            names, [rows[n]["frames_per_s"] for n in names], color=["grey"] + ["tab:blue"] * (len(names) - 1)
        )
        ax.set(xscale="log", xlabel="frames/s (log)", title=f"hit finding speed, {title}")
        for i, n in enumerate(names):
            ax.text(rows[n]["frames_per_s"], i, f" {rows[n]['frames_per_s']:.0f}/s", va="center", fontsize=8)


if __name__ == "__main__":
    main()
