"""`hitveto evaluate ARTIFACT RUN...`: a model's report on any runs, beside peakfinder8 on the same frames.

Prints the confusion matrices in the study's layout (quartile protocol, every frame with
peakfinder8 labels, every frame against simulator truth when the runs have it: a crystal in the beam,
and at least N strong spots on its pixels, N the indexability floor), the data reduction at
the artifact's threshold, and a breakdown by frame kind; saves ROC and precision-recall curves and
score histograms as one PNG, and the numbers as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hitveto.io.calibration import Constants
from hitveto.models import artifact
from hitveto.offline import class_report, labels
from hitveto.offline.indexing import IndexingOptions, indexed_frames

KINDS = ("clean miss", "ice miss", "strong hit", "weak hit", "multiple hit")  # sim FrameKind order
PEAK_BINS = (0, 10, 20, 30, 50, 100)  # peak counts the dropped indexable frames are told by


def evaluate_runs(
    artifact_path: Path,
    runs: tuple[Path, ...],
    *,
    min_peaks: int = labels.MIN_PEAKS_FOR_HIT,
    out_dir: Path | None = None,
    indexing: IndexingOptions | None = None,
    constants: Constants | None = None,
) -> str:
    """The report as text; with out_dir, also `evaluation.json` and `evaluation.png` there.

    With `indexing`, CrystFEL indexes every frame first, and the report says how many frames it
    indexed the veto dropped (by kind and by peak count)."""
    from hitveto.io.peaks import PeakFinderParams
    from hitveto.models.engine import Engine  # torch and psana only when evaluating
    from hitveto.offline.datasets import load_runs

    art = artifact.read(artifact_path)
    params = PeakFinderParams(**art.info.training.get("peakfinder8", {}))
    data = load_runs(runs, art.spec, params, constants=constants)
    engine = Engine(art, device="cpu", max_batch=64)
    scores, classes = engine.score_with_classes(list(data.regions))  # views, no copy
    result = summarise(scores, data, art.info.threshold, min_peaks)
    if indexing is not None:
        indexed = np.concatenate([indexed_frames(run, indexing) for run in runs])
        result["crystfel"] = indexed_summary(indexed, scores >= art.info.threshold, data, min_peaks)
    text = report(result, art.info.version, art.info.threshold, min_peaks)
    judged_classes = art.info.classes and "blank" in data.truth  # runs simulated with the classes' truth
    if judged_classes:
        y = class_report.class_labels(data.truth, art.info.classes)
        result["classes"] = class_report.figures(classes, y, art.info.classes, art.info.class_thresholds)
        if (data.peaks >= 0).all():  # what peakfinder8's count alone tells of each class
            for i, name in enumerate(art.info.classes):
                result["classes"][name]["peakfinder8_auc"] = class_report.auc(
                    data.peaks[y[:, i] == 1], data.peaks[y[:, i] == 0]
                )
        text += "\n\nVerdict classes (simulator truth)\n" + "\n".join(
            class_report.lines(result["classes"], art.info.class_thresholds)
        )
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "evaluation.json").write_text(json.dumps(result, indent=1))
        plot(scores, data, min_peaks, art.info.threshold, out_dir / "evaluation.png")
        if judged_classes:
            class_report.plot(classes, y, result["classes"], out_dir / "classes.png", art.info.version)
    return text


def summarise(scores: np.ndarray, data, threshold: float, min_peaks: int) -> dict:
    """Decisions at `threshold` against every protocol the data allows (data: datasets.LabelledFrames)."""
    kept = scores >= threshold
    result: dict[str, Any] = {"frames": int(len(scores)), "kept_fraction": float(kept.mean())}
    counted = bool((data.peaks >= 0).all())  # peakfinder8 ran (datasets.load_runs count_peaks)
    every = labels.min_peak_labels(data.peaks, min_peaks).astype(bool)
    if counted:
        q = labels.quartile_labels(data.peaks)
        used = q != labels.UNUSED
        result["quartile"] = labels.confusion(q[used] == labels.HIT, kept[used])
        result["min_peaks"] = labels.confusion(every, kept)
        result["peakfinder8_min_peaks_vs_quartile"] = labels.confusion(q[used] == labels.HIT, every[used])
    if (data.n_crystals >= 0).all():
        truth = labels.truth_labels(data.n_crystals).astype(bool)
        result["truth"] = labels.confusion(truth, kept)
        if counted:
            result["peakfinder8_truth"] = labels.confusion(truth, every)
        result["by_kind"] = {
            KINDS[k]: {
                "frames": int((data.kinds == k).sum()),
                "kept_by_model": float(kept[data.kinds == k].mean()),
                "kept_by_peakfinder8": float(every[data.kinds == k].mean()) if counted else float("nan"),
            }
            for k in range(len(KINDS))
            if (data.kinds == k).any()
        }
    if (data.strong_spots >= 0).all():
        visible = labels.visible_labels(data.strong_spots, min_peaks).astype(bool)
        result["visible"] = labels.confusion(visible, kept)
        if counted:
            result["peakfinder8_visible"] = labels.confusion(visible, every)
    return result


def indexed_summary(indexed: np.ndarray, kept: np.ndarray, data, min_peaks: int) -> dict[str, Any]:
    """CrystFEL's indexing as the reference: the veto against it, peakfinder8 beside, and the
    indexable frames dropped, by frame kind and by peakfinder8 peak count."""
    dropped = indexed & ~kept
    result: dict[str, Any] = {
        "indexable": int(indexed.sum()),
        "dropped": int(dropped.sum()),
        "model": labels.confusion(indexed, kept),
    }
    if (data.peaks >= 0).all():
        result["peakfinder8"] = labels.confusion(indexed, labels.min_peak_labels(data.peaks, min_peaks) > 0)
        edges = [*PEAK_BINS, np.inf]
        result["by_peaks"] = {
            f"{lo}-{hi - 1:g}" if np.isfinite(hi) else f">={lo}": [
                int((indexed & (data.peaks >= lo) & (data.peaks < hi)).sum()),
                int((dropped & (data.peaks >= lo) & (data.peaks < hi)).sum()),
            ]
            for lo, hi in zip(edges[:-1], edges[1:])
        }
    if (data.kinds >= 0).all():
        result["by_kind"] = {
            KINDS[k]: [int((indexed & (data.kinds == k)).sum()), int((dropped & (data.kinds == k)).sum())]
            for k in range(len(KINDS))
            if (indexed & (data.kinds == k)).any()
        }
    return result


def _indexed_lines(r: dict[str, Any], min_peaks: int) -> list[str]:
    share = r["dropped"] / max(1, r["indexable"])
    lines = [
        "",
        f"CrystFEL (indexamajig, asdf) indexed {r['indexable']} frames; the veto dropped "
        f"{r['dropped']} of them ({100 * share:.2f}%)",
        "",
        labels.study_table(r["model"], "Every frame vs CrystFEL (indexed = hit)"),
        *_beside(r, "peakfinder8", f"peakfinder8 (>= {min_peaks} peaks) vs CrystFEL"),
    ]
    for key, title in (("by_kind", "kind"), ("by_peaks", "peakfinder8 peaks")):
        if key in r:
            lines += ["", f"{title:18s} indexed   dropped by the veto"]
            lines += [f"{name:18s} {n:7d}   {d:7d}" for name, (n, d) in r[key].items()]
    return lines


def report(r: dict, version: str, threshold: float, min_peaks: int) -> str:
    lines = [
        f"model {version}, threshold {threshold:.4f}, {r['frames']} frames; "
        f"kept {100 * r['kept_fraction']:.1f}% (data reduction {100 * (1 - r['kept_fraction']):.1f}%)",
    ]
    if "quartile" in r:
        lines += [
            "",
            labels.study_table(r["quartile"], "Quartile protocol (the study's)"),
            "",
            labels.study_table(r["min_peaks"], f"Every frame, peakfinder8 >= {min_peaks} peaks = hit"),
        ]
    if "truth" in r:
        lines += [
            "",
            labels.study_table(r["truth"], "Every frame vs simulator truth (a crystal = hit)"),
            *_beside(r, "peakfinder8_truth", f"peakfinder8 (>= {min_peaks} peaks) vs truth"),
            "",
            "kind             frames   kept by model   kept by peakfinder8",
        ]
        lines += [
            f"{kind:15s} {v['frames']:7d}   {100 * v['kept_by_model']:12.1f}%   "
            f"{100 * v['kept_by_peakfinder8']:18.1f}%"
            for kind, v in r["by_kind"].items()
        ]
    if "visible" in r:
        lines += [
            "",
            labels.study_table(r["visible"], f"Every frame vs truth (>= {min_peaks} strong spots = hit)"),
            *_beside(r, "peakfinder8_visible", f"peakfinder8 (>= {min_peaks} peaks) vs the same truth"),
        ]
    if "crystfel" in r:
        lines += _indexed_lines(r["crystfel"], min_peaks)
    return "\n".join(lines)


def _beside(r: dict[str, Any], key: str, title: str) -> list[str]:
    """peakfinder8's table on the same frames, when it counted them."""
    return ["", labels.study_table(r[key], title)] if key in r else []


def plot(scores: np.ndarray, data, min_peaks: int, threshold: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth, reference = _reference(data, min_peaks)
    fig, (roc, pr, hist) = plt.subplots(1, 3, figsize=(14, 4))
    fig.suptitle(f"reference: {reference}", fontsize=10)
    for name, s in (("model", scores), ("peakfinder8 peak count", data.peaks.astype(float))):
        fpr, tpr, precision = _curves(s, truth)
        roc.plot(fpr, tpr, label=name)
        pr.plot(tpr, precision, label=name)
    roc.set(
        xlabel="false positive rate (misses kept)",
        ylabel="sensitivity (hits kept)",
        title="ROC",
        xscale="log",
        xlim=(1e-4, 1),
    )
    pr.set(xlabel="recall (sensitivity)", ylabel="precision", title="precision-recall")
    bins = np.linspace(0, 1, 51)
    hist.hist(scores[truth], bins, alpha=0.6, label="hits")
    hist.hist(scores[~truth], bins, alpha=0.6, label="misses")
    hist.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    hist.set(xlabel="model score P(hit)", ylabel="frames", yscale="log", title="score histograms")
    for ax in (roc, pr, hist):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=100)


def _reference(data, min_peaks: int) -> tuple[np.ndarray, str]:
    """What the curves count as a hit: the simulator's strong spots when the runs have them."""
    if (data.strong_spots >= 0).all():
        return labels.visible_labels(data.strong_spots, min_peaks).astype(
            bool
        ), f"simulator truth, >= {min_peaks} strong spots = hit"
    if (data.n_crystals >= 0).all():
        return labels.truth_labels(data.n_crystals).astype(bool), "simulator truth, a crystal = hit"
    return labels.min_peak_labels(data.peaks, min_peaks).astype(
        bool
    ), f"peakfinder8 >= {min_peaks} peaks = hit"


def _curves(scores: np.ndarray, truth: np.ndarray):
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(truth[order])
    kept = np.arange(1, len(scores) + 1)
    tpr = hits / max(1, truth.sum())
    fpr = (kept - hits) / max(1, (~truth).sum())
    return fpr, tpr, hits / kept
