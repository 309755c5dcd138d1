"""Offline trainer: read runs, label them (peakfinder8 or simulator truth), train, validate, save.

Label protocols: the study's quartiles of peak counts; every frame by a floor of peakfinder8 peaks
(`min-peaks`); every frame by the simulator's count of strong spots (`truth`, the shipped model's).

The study's recipe (`--recipe seed`): quartile labels from peak counts, SGD lr 0.002 momentum 0.9,
batch 100, 3 epochs, binary cross-entropy; validation on held-out runs with the same protocol.
`--recipe fast` (AdamW, 8 epochs) trains the compact network, which SGD at lr 0.002 barely moves
in three epochs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from service import artifact, drift, labels, model, preprocess, sources
from service.evaluate import summarise
from service.peaks import PeakFinderParams, region_peak_finder

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipe:
    """Optimiser and schedule."""

    optimiser: str          # "sgd" or "adamw"
    lr: float
    momentum: float = 0.0
    batch_size: int = 100
    epochs: int = 3
    augment: bool = False   # fresh hot and dead pixels per sample (see augment())
    gain_range: float = 1.0  # and each sample's ADU scaled by a factor in [1/g, 1] (see augment())


RECIPES = {
    "seed": Recipe(optimiser="sgd", lr=0.002, momentum=0.9, batch_size=100, epochs=3),  # the study's
    "fast": Recipe(optimiser="adamw", lr=0.003, batch_size=64, epochs=8, augment=True),
    # fast, and gains down to 1/8 of the runs': a detector in a lower gain mode (CSPAD low gain:
    # 1/6.9) looks like these, so the model need not be told the gain
    "fast-gain": Recipe(optimiser="adamw", lr=0.003, batch_size=64, epochs=8, augment=True,
                        gain_range=8.0),
}
HOT_PIXELS_PER_FRAME = 40        # ~3e-4 of a 350x350 region: more than a CSPAD's, on purpose
HOT_PIXEL_MEAN_ADU = 2000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    train_runs: tuple[Path, ...]
    val_runs: tuple[Path, ...]
    out: Path
    architecture: str = "seed"
    recipe: Recipe = RECIPES["seed"]
    recipe_name: str = "seed"
    protocol: str = "quartile"         # "quartile" (the study's), "min-peaks" or "truth" (every frame)
    min_peaks: int = labels.MIN_PEAKS_FOR_HIT   # min-peaks / truth: a hit's peaks / strong spots
    threshold: float = 0.5             # used when target_sensitivity is None
    target_sensitivity: float | None = None   # calibrate the threshold on the validation runs
    seed: int = 0
    limit_per_run: int | None = None
    roi_size: int = 350
    adu_per_photon: float = 0.0        # 0 = from the runs' sidecar (simulator), else required
    peaks: PeakFinderParams = field(default_factory=PeakFinderParams)


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelledFrames:
    regions: np.ndarray        # (N, H, W) model inputs, ADU
    peaks: np.ndarray          # peakfinder8 count per frame
    n_crystals: np.ndarray     # simulator truth, -1 where unknown
    strong_spots: np.ndarray   # simulator truth: strong spots on the run's pixels, -1 where unknown
    kinds: np.ndarray          # simulator frame kind, -1 where unknown
    runs: tuple[str, ...]


def input_spec(roi_size: int, adu_per_photon: float) -> preprocess.InputSpec:
    from service import geometry
    return preprocess.InputSpec(detector="cspad", raw_shape=geometry.RAW_SHAPE,
                                roi_shape=(roi_size, roi_size), roi_index=geometry.roi_index(roi_size),
                                adu_per_photon=adu_per_photon)


def load_runs(paths: tuple[Path, ...], spec: preprocess.InputSpec, params: PeakFinderParams,
              limit: int | None = None, spill: Path | None = None) -> LabelledFrames:
    """Regions, peak counts and truth of every event of the runs (progress bar per run).

    With `spill` (a folder) the regions go to a file there and come back memory-mapped, so runs
    larger than memory train: only the batches in use are read in.
    """
    finder = region_peak_finder(spec, params)
    regions = _Regions(spill)
    peaks, crystals, spots, kinds = [], [], [], []
    for path in paths:
        stored = sources.run_file(path)
        cache = _peak_cache(stored, params, limit)
        counted = list(np.load(cache)) if cache.exists() else None
        start = len(peaks)
        for i, ev in enumerate(tqdm(sources.events(path, limit=limit), desc=f"label {stored.name}",
                                    unit="frame", leave=False, mininterval=1.0)):
            roi = preprocess.region(ev.image, spec)
            regions.add(roi)
            peaks.append(counted[i] if counted is not None else finder.count(roi))
            crystals.append(ev.truth.get("n_crystals", -1))
            spots.append(ev.truth.get("n_strong_spots", -1))
            kinds.append(ev.truth.get("kind", -1))
        if counted is None:
            np.save(cache, np.array(peaks[start:]))
    return LabelledFrames(regions=regions.array(), peaks=np.array(peaks),
                          n_crystals=np.array(crystals), strong_spots=np.array(spots),
                          kinds=np.array(kinds),
                          runs=tuple(str(p) for p in paths))


class _Regions:
    """Model inputs gathered in memory, or written to a file and memory-mapped."""

    def __init__(self, spill: Path | None) -> None:
        self._file = tempfile.NamedTemporaryFile(dir=spill, suffix=".regions", delete=False) \
            if spill is not None else None
        self._kept: list[np.ndarray] = []
        self._first: np.ndarray | None = None
        self.n = 0

    def add(self, roi: np.ndarray) -> None:
        if self._first is None:
            self._first = np.array(roi)
        elif roi.shape != self._first.shape or roi.dtype != self._first.dtype:
            raise ValueError(f"region {roi.dtype}{roi.shape} differs from the first, "
                             f"{self._first.dtype}{self._first.shape}")
        if self._file is not None:
            self._file.write(np.ascontiguousarray(roi).tobytes())
        else:
            self._kept.append(np.array(roi))
        self.n += 1

    def array(self) -> np.ndarray:
        if self._file is None:
            return np.stack(self._kept)
        self._file.close()
        if self._first is None:
            raise ValueError("no frames in these runs")
        return np.memmap(self._file.name, dtype=self._first.dtype, mode="r",
                         shape=(self.n, *self._first.shape))


def _peak_cache(path: Path, params: PeakFinderParams, limit: int | None) -> Path:
    """Where a run's peak counts for these peakfinder8 settings are kept (labelling is the slow part)."""
    key = hashlib.sha256(repr((dataclasses.astuple(params), limit, path.stat().st_size)).encode())
    return path.with_name(f"{path.name}.pf8-{key.hexdigest()[:12]}.npy")


def fit(net: model.HitClassifier, x: np.ndarray, y: np.ndarray, recipe: Recipe, *, seed: int,
        rows: np.ndarray | None = None) -> list[float]:
    """Minimise binary cross-entropy with the recipe; returns the mean loss per epoch.

    Trains on x[rows] (default: all of x) with labels y (one per row); x may be memory-mapped.

    Under torchrun every process draws the same batches (same seed) and takes its share of each;
    the gradients are averaged over the processes before each step, so they step as one: the
    same steps as one process, up to the order of floating-point sums (and uneven last shares).
    """
    torch.manual_seed(seed)
    rank, world = _rank_and_world()
    _sync_parameters(net)
    r = recipe
    optimiser = (torch.optim.SGD(net.parameters(), lr=r.lr, momentum=r.momentum)
                 if r.optimiser == "sgd" else torch.optim.AdamW(net.parameters(), lr=r.lr))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    rows = np.arange(len(x)) if rows is None else rows
    losses = []
    net.train()
    for epoch in range(r.epochs):
        order, total = rng.permutation(len(rows)), 0.0
        bar = tqdm(range(0, len(rows), r.batch_size), desc=f"epoch {epoch + 1}/{r.epochs}",
                   unit="batch", leave=False, mininterval=1.0)
        for start in bar:
            idx = order[start:start + r.batch_size]
            # Every process augments the whole batch (the random stream stays the one process's)
            # and keeps its share: with equal shares the averaged gradient is the whole batch's.
            whole = x[rows[idx]]
            batch = (augment(whole, rng, r.gain_range) if r.augment else whole)[rank::world]
            idx = idx[rank::world]
            optimiser.zero_grad()
            device = next(net.parameters()).device
            loss = loss_fn(net.logits(torch.from_numpy(batch).to(device)),
                           torch.from_numpy(y[idx]).float().to(device))
            loss.backward()
            _average_gradients(net, world)
            optimiser.step()
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        losses.append(_sum_over_processes(total, world) / len(rows))
        log.info("epoch %d: loss %.4f", epoch + 1, losses[-1])
    return losses


def _rank_and_world() -> tuple[int, int]:
    dist = torch.distributed
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _sync_parameters(net: torch.nn.Module) -> None:
    if torch.distributed.is_initialized():
        for p in net.parameters():
            torch.distributed.broadcast(p.data, src=0)


def _average_gradients(net: torch.nn.Module, world: int) -> None:
    if world > 1:
        for p in net.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= world


def _sum_over_processes(value: float, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t)
    return float(t.item())


def _device() -> torch.device:
    """The GPU this process trains on (torchrun: one per local rank), else the CPU."""
    import os
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


def start_distributed() -> tuple[int, int]:
    """Join torchrun's process group when launched by it (gloo on CPU, nccl on GPU); (rank, world)."""
    import os
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(_device())
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _rank_and_world()


def augment(regions: np.ndarray, rng: np.random.Generator, gain_range: float = 1.0) -> np.ndarray:
    """A copy with fresh hot and dead pixels in each frame, and with gain_range > 1 each frame's
    ADU scaled by a log-uniform factor in [1 / gain_range, 1] (rounded, as a lower gain reads).

    Every run has its own fixed hot pixels; a model that saw only the training runs' ones takes a
    new run's for Bragg peaks (the study's drop in held-out specificity). Single bright pixels in
    random places on hits and misses alike teach it that one pixel is not a peak.
    """
    out = regions.copy()
    n, h, w = out.shape
    if gain_range > 1.0:
        gains = np.exp(-rng.uniform(0.0, np.log(gain_range), n))
        out = np.rint(out * gains[:, None, None]).astype(regions.dtype)
    for i in range(n):
        k = rng.poisson(HOT_PIXELS_PER_FRAME)
        flat = out[i].reshape(-1)
        flat[rng.integers(0, h * w, k)] = np.minimum(rng.exponential(HOT_PIXEL_MEAN_ADU, k), 15000)
        flat[rng.integers(0, h * w, k // 2)] = 0
    return out


def predict(net: torch.nn.Module, x: np.ndarray, rows: np.ndarray | None = None,
            batch: int = 128) -> np.ndarray:
    """P(hit) for each region of x[rows] (default: all of x; x may be memory-mapped)."""
    net.eval()
    device = next(net.parameters()).device
    rows = np.arange(len(x)) if rows is None else rows
    with torch.inference_mode():
        return np.concatenate([net(torch.from_numpy(np.array(x[rows[i:i + batch]])).to(device)).cpu().numpy()
                               for i in range(0, len(rows), batch)])


LABELS = {"quartile": "peakfinder8 quartiles (study)",
          "min-peaks": "peakfinder8 >= {n} peaks, every frame",
          "truth": "simulator truth: >= {n} strong spots, every frame"}


def protocol_labels(data: LabelledFrames, cfg: TrainConfig) -> np.ndarray:
    """Labels by the configured protocol (UNUSED for frames it leaves out)."""
    if cfg.protocol == "quartile":
        return labels.quartile_labels(data.peaks, cfg.seed)
    if cfg.protocol == "min-peaks":
        return labels.min_peak_labels(data.peaks, cfg.min_peaks)
    if cfg.protocol == "truth":
        return labels.visible_labels(data.strong_spots, cfg.min_peaks)
    raise ValueError(f"unknown label protocol {cfg.protocol!r}")


def train(cfg: TrainConfig) -> tuple[Path | None, str]:
    """Train and validate; writes the artifact; returns its path and the printed report.

    Under `torchrun --nproc-per-node N` the N processes train data-parallel; rank 0 validates and
    writes the artifact (the others return None). The regions are spilled to a temporary folder
    beside the output and memory-mapped, so runs larger than memory train.
    """
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(cfg.out).parent, prefix=".hitveto-regions-") as spill:
        return _train(cfg, Path(spill))


def _train(cfg: TrainConfig, spill: Path) -> tuple[Path | None, str]:
    t0 = time.monotonic()
    rank, world = start_distributed()
    adu = cfg.adu_per_photon or _adu_from_runs(cfg.train_runs)
    spec = input_spec(cfg.roi_size, adu)
    if rank > 0:
        torch.distributed.barrier()      # rank 0 labels first and caches the peak counts
    train_data = load_runs(cfg.train_runs, spec, cfg.peaks, cfg.limit_per_run, spill)
    val_data = load_runs(cfg.val_runs, spec, cfg.peaks, cfg.limit_per_run, spill)
    if rank == 0 and world > 1:
        torch.distributed.barrier()
    t_data = time.monotonic() - t0
    q = protocol_labels(train_data, cfg)
    labelled, y = np.flatnonzero(q != labels.UNUSED), q[q != labels.UNUSED]
    torch.manual_seed(cfg.seed)
    net = model.build(cfg.architecture, cfg.roi_size, adu).to(_device())
    losses = fit(net, train_data.regions, y, cfg.recipe, seed=cfg.seed, rows=labelled)
    t_fit = time.monotonic() - t0 - t_data
    if rank > 0:
        return None, f"rank {rank} of {world}: trained; rank 0 validates and writes the artifact"
    val_scores = predict(net, val_data.regions)
    threshold, calibration = cfg.threshold, {}
    if cfg.target_sensitivity is not None:
        v = protocol_labels(val_data, cfg)
        used = v != labels.UNUSED
        threshold = labels.calibrate_threshold(val_scores[used], v[used] == labels.HIT,
                                               cfg.target_sensitivity)
        calibration = {"target_sensitivity": cfg.target_sensitivity, "on": "validation runs",
                       "labels": cfg.protocol}
    val = summarise(val_scores, val_data, threshold, cfg.min_peaks)
    train_scores = predict(net, train_data.regions)
    trn = labels.confusion(y == labels.HIT, train_scores[labelled] >= threshold)
    prof = drift.profile(drift.frame_statistics(train_data.regions, train_scores, threshold, spec))
    net = net.cpu().eval()                 # the artifact is device-neutral; the daemon places it
    scripted = torch.jit.freeze(torch.jit.script(net))
    info = artifact.ModelInfo(
        version=f"{cfg.architecture}-{model.weights_digest(net)}", architecture=cfg.architecture,
        detector=spec.detector, raw_shape=spec.raw_shape, roi_shape=spec.roi_shape,
        adu_per_photon=adu, threshold=threshold,
        training={"runs": [str(p) for p in cfg.train_runs], "frames": int(len(train_data.peaks)),
                  "labelled_frames": int(len(y)),
                  "labels": LABELS[cfg.protocol].format(n=cfg.min_peaks),
                  "threshold_calibration": calibration,
                  "recipe": {"name": cfg.recipe_name, **dataclasses.asdict(cfg.recipe), "seed": cfg.seed},
                  "processes": world,
                  "loss_per_epoch": losses, "peakfinder8": dataclasses.asdict(cfg.peaks),
                  "seconds": {"data_and_labels": round(t_data, 1), "fit": round(t_fit, 1)}},
        validation={"runs": [str(p) for p in cfg.val_runs], **val}, profile=prof.to_dict())
    path = artifact.save(cfg.out, scripted, info, spec.roi_index)
    report = "\n\n".join([
        labels.study_table(trn, f"Training data ({cfg.protocol} protocol)"),
        labels.study_table(val["quartile"], "Validation runs (quartile protocol)"),
        *([labels.study_table(val["min_peaks"], "Validation runs (min-peaks protocol)")]
          if cfg.protocol == "min-peaks" else []),
        *([labels.study_table(val["visible"],
                              f"Validation runs, all frames vs truth (>= {cfg.min_peaks} strong spots)")]
          if cfg.protocol == "truth" else []),
        *([labels.study_table(val["truth"], "Validation runs, all frames vs truth")]
          if "truth" in val else []),
        f"threshold {threshold:.4f}" + (f" (calibrated for sensitivity {cfg.target_sensitivity})"
                                         if calibration else ""),
        f"frames: {len(train_data.peaks)} train ({len(y)} labelled), {len(val_data.peaks)} validation;"
        f" data+labels {t_data:.1f} s, fit {t_fit:.1f} s; artifact {path} ({info.version})"])
    return path, report


def _adu_from_runs(paths: tuple[Path, ...]) -> float:
    gain = sources.sidecar_gain(paths)
    if gain is None:
        gains = {sources.run_info(p).get("adu_per_photon") for p in paths}
        raise ValueError(f"cannot tell ADU per photon from the runs' sidecars ({gains}); "
                         "pass --adu-per-photon")
    return gain
