"""`hitveto adapt`: a model for a new experiment from its first minutes, validated before it serves.

1. The window: the first frames of the new experiment, from run files (xtc2, CXI) or from the CXI
   files a hit writer wrote while the daemon was in learn mode (`hitveto ctl learn on`: every
   frame kept, the misses as `audit`).
2. Labels: peakfinder8 (at least min_peaks peaks in the model's region), on worker processes.
3. Split in time, as the run goes on: the first 60 % fine-tunes, the next 20 % calibrates the
   threshold for the target sensitivity, the last 20 % validates. Later frames stand for the rest
   of the run, so a model that only learnt the window's first minutes shows it there.
4. Candidates: the current model's weights fine-tuned with the trainer's recipe and augmentation,
   at the new experiment's detector gain; and, where the gain differs, the current weights at
   the new gain alone (a gain switch is often all that changed). Each gets its threshold on the
   calibration part and its figures on the validation part.
5. Of those meeting the sensitivity target and the specificity floor there (a model that keeps
   everything meets any sensitivity), the one with the best balanced accuracy is written; none
   meeting them, nothing is. Optionally it is swapped into a running daemon through the control
   socket (its reload path drops nothing).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from hitveto.io import sources
from hitveto.io.peaks import PeakFinderParams, count_in_region, region_counter_pool
from hitveto.models import artifact, networks, preprocess, stream_profile
from hitveto.models.artifact import Artifact
from hitveto.offline import labels
from hitveto.offline.rebuild import trainable
from hitveto.offline.recipes import Recipe
from hitveto.offline.train import fit, predict
from hitveto.serving.audit import wilson

log = logging.getLogger(__name__)
FIT_SHARE, CALIBRATION_SHARE = 0.6, 0.2  # the rest validates
HIT_SHARE = 0.3  # of the fine-tuning samples, by repetition
# A window holds tens to a few hundred calibration hits: the threshold for 99 % is one of the
# lowest hit scores. When all of them are strong, that is near 1 and says nothing of the weaker
# hits to come, so the threshold stays at or below the network's own decision boundary.
MAX_THRESHOLD = 0.5


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptConfig:
    sources: tuple[Path, ...]  # run files or learn-mode CXI files, in time order
    model: Path  # the model serving now
    out: Path
    frames: int = 3000  # the window: this many first frames of the sources
    min_peaks: int = 3  # a peakfinder8 hit (in the region: fewer than on the detector)
    target_sensitivity: float = 0.99
    min_specificity: float = 0.9  # and vetoes this share of the misses (keep-all would pass)
    adu_per_photon: float = 0.0  # 0: the runs' sidecar if they have one, else the model's
    recipe: Recipe = Recipe(optimiser="adamw", lr=3e-4, batch_size=64, epochs=4, augment=True)
    workers: int = 2  # peakfinder8 processes
    seed: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptResult:
    path: Path | None  # None: the new model missed the target; nothing written
    previous: str
    version: str
    chosen: str  # "fine-tuned", or "new gain only" (the same weights)
    threshold: float
    frames: dict[str, int]  # fit, calibration, validation
    before: dict  # the serving model on the validation part
    after: dict  # the chosen candidate there
    candidates: dict[str, dict]  # every candidate there
    seconds: dict[str, float]

    def lines(self) -> list[str]:
        def row(name: str, c: dict) -> str:
            lo, hi = c["sensitivity_95"]
            return f"{name:24s} {c['sensitivity']:.3f} ({lo:.3f}-{hi:.3f})   {c['specificity']:.3f}" + (
                f"        {c['truth']['sensitivity']:.3f} / {c['truth']['specificity']:.3f}"
                if "truth" in c
                else ""
            )

        f, s = self.frames, self.seconds
        return [
            f"window: {sum(f.values())} frames: {f['fit']} fine-tune, {f['calibration']} "
            f"calibrate, {f['validation']} validate (in time order)",
            "validation part          sensitivity (95%)      specificity  vs truth: sens. / spec.",
            row(f"before: {self.previous}", self.before),
            *[row(f"{'best' if n == self.chosen else '    '}: {n}", c) for n, c in self.candidates.items()],
            f"threshold {self.threshold:.4f} for target sensitivity; time: read {s['read']:.1f} s, "
            f"label {s['label']:.1f} s, fine-tune {s['fit']:.1f} s, total {s['total']:.1f} s",
            f"written: {self.path} ({self.version}, {self.chosen})"
            if self.path
            else "NOT written: no candidate meets the sensitivity target and the specificity floor "
            "on the validation part",
        ]


def adapt(cfg: AdaptConfig) -> AdaptResult:
    t0 = time.monotonic()
    current = artifact.read(cfg.model)
    if current.spec.layout != "roi":  # its labels are peakfinder8's in the region
        raise ValueError(
            f"{cfg.model}: hitveto adapt fine-tunes region models; this one takes the whole detector"
        )
    adu = cfg.adu_per_photon or sources.sidecar_gain(cfg.sources) or current.info.adu_per_photon
    spec = dataclasses.replace(current.spec, adu_per_photon=adu)
    regions, truth = _window(cfg.sources, spec, cfg.frames)
    t_read = time.monotonic() - t0
    y = labels.min_peak_labels(_peak_counts(regions, spec, cfg.workers), cfg.min_peaks)
    t_label = time.monotonic() - t0 - t_read
    parts = _split(len(regions))
    serving = trainable(current, current.info.adu_per_photon)
    before = _figures(
        predict(serving, regions, parts["validation"]), current.info.threshold, y, truth, parts["validation"]
    )
    candidates = (
        {"new gain only": networks.at_gain(serving, adu)} if adu != current.info.adu_per_photon else {}
    )
    net = networks.at_gain(serving, adu)
    rows = _balanced(parts["fit"], y)
    losses = fit(net, regions, y[rows], cfg.recipe, seed=cfg.seed, rows=rows)
    candidates["fine-tuned"] = net
    t_fit = time.monotonic() - t0 - t_read - t_label
    judged = {
        name: _judge(c, regions, y, truth, parts, cfg.target_sensitivity) for name, c in candidates.items()
    }
    passing = [
        n
        for n, j in judged.items()
        if j.figures["sensitivity"] >= cfg.target_sensitivity
        and j.figures["specificity"] >= cfg.min_specificity
    ]
    chosen = max(passing or judged, key=lambda n: labels.balanced_accuracy(judged[n].figures))
    best = judged[chosen]
    # the same weights at another gain are another model: the gain is in the digest
    gain = np.float64(candidates[chosen].normalise.scale).tobytes()
    version = f"{current.info.architecture}-{networks.weights_digest(candidates[chosen], gain)}"
    seconds = {"read": t_read, "label": t_label, "fit": t_fit, "total": time.monotonic() - t0}
    path = (
        _save(cfg, current, candidates[chosen], chosen, spec, best, version, regions, losses, before, seconds)
        if passing
        else None
    )
    return AdaptResult(
        path=path,
        previous=current.info.version,
        version=version,
        chosen=chosen,
        threshold=best.threshold,
        frames={k: len(v) for k, v in parts.items()},
        before=before,
        after=best.figures,
        candidates={n: j.figures for n, j in judged.items()},
        seconds={k: round(v, 1) for k, v in seconds.items()},
    )


def _peak_counts(regions: np.ndarray, spec: preprocess.InputSpec, workers: int) -> np.ndarray:
    """peakfinder8 on every region, on worker processes, thresholds in photons of this gain."""
    with region_counter_pool(spec, PeakFinderParams.for_gain(spec.adu_per_photon), workers) as pool:
        counts = pool.map(count_in_region, regions, chunksize=16)
        return np.fromiter(
            tqdm(
                counts,
                total=len(regions),
                desc="label (peakfinder8)",
                unit="frame",
                mininterval=1.0,
                leave=False,
            ),
            dtype=np.int64,
        )


@dataclass(frozen=True, slots=True)
class _Judged:
    scores: np.ndarray  # every frame of the window
    threshold: float  # calibrated on the calibration part
    figures: dict  # on the validation part


def _judge(
    net: networks.HitClassifier,
    regions: np.ndarray,
    y: np.ndarray,
    truth: np.ndarray | None,
    parts: dict[str, np.ndarray],
    target: float,
) -> _Judged:
    scores = predict(net, regions)
    cal = parts["calibration"]
    threshold = min(MAX_THRESHOLD, labels.calibrate_threshold(scores[cal], y[cal] == 1, target))
    return _Judged(
        scores, threshold, _figures(scores[parts["validation"]], threshold, y, truth, parts["validation"])
    )


def _window(
    paths: tuple[Path, ...], spec: preprocess.InputSpec, n: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The first n regions of the sources in pulse order, and truth (crystal in the beam) where they
    all have it. A writer's files hold frames in decision order, which can differ slightly from
    pulse order; sorting makes the time split the same on every read."""
    regions: list[np.ndarray] = []
    crystals: list[int] = []
    keys: list[tuple[int, int]] = []
    for path in paths:
        for ev in sources.events(path, limit=n - len(regions)):
            regions.append(np.array(preprocess.region(ev.image, spec)))
            crystals.append(ev.truth.get("n_crystals", -1))
            keys.append((ev.run, ev.timestamp))
        if len(regions) >= n:
            break
    order = sorted(range(len(keys)), key=keys.__getitem__)
    counts = np.array(crystals)[order]
    return np.stack([regions[i] for i in order]), (counts > 0 if (counts >= 0).all() else None)


def _split(n: int) -> dict[str, np.ndarray]:
    a, b = int(n * FIT_SHARE), int(n * (FIT_SHARE + CALIBRATION_SHARE))
    return {"fit": np.arange(a), "calibration": np.arange(a, b), "validation": np.arange(b, n)}


def _balanced(rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The rows with each hit repeated until hits are about HIT_SHARE of them.

    A new experiment's first minutes may hold a few percent of hits; unbalanced, a few epochs
    teach the network mostly what a miss looks like.
    """
    hits, misses = rows[y[rows] == 1], rows[y[rows] != 1]
    if len(hits) == 0:
        raise ValueError(
            "no peakfinder8 hits in the window's fine-tuning part: a longer window, or fewer --min-peaks"
        )
    want = HIT_SHARE / (1 - HIT_SHARE) * len(misses)
    repeat = max(1, int(round(want / len(hits))))
    return np.concatenate([misses, np.repeat(hits, repeat)])


def _figures(
    scores: np.ndarray, threshold: float, y: np.ndarray, truth: np.ndarray | None, rows: np.ndarray
) -> dict[str, Any]:
    kept = scores >= threshold
    c: dict[str, Any] = dict(labels.confusion(y[rows] == 1, kept))
    c["sensitivity_95"] = wilson(c["tp"], c["tp"] + c["fn"])
    if truth is not None:
        c["truth"] = labels.confusion(truth[rows], kept)
    return c


def _save(
    cfg: AdaptConfig,
    current: Artifact,
    net: networks.HitClassifier,
    chosen: str,
    spec,
    judged: _Judged,
    version: str,
    regions: np.ndarray,
    losses: list[float],
    before: dict,
    seconds: dict,
) -> Path:
    threshold, scores, after = judged.threshold, judged.scores, judged.figures
    net = net.cpu().eval()
    scripted = torch.jit.freeze(torch.jit.script(net))
    prof = stream_profile.profile(stream_profile.frame_statistics(regions, scores, threshold, spec))
    info = artifact.ModelInfo(
        version=version,
        architecture=current.info.architecture,
        detector=spec.detector,
        raw_shape=spec.raw_shape,
        roi_shape=spec.roi_shape,
        adu_per_photon=spec.adu_per_photon,
        threshold=threshold,
        profile=prof.to_dict(),
        training={
            "adapted_from": current.info.version,
            "candidate": chosen,
            "runs": [str(p) for p in cfg.sources],
            "frames": len(regions),
            "labels": f"peakfinder8 >= {cfg.min_peaks} peaks, every frame",
            "threshold_calibration": {
                "target_sensitivity": cfg.target_sensitivity,
                "on": "the window's calibration part",
            },
            "recipe": {"name": "adapt", **dataclasses.asdict(cfg.recipe), "seed": cfg.seed},
            "peakfinder8": dataclasses.asdict(PeakFinderParams.for_gain(spec.adu_per_photon)),
            "loss_per_epoch": losses,
            "seconds": seconds,
        },
        validation={"on": "the last 20 % of the window", "before": before, "min_peaks": after},
    )
    return artifact.save(cfg.out, scripted, info, spec.roi_index)
