"""Where a hit's strong spots fall: the whole detector against the 350x350 centre region.

Each preset's frames are simulated twice with the same seed, once on the whole CSPAD (raw layout)
and once on the region (roi layout): the same crystals, the same orientations, so the two strong-spot
counts of a frame differ only by where the spots land. Prints per preset the share of the hits'
strong spots in the region and how many indexable hits (>= 10 strong spots on the detector) show
fewer than 10 in the region; saves JSON and a PNG (region count against detector count per hit).

    python benchmarks/spot_share.py [--frames 200] [--out benchmarks/results/full-detector]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from hitveto.sim.params import PRESETS
from hitveto.sim.run import frames

from common import figure, machine, parser, record

MIN_SPOTS = 10


def counts(preset: str, n: int, seed: int) -> np.ndarray:
    """(hits, 2): strong spots on the detector and in the region, for the frames with a crystal."""
    params = dataclasses.replace(PRESETS[preset], seed=seed, n_frames=n)
    pairs = [
        (raw.truth["n_strong_spots"], roi.truth["n_strong_spots"])
        for raw, roi in zip(frames(params, "raw"), frames(params, "roi"))
        if raw.truth["n_crystals"] > 0
    ]
    return np.array(pairs).reshape(-1, 2)


def summary(c: np.ndarray) -> dict:
    indexable = c[:, 0] >= MIN_SPOTS
    return {
        "hits": int(len(c)),
        "median_on_detector": float(np.median(c[:, 0])),
        "median_in_region": float(np.median(c[:, 1])),
        "region_share_of_spots": float(c[:, 1].sum() / max(1, c[:, 0].sum())),
        "indexable_hits": int(indexable.sum()),
        "indexable_with_fewer_than_10_in_region": int((indexable & (c[:, 1] < MIN_SPOTS)).sum()),
    }


def plot(per_preset: dict[str, np.ndarray], path: Path) -> None:
    with figure(path, 1, dpi=120, figsize=(6, 5)) as (_fig, ax):
        for preset, c in per_preset.items():
            ax.scatter(c[:, 0] + 1, c[:, 1] + 1, s=8, alpha=0.6, label=preset)
        ax.axvline(MIN_SPOTS + 1, color="grey", lw=0.8)
        ax.axhline(MIN_SPOTS + 1, color="grey", lw=0.8)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="strong spots on the detector + 1",
            ylabel="strong spots in the 350x350 region + 1",
            title="hits: a region count below 10 drops an indexable hit",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--frames", type=int, default=200, help="frames per preset")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/full-detector"))
    args = p.parse_args()
    per_preset = {preset: counts(preset, args.frames, args.seed) for preset in PRESETS}
    results = {preset: summary(c) for preset, c in per_preset.items()}
    for preset, r in results.items():
        print(
            f"{preset:12s} {r['hits']:4d} hits: median {r['median_on_detector']:.0f} strong spots on the "
            f"detector, {r['median_in_region']:.0f} in the region ({100 * r['region_share_of_spots']:.1f} % "
            f"of all); {r['indexable_with_fewer_than_10_in_region']} of {r['indexable_hits']} indexable "
            "hits show fewer than 10 in the region"
        )
    meta = machine(frames_per_preset=args.frames, seed=args.seed)
    payload = {"meta": meta, "presets": results}
    record(args.out / "spot-share.json", payload, lambda png: plot(per_preset, png), say=True)


if __name__ == "__main__":
    main()
