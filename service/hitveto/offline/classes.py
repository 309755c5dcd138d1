"""`hitveto train-classes`: verdict classes (models/heads.py) added to a full-detector model.

1. The model's network is rebuilt trainable from its artifact (rebuild.trainable) and frozen: the
   hit score, its threshold and every keep or drop stay the model's.
2. Its features are computed once for every frame of the training and validation runs (simulated:
   their truth says what each frame shows).
3. The heads are fitted on the training frames (binary cross-entropy per class; a frame whose
   class is undefined, e.g. an ice frame with 1-9 ice spots, is left out of that class's loss).
4. Each class's threshold is set on the validation frames for its specificity target
   (SPECIFICITY), and the figures there are recorded in the artifact.
5. The hit scores of the new artifact are checked against the model's on the validation frames.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from hitveto.io import geometry
from hitveto.io.peaks import PeakFinderParams
from hitveto.models import artifact, heads, networks
from hitveto.models.engine import Engine
from hitveto.offline import class_report, datasets
from hitveto.offline.rebuild import trainable

log = logging.getLogger(__name__)
# Each class's threshold keeps this share of the frames without it below (validation runs): the
# issue's targets; for blank shots, where it sets none, one in 200.
SPECIFICITY = {"multiple": 0.95, "ice": 0.98, "jet_streak": 0.95, "blank": 0.995}
HOT_PIXELS = (30.0, 300.0)  # photons of the hot pixels a copy of each training frame gets


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassConfig:
    model: Path
    train: tuple[Path, ...]
    val: tuple[Path, ...]
    out: Path
    epochs: int = 150
    seed: int = 0


def train_classes(cfg: ClassConfig) -> tuple[Path, str]:
    """Write the model with verdict classes to cfg.out; returns it and a report."""
    served = artifact.read(cfg.model)
    hit = trainable(served, served.info.adu_per_photon).eval()
    if not isinstance(hit.net, networks.PanelCNN):
        raise ValueError(
            f"{cfg.model}: verdict classes need a full-detector model, not {served.info.architecture}"
        )
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    spec = served.spec
    model = heads.ClassHeads(
        hit.net,
        torch.from_numpy(geometry.panel_radius(spec.pool, spec.detector)),
        torch.from_numpy(geometry.panel_azimuth(spec.pool, spec.detector)),
    )
    train = _inputs(hit, model, cfg.train, served, hot_pixels=np.random.default_rng(cfg.seed))[:2]
    val_x, val_y, val_frames = _inputs(hit, model, cfg.val, served)
    data_s = time.perf_counter() - t0
    _fit(model, train, (val_x, val_y), cfg.epochs)
    val_p = _probabilities(model, val_x)
    thresholds = {
        c: class_report.threshold_for(val_p[:, i], val_y[:, i], SPECIFICITY[c])
        for i, c in enumerate(heads.CLASSES)
    }
    figures = class_report.figures(val_p, val_y, heads.CLASSES, thresholds)
    scripted = torch.jit.freeze(torch.jit.script(heads.ClassifiedHits(hit, model).eval()))
    drift = _hit_scores_kept(served, scripted, val_frames)
    info = dataclasses.replace(
        served.info,
        version=f"{served.info.version.split('+classes-')[0]}+classes-{networks.weights_digest(model)}",
        classes=heads.CLASSES,
        class_thresholds=thresholds,
        created="",
        validation={**served.info.validation, "classes": figures},
        training={
            **served.info.training,
            "classes": _record(cfg, len(train[1]), data_s, time.perf_counter() - t0),
        },
    )
    path = artifact.save(cfg.out, scripted, info, served.spec.roi_index)
    report = class_report.lines(figures, thresholds)
    return path, "\n".join([*report, f"hit scores against {served.info.version}: max |diff| {drift:.1e}"])


def _inputs(
    hit: networks.HitClassifier,
    model: heads.ClassHeads,
    paths: tuple[Path, ...],
    served: artifact.Artifact,
    hot_pixels: np.random.Generator | None = None,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """What the heads' layers read for every frame of the runs (computed once: only the layers
    train), their class labels, and the frames. With `hot_pixels`, each frame comes twice: as
    it is and with a few hot pixels (HOT_PIXELS)."""
    data = datasets.load_runs(paths, served.spec, PeakFinderParams(), count_peaks=False)
    net = hit.net
    assert isinstance(net, networks.PanelCNN)  # train_classes checked
    labels = class_report.class_labels(data.truth, heads.CLASSES)
    plain: list[torch.Tensor] = []
    hot: list[torch.Tensor] = []
    with torch.no_grad():
        for i in tqdm(range(0, len(data.regions), 64), desc="features", unit="batch", leave=False):
            batch = np.asarray(data.regions[i : i + 64])
            versions = [(batch, plain)]
            if hot_pixels is not None:
                versions.append((_with_hot_pixels(batch, hot_pixels, served), hot))
            for frames, parts in versions:
                x = hit.normalise(torch.from_numpy(frames))
                profiles = model.profiles(x.reshape(x.shape[0], -1))
                parts.append(model.inputs(profiles, *net.features(x)))
    if hot:
        labels = np.concatenate([labels, labels])
    return torch.cat(plain + hot), labels, data.regions


def _with_hot_pixels(frames: np.ndarray, rng: np.random.Generator, served: artifact.Artifact) -> np.ndarray:
    """The frames, each with 1-4 lone bright pooled pixels at random places (HOT_PIXELS photons):
    a detector's hot pixels, which show on every frame of a run and are none of the classes.
    Trained without them, the heads called every frame of a run with one bright hot pixel ice."""
    out = frames.copy()
    for row in out.reshape(len(out), -1):
        spots = rng.integers(0, row.size, rng.integers(1, 5))
        row[spots] += (rng.uniform(*HOT_PIXELS, len(spots)) * served.info.adu_per_photon).astype(row.dtype)
    return out


def _fit(
    model: heads.ClassHeads,
    train: tuple[torch.Tensor, np.ndarray],
    val: tuple[torch.Tensor, np.ndarray],
    epochs: int,
) -> None:
    """AdamW in batches of 256, each class's undefined frames weighing 0; the weights of the epoch
    with the best mean AUC on the validation frames are kept."""
    x, y = train
    target = torch.from_numpy(np.nan_to_num(y, nan=0.0))
    weight = torch.from_numpy(np.isfinite(y).astype(np.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=0.01)
    best, kept = -1.0, copy.deepcopy(model.state_dict())
    for epoch in tqdm(range(epochs), desc="fit classes", unit="epoch", leave=False):
        model.train()
        for rows in torch.randperm(len(y)).split(256):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(x[rows]), target[rows], weight=weight[rows]
            )
            loss.backward()
            opt.step()
        if epoch % 5 == 4:
            p, y_val = _probabilities(model, val[0]), val[1]
            score = float(
                np.nanmean(
                    [
                        class_report.auc(p[y_val[:, i] == 1, i], p[y_val[:, i] == 0, i])
                        for i in range(y.shape[1])
                    ]
                )
            )
            if score > best:
                best, kept = score, copy.deepcopy(model.state_dict())
    model.load_state_dict(kept)
    model.eval()


def _probabilities(model: heads.ClassHeads, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(x)).numpy()


def _hit_scores_kept(served: artifact.Artifact, scripted: Any, frames: np.ndarray) -> float:
    """max |P(hit)| difference between the served model and the one with classes on the
    validation frames; ValueError over 1e-5, before anything is saved."""
    before = Engine(served, device="cpu", max_batch=64).score(list(frames))
    with torch.no_grad():
        after = np.concatenate(
            [
                scripted(torch.from_numpy(np.asarray(frames[i : i + 64])))[:, 0].numpy()
                for i in range(0, len(frames), 64)
            ]
        )
    drift = float(np.abs(before - after).max())
    if drift > 1e-5:
        raise ValueError(f"the hit scores moved by {drift:.2e} with the classes added: not saved as is")
    return drift


def _record(cfg: ClassConfig, n: int, data_s: float, total_s: float) -> dict[str, Any]:
    return {
        "train": [str(p) for p in cfg.train],
        "val": [str(p) for p in cfg.val],
        "frames": n,
        "epochs": cfg.epochs,
        "specificity_targets": SPECIFICITY,
        "data_seconds": round(data_s, 1),
        "seconds": round(total_s, 1),
    }
