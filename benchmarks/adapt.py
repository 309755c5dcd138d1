"""Adaptation to a new experiment, before and after: `hitveto adapt` on a minute of beam, then both
models judged against simulator truth on another run of that experiment.

    python benchmarks/adapt.py [--frames 7200] [--out benchmarks/results/adapt]

For each "other experiment" preset (thermolysin: 7 keV, 8.5 cm, hexagonal; myoglobin: 12 keV,
12.5 cm, CSPAD low gain), it simulates a window run (the first minute at 120 Hz) and an evaluation
run (1,000 frames, another seed), adapts the shipped model on the window (`service/hitveto/offline/adapt.py`,
peakfinder8 labels, the run's gain), and evaluates the shipped and the adapted model on the
evaluation run with `hitveto evaluate`'s code. Prints a table, saves JSON and a PNG.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hitveto.models import artifact
from hitveto.offline.adapt import AdaptConfig, adapt
from hitveto.offline.evaluate import evaluate_runs
from hitveto.offline.labels import balanced_accuracy
from hitveto.sim.run import simulate_runs

from common import figure, parser, record

EXPERIMENTS = {"thermolysin": (52, 21), "myoglobin": (42, 31)}  # window run, evaluation run


def vs_truth(c: dict) -> str:
    return f"sens {c['sensitivity']:.3f} spec {c['specificity']:.3f} balanced {balanced_accuracy(c):.3f}"


def run(frames: int, out: Path) -> dict:
    results = {}
    for preset, (window_run, eval_run) in EXPERIMENTS.items():
        (window,) = simulate_runs(
            out / "runs",
            runs=[window_run],
            n_frames=frames,
            preset=preset,
            layout="roi",
            fmt="xtc2",
            seed=window_run,
        )
        (evaluation,) = simulate_runs(
            out / "runs",
            runs=[eval_run],
            n_frames=1000,
            preset=preset,
            layout="roi",
            fmt="xtc2",
            seed=eval_run,
        )
        adapted = adapt(
            AdaptConfig(
                sources=(window,),
                model=artifact.REGION_ARTIFACT,
                out=out / f"{preset}-adapted.pt",
                frames=frames,
            )
        )
        print("\n".join([f"== {preset}", *adapted.lines()]), flush=True)
        row = {
            "window_frames": frames,
            "window_seconds_at_120hz": frames / 120,
            "adapt_seconds": adapted.seconds,
            "written": adapted.path is not None,
            "chosen": adapted.chosen,
            "validation_part": {"before": adapted.before, **adapted.candidates},
        }
        for name, model in (("shipped", artifact.REGION_ARTIFACT), ("adapted", adapted.path)):
            if model is not None:
                evaluate_runs(model, (evaluation,), out_dir=out / f"{preset}-{name}")
                report = json.loads((out / f"{preset}-{name}" / "evaluation.json").read_text())
                row[name] = {
                    k: report[k]
                    for k in ("truth", "peakfinder8_truth", "visible", "peakfinder8_visible", "kept_fraction")
                }
        results[preset] = row
    return results


def plot(results: dict, path: Path) -> None:
    with figure(path, len(results), figsize=(5 * len(results), 3.8)) as (_fig, axes):
        for ax, (preset, row) in zip(axes, results.items()):
            names = [n for n in ("shipped", "adapted") if n in row]
            for k, metric in enumerate(("sensitivity", "specificity")):
                ax.bar(
                    [i + 0.35 * k for i in range(len(names))],
                    [row[n]["truth"][metric] for n in names],
                    width=0.35,
                    label=metric,
                )
            ax.axhline(
                row["shipped"]["peakfinder8_truth"]["sensitivity"],
                color="grey",
                ls="--",
                label="peakfinder8 sensitivity",
            )
            ax.set_xticks([i + 0.175 for i in range(len(names))], names)
            ax.set(ylim=(0, 1.05), xlim=(-0.4, 1.75), title=f"{preset}: vs truth on another run")
            ax.legend(fontsize=8, loc="lower right")


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--frames", type=int, default=7200, help="the window (7200 = a minute at 120 Hz)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/adapt"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(args.frames, args.out)
    record(args.out / "adapt.json", results, lambda png: plot(results, png))
    for preset, row in results.items():
        line = f"{preset:12s} shipped: {vs_truth(row['shipped']['truth'])}"
        if "adapted" in row:
            line += f" | adapted: {vs_truth(row['adapted']['truth'])}"
        print(
            line + f" | adapt took {row['adapt_seconds']['total']:.0f} s after a "
            f"{row['window_seconds_at_120hz']:.0f} s window"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
