"""Commands around a running daemon: serve, ctl, keys, write, tail."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hitveto.cli.args import call_with
from hitveto.config import DEFAULT_CONTROL

# `hitveto serve` flags that are shorthands for config keys
SERVE_FLAGS = {
    "artifact": "model.artifact",
    "device": "model.device",
    "ingest": "ingest.endpoint",
    "publish": "publish.endpoint",
    "metrics_port": "metrics.port",
    "control": "control.endpoint",
}


def register(sub: Any) -> None:
    for add in (add_serve, add_ctl, add_keys, add_write, add_tail):
        add(sub)


def add_serve(sub: Any) -> None:
    s = sub.add_parser("serve", help="run the veto daemon")
    s.add_argument("--config", type=Path, help="TOML file (docs/CONFIG.md)")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    s.add_argument("--artifact", type=Path)
    s.add_argument("--device")
    s.add_argument("--ingest", help="frames endpoint to bind, e.g. tcp://127.0.0.1:5550")
    s.add_argument("--publish", help="verdicts endpoint to bind")
    s.add_argument("--metrics-port", type=int)
    s.add_argument("--control", help="control endpoint to bind ('' = off)")
    s.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    import os
    import sys

    from hitveto import config
    from hitveto.serving.daemon import Daemon

    overrides = dict(kv.split("=", 1) for kv in args.set)
    for flag, key in SERVE_FLAGS.items():
        if getattr(args, flag) is not None:
            overrides[key] = str(getattr(args, flag))
    try:
        cfg = config.load(args.config, os.environ, overrides)
    except config.ConfigError as exc:
        raise SystemExit(f"hitveto serve: {exc}") from None
    # The inference thread needs the GIL for every op dispatch; Python's default 5 ms switch
    # interval let the ingest and publish threads starve it (measured: half the overload keeps
    # at 900 region frames/s with 0.5 ms).
    sys.setswitchinterval(0.0005)
    daemon = Daemon(cfg)
    daemon.start()
    daemon.serve_forever()
    return daemon.exit_code


def add_ctl(sub: Any) -> None:
    s = sub.add_parser("ctl", help="send a control command (status, stats, reload, learn, calib) to a daemon")
    s.add_argument("command", choices=["status", "stats", "reload", "learn", "calib"])
    s.add_argument(
        "state",
        nargs="?",
        choices=["on", "off"],
        default="on",
        help="for learn: keep every frame (on) or the configured audit share (off)",
    )
    s.add_argument(
        "--endpoint",
        default=DEFAULT_CONTROL,
        help=f"the daemon's control.endpoint (default {DEFAULT_CONTROL})",
    )
    s.add_argument("--artifact", help="for reload: the model file to swap in")
    s.add_argument("--constants", help="for calib: the calibration constants to swap in (hitveto dark)")
    s.set_defaults(func=ctl)


def ctl(args: argparse.Namespace) -> int:
    import json

    from hitveto.serving.control import request

    params: dict[str, Any] = {"artifact": args.artifact} if args.artifact else {}
    if args.command == "learn":
        params["on"] = args.state != "off"
    if args.constants:
        params["constants"] = args.constants
    reply = request(args.endpoint, args.command, **params)
    print(json.dumps(reply, indent=1, default=str))
    return 0 if reply.get("ok") else 1


def add_keys(sub: Any) -> None:
    s = sub.add_parser("keys", help="create CURVE keypairs for the daemon and one client")
    s.add_argument("folder", type=Path)
    s.set_defaults(func=keys)


def keys(args: argparse.Namespace) -> int:
    from hitveto.serving.security import create_keys

    for name, path in create_keys(args.folder).items():
        print(f"{name:14s} {path}")
    return 0


def add_write(sub: Any) -> None:
    s = sub.add_parser("write", help="receive frames from a DAQ sender, keep what the daemon keeps")
    s.add_argument("--listen", default="tcp://127.0.0.1:5560", help="bind here for the DAQ's frames")
    s.add_argument(
        "--frames",
        dest="frames_endpoint",
        metavar="FRAMES",
        default="tcp://127.0.0.1:5550",
        help="the daemon's frame endpoint",
    )
    s.add_argument("--verdicts", dest="verdicts_endpoint", metavar="VERDICTS", default="tcp://127.0.0.1:5551")
    s.add_argument(
        "--out",
        dest="out_dir",
        metavar="OUT",
        type=Path,
        required=True,
        help="CXI files go to OUT/hits-NNNN.cxi",
    )
    s.add_argument("--deadline-ms", type=float, default=1000.0)
    s.add_argument("--max-frames", type=int, default=10_000, help="frames per file")
    s.add_argument("--max-gb", type=float, default=4.0, help="pixel data per file")
    s.add_argument("--count", type=int, help="stop after this many frames (default: at SIGTERM)")
    s.add_argument("--metrics-port", type=int, help="frames written / not written on /metrics here")
    e = s.add_argument_group("what indexing needs, stored in the files (a frame's own header meta wins)")
    e.add_argument("--photon-energy-ev", type=float, default=float("nan"))
    e.add_argument("--distance-mm", type=float, default=float("nan"))
    e.add_argument("--adu-per-photon", type=float, default=float("nan"))
    s.set_defaults(func=write)


def write(args: argparse.Namespace) -> int:
    import signal
    import threading

    from hitveto_client.cxi import Experiment
    from hitveto_client.relay import write_hits

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    experiment = Experiment(
        photon_energy_ev=args.photon_energy_ev,
        distance_m=args.distance_mm * 1e-3,
        adu_per_photon=args.adu_per_photon,
    )
    summary = call_with(
        write_hits, args, max_bytes=int(args.max_gb * 2**30), stop=stop, experiment=experiment
    )
    print("\n".join(summary.lines()), flush=True)
    return 0 if summary.ok else 1


def add_tail(sub: Any) -> None:
    s = sub.add_parser("tail", help="live view of a daemon's verdicts: rate, hit rate, latency")
    s.add_argument("--verdicts", default="tcp://127.0.0.1:5551")
    s.add_argument("--interval", type=float, default=1.0, help="seconds per line")
    s.add_argument("--count", type=int, help="stop after this many lines")
    s.set_defaults(func=tail)


def tail(args: argparse.Namespace) -> int:
    from hitveto_client.tail import tail as show

    try:
        show(args.verdicts, interval_s=args.interval, windows=args.count)
    except KeyboardInterrupt:
        pass
    return 0
