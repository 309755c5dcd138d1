"""What raw frames cost before the model: calibration and the guard, per full CSPAD frame, one core.

Frames: a simulated raw run and its dark run (detector unit 1). Stages, each the median of three
passes over the frames: reading the frame once (a sum: the floor any pass over 4.6 MB pays), the
pedestal subtraction alone, calibration (pedestal, common mode, bad pixels), the guard's checks,
and the pooling the full-detector model then does (numpy's element-wise version and the compiled
kernel); calibration and pool fused in one pass (kernels.pool_raw); beside them the whole of the
daemon's work on a raw frame before inference, as two steps (until stop 29) and now
(InputGuard.prepare). Prints a table, saves JSON and a PNG.

    python benchmarks/calibration.py [--frames 40] [--out benchmarks/results/calibration]
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from hitveto.io import calibration, sources
from hitveto.models import artifact, kernels, preprocess
from hitveto.offline.dark import dark_constants
from hitveto.serving.guard import InputGuard, level_ok, noise_ok
from hitveto.sim.run import simulate_runs

from common import figure, machine, parser, record, timed


def stages(frames: list[np.ndarray], constants: calibration.Constants, guard: InputGuard) -> dict[str, float]:
    """ms per frame of each stage."""
    spec = artifact.read(artifact.DEFAULT_ARTIFACT).spec
    floor = -5.0 * constants.noise[..., ::8, ::8]
    pedestal16 = np.rint(constants.pedestal).astype(np.int16)
    calibrated = [calibration.calibrate(f, constants) for f in frames]

    def numpy_pool(image: np.ndarray) -> list[np.ndarray]:  # element-wise, 8 panels at a time
        chunk = preprocess.POOL_CHUNK
        return [
            preprocess._pool_chunk(image[i : i + chunk], spec.pool, np.int32) for i in range(0, 32, chunk)
        ]

    def two_steps(frame: np.ndarray) -> None:  # the daemon's work until stop 29
        image = calibration.calibrate(frame, constants)
        level_ok(image, spec.adu_per_photon) and noise_ok(image, floor)
        numpy_pool(image)

    seconds = {
        "read once (sum)": timed(lambda f: f.sum(dtype=np.int64), frames),
        "pedestal only (int16)": timed(lambda f: np.subtract(f, pedestal16), frames),
        "calibrate": timed(lambda f: calibration.calibrate(f, constants), frames),
        "guard checks": timed(lambda c: level_ok(c, spec.adu_per_photon) and noise_ok(c, floor), calibrated),
        "pool, numpy element-wise": timed(numpy_pool, calibrated),
        "pool, compiled (kernels.pool)": timed(lambda c: preprocess.masked_region(c, spec), calibrated),
        "calibrate + pool, one pass": timed(
            lambda f: calibration.calibrate_pooled(f, constants, spec.pool, 8), frames
        ),
        "all before the model, two steps": timed(two_steps, frames),
        "all before the model (daemon)": timed(lambda f: guard.prepare(f, {}, spec), frames),
    }
    return {name: 1e3 * s for name, s in seconds.items()}


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--frames", type=int, default=40)
    args.add_argument("--out", type=Path, default=Path("benchmarks/results/calibration"))
    opts = args.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as work:
        (dark,) = simulate_runs(Path(work), runs=[4], n_frames=100, fmt="cxi", readout="dark", seed=3)
        (raw,) = simulate_runs(Path(work), runs=[5], n_frames=opts.frames, fmt="cxi", readout="raw", seed=3)
        constants = dark_constants([dark])
        constants.save(Path(work) / "constants.npz")
        spec = artifact.read(artifact.DEFAULT_ARTIFACT).spec
        guard = InputGuard(str(Path(work) / "constants.npz"), spec)
        frames = [ev.image for ev in sources.events(raw)]
    kernels.warm_up()
    ms = stages(frames, constants, guard)
    print(f"{'stage':24s} ms per full CSPAD frame (one core, median of 3 passes over {len(frames)} frames)")
    for name, value in ms.items():
        print(f"{name:24s} {value:6.2f}")

    def plot(path: Path) -> None:
        with figure(path, figsize=(8, 4)) as (fig, ax):
            ax.barh(list(ms), list(ms.values()))
            ax.invert_yaxis()
            ax.set(xlabel="ms per full CSPAD frame, one core", title="raw frame before the model")
            ax.grid(alpha=0.3, axis="x")

    record(opts.out / "calibration.json", {**machine(frames=len(frames)), "ms_per_frame": ms}, plot, say=True)


if __name__ == "__main__":
    main()
