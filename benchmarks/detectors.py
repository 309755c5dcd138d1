"""Each detector's cost: what a raw frame costs before the model, the model, and the daemon end to end.

For the CSPAD, the Jungfrau 4M and the ePix10k2M: a simulated dark run and a few raw frames of
detector unit 1 (lysozyme), constants from the dark (`hitveto dark`; gain-switching detectors with
the unit's gain map). On one core (torch with one thread), the median of three passes over the
frames: reading the raw frame once (a sum: the floor of any pass), calibration and pool to the
model's input as the daemon does it (InputGuard.prepare: one compiled pass), calibration of the
whole frame (what hit files store), the full-detector model at batch 1 and 8 (the shipped model
for the detector; where none is shipped, the same network untrained: the time is the same), and
peakfinder8 on the whole calibrated frame (the ratio: peakfinder8 over calibration, pool and model
at batch 8). The transport's ceiling: raw frames pushed through a ZeroMQ socket on loopback, as
fast as it takes them. Then the daemon on this machine's cores, raw frames in with the constants,
offered at fixed rates: the frames per second sustained with no fallback keep, and the verdict
latency. Saves JSON and a PNG.

    python benchmarks/detectors.py [--frames 8] [--seconds 5] [--detectors cspad jungfrau4m epix10k2m]
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hitveto.io import calibration, geometry, sources
from hitveto.io.peaks import PeakFinderParams, detector_peak_finder
from hitveto.models import artifact, networks, preprocess
from hitveto.offline.dark import dark_constants
from hitveto.serving.guard import InputGuard
from hitveto.serving.launcher import start_daemon
from hitveto.sim.run import gain_file, simulate_runs
from hitveto_client import detectors
from hitveto_client.hitwriter import Frame, stream
from hitveto_client.protocol import EventKey

from common import figure, machine, parser, record, subscribed, timed

RATES = (30, 60, 120, 240, 0)  # offered frames/s; 0: as fast as the daemon takes them
TIMED = (
    "read once (sum)",
    "calibrate + pool (daemon)",
    "calibrate whole frame (hit files)",
    "model, batch 1",
    "model, batch 8 (per frame)",
    "peakfinder8 (whole frame)",
)  # ms a frame, one core: the plot


@dataclasses.dataclass(frozen=True)
class Setup:
    detector: str
    frames: list[np.ndarray]  # raw, as the DAQ sends them
    constants_path: Path
    model: Path
    spec: preprocess.InputSpec


def setup(detector: str, n: int, folder: Path) -> Setup:
    """Raw frames, constants from a dark, and the model (shipped, else an untrained one)."""
    (dark,) = simulate_runs(folder, runs=[1], n_frames=30, readout="dark", detector=detector, fmt="cxi")
    (raw,) = simulate_runs(
        folder / "raw", runs=[2], n_frames=n, readout="raw", detector=detector, fmt="cxi", seed=3
    )
    gain = np.load(gain_file(dark)) if detectors.get(detector).gain else None
    constants_path = folder / "constants.npz"
    dark_constants([dark], detector=detector, gain=gain).save(constants_path)
    model = artifact.SHIPPED.get(detector) or untrained_model(detector, folder / "untrained.pt")
    frames = [ev.image for ev in sources.events(raw)]
    return Setup(detector, frames, constants_path, model, artifact.read(model).spec)


def untrained_model(detector: str, path: Path) -> Path:
    """The full-detector network for a detector no model is shipped for: timing only."""
    spec = preprocess.full_frame_spec(detector, detectors.get(detector).raw_shape, 9.5)
    net = networks.build("panels", 350, 9.5, torch.from_numpy(geometry.panel_radius(spec.pool, detector)))
    info = artifact.ModelInfo(
        version="untrained", architecture="panels", detector=detector, raw_shape=spec.raw_shape,
        roi_shape=spec.roi_shape, layout="raw", pool=spec.pool, adu_per_photon=9.5, threshold=0.5,
    )  # fmt: skip
    return artifact.save(path, torch.jit.freeze(torch.jit.script(net.eval())), info, None)


def one_core(s: Setup) -> dict[str, float]:
    """ms per frame of each stage on one core."""
    torch.set_num_threads(1)
    constants = calibration.load(s.constants_path)
    guard = InputGuard(str(s.constants_path), s.spec)
    net = torch.jit.load(str(s.model))
    inputs = [guard.prepare(f, {}, s.spec)[0] for f in s.frames]
    calibrated = [calibration.calibrate(f, constants) for f in s.frames]
    finder = detector_peak_finder(PeakFinderParams.for_gain(s.spec.adu_per_photon), s.detector)
    batch1 = [torch.from_numpy(np.ascontiguousarray(x, np.float32))[None] for x in inputs]
    batch8 = torch.from_numpy(np.stack(inputs[:8]).astype(np.float32))
    with torch.inference_mode():
        net(batch1[0]), net(batch8)  # warm-up: the first calls optimise the graph
        seconds = {
            "read once (sum)": timed(lambda f: f.sum(dtype=np.int64), s.frames),
            "calibrate + pool (daemon)": timed(lambda f: guard.prepare(f, {}, s.spec), s.frames),
            "calibrate whole frame (hit files)": timed(
                lambda f: calibration.calibrate(f, constants), s.frames
            ),
            "model, batch 1": timed(net, batch1),
            "model, batch 8 (per frame)": timed(net, [batch8]) / len(batch8),
            "peakfinder8 (whole frame)": timed(finder.count, calibrated),
        }
    return {k: round(v * 1e3, 3) for k, v in seconds.items()}


def transport_ceiling(frame: np.ndarray, seconds: float = 3.0) -> float:
    """Raw frames a second through a ZeroMQ PUSH -> PULL pair on loopback TCP (the daemon's ingest
    is a ZeroMQ socket on the same path): the most any daemon here could take."""
    import threading

    import zmq

    ctx = zmq.Context.instance()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    stop = threading.Event()

    def send() -> None:
        while not stop.is_set():
            push.send(frame, copy=False)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    pull.recv()  # connected
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pull.recv(copy=False)
        n += 1
    elapsed = time.perf_counter() - t0
    stop.set()
    while sender.is_alive():  # drain, so that a sender blocked on a full queue sees the stop
        if pull.poll(10):
            pull.recv(copy=False)
        sender.join(0.01)
    push.close(linger=0)
    pull.close(linger=0)
    return n / elapsed


def end_to_end(s: Setup, seconds: float, log: Path) -> list[dict]:
    """The daemon (batch 8, 2 ms) on raw frames with the constants, at each offered rate."""
    daemon = start_daemon(
        "batch.max_batch=8", "batch.max_delay_ms=2", f"calib.constants={s.constants_path}",
        artifact=s.model, log_path=log,
    )  # fmt: skip
    rows = []
    try:
        for rate in (RATES[1], *RATES):  # the first pass warms up and is not reported
            n = int((rate or 300) * seconds)
            frames = [
                Frame(key=EventKey(run=1, pulse_id=i, detector=s.detector), image=s.frames[i % len(s.frames)])
                for i in range(n)
            ]
            with subscribed(daemon, deadline_ms=2000, max_pending=100_000) as veto:
                summary = stream(frames, veto, None, rate_hz=rate)
            rows.append({
                "detector": s.detector, "offered_hz": rate or None,
                "achieved_hz": round(summary.sent / summary.elapsed_s, 1),
                "fallback_keeps": summary.kept_fallback, "kept_by_reason": summary.kept_by_reason,
                "p50_ms": round(summary.latency_p50_ms, 2), "p99_ms": round(summary.latency_p99_ms, 2),
            })  # fmt: skip
        return rows[1:]
    finally:
        daemon.stop()


def plot(stages: dict[str, dict[str, float]], e2e: list[dict], path: Path) -> None:
    with figure(path, 2, dpi=110, figsize=(14, 4.5)) as (_fig, (left, right)):
        names = list(next(iter(stages.values())))
        width = 0.8 / len(stages)
        for k, (detector, ms) in enumerate(stages.items()):
            left.barh(np.arange(len(names)) + k * width, [ms[n] for n in names], width, label=detector)
        left.set(yticks=np.arange(len(names)) + 0.4, yticklabels=names, xlabel="ms per frame, one core")
        left.set_xscale("log")
        left.legend(fontsize=8)
        for detector in stages:
            rows = [r for r in e2e if r["detector"] == detector]
            ok = [r for r in rows if r["fallback_keeps"] == 0]
            right.plot(
                [r["achieved_hz"] for r in rows], [r["p99_ms"] for r in rows], "o-", label=f"{detector} p99"
            )
            right.plot([r["achieved_hz"] for r in ok], [r["p99_ms"] for r in ok], "k.", ms=3)
        right.set(
            xlabel="raw frames/s through the daemon (black: no fallback keep)",
            ylabel="p99 verdict latency (ms)",
        )
        right.set_yscale("log")
        right.grid(alpha=0.3)
        right.legend(fontsize=8)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument(
        "--detectors", nargs="+", default=list(detectors.DETECTORS), choices=list(detectors.DETECTORS)
    )
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stages, e2e = {}, []
    with tempfile.TemporaryDirectory(prefix="hitveto-detectors-") as tmp:
        for name in args.detectors:
            s = setup(name, args.frames, Path(tmp) / name)
            stages[name] = {"raw frame MB": round(s.frames[0].nbytes / 1e6, 2), **one_core(s)}
            ms = stages[name]
            ms["peakfinder8 / (calibration + model)"] = round(
                ms["peakfinder8 (whole frame)"]
                / (ms["calibrate + pool (daemon)"] + ms["model, batch 8 (per frame)"]),
                1,
            )
            ms["transport ceiling (frames/s)"] = round(transport_ceiling(s.frames[0]), 1)
            print(name, stages[name], flush=True)
            e2e += end_to_end(s, args.seconds, args.out / f"detectors-daemon-{name}.log")
            for r in e2e[-len(RATES) :]:
                print(f"  offered {r['offered_hz'] or 'max'} Hz -> {r['achieved_hz']} Hz", r, flush=True)
    per_frame = {d: {k: ms[k] for k in TIMED} for d, ms in stages.items()}
    record(
        args.out / "detectors.json",
        {"meta": machine(seconds_per_point=args.seconds), "one_core_ms": stages, "e2e": e2e},
        lambda png: plot(per_frame, e2e, png),
        say=True,
    )


if __name__ == "__main__":
    main()
