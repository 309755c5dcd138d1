"""Pictures of simulated frames for the docs: one assembled CSPAD frame per kind, log scale.

python -m hitveto.sim.figures docs/img
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from hitveto.io import geometry
from hitveto.sim.noise import to_adu
from hitveto.sim.params import PRESETS
from hitveto.sim.physics import FrameKind, simulate_photons


def frames_by_kind(preset: str = "lysozyme", seed: int = 11, limit: int = 400):
    """The first simulated raw frame of each kind: {kind: (adu, truth)}."""
    run = dataclasses.replace(PRESETS[preset], seed=seed)
    pixels = geometry.pixel_map("raw", run.detector.distance_m)
    found = {}
    for i in range(limit):
        rng = np.random.default_rng([seed, i])
        photons, truth = simulate_photons(pixels, run, rng)
        if truth.kind not in found:
            found[truth.kind] = (to_adu(photons, run, rng), truth)
        if len(found) == len(FrameKind):
            break
    return found


def plot(out_dir: Path, preset: str = "lysozyme") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    frames = frames_by_kind(preset)
    fig, axes = plt.subplots(2, len(frames), figsize=(4 * len(frames), 8.2))
    r0, c0 = geometry.beam_pixel()
    for col, kind in enumerate(sorted(frames)):
        adu, truth = frames[kind]
        image = geometry.assemble(adu).astype(np.float32)
        shown = np.log10(np.clip(image, 1, None))
        name = kind.name.lower().replace("_", " ")
        title = f"{name}\n{truth.n_crystals} crystal(s), {truth.n_strong_spots} strong spots"
        axes[0, col].imshow(shown, cmap="magma", vmin=0.5, vmax=3.5)
        axes[0, col].add_patch(Rectangle((c0 - 175, r0 - 175), 350, 350, fill=False, ec="cyan", lw=0.8))
        axes[0, col].set_title(title, fontsize=10)
        axes[1, col].imshow(shown[r0 - 175 : r0 + 175, c0 - 175 : c0 + 175], cmap="magma", vmin=0.5, vmax=3.5)
        axes[1, col].set_title("350x350 region round the beam", fontsize=9)
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"simulated CSPAD frames, preset {preset!r} (log10 ADU)")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"simulated-frames-{preset}.png"
    fig.savefig(path, dpi=55)
    return path


if __name__ == "__main__":
    for preset in sys.argv[2:] or ["lysozyme"]:
        print(plot(Path(sys.argv[1]), preset))
