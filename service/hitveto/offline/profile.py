"""The training profile of an artifact made without one: its training runs measured through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from hitveto.io import sources
from hitveto.models.artifact import Artifact
from hitveto.models.engine import Engine
from hitveto.models.preprocess import region
from hitveto.models.stream_profile import Profile, frame_statistics, profile


def profile_runs(art: Artifact, runs: tuple[Path, ...]) -> Profile:
    """The profile of an artifact's training runs, for an artifact made without one."""
    engine = Engine(art, device="cpu", max_batch=64)
    stats = []
    for path in runs:
        events = tqdm(
            sources.events(path),
            desc=f"profile {Path(path).name}",
            unit="frame",
            mininterval=1.0,
            leave=False,
        )
        regions = [region(ev.image, art.spec) for ev in events]
        stats.append(frame_statistics(regions, engine.score(regions), art.info.threshold, art.spec))
    return profile(np.concatenate(stats))
