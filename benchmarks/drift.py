"""Drift scores of the shipped model's profile on streams it was and was not trained for.

Simulates a few hundred 350x350 regions per stream (a new lysozyme run, the detector moved, other
experiments, ice), scores them with the shipped model and prints each statistic's population
stability index against the artifact's training profile, as the daemon's DriftMonitor computes it
(docs/TRUST.md); saves JSON and a PNG (PSI per stream and statistic, the alert level marked).

    python3 benchmarks/drift.py [--frames 400] [--out benchmarks/results/drift]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hitveto.models import artifact, stream_profile
from hitveto.models.engine import Engine
from hitveto.sim.run import regions

from common import figure, parser, record

STREAMS = {  # name: (preset, seed, changes to its RunParams)
    "lysozyme, new seed": ("lysozyme", 17, {}),
    "lysozyme, another seed": ("lysozyme", 29, {}),
    "lysozyme, detector at 12 cm": ("lysozyme", 17, {"distance_m": 0.12}),
    "thermolysin (7 keV, 8.5 cm)": ("thermolysin", 21, {}),
    "myoglobin (12 keV, CSPAD low gain)": ("myoglobin", 31, {}),
    "lysozyme, ice on 60 % of misses": ("lysozyme", 17, {"ice_miss_fraction": 0.6}),
}


def measure(n: int) -> dict:
    shipped = artifact.read(artifact.REGION_ARTIFACT)
    engine = Engine(shipped, device="cpu", max_batch=64)
    prof = stream_profile.Profile.from_dict(shipped.info.profile)
    results = {
        "model": shipped.info.version,
        "frames_per_stream": n,
        "alert_psi": stream_profile.ALERT_PSI,
        "streams": {},
    }
    for name, (preset, seed, changes) in STREAMS.items():
        images = regions(preset, seed=seed, n=n, **changes)
        scores = engine.score(images)
        stats = stream_profile.frame_statistics(images, scores, shipped.info.threshold, shipped.spec)
        psi = stream_profile.drift_scores(prof, stats)
        results["streams"][name] = psi
        print(f"{name:38s} " + "  ".join(f"{k} {v:6.3f}" for k, v in psi.items()), flush=True)
    return results


def plot(results: dict, path: Path) -> None:
    streams = list(results["streams"])
    stats = list(results["streams"][streams[0]])
    width = 0.8 / len(stats)
    with figure(path, figsize=(11, 4)) as (_fig, ax):
        for j, stat in enumerate(stats):
            psi = [max(1e-4, results["streams"][s][stat]) for s in streams]
            ax.bar(np.arange(len(streams)) + j * width, psi, width, label=stat)
        ax.axhline(results["alert_psi"], color="k", ls="--", lw=1, label="alert (PSI 0.25)")
        ax.set(
            yscale="log",
            ylabel="PSI vs the training profile",
            title=f"drift scores of {results['model']}, {results['frames_per_stream']} frames per stream",
        )
        ax.set_xticks(np.arange(len(streams)) + 0.4, streams, rotation=15, ha="right", fontsize=8)
        ax.legend(fontsize=8, ncol=4)


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--frames", type=int, default=400)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/drift"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = measure(args.frames)
    record(args.out / "drift.json", results, lambda png: plot(results, png), say=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
