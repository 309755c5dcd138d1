"""What the verdict classes cost: the model with its class heads against the same hit network
without them, ms a frame on one CPU core, by batch size, on the same pooled full CSPAD frames.

    python benchmarks/classes.py [--hit service/hitveto/models/region.pt ...] [--out ...]

By default the shipped model (which has the heads) against the hit network rebuilt from it and
scripted alone (offline/rebuild.py: the same weights, the scores checked equal). The two are timed
in turns, pass after pass, so a noisy neighbour on a shared machine slows both alike; each point
is the median of the passes, and the ratio is taken pass by pass.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

from hitveto.models import artifact, preprocess
from hitveto.offline.rebuild import trainable

from common import SHAPES, figure, machine, parser, poisson_images, record

BATCHES = (1, 8, 32)
PASSES = 25


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--model", type=Path, default=artifact.DEFAULT_ARTIFACT, help="a model with classes")
    args.add_argument("--out", type=Path, default=Path("benchmarks/results/classes/cost"))
    opts = args.parse_args()
    torch.set_num_threads(1)
    model = artifact.read(opts.model)
    if not model.info.classes:
        raise SystemExit(f"{opts.model}: no verdict classes")
    with_heads = artifact.load_module(model, "cpu")
    alone = torch.jit.freeze(torch.jit.script(trainable(model, model.info.adu_per_photon).eval()))
    frames = torch.from_numpy(
        np.stack([preprocess.region(f, model.spec) for f in poisson_images(SHAPES["full"], 32)])
    )
    with torch.inference_mode():
        diff = float((with_heads(frames)[:, 0] - alone(frames)).abs().max())
        rows = [_point(alone, with_heads, frames[:batch]) for batch in BATCHES]
    for row in rows:
        print(
            f"batch {row['batch']:3d}: hit network {row['hit_ms']:.3f} ms, with the heads "
            f"{row['with_heads_ms']:.3f} ms a frame: +{100 * (row['ratio'] - 1):.1f} % "
            f"(median of {PASSES} paired passes)"
        )
    print(f"hit scores with and without the heads: max |diff| {diff:.1e}")
    result = {"model": model.info.version, "rows": rows, "max_hit_score_diff": diff, "machine": machine()}
    record(opts.out.with_suffix(".json"), result, lambda png: _plot(rows, png), say=True)


def _point(alone, with_heads, batch: torch.Tensor) -> dict:
    for module in (alone, with_heads):
        for _ in range(3):
            module(batch)
    hit, heads = [], []
    for _ in range(PASSES):
        hit.append(_seconds(alone, batch))
        heads.append(_seconds(with_heads, batch))
    n = len(batch)
    return {
        "batch": n,
        "hit_ms": 1e3 * float(np.median(hit)) / n,
        "with_heads_ms": 1e3 * float(np.median(heads)) / n,
        "ratio": float(np.median(np.array(heads) / np.array(hit))),
    }


def _seconds(module, batch: torch.Tensor) -> float:
    t0 = time.perf_counter()
    module(batch)
    return time.perf_counter() - t0


def _plot(rows: list[dict], png: Path) -> None:
    with figure(png, figsize=(6, 4)) as (_, ax):
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["hit_ms"] for r in rows], 0.4, label="hit network")
        ax.bar(x + 0.2, [r["with_heads_ms"] for r in rows], 0.4, label="with the class heads")
        for i, r in enumerate(rows):
            ax.text(i + 0.2, r["with_heads_ms"], f"+{100 * (r['ratio'] - 1):.1f}%", ha="center", va="bottom")
        ax.set(xticks=x, xticklabels=[f"batch {r['batch']}" for r in rows], ylabel="ms a frame, one core")
        ax.set_title("verdict classes: cost on one CPU core")
        ax.legend()


if __name__ == "__main__":
    main()
