"""The full-detector model beside the region model and peakfinder8, on the same fresh full frames.

Truth, as a crystallographer would count it: a hit has >= 10 strong spots anywhere on the detector
(the simulator's truth for raw-layout runs); sensitivity is the share of those kept, specificity the
share of frames without a crystal dropped. peakfinder8 runs on every pixel of every frame, at each
minimum peak count N in PF8_N, and its best N (by balanced accuracy) is reported beside the models.
Prints a table per run set; saves JSON and a PNG.

    python benchmarks/full_detector.py --model panels.pt [--previous-model old.pt] \
        --sets lysozyme=RUN... other=RUN... --out DIR
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hitveto.io import sources
from hitveto.io.peaks import PeakFinderParams, detector_peak_finder
from hitveto.models import artifact, preprocess
from hitveto.models.engine import Engine
from hitveto.offline.datasets import gain_scale

from common import figure, machine, parser, record

MIN_SPOTS = 10
PF8_N = (5, 10, 16, 25, 40)


def judge(models: dict[str, artifact.Artifact], runs: list[Path], pf8: bool) -> dict[str, np.ndarray]:
    """Per frame: each model's keep, peakfinder8's count, and the truth."""
    engines = {name: Engine(a, device="cpu", max_batch=32) for name, a in models.items()}
    out: dict[str, list] = {"spots": [], "crystals": [], "peaks": [], **{n: [] for n in models}}
    for path in runs:
        # each model told the run's gain, as the trainer is (datasets.gain_scale)
        scales = {name: gain_scale(path, e.artifact.spec) for name, e in engines.items()}
        gain = sources.run_info(path).get("adu_per_photon")  # peakfinder8's threshold in photons too
        params = PeakFinderParams.for_gain(gain) if gain else PeakFinderParams()
        finder = detector_peak_finder(params) if pf8 else None
        for ev in sources.events(path):
            out["spots"].append(ev.truth["n_strong_spots"])
            out["crystals"].append(ev.truth["n_crystals"])
            out["peaks"].append(finder.count(ev.image) if finder else -1)
            for name, engine in engines.items():
                region = preprocess.region(ev.image, engine.artifact.spec)
                scale = scales[name]
                score = engine.infer([region if scale is None else scale(region)])[0]
                out[name].append(score >= engine.threshold)
    return {k: np.array(v) for k, v in out.items()}


def rates(kept: np.ndarray, hit: np.ndarray, empty: np.ndarray) -> dict[str, float]:
    sens, spec = float(kept[hit].mean()), float((~kept[empty]).mean())
    return {"sensitivity": sens, "specificity": spec, "balanced_accuracy": (sens + spec) / 2}


def summarise(j: dict[str, np.ndarray], models: list[str]) -> dict:
    hit, empty = j["spots"] >= MIN_SPOTS, j["crystals"] == 0
    result = {"frames": int(len(hit)), "hits": int(hit.sum()), "empty": int(empty.sum())}
    result.update({name: rates(j[name], hit, empty) for name in models})
    if (j["peaks"] >= 0).all():
        by_n = {n: rates(j["peaks"] >= n, hit, empty) for n in PF8_N}
        best = max(by_n, key=lambda n: by_n[n]["balanced_accuracy"])
        result["peakfinder8"] = {**by_n[best], "min_peaks": best}
    return result


def report(name: str, r: dict) -> str:
    lines = [
        f"{name}: {r['frames']} frames, {r['hits']} hits (>= {MIN_SPOTS} strong spots), {r['empty']} empty"
    ]
    for method in [m for m in r if isinstance(r[m], dict)]:
        v = r[method]
        label = method + (f" (N = {v['min_peaks']})" if "min_peaks" in v else "")
        lines.append(
            f"  {label:28s} sens {v['sensitivity']:.3f}  spec {v['specificity']:.3f}  "
            f"BA {v['balanced_accuracy']:.3f}"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict], path: Path) -> None:
    with figure(path, 2, dpi=120, figsize=(11, 4)) as (_fig, axes):
        methods = [
            m for m in next(iter(results.values())) if isinstance(results[next(iter(results))][m], dict)
        ]
        width = 0.8 / len(methods)
        for ax, measure in zip(axes, ("sensitivity", "specificity")):
            for i, m in enumerate(methods):
                values = [r[m][measure] for r in results.values()]
                ax.bar(np.arange(len(results)) + i * width, values, width, label=m)
            ax.set(title=f"{measure} (hits: >= {MIN_SPOTS} strong spots on the detector)", ylim=(0, 1.05))
            ax.set_xticks(np.arange(len(results)) + 0.4 - width / 2, list(results))
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=7, loc="lower left")


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", type=Path, default=artifact.DEFAULT_ARTIFACT, help="the full-detector artifact")
    p.add_argument("--region-model", type=Path, default=artifact.REGION_ARTIFACT)
    p.add_argument("--previous-model", type=Path, help="a full-detector artifact to judge beside --model")
    p.add_argument("--sets", nargs="+", required=True, metavar="NAME=RUN[,RUN]")
    p.add_argument("--no-peakfinder8", action="store_true")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/full-detector"))
    args = p.parse_args()
    models = {
        "full-detector model": artifact.read(args.model),
        "region model": artifact.read(args.region_model),
    }
    if args.previous_model:
        models["previous full-detector model"] = artifact.read(args.previous_model)
    results = {}
    for item in args.sets:
        name, _, paths = item.partition("=")
        judged = judge(models, [Path(x) for x in paths.split(",")], not args.no_peakfinder8)
        results[name] = summarise(judged, list(models))
        print(report(name, results[name]), flush=True)
    meta = machine(models={k: a.served_version for k, a in models.items()})
    payload = {"meta": meta, "sets": results}
    record(args.out / "full-detector.json", payload, lambda png: plot(results, png), say=True)


if __name__ == "__main__":
    main()
