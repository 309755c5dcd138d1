"""Offline trainer: read runs, label them (peakfinder8 or simulator truth), train, validate, save.

Label protocols (labels.PROTOCOLS): the study's quartiles of peak counts; every frame by a floor of
peakfinder8 peaks (`min-peaks`); every frame by the simulator's count of strong spots (`truth`, the
shipped model's).

The study's recipe (`--recipe seed`): quartile labels from peak counts, SGD lr 0.002 momentum 0.9,
batch 100, 3 epochs, binary cross-entropy; validation on held-out runs with the same protocol.
`--recipe fast` (AdamW, 8 epochs) trains the compact network, which SGD at lr 0.002 barely moves
in three epochs.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from hitveto.io.calibration import load as load_constants
from hitveto.io.peaks import PeakFinderParams
from hitveto.models import artifact, networks, stream_profile
from hitveto.models.preprocess import InputSpec
from hitveto.offline import distributed, labels
from hitveto.offline.augment import augment
from hitveto.offline.datasets import LabelledFrames, adu_from_runs, detector_of_runs, input_spec, load_runs
from hitveto.offline.evaluate import summarise
from hitveto.offline.recipes import RECIPES as RECIPES  # re-exported: `train.RECIPES`
from hitveto.offline.recipes import Recipe, optimiser_for

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    train_runs: tuple[Path, ...]
    val_runs: tuple[Path, ...]
    out: Path
    architecture: str = "seed"
    recipe: Recipe = RECIPES["seed"]
    recipe_name: str = "seed"
    protocol: Literal["quartile", "min-peaks", "truth"] = "quartile"  # labels.PROTOCOLS
    min_peaks: int = labels.MIN_PEAKS_FOR_HIT  # min-peaks / truth: a hit's peaks / strong spots
    threshold: float = 0.5  # used when target_sensitivity is None
    target_sensitivity: float | None = None  # calibrate the threshold on the validation runs
    seed: int = 0
    limit_per_run: int | None = None
    roi_size: int = 350
    adu_per_photon: float = 0.0  # 0 = from the runs' sidecar (simulator), else required
    peaks: PeakFinderParams | None = None  # None: the defaults at the model's ADU per photon
    constants: Path | None = None  # raw runs are calibrated with these (hitveto dark)
    layout: Literal["roi", "raw"] = "roi"  # the region, or the whole detector (architecture panels)

    def __post_init__(self) -> None:
        takes = networks.LAYOUT_OF.get(self.architecture)
        if takes != self.layout:
            raise ValueError(
                f"architecture {self.architecture!r} takes the {takes} layout, not {self.layout!r}"
            )


def fit(
    net: networks.HitClassifier,
    x: np.ndarray,
    y: np.ndarray,
    recipe: Recipe,
    *,
    seed: int,
    rows: np.ndarray | None = None,
) -> list[float]:
    """Minimise binary cross-entropy with the recipe; returns the mean loss per epoch.

    Trains on x[rows] (default: all of x) with labels y (one per row); x may be memory-mapped.

    Under torchrun every process draws the same batches (same seed) and takes its share of each;
    the gradients are averaged over the processes before each step, so they step as one: the
    same steps as one process, up to the order of floating-point sums (and uneven last shares).
    """
    torch.manual_seed(seed)
    rank, world = distributed.rank_and_world()
    distributed.sync_parameters(net)
    r = recipe
    rows = np.arange(len(x)) if rows is None else rows
    optimiser, schedule = optimiser_for(net, r, steps=r.epochs * -(-len(rows) // r.batch_size))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(r.hit_weight))
    rng = np.random.default_rng(seed)
    losses = []
    net.train()
    for epoch in range(r.epochs):
        order, total = rng.permutation(len(rows)), 0.0
        bar = tqdm(
            range(0, len(rows), r.batch_size),
            desc=f"epoch {epoch + 1}/{r.epochs}",
            unit="batch",
            leave=False,
            mininterval=1.0,
        )
        for start in bar:
            idx = order[start : start + r.batch_size]
            # Every process augments the whole batch (the random stream stays the one process's)
            # and keeps its share: with equal shares the averaged gradient is the whole batch's.
            whole = x[rows[idx]]
            batch = (augment(whole, rng, r.gain_range, r.hot_pixels) if r.augment else whole)[rank::world]
            idx = idx[rank::world]
            optimiser.zero_grad()
            device = next(net.parameters()).device
            loss = loss_fn(
                net.logits(torch.from_numpy(batch).to(device)), torch.from_numpy(y[idx]).float().to(device)
            )
            loss.backward()
            distributed.average_gradients(net, world)
            optimiser.step()
            if schedule is not None:
                schedule.step()
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        losses.append(distributed.sum_over_processes(total, world) / len(rows))
        log.info("epoch %d: loss %.4f", epoch + 1, losses[-1])
    return losses


def predict(
    net: torch.nn.Module, x: np.ndarray, rows: np.ndarray | None = None, batch: int = 128
) -> np.ndarray:
    """P(hit) for each region of x[rows] (default: all of x; x may be memory-mapped)."""
    net.eval()
    device = next(net.parameters()).device
    rows = np.arange(len(x)) if rows is None else rows
    with torch.inference_mode():
        return np.concatenate(
            [
                net(torch.from_numpy(np.array(x[rows[i : i + batch]])).to(device)).cpu().numpy()
                for i in range(0, len(rows), batch)
            ]
        )


def train(cfg: TrainConfig) -> tuple[Path | None, str]:
    """Train and validate; writes the artifact; returns its path and the printed report.

    Under `torchrun --nproc-per-node N` the N processes train data-parallel; rank 0 validates and
    writes the artifact (the others return None). The regions are spilled to a temporary folder
    beside the output and memory-mapped, so runs larger than memory train.
    """
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(cfg.out).parent, prefix=".hitveto-regions-") as spill:
        return _train(cfg, Path(spill))


@dataclass(frozen=True, slots=True, kw_only=True)
class _Fitted:
    net: torch.nn.Module
    spec: InputSpec
    train_data: LabelledFrames
    val_data: LabelledFrames
    labelled: np.ndarray  # training rows the protocol labels
    y: np.ndarray  # their labels
    losses: list[float]
    world: int
    seconds: dict[str, float]


def _train(cfg: TrainConfig, spill: Path) -> tuple[Path | None, str]:
    t0 = time.monotonic()
    rank, world = distributed.start()
    adu = cfg.adu_per_photon or adu_from_runs(cfg.train_runs)
    spec = input_spec(cfg.roi_size, adu, cfg.layout, detector_of_runs(cfg.train_runs + cfg.val_runs))
    cfg = dataclasses.replace(cfg, peaks=cfg.peaks or PeakFinderParams.for_gain(adu))
    assert cfg.peaks is not None
    constants = load_constants(cfg.constants) if cfg.constants else None
    if rank > 0:
        torch.distributed.barrier()  # rank 0 labels first and caches the peak counts
    # peakfinder8 on a whole frame costs ~0.1 s: the raw layout counts peaks only to label by them
    count = cfg.protocol != "truth" or cfg.layout == "roi"
    train_data = load_runs(cfg.train_runs, spec, cfg.peaks, cfg.limit_per_run, spill, count, constants)
    val_data = load_runs(cfg.val_runs, spec, cfg.peaks, cfg.limit_per_run, spill, count, constants)
    if rank == 0 and world > 1:
        torch.distributed.barrier()
    t_data = time.monotonic() - t0
    q = _labels(train_data, cfg)
    labelled, y = np.flatnonzero(q != labels.UNUSED), q[q != labels.UNUSED]
    torch.manual_seed(cfg.seed)
    net = _network(cfg, spec).to(distributed.device())
    recipe = cfg.recipe if cfg.layout == "roi" else dataclasses.replace(cfg.recipe, hot_pixels=False)
    losses = fit(net, train_data.regions, y, recipe, seed=cfg.seed, rows=labelled)
    if rank > 0:
        return None, f"rank {rank} of {world}: trained; rank 0 validates and writes the artifact"
    seconds = {"data_and_labels": round(t_data, 1), "fit": round(time.monotonic() - t0 - t_data, 1)}
    return _validate_and_save(
        cfg,
        _Fitted(
            net=net,
            spec=spec,
            train_data=train_data,
            val_data=val_data,
            labelled=labelled,
            y=y,
            losses=losses,
            world=world,
            seconds=seconds,
        ),
    )


def _network(cfg: TrainConfig, spec: InputSpec) -> networks.HitClassifier:
    """A new network for this input: the region, or the whole detector with its panels' radii and
    azimuths."""
    radius = azimuth = None
    if spec.layout == "raw":
        from hitveto.io import geometry

        radius = torch.from_numpy(geometry.panel_radius(spec.pool, spec.detector))
        azimuth = torch.from_numpy(geometry.panel_azimuth(spec.pool, spec.detector))
    return networks.build(cfg.architecture, cfg.roi_size, spec.adu_per_photon, radius, azimuth)


def _labels(data: LabelledFrames, cfg: TrainConfig) -> np.ndarray:
    return labels.by_protocol(
        cfg.protocol, data.peaks, data.strong_spots, min_peaks=cfg.min_peaks, seed=cfg.seed
    )


def _validate_and_save(cfg: TrainConfig, f: _Fitted) -> tuple[Path, str]:
    val_scores = predict(f.net, f.val_data.regions)
    threshold, calibration = cfg.threshold, {}
    if cfg.target_sensitivity is not None:
        v = _labels(f.val_data, cfg)
        used = v != labels.UNUSED
        threshold = labels.calibrate_threshold(
            val_scores[used], v[used] == labels.HIT, cfg.target_sensitivity
        )
        calibration = {
            "target_sensitivity": cfg.target_sensitivity,
            "on": "validation runs",
            "labels": cfg.protocol,
        }
    val = summarise(val_scores, f.val_data, threshold, cfg.min_peaks)
    train_scores = predict(f.net, f.train_data.regions)
    trn = labels.confusion(f.y == labels.HIT, train_scores[f.labelled] >= threshold)
    prof = stream_profile.profile(
        stream_profile.frame_statistics(f.train_data.regions, train_scores, threshold, f.spec)
    )
    net = f.net.cpu().eval()  # the artifact is device-neutral; the daemon places it
    info = artifact.ModelInfo(
        version=f"{cfg.architecture}-{networks.weights_digest(net)}",
        architecture=cfg.architecture,
        detector=f.spec.detector,
        raw_shape=f.spec.raw_shape,
        roi_shape=f.spec.roi_shape,
        layout=f.spec.layout,
        pool=f.spec.pool,
        adu_per_photon=f.spec.adu_per_photon,
        threshold=threshold,
        training=_training_record(cfg, f, calibration),
        validation={"runs": [str(p) for p in cfg.val_runs], **val},
        profile=prof.to_dict(),
    )
    path = artifact.save(cfg.out, torch.jit.freeze(torch.jit.script(net)), info, f.spec.roi_index)
    return path, _report(cfg, f, trn, val, threshold, bool(calibration), f"{path} ({info.version})")


def _training_record(cfg: TrainConfig, f: _Fitted, calibration: dict[str, Any]) -> dict[str, Any]:
    return {
        "runs": [str(p) for p in cfg.train_runs],
        "frames": int(len(f.train_data.peaks)),
        "labelled_frames": int(len(f.y)),
        "labels": labels.PROTOCOLS[cfg.protocol].format(n=cfg.min_peaks),
        "threshold_calibration": calibration,
        "recipe": {"name": cfg.recipe_name, **dataclasses.asdict(cfg.recipe), "seed": cfg.seed},
        "processes": f.world,
        "loss_per_epoch": f.losses,
        "peakfinder8": dataclasses.asdict(cfg.peaks) if cfg.peaks else {},
        "constants": str(cfg.constants) if cfg.constants else None,
        "seconds": f.seconds,
    }


def _report(
    cfg: TrainConfig,
    f: _Fitted,
    trn: dict[str, float],
    val: dict[str, Any],
    threshold: float,
    calibrated: bool,
    written: str,
) -> str:
    tables = [labels.study_table(trn, f"Training data ({cfg.protocol} protocol)")]
    if "quartile" in val:  # peakfinder8 counted the validation runs
        tables.append(labels.study_table(val["quartile"], "Validation runs (quartile protocol)"))
    if cfg.protocol == "min-peaks":
        tables.append(labels.study_table(val["min_peaks"], "Validation runs (min-peaks protocol)"))
    if cfg.protocol == "truth":
        tables.append(
            labels.study_table(
                val["visible"], f"Validation runs, all frames vs truth (>= {cfg.min_peaks} strong spots)"
            )
        )
    if "truth" in val:
        tables.append(labels.study_table(val["truth"], "Validation runs, all frames vs truth"))
    calibrated_for = f" (calibrated for sensitivity {cfg.target_sensitivity})" if calibrated else ""
    s = f.seconds
    return "\n\n".join(
        [
            *tables,
            f"threshold {threshold:.4f}{calibrated_for}",
            f"frames: {len(f.train_data.peaks)} train ({len(f.y)} labelled), "
            f"{len(f.val_data.peaks)} validation;"
            f" data+labels {s['data_and_labels']:.1f} s, fit {s['fit']:.1f} s; artifact {written}",
        ]
    )
