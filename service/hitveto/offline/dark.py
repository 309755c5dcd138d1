"""`hitveto dark RUN... --out constants.npz`: calibration constants from dark runs (beam off).

Each pixel's mean over the dark frames is its pedestal, its rms its noise (read noise and the
common mode, as psana's pixel_rms of an uncorrected dark). The status flags what calibration cannot
fix, per ASIC so that a whole ASIC's level does not count:

- dead: noise below DEAD_NOISE of its ASIC's median noise (a stuck pixel reads its pedestal alone);
- hot: noise above HOT_NOISE times the median, or a pedestal more than HOT_PEDESTAL_SIGMA robust
  standard deviations above its ASIC's median pedestal (dark current).

A PNG shows the pedestal and noise maps on the assembled detector, and the status counts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hitveto.io import sources
from hitveto.io.calibration import ASIC_COLS, Constants
from hitveto_client.cxi import MASK_DEAD, MASK_HOT

log = logging.getLogger(__name__)
DEAD_NOISE = 0.2
HOT_NOISE = 5.0
HOT_PEDESTAL_SIGMA = 5.0


def dark_constants(runs: list[Path], *, detector: str = "cspad", limit: int | None = None) -> Constants:
    """Pedestal, noise and status from every frame of the dark runs (progress bar per run)."""
    total = total_sq = None
    n = 0
    for run in runs:
        for ev in tqdm(sources.events(run, detector=detector, limit=limit), desc=f"dark {Path(run).name}"):
            frame = ev.image.astype(np.float64)
            if total is None:
                total, total_sq = np.zeros_like(frame), np.zeros_like(frame)
            total += frame
            total_sq += frame * frame
            n += 1
    if total is None or total_sq is None or n < 2:
        raise ValueError(
            f"{runs}: {n} dark frames; the noise needs at least 2 (100 or more give good pedestals)"
        )
    pedestal = total / n
    noise = np.sqrt(np.maximum(total_sq / n - pedestal**2, 0.0) * n / (n - 1))
    numbers = [int(sources.run_info(r).get("run", 0)) for r in runs]
    return Constants(
        detector=detector,
        pedestal=pedestal.astype(np.float32),
        noise=noise.astype(np.float32),
        status=status_of(pedestal, noise),
        runs=(max(numbers), -1),  # from the dark on, until the next one
        source=", ".join(Path(r).name for r in runs),
    )


def status_of(pedestal: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """uint16 status (0 good, MASK_DEAD, MASK_HOT) judged per ASIC (per panel for other detectors)."""
    status = np.zeros(pedestal.shape, np.uint16)
    for ped, rms, flags in zip(_asics(pedestal), _asics(noise), _asics(status)):
        typical = np.median(rms)
        level = np.median(ped)
        spread = 1.4826 * np.median(np.abs(ped - level))  # robust: hot pixels do not widen it
        flags[rms < DEAD_NOISE * typical] |= MASK_DEAD
        flags[(rms > HOT_NOISE * typical) | (ped - level > HOT_PEDESTAL_SIGMA * max(spread, 1.0))] |= MASK_HOT
    return status


def _asics(a: np.ndarray) -> list[np.ndarray]:
    """Views of each ASIC (each panel where the columns are not a whole number of ASICs)."""
    rows, cols = a.shape[-2:]
    panels = a.reshape(-1, rows, cols)
    if cols % ASIC_COLS:
        return list(panels)
    return [p[:, i : i + ASIC_COLS] for p in panels for i in range(0, cols, ASIC_COLS)]


def plot(constants: Constants, path: Path) -> None:
    """Pedestal and noise maps (assembled CSPAD image when the frames are a raw stack)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hitveto.io import geometry

    def image(a: np.ndarray) -> np.ndarray:
        return geometry.assemble(a) if a.shape == geometry.RAW_SHAPE else a.reshape(-1, a.shape[-1])

    hot = int((constants.status & MASK_HOT).astype(bool).sum())
    dead = int((constants.status & MASK_DEAD).astype(bool).sum())
    fig, (ped, rms) = plt.subplots(1, 2, figsize=(13, 6))
    fig.suptitle(f"dark: {constants.source}; status: {hot} hot, {dead} dead pixels", fontsize=10)
    for ax, values, title in (
        (ped, constants.pedestal, "pedestal (ADU)"),
        (rms, constants.noise, "noise (ADU rms)"),
    ):
        low, high = np.percentile(values, [1, 99])
        shown = ax.imshow(image(values), vmin=low, vmax=high, cmap="viridis")
        ax.set(title=title, xticks=[], yticks=[])
        fig.colorbar(shown, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
