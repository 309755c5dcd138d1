"""Commands that make, judge or inspect a model: train, evaluate, audit, adapt, profile, inspect."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hitveto.cli.args import call_with
from hitveto.io.peaks import MIN_PEAKS_FOR_HIT

LABEL_PROTOCOLS = ("quartile", "min-peaks", "truth")  # offline/labels.py: PROTOCOLS


def register(sub: Any) -> None:
    for add in (
        add_train,
        add_train_classes,
        add_evaluate,
        add_threshold,
        add_audit,
        add_adapt,
        add_profile,
        add_inspect,
    ):
        add(sub)


def add_train(sub: Any) -> None:
    s = sub.add_parser("train", help="label runs with peakfinder8, train, validate, write an artifact")
    s.add_argument("--train", dest="train_runs", metavar="TRAIN", type=Path, nargs="+", required=True)
    s.add_argument("--val", dest="val_runs", metavar="VAL", type=Path, nargs="+", required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument(
        "--layout",
        choices=["roi", "raw"],
        default="roi",
        help="roi: the region round the beam; raw: the whole detector, every panel (architecture panels)",
    )
    s.add_argument(
        "--arch",
        dest="architecture",
        choices=["seed", "compact", "panels", "panels-local", "panels-rings"],
        help="default: seed for the roi layout, panels for raw (panels-local: spots counted above "
        "their neighbourhood, for low-noise detectors; panels-rings: also where the counted pixels "
        "lie round the beam, for ice crystallites and bright jet streaks: docs/MODEL.md)",
    )
    s.add_argument(
        "--recipe",
        dest="recipe_name",
        choices=["seed", "fast", "fast-gain", "full"],
        default="seed",
        help="seed: the study's SGD recipe; fast: AdamW, 8 epochs; fast-gain: fast with gains down to "
        "1/8 of the runs'; full: AdamW, 12 epochs, cosine learning rate, a hit weighing 4 misses (the "
        "full-detector model's)",
    )
    s.add_argument("--epochs", type=int, help="override the recipe's epochs")
    s.add_argument(
        "--labels",
        dest="protocol",
        choices=LABEL_PROTOCOLS,
        default="quartile",
        help="quartile: the study's protocol; min-peaks: every frame, hit = >= N peakfinder8 peaks; "
        "truth: every frame, hit = >= N strong spots by the simulator's truth",
    )
    s.add_argument(
        "--min-peaks",
        type=int,
        default=MIN_PEAKS_FOR_HIT,
        help="the indexability floor: peaks (min-peaks) or strong spots (truth) of a hit",
    )
    s.add_argument(
        "--target-sensitivity",
        type=float,
        help="calibrate the threshold on the validation runs for this hit sensitivity",
    )
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--limit", dest="limit_per_run", metavar="LIMIT", type=int, help="at most this many frames per run"
    )
    s.add_argument("--adu-per-photon", type=float, default=0.0)
    s.add_argument(
        "--constants", type=Path, help="calibrate the raw runs with these, as the daemon will (hitveto dark)"
    )
    s.set_defaults(func=train)


def train(args: argparse.Namespace) -> int:
    import dataclasses

    from hitveto.offline.train import RECIPES, TrainConfig
    from hitveto.offline.train import train as fit_and_save

    recipe = RECIPES[args.recipe_name]
    if args.epochs:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    runs = {"train_runs": tuple(args.train_runs), "val_runs": tuple(args.val_runs)}
    architecture = args.architecture or {"roi": "seed", "raw": "panels"}[args.layout]
    cfg = call_with(TrainConfig, args, recipe=recipe, architecture=architecture, **runs)
    _, report = fit_and_save(cfg)
    print(report)
    return 0


def add_train_classes(sub: Any) -> None:
    s = sub.add_parser(
        "train-classes",
        help="add verdict classes (multiple crystals, ice, jet streak, blank) to a full-detector model",
    )
    s.add_argument("model", type=Path, help="the full-detector model: its hit score stays as it is")
    s.add_argument("--train", type=Path, nargs="+", required=True, help="simulated runs (their truth)")
    s.add_argument("--val", type=Path, nargs="+", required=True, help="runs that set each class's threshold")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--epochs", type=int, default=150, help="the best on the validation runs is kept")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=train_classes)


def train_classes(args: argparse.Namespace) -> int:
    from hitveto.offline.classes import ClassConfig, train_classes

    args.train, args.val = tuple(args.train), tuple(args.val)
    path, report = train_classes(call_with(ClassConfig, args))
    print(report)
    print(path)
    return 0


def add_evaluate(sub: Any) -> None:
    s = sub.add_parser("evaluate", help="a model's report on runs, beside peakfinder8 (PNG + JSON)")
    s.add_argument("artifact", type=Path)
    s.add_argument("runs", type=Path, nargs="+")
    s.add_argument(
        "--min-peaks",
        type=int,
        default=MIN_PEAKS_FOR_HIT,
        help="the indexability floor: peakfinder8 peaks, and strong spots of the truth, of a hit",
    )
    s.add_argument("--out", type=Path, help="write evaluation.json and evaluation.png here")
    s.add_argument("--constants", type=Path, help="raw runs: calibrate them with these (hitveto dark)")
    c = s.add_argument_group("CrystFEL as the reference (indexed = hit)")
    c.add_argument("--crystfel", action="store_true", help="index every frame with indexamajig first")
    c.add_argument("--indexamajig", default="indexamajig", help="the program (default: on PATH)")
    c.add_argument("--cell", type=Path, help="unit cell file (default: the simulated crystal's)")
    c.add_argument("--geometry", type=Path, help="geometry file (default: hitveto geom's for the run)")
    c.add_argument("--index-dir", type=Path, help="keep geometry, cell and streams here")
    s.set_defaults(func=evaluate)


def evaluate(args: argparse.Namespace) -> int:
    from hitveto.io import calibration
    from hitveto.offline.evaluate import evaluate_runs
    from hitveto.offline.indexing import IndexingOptions

    indexing = (
        IndexingOptions(
            indexamajig=args.indexamajig, cell=args.cell, geometry=args.geometry, workdir=args.index_dir
        )
        if args.crystfel
        else None
    )
    runs = tuple(args.runs)
    constants = calibration.load(args.constants) if args.constants else None
    print(
        evaluate_runs(
            args.artifact,
            runs,
            min_peaks=args.min_peaks,
            out_dir=args.out,
            indexing=indexing,
            constants=constants,
        )
    )
    return 0


def add_threshold(sub: Any) -> None:
    s = sub.add_parser(
        "threshold", help="a model's threshold calibrated again on validation runs (same weights)"
    )
    s.add_argument("artifact", type=Path)
    s.add_argument("runs", type=Path, nargs="+", help="validation runs the model was not trained on")
    s.add_argument("--out", type=Path, required=True, help="the model with the new threshold")
    s.add_argument("--target-sensitivity", type=float, default=0.995)
    s.add_argument(
        "--min-peaks", type=int, default=MIN_PEAKS_FOR_HIT, help="strong spots (truth), else peaks, of a hit"
    )
    s.add_argument("--constants", type=Path, help="raw runs: calibrate them with these (hitveto dark)")
    s.set_defaults(func=threshold)


def threshold(args: argparse.Namespace) -> int:
    from hitveto.io import calibration
    from hitveto.offline.threshold import recalibrate

    constants = calibration.load(args.constants) if args.constants else None
    print(
        recalibrate(
            args.artifact,
            tuple(args.runs),
            args.out,
            target_sensitivity=args.target_sensitivity,
            min_peaks=args.min_peaks,
            constants=constants,
        )
    )
    return 0


def add_audit(sub: Any) -> None:
    s = sub.add_parser("audit", help="the veto's hit loss, estimated from the audit frames kept")
    s.add_argument("files", type=Path, nargs="+", help="CXI files written by replay/write/demo")
    s.add_argument("--fraction", type=float, default=0.02, help="the daemon's audit.fraction")
    s.add_argument(
        "--min-peaks",
        type=int,
        default=MIN_PEAKS_FOR_HIT,
        help="without truth: peakfinder8 peaks that make a hit",
    )
    s.add_argument(
        "--model",
        type=Path,
        help="without truth: count peaks in this artifact's region; default: the shipped model's",
    )
    s.set_defaults(func=audit)


def audit(args: argparse.Namespace) -> int:
    from hitveto.models import artifact
    from hitveto.offline.estimate import estimate

    spec = artifact.read(args.model).spec if args.model else None
    loss = estimate(args.files, fraction=args.fraction, min_peaks=args.min_peaks, spec=spec)
    print("\n".join(loss.lines()))
    return 0


def add_adapt(sub: Any) -> None:
    s = sub.add_parser(
        "adapt",
        help="fine-tune the serving model on a new experiment's first frames; write it only if it meets "
        "the sensitivity target",
    )
    s.add_argument(
        "sources", type=Path, nargs="+", help="run files, or CXI files written in learn mode, in time order"
    )
    s.add_argument("--model", type=Path, required=True, help="the model serving now")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--frames", type=int, default=3000, help="the window: this many first frames")
    s.add_argument(
        "--min-peaks", type=int, default=3, help="peakfinder8 peaks in the model's region that make a hit"
    )
    s.add_argument("--target-sensitivity", type=float, default=0.99)
    s.add_argument(
        "--min-specificity", type=float, default=0.9, help="and it must veto this share of the misses"
    )
    s.add_argument(
        "--adu-per-photon",
        type=float,
        default=0.0,
        help="the new experiment's gain (default: the runs' sidecar, else the model's)",
    )
    s.add_argument("--epochs", type=int, help="fine-tuning epochs (default 4)")
    s.add_argument("--workers", type=int, default=2, help="peakfinder8 processes")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--reload", metavar="CONTROL", help="swap the new model into the daemon there")
    s.set_defaults(func=adapt)


def adapt(args: argparse.Namespace) -> int:
    import dataclasses

    from hitveto.offline.adapt import AdaptConfig
    from hitveto.offline.adapt import adapt as fine_tune

    cfg = call_with(AdaptConfig, args, sources=tuple(args.sources))
    if args.epochs:
        cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, epochs=args.epochs))
    result = fine_tune(cfg)
    print("\n".join(result.lines()))
    if result.path is None:
        return 2
    return _reload(args.reload, result.path) if args.reload else 0


def _reload(endpoint: str, path: Path) -> int:
    from hitveto.serving.control import request

    reply = request(endpoint, "reload", artifact=str(path.resolve()))
    outcome = f"serving {reply['result']['version']}" if reply.get("ok") else f"refused: {reply.get('error')}"
    print(f"reload on {endpoint}: {outcome}")
    return 0 if reply.get("ok") else 1


def add_profile(sub: Any) -> None:
    s = sub.add_parser(
        "profile", help="add the training data profile (for drift alarms) to a model made without one"
    )
    s.add_argument("artifact", type=Path)
    s.add_argument("runs", type=Path, nargs="+", help="the runs it was trained on")
    s.add_argument("--out", type=Path, help="write here (default: replace the artifact)")
    s.set_defaults(func=profile)


def profile(args: argparse.Namespace) -> int:
    from hitveto.models import artifact
    from hitveto.offline.profile import profile_runs

    art = artifact.read(args.artifact)
    measured = profile_runs(art, tuple(args.runs))
    path = artifact.rewrite(art, args.out or args.artifact, profile=measured.to_dict())
    print(f"training profile of {len(args.runs)} runs added: {path}")
    return 0


def add_inspect(sub: Any) -> None:
    s = sub.add_parser("inspect", help="print a model artifact's metadata")
    s.add_argument("artifact", type=Path)
    s.set_defaults(func=inspect)


def inspect(args: argparse.Namespace) -> int:
    from hitveto.models import artifact

    a = artifact.read(args.artifact)
    print(a.info.to_json())
    print(f"sha256: {a.sha256}")
    return 0
