"""How well each verdict class is told: labels from the simulator's truth, thresholds, confusion,
ROC, and a PNG of them. Classes come in the order the model gives them (ModelInfo.classes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def class_labels(truth: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """(frames, classes) 1 / 0 from the simulator's truth, NaN where a class is undefined.

    - multiple: two or more lattices an indexer can find (>= 10 strong spots each), among the
      frames with at least one (older runs without that truth: two or more crystals);
    - ice: ice rings, or >= 10 strong ice crystallite spots (1-9 spots: undefined);
    - jet_streak: a streak of >= 1.5e6 photons/sr on its axis (sim/delivery.py);
    - blank: the pulse missed the jet.
    """
    n = len(truth["n_crystals"])
    lattices = truth.get("lattices", np.full(n, -1))
    if (lattices < 0).any():
        lattices = truth["n_crystals"]
    ice_spots = truth.get("ice_spots", np.zeros(n, int))
    ice = truth["ice"] > 0
    columns = {
        "multiple": np.where(lattices >= 1, lattices >= 2, np.nan),
        "ice": np.where(
            ice & (ice_spots > 0) & (ice_spots < 10), np.nan, (ice & (ice_spots <= 0)) | (ice_spots >= 10)
        ),
        "jet_streak": truth.get("jet_streak", np.full(n, -1)),
        "blank": truth.get("blank", np.full(n, -1)),
    }
    labels = np.stack([np.asarray(columns[c], dtype=np.float32) for c in names], axis=1)
    labels[labels < 0] = np.nan  # a run without that truth
    return labels


def threshold_for(p: np.ndarray, y: np.ndarray, specificity: float) -> float:
    """The lowest threshold that keeps `specificity` of the frames without the class below it
    (frames with the class undefined, NaN, left out)."""
    negatives = np.sort(p[y == 0])
    if not len(negatives):
        return 0.5
    k = max(0, int(np.ceil(specificity * len(negatives))) - 1)
    return float(np.nextafter(negatives[k], np.float32(1.0)))


def figures(
    p: np.ndarray, y: np.ndarray, names: tuple[str, ...], thresholds: dict[str, float]
) -> dict[str, Any]:
    """Per class (names: the columns of p and y) at its threshold: frames with / without it,
    sensitivity, specificity, AUC."""
    out = {}
    for i, name in enumerate(names):
        known = np.isfinite(y[:, i])
        pos, neg = p[known & (y[:, i] == 1), i], p[known & (y[:, i] == 0), i]
        t = thresholds[name]
        out[name] = {
            "with": int(len(pos)),
            "without": int(len(neg)),
            "threshold": t,
            "sensitivity": float((pos >= t).mean()) if len(pos) else float("nan"),
            "specificity": float((neg < t).mean()) if len(neg) else float("nan"),
            "auc": auc(pos, neg),
            "confusion": {
                "tp": int((pos >= t).sum()),
                "fn": int((pos < t).sum()),
                "fp": int((neg >= t).sum()),
                "tn": int((neg < t).sum()),
            },
        }
    return out


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Area under the ROC: the chance a frame with the class outscores one without (ties half)."""
    if not len(pos) or not len(neg):
        return float("nan")
    neg = np.sort(neg)
    below = np.searchsorted(neg, pos, side="left") + np.searchsorted(neg, pos, side="right")
    return float(below.mean() / (2 * len(neg)))


def lines(figs: dict[str, Any], thresholds: dict[str, float]) -> list[str]:
    """A table: per class, frames with and without it, threshold, sensitivity, specificity, AUC
    (and the AUC of peakfinder8's peak count, where evaluate gives it)."""
    pf8 = any("peakfinder8_auc" in f for f in figs.values())
    head = f"{'class':<11} {'with':>5} {'without':>7} {'threshold':>9} {'sens':>6} {'spec':>6} {'AUC':>6}"
    rows = [head + ("  peakfinder8 count AUC" if pf8 else "")]
    for name, f in figs.items():
        rows.append(
            f"{name:<11} {f['with']:>5} {f['without']:>7} {thresholds[name]:>9.4f} "
            f"{f['sensitivity']:>6.3f} {f['specificity']:>6.3f} {f['auc']:>6.3f}"
            + (f"  {f.get('peakfinder8_auc', float('nan')):>6.3f}" if pf8 else "")
        )
    return rows


def plot(p: np.ndarray, y: np.ndarray, figs: dict[str, Any], out: Path, title: str) -> Path:
    """ROC per class with its operating point marked, and the confusion counts in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(figs), figsize=(4 * len(figs), 4))
    for ax, (i, name) in zip(axes, enumerate(figs)):
        known = np.isfinite(y[:, i])
        pos, neg = p[known & (y[:, i] == 1), i], p[known & (y[:, i] == 0), i]
        f = figs[name]
        if len(pos) and len(neg):
            ts = np.unique(np.concatenate([pos, neg]))[::-1]
            ax.plot([(neg >= t).mean() for t in ts], [(pos >= t).mean() for t in ts])
            c = f["confusion"]
            label = f"TP {c['tp']} FN {c['fn']} FP {c['fp']} TN {c['tn']}"
            ax.plot(1 - f["specificity"], f["sensitivity"], "o", label=label)
            ax.legend(loc="lower right", fontsize=8)
        ax.set(title=f"{name}: AUC {f['auc']:.3f}", xlabel="1 - specificity", ylabel="sensitivity")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_ylim(0, 1.02)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
