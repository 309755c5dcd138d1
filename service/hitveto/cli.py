"""`hitveto` command line: parses arguments, then calls one function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hitveto.config import DEFAULT_CONTROL
from hitveto.offline.labels import MIN_PEAKS_FOR_HIT


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.func(args) or 0


def _serve(args: argparse.Namespace) -> int:
    import os

    from hitveto import config
    from hitveto.serving.daemon import Daemon
    overrides = dict(kv.split("=", 1) for kv in args.set)
    for flag, key in (("artifact", "model.artifact"), ("device", "model.device"),
                      ("ingest", "ingest.endpoint"), ("publish", "publish.endpoint"),
                      ("metrics_port", "metrics.port"), ("control", "control.endpoint")):
        if getattr(args, flag) is not None:
            overrides[key] = str(getattr(args, flag))
    cfg = config.load(args.config, os.environ, overrides)
    # The inference thread needs the GIL for every op dispatch; Python's default 5 ms switch
    # interval let the ingest and publish threads starve it (measured: half the overload keeps
    # at 900 region frames/s with 0.5 ms).
    sys.setswitchinterval(0.0005)
    daemon = Daemon(cfg)
    daemon.start()
    daemon.serve_forever()
    return daemon.exit_code


def _ctl(args: argparse.Namespace) -> int:
    import json

    from hitveto.serving.control import request
    params = {"artifact": args.artifact} if args.artifact else {}
    if args.command == "learn":
        params["on"] = args.state != "off"
    reply = request(args.endpoint, args.command, **params)
    print(json.dumps(reply, indent=1, default=str))
    return 0 if reply.get("ok") else 1


def _keys(args: argparse.Namespace) -> int:
    from hitveto.serving.security import create_keys
    for name, path in create_keys(args.folder).items():
        print(f"{name:14s} {path}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from hitveto.sim.run import simulate_runs
    for path in simulate_runs(args.out, runs=args.runs, n_frames=args.frames, preset=args.preset,
                              layout=args.layout, fmt=args.format, seed=args.seed):
        print(path)
    return 0


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from hitveto.offline.train import RECIPES, TrainConfig, train
    recipe = RECIPES[args.recipe]
    if args.epochs:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    cfg = TrainConfig(train_runs=tuple(args.train), val_runs=tuple(args.val), out=args.out,
                      architecture=args.arch, recipe=recipe, recipe_name=args.recipe,
                      seed=args.seed, limit_per_run=args.limit, adu_per_photon=args.adu_per_photon,
                      protocol=args.labels, min_peaks=args.min_peaks,
                      target_sensitivity=args.target_sensitivity)
    _, report = train(cfg)
    print(report)
    return 0


def _replay(args: argparse.Namespace) -> int:
    import contextlib

    from hitveto.offline.replay import frames_of, live_frames, private_daemon, replay
    if bool(args.runs) == bool(args.shmem):
        raise SystemExit("hitveto replay: give run files or --shmem TAG, not both")
    frames = (live_frames(args.shmem, detector=args.detector, runs=args.live_runs, limit=args.limit)
              if args.shmem else frames_of(args.runs, detector=args.detector, limit=args.limit))
    with contextlib.ExitStack() as stack:
        frames_to, verdicts_from = args.frames, args.verdicts
        if args.model:                                    # a daemon of our own, reproducible
            daemon = stack.enter_context(private_daemon(args.model))
            frames_to, verdicts_from = daemon.ingest, daemon.publish
        summary = replay(frames, frames_endpoint=frames_to, verdicts_endpoint=verdicts_from,
                         out_dir=args.out, rate_hz=args.rate, deadline_ms=args.deadline_ms,
                         verdict_log=args.verdict_log)
    print("\n".join(summary.lines()))
    return 0 if summary.ok else 1


def _reprocess(args: argparse.Namespace) -> int:
    from hitveto.offline.reprocess import read_verdicts, reprocess
    path = reprocess(args.directory, experiment=args.experiment, run=args.run, out=args.out,
                     model=args.model, detector=args.detector, batch_size=args.batch_size)
    if path is not None:                              # rank 0 (or a serial run)
        rows = read_verdicts(path)
        print(f"{len(rows)} events judged, {sum(r.hit for r in rows)} hits: {path}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from hitveto.models import artifact
    from hitveto.offline.estimate import estimate
    spec = artifact.read(args.model).spec if args.model else None
    loss = estimate(args.files, fraction=args.fraction, min_peaks=args.min_peaks, spec=spec)
    print("\n".join(loss.lines()))
    return 0


def _write(args: argparse.Namespace) -> int:
    import signal
    import threading

    from hitveto_client.relay import write_hits
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    summary = write_hits(args.listen, frames_endpoint=args.frames, verdicts_endpoint=args.verdicts,
                         out_dir=args.out, deadline_ms=args.deadline_ms, max_frames=args.max_frames,
                         max_bytes=int(args.max_gb * 2**30), count=args.count, stop=stop,
                         metrics_port=args.metrics_port)
    print("\n".join(summary.lines()), flush=True)
    return 0 if summary.ok else 1


def _tail(args: argparse.Namespace) -> int:
    from hitveto_client.tail import tail
    try:
        tail(args.verdicts, interval_s=args.interval, windows=args.count)
    except KeyboardInterrupt:
        pass
    return 0


def _demo(args: argparse.Namespace) -> int:
    from hitveto.demo import run_demo
    summary = run_demo(args.workdir, n_frames=args.frames, rate_hz=args.rate)
    print("\n".join(["", "hitveto demo: simulated CSPAD run -> veto daemon -> hit writer", *summary.lines()]))
    return 0 if summary.ok else 1


def _evaluate(args: argparse.Namespace) -> int:
    from hitveto.offline.evaluate import evaluate_runs
    print(evaluate_runs(args.artifact, tuple(args.runs), min_peaks=args.min_peaks, out_dir=args.out))
    return 0


def _adapt(args: argparse.Namespace) -> int:
    import dataclasses

    from hitveto.offline.adapt import AdaptConfig, adapt
    from hitveto.serving.control import request
    cfg = AdaptConfig(sources=tuple(args.sources), model=args.model, out=args.out,
                      frames=args.frames, min_peaks=args.min_peaks,
                      target_sensitivity=args.target_sensitivity,
                      min_specificity=args.min_specificity, adu_per_photon=args.adu_per_photon,
                      workers=args.workers, seed=args.seed)
    if args.epochs:
        cfg = dataclasses.replace(cfg, recipe=dataclasses.replace(cfg.recipe, epochs=args.epochs))
    result = adapt(cfg)
    print("\n".join(result.lines()))
    if result.path is None:
        return 2
    if args.reload:
        reply = request(args.reload, "reload", artifact=str(result.path.resolve()))
        print(f"reload on {args.reload}: " + (f"serving {reply['result']['version']}" if reply.get("ok")
                                              else f"refused: {reply.get('error')}"))
        return 0 if reply.get("ok") else 1
    return 0


def _profile(args: argparse.Namespace) -> int:
    from hitveto.models import artifact
    from hitveto.offline.profile import profile_runs
    art = artifact.read(args.artifact)
    path = artifact.rewrite(art, args.out or args.artifact,
                            profile=profile_runs(art, tuple(args.runs)).to_dict())
    print(f"training profile of {len(args.runs)} runs added: {path}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from hitveto.models import artifact
    a = artifact.read(args.artifact)
    print(a.info.to_json())
    print(f"sha256: {a.sha256}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hitveto", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the veto daemon")
    s.add_argument("--config", type=Path, help="TOML file (docs/CONFIG.md)")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    s.add_argument("--artifact", type=Path)
    s.add_argument("--device")
    s.add_argument("--ingest", help="frames endpoint to bind, e.g. tcp://127.0.0.1:5550")
    s.add_argument("--publish", help="verdicts endpoint to bind")
    s.add_argument("--metrics-port", type=int)
    s.add_argument("--control", help="control endpoint to bind ('' = off)")
    s.set_defaults(func=_serve)

    s = sub.add_parser("ctl", help="send a control command (status, stats, reload, learn) to a daemon")
    s.add_argument("command", choices=["status", "stats", "reload", "learn"])
    s.add_argument("state", nargs="?", choices=["on", "off"], default="on",
                   help="for learn: keep every frame (on) or the configured audit share (off)")
    s.add_argument("--endpoint", default=DEFAULT_CONTROL,
                   help=f"the daemon's control.endpoint (default {DEFAULT_CONTROL})")
    s.add_argument("--artifact", help="for reload: the model file to swap in")
    s.set_defaults(func=_ctl)

    s = sub.add_parser("keys", help="create CURVE keypairs for the daemon and one client")
    s.add_argument("folder", type=Path)
    s.set_defaults(func=_keys)

    s = sub.add_parser("simulate", help="write simulated SFX runs (xtc2 or CXI)")
    s.add_argument("out", type=Path)
    s.add_argument("--runs", type=int, nargs="+", default=[1])
    s.add_argument("--frames", type=int, default=200)
    s.add_argument("--preset", default="lysozyme")
    s.add_argument("--layout", choices=["raw", "roi"], default="raw")
    s.add_argument("--format", choices=["xtc2", "cxi"], default="xtc2")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_simulate)

    s = sub.add_parser("train", help="label runs with peakfinder8, train, validate, write an artifact")
    s.add_argument("--train", type=Path, nargs="+", required=True)
    s.add_argument("--val", type=Path, nargs="+", required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--arch", choices=["seed", "compact"], default="seed")
    s.add_argument("--recipe", choices=["seed", "fast", "fast-gain"], default="seed",
                   help="seed: the study's SGD recipe; fast: AdamW, 8 epochs; fast-gain: fast with "
                   "gains down to 1/8 of the runs'")
    s.add_argument("--epochs", type=int, help="override the recipe's epochs")
    s.add_argument("--labels", choices=["quartile", "min-peaks", "truth"], default="quartile",
                   help="quartile: the study's protocol; min-peaks: every frame, hit = >= N peakfinder8 "
                        "peaks; truth: every frame, hit = >= N strong spots by the simulator's truth")
    s.add_argument("--min-peaks", type=int, default=MIN_PEAKS_FOR_HIT,
                   help="the indexability floor: peaks (min-peaks) or strong spots (truth) of a hit")
    s.add_argument("--target-sensitivity", type=float,
                   help="calibrate the threshold on the validation runs for this hit sensitivity")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--limit", type=int, help="at most this many frames per run")
    s.add_argument("--adu-per-photon", type=float, default=0.0)
    s.set_defaults(func=_train)

    s = sub.add_parser("replay", help="stream runs to a daemon and write the frames it keeps")
    s.add_argument("runs", type=Path, nargs="*", help="xtc2 or CXI/HDF5 run files")
    s.add_argument("--shmem", metavar="TAG", help="read psana's live shared memory instead")
    s.add_argument("--live-runs", type=int, help="with --shmem: stop after this many runs")
    s.add_argument("--detector", default="cspad", help="the detector's name in the xtc2 run")
    s.add_argument("--frames", default="tcp://127.0.0.1:5550")
    s.add_argument("--verdicts", default="tcp://127.0.0.1:5551")
    s.add_argument("--out", type=Path, help="write kept frames as CXI here")
    s.add_argument("--rate", type=float, default=0.0, help="frames/s; 0 = as fast as possible")
    s.add_argument("--deadline-ms", type=float, default=1000.0)
    s.add_argument("--limit", type=int, help="at most this many frames (per file)")
    s.add_argument("--model", type=Path, help="replay through a daemon of its own serving this "
                   "artifact on CPU, one frame per batch: the same verdicts at every replay")
    s.add_argument("--verdict-log", type=Path, help="every verdict to this CSV "
                   "(pulse_id, timestamp, score, hit)")
    s.set_defaults(func=_replay)

    s = sub.add_parser("reprocess", help="a model over a recorded xtc2 run (parallel under mpirun)")
    s.add_argument("directory", type=Path, help="the experiment directory (with smalldata/)")
    s.add_argument("--experiment", required=True)
    s.add_argument("--run", type=int, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--model", type=Path, help="artifact; default: the shipped model")
    s.add_argument("--detector", default="cspad")
    s.add_argument("--batch-size", type=int, default=10, help="events psana hands a rank at a time")
    s.set_defaults(func=_reprocess)

    s = sub.add_parser("audit", help="the veto's hit loss, estimated from the audit frames kept")
    s.add_argument("files", type=Path, nargs="+", help="CXI files written by replay/write/demo")
    s.add_argument("--fraction", type=float, default=0.02, help="the daemon's audit.fraction")
    s.add_argument("--min-peaks", type=int, default=MIN_PEAKS_FOR_HIT,
                   help="without truth: peakfinder8 peaks that make a hit")
    s.add_argument("--model", type=Path,
                   help="without truth: count peaks in this artifact's region; default: the shipped model's")
    s.set_defaults(func=_audit)

    s = sub.add_parser("write", help="receive frames from a DAQ sender, keep what the daemon keeps")
    s.add_argument("--listen", default="tcp://127.0.0.1:5560", help="bind here for the DAQ's frames")
    s.add_argument("--frames", default="tcp://127.0.0.1:5550", help="the daemon's frame endpoint")
    s.add_argument("--verdicts", default="tcp://127.0.0.1:5551")
    s.add_argument("--out", type=Path, required=True, help="CXI files go to OUT/hits-NNNN.cxi")
    s.add_argument("--deadline-ms", type=float, default=1000.0)
    s.add_argument("--max-frames", type=int, default=10_000, help="frames per file")
    s.add_argument("--max-gb", type=float, default=4.0, help="pixel data per file")
    s.add_argument("--count", type=int, help="stop after this many frames (default: at SIGTERM)")
    s.add_argument("--metrics-port", type=int, help="frames written / not written on /metrics here")
    s.set_defaults(func=_write)

    s = sub.add_parser("tail", help="live view of a daemon's verdicts: rate, hit rate, latency")
    s.add_argument("--verdicts", default="tcp://127.0.0.1:5551")
    s.add_argument("--interval", type=float, default=1.0, help="seconds per line")
    s.add_argument("--count", type=int, help="stop after this many lines")
    s.set_defaults(func=_tail)

    s = sub.add_parser("demo", help="simulated run -> daemon with the shipped model -> hit writer")
    s.add_argument("--workdir", type=Path, default=Path("demo-out"))
    s.add_argument("--frames", type=int, default=240)
    s.add_argument("--rate", type=float, default=120.0, help="frames/s (LCLS-I: 120)")
    s.set_defaults(func=_demo)

    s = sub.add_parser("evaluate", help="a model's report on runs, beside peakfinder8 (PNG + JSON)")
    s.add_argument("artifact", type=Path)
    s.add_argument("runs", type=Path, nargs="+")
    s.add_argument("--min-peaks", type=int, default=MIN_PEAKS_FOR_HIT,
                   help="the indexability floor: peakfinder8 peaks, and strong spots of the truth, of a hit")
    s.add_argument("--out", type=Path, help="write evaluation.json and evaluation.png here")
    s.set_defaults(func=_evaluate)

    s = sub.add_parser("adapt", help="fine-tune the serving model on a new experiment's first "
                       "frames; write it only if it meets the sensitivity target")
    s.add_argument("sources", type=Path, nargs="+",
                   help="run files, or CXI files written in learn mode, in time order")
    s.add_argument("--model", type=Path, required=True, help="the model serving now")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--frames", type=int, default=3000, help="the window: this many first frames")
    s.add_argument("--min-peaks", type=int, default=3,
                   help="peakfinder8 peaks in the model's region that make a hit")
    s.add_argument("--target-sensitivity", type=float, default=0.99)
    s.add_argument("--min-specificity", type=float, default=0.9,
                   help="and it must veto this share of the misses")
    s.add_argument("--adu-per-photon", type=float, default=0.0,
                   help="the new experiment's gain (default: the runs' sidecar, else the model's)")
    s.add_argument("--epochs", type=int, help="fine-tuning epochs (default 4)")
    s.add_argument("--workers", type=int, default=2, help="peakfinder8 processes")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--reload", metavar="CONTROL", help="swap the new model into the daemon there")
    s.set_defaults(func=_adapt)

    s = sub.add_parser("profile", help="add the training data profile (for drift alarms) to a model "
                       "made without one")
    s.add_argument("artifact", type=Path)
    s.add_argument("runs", type=Path, nargs="+", help="the runs it was trained on")
    s.add_argument("--out", type=Path, help="write here (default: replace the artifact)")
    s.set_defaults(func=_profile)

    s = sub.add_parser("inspect", help="print a model artifact's metadata")
    s.add_argument("artifact", type=Path)
    s.set_defaults(func=_inspect)
    return p


if __name__ == "__main__":
    sys.exit(main())
