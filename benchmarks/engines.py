"""TorchScript against onnxruntime on one CPU core: ms per frame by batch size, for the shipped
region model and the shipped full-detector model, on the same inputs (scores compared too).

    python benchmarks/engines.py [--out benchmarks/results/engines]

Inputs: Poisson(3) regions of the region model's shape, and pooled full CSPAD frames (the
full-detector model's input). Each point: the median of 5 passes over 64 frames.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from hitveto.models import artifact, preprocess
from hitveto.models.engine import Engine
from hitveto.models.onnx_engine import OnnxEngine

from common import SHAPES, figure, machine, parser, poisson_images, record, timed

BATCHES = (1, 8, 32)


def inputs(model: artifact.Artifact, n: int = 64) -> list[np.ndarray]:
    if model.spec.layout == "raw":
        return [preprocess.region(f, model.spec) for f in poisson_images(SHAPES["full"], n)]
    return poisson_images(tuple(model.spec.roi_shape), n)


def per_frame_ms(engine, frames: list[np.ndarray], batch: int) -> float:
    chunks = [frames[i : i + batch] for i in range(0, len(frames) - batch + 1, batch)]
    return 1e3 * timed(engine.infer, chunks, repeat=5) / batch


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--out", type=Path, default=Path("benchmarks/results/engines"))
    opts = args.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, path in (("region", artifact.REGION_ARTIFACT), ("full", artifact.DEFAULT_ARTIFACT)):
        model = artifact.read(path)
        frames = inputs(model)
        engines = {"torchscript": Engine(model, device="cpu", max_batch=32), "onnxruntime": OnnxEngine(model)}
        for e in engines.values():
            e.warm_up()
        diff = float(
            np.abs(engines["torchscript"].score(frames) - engines["onnxruntime"].score(frames)).max()
        )
        for batch in BATCHES:
            ms = {kind: per_frame_ms(e, frames, batch) for kind, e in engines.items()}
            rows.append({"model": name, "batch": batch, **ms, "max_score_diff": diff})
            print(
                f"{name:6s} batch {batch:3d}: torchscript {ms['torchscript']:.3f} ms, onnxruntime "
                f"{ms['onnxruntime']:.3f} ms a frame ({ms['torchscript'] / ms['onnxruntime']:.2f}x); "
                f"scores differ by {diff:.1e} at most"
            )

    def plot(png: Path) -> None:
        with figure(png, 2, figsize=(10, 4)) as (_fig, axes):
            for ax, name in zip(axes, ("region", "full")):
                mine = [r for r in rows if r["model"] == name]
                for kind in ("torchscript", "onnxruntime"):
                    ax.plot([r["batch"] for r in mine], [r[kind] for r in mine], "o-", label=kind)
                ax.set(title=f"{name} model, one core", xlabel="batch", ylabel="ms per frame", xscale="log")
                ax.grid(alpha=0.3)
                ax.legend()

    record(opts.out / "engines-cpu.json", {**machine(), "rows": rows}, plot, say=True)


if __name__ == "__main__":
    main()
