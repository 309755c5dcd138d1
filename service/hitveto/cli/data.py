"""Commands that make or move runs (simulate, replay, reprocess, demo), and what goes with them: geom for
the files they write, dark for the calibration constants raw runs need."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hitveto.cli.args import call_with


def register(sub: Any) -> None:
    for add in (add_simulate, add_replay, add_reprocess, add_demo, add_geom, add_dark):
        add(sub)


def add_simulate(sub: Any) -> None:
    s = sub.add_parser("simulate", help="write simulated SFX runs (xtc2 or CXI)")
    s.add_argument("out_dir", type=Path, metavar="out")
    s.add_argument("--runs", type=int, nargs="+", default=[1])
    s.add_argument("--frames", dest="n_frames", metavar="FRAMES", type=int, default=200)
    s.add_argument("--preset", default="lysozyme")
    s.add_argument("--layout", choices=["raw", "roi"], default="raw")
    s.add_argument("--format", dest="fmt", choices=["xtc2", "cxi"], default="xtc2")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument(
        "--readout",
        choices=["calib", "raw", "dark"],
        default="calib",
        help="calibrated frames (psana's calib), raw ADC counts on the pedestals, or a dark run",
    )
    s.add_argument(
        "--unit-seed", type=int, default=1, help="raw/dark: the detector unit (pedestals, bad pixels)"
    )
    s.add_argument("--detector", default="cspad", help="cspad, jungfrau4m or epix10k2m")
    s.add_argument(
        "--mix",
        nargs="+",
        type=_mix_field,
        metavar="FIELD=VALUE",
        help="replace fields of the preset's frame mix (sim/params.py FrameMix), e.g. blank_fraction=0.1",
    )
    s.set_defaults(func=simulate)


def _mix_field(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIELD=VALUE")
    return name, float(value)


def simulate(args: argparse.Namespace) -> int:
    from hitveto.sim.run import simulate_runs

    args.mix = dict(args.mix or ())
    for path in call_with(simulate_runs, args):
        print(path)
    return 0


def add_replay(sub: Any) -> None:
    s = sub.add_parser("replay", help="stream runs to a daemon and write the frames it keeps")
    s.add_argument("runs", type=Path, nargs="*", help="xtc2 or CXI/HDF5 run files")
    s.add_argument("--shmem", metavar="TAG", help="read psana's live shared memory instead")
    s.add_argument("--live-runs", type=int, help="with --shmem: stop after this many runs")
    s.add_argument("--detector", help="the detector's name in the run (default: its sidecar's, else cspad)")
    s.add_argument(
        "--constants",
        type=Path,
        help="raw runs: store the kept frames calibrated with these (the daemon's calib.constants)",
    )
    s.add_argument("--frames", default="tcp://127.0.0.1:5550")
    s.add_argument("--verdicts", default="tcp://127.0.0.1:5551")
    s.add_argument("--out", type=Path, help="write kept frames as CXI here")
    s.add_argument("--rate", type=float, default=0.0, help="frames/s; 0 = as fast as possible")
    s.add_argument("--deadline-ms", type=float, default=1000.0)
    s.add_argument("--limit", type=int, help="at most this many frames (per file)")
    s.add_argument(
        "--model",
        type=Path,
        help="replay through a daemon of its own serving this artifact on CPU, one frame per batch: "
        "the same verdicts at every replay",
    )
    s.add_argument(
        "--verdict-log", type=Path, help="every verdict to this CSV (pulse_id, timestamp, score, hit)"
    )
    e = s.add_argument_group("what indexing needs, stored in the files (default: the first run's sidecar)")
    e.add_argument("--photon-energy-ev", type=float)
    e.add_argument("--distance-mm", type=float, help="interaction point to the detector")
    e.add_argument("--adu-per-photon", type=float, default=35.0)
    s.set_defaults(func=replay)


def replay(args: argparse.Namespace) -> int:
    import contextlib
    import itertools

    from hitveto.io import calibration
    from hitveto.io.sources import detector_of
    from hitveto.offline import replay as replaying

    if bool(args.runs) == bool(args.shmem):
        raise SystemExit("hitveto replay: give run files or --shmem TAG, not both")
    detector = args.detector or (detector_of(args.runs[0]) if args.runs else "cspad")
    constants = calibration.load(args.constants) if args.constants else None
    frames = (
        replaying.live_frames(args.shmem, detector=detector, runs=args.live_runs, limit=args.limit)
        if args.shmem
        else replaying.frames_of(args.runs, detector=detector, limit=args.limit)
    )
    if not args.shmem:  # a run that lacks the detector says so before any daemon is waited for
        frames = itertools.chain(list(itertools.islice(frames, 1)), frames)
    with contextlib.ExitStack() as stack:
        frames_to, verdicts_from = args.frames, args.verdicts
        if args.model:  # a daemon of our own, reproducible
            daemon = stack.enter_context(replaying.private_daemon(args.model, constants=args.constants))
            frames_to, verdicts_from = daemon.ingest, daemon.publish
        summary = replaying.replay(
            frames,
            frames_endpoint=frames_to,
            verdicts_endpoint=verdicts_from,
            out_dir=args.out,
            rate_hz=args.rate,
            deadline_ms=args.deadline_ms,
            verdict_log=args.verdict_log,
            experiment=_experiment(args),
            constants=constants,
        )
    print("\n".join(summary.lines()))
    return 0 if summary.ok else 1


def _experiment(args: argparse.Namespace):
    """The replay's experiment: from the flags, else the first run's sidecar, else None (then no
    geometry is written; `hitveto geom --photon-energy-ev E --distance-mm D` makes one later)."""
    from hitveto.io import sources
    from hitveto_client.cxi import Experiment

    if args.photon_energy_ev is not None and args.distance_mm is not None:
        return Experiment(
            photon_energy_ev=args.photon_energy_ev,
            distance_m=args.distance_mm * 1e-3,
            adu_per_photon=args.adu_per_photon,
            detector=args.detector or "cspad",
        )
    return sources.experiment(args.runs[0]) if args.runs else None


def add_reprocess(sub: Any) -> None:
    s = sub.add_parser("reprocess", help="a model over a recorded xtc2 run (parallel under mpirun)")
    s.add_argument("directory", type=Path, help="the experiment directory (with smalldata/)")
    s.add_argument("--experiment", required=True)
    s.add_argument("--run", type=int, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--model", type=Path, help="artifact; default: the shipped model")
    s.add_argument("--detector", default="cspad")
    s.add_argument("--batch-size", type=int, default=10, help="events psana hands a rank at a time")
    s.set_defaults(func=reprocess)


def reprocess(args: argparse.Namespace) -> int:
    from hitveto.offline.reprocess import read_verdicts
    from hitveto.offline.reprocess import reprocess as judge_run

    path = call_with(judge_run, args)
    if path is not None:  # rank 0 (or a serial run)
        rows = read_verdicts(path)
        print(f"{len(rows)} events judged, {sum(r.hit for r in rows)} hits: {path}")
    return 0


def add_demo(sub: Any) -> None:
    s = sub.add_parser("demo", help="simulated run -> daemon with the shipped model -> hit writer")
    s.add_argument("--workdir", type=Path, default=Path("demo-out"))
    s.add_argument("--frames", type=int, default=240)
    s.add_argument("--rate", type=float, default=120.0, help="frames/s (LCLS-I: 120)")
    s.add_argument(
        "--detector", default="cspad", help="cspad; jungfrau4m or epix10k2m: raw frames and their dark"
    )
    s.add_argument(
        "--ice-from", type=int, metavar="N", help="ice forms in the jet from frame N on (none before)"
    )
    s.add_argument(
        "--metrics-port", type=int, help="the daemon's Prometheus metrics here (default: a free port)"
    )
    s.set_defaults(func=demo)


def demo(args: argparse.Namespace) -> int:
    from hitveto.demo import index_command, run_demo

    summary = run_demo(
        args.workdir,
        n_frames=args.frames,
        rate_hz=args.rate,
        detector=args.detector,
        ice_from=args.ice_from,
        metrics_port=args.metrics_port,
    )
    title = f"hitveto demo: simulated {args.detector} run -> veto daemon -> hit writer"
    print("\n".join(["", title, *summary.lines()]))
    print(f"index them         {index_command(args.workdir, detector=args.detector)}")
    return 0 if summary.ok else 1


def add_geom(sub: Any) -> None:
    s = sub.add_parser("geom", help="the CrystFEL geometry file for CXI files hitveto wrote")
    s.add_argument("cxi", type=Path, help="a CXI file written by replay/write/demo/simulate")
    s.add_argument(
        "--literal",
        action="store_true",
        help="write the file's photon energy and distance in, rather than point at its columns",
    )
    s.add_argument("--photon-energy-ev", type=float, help="written in, for files that lack it")
    s.add_argument("--distance-mm", type=float, help="written in, for files that lack it")
    s.add_argument("--out", type=Path, help="the geometry file (default: print it)")
    s.set_defaults(func=geom)


def geom(args: argparse.Namespace) -> int:
    import dataclasses

    from hitveto.io.crystfel import geometry_text, layout_of
    from hitveto_client.cxi import read_experiment

    experiment, frame_shape = read_experiment(args.cxi)
    distance_m = None if args.distance_mm is None else args.distance_mm * 1e-3
    given = {k: v for k, v in (("photon_energy_ev", args.photon_energy_ev), ("distance_m", distance_m)) if v}
    text = geometry_text(
        layout_of(frame_shape),
        dataclasses.replace(experiment, **given),
        from_file=not (args.literal or given),
        has_mask=experiment.mask is not None,
    )
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")
    return 0


def add_dark(sub: Any) -> None:
    s = sub.add_parser("dark", help="calibration constants (pedestal, noise, status) from dark runs")
    s.add_argument("runs", type=Path, nargs="*", help="dark runs: xtc2, CXI, or exp=EXP:run=N:dir=DIR")
    s.add_argument("--out", type=Path, required=True, help="the constants file (.npz); a PNG beside it")
    s.add_argument("--detector", help="default: what the runs' sidecars say, else cspad")
    s.add_argument("--limit", type=int, help="at most this many frames per run")
    s.add_argument(
        "--gain",
        type=Path,
        help="gain-switching detectors: the gain map, ADC per keV of each stage (.npy, (stages, *raw shape))",
    )
    p = s.add_argument_group("or convert a dark psana processed already (its LCLS calib store)")
    p.add_argument("--psana-calib", type=Path, metavar="DIR", help="the experiment's calib/ folder")
    p.add_argument("--source", help="the detector's source, e.g. CxiDs1.0:Cspad.0")
    p.add_argument("--run", type=int, help="the run the constants must be valid for")
    s.set_defaults(func=dark)


def dark(args: argparse.Namespace) -> int:
    import numpy as np

    from hitveto.io.sources import detector_of
    from hitveto.offline.dark import dark_constants, from_psana_calib, plot
    from hitveto_client.cxi import MASK_DEAD, MASK_HOT

    if bool(args.runs) == bool(args.psana_calib):
        raise SystemExit("hitveto dark: give dark runs, or --psana-calib DIR --source SRC --run N")
    detector = args.detector or (detector_of(args.runs[0]) if args.runs else "cspad")
    if args.psana_calib:
        if args.source is None or args.run is None:
            raise SystemExit("hitveto dark --psana-calib: --source and --run are needed too")
        constants = from_psana_calib(args.psana_calib, args.source, args.run, detector=detector)
    else:
        gain = np.load(args.gain) if args.gain else None
        constants = dark_constants(args.runs, detector=detector, limit=args.limit, gain=gain)
    constants.save(args.out)
    plot(constants, args.out.with_suffix(".png"))
    status = constants.status
    print(
        f"{args.out}: {detector}, pedestal median {np.median(constants.pedestal):.1f} ADU, noise median "
        f"{np.median(constants.noise):.2f} ADU; {int((status & MASK_HOT > 0).sum())} hot, "
        f"{int((status & MASK_DEAD > 0).sum())} dead pixels; valid from run {constants.runs[0]}"
    )
    return 0
