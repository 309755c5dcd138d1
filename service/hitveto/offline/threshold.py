"""`hitveto threshold MODEL RUN... --out NEW`: a model's decision threshold calibrated again, on
validation runs it was not trained on; the weights are the same.

The trainer calibrates the threshold on its validation runs (`--target-sensitivity`): the score
under which at most (1 - target) of their hits fall. With a few hundred validation frames that is
the lowest-scoring hit's score, and one odd hit drags it down for every frame after. More
validation frames, of experiments like the beamline's, give a threshold that rests on more hits.
Labels: simulator truth where the runs have it (>= N strong spots), else peakfinder8 (>= N peaks).
The new artifact records the runs, the target and what the old threshold was.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

from hitveto.io.calibration import Constants
from hitveto.io.peaks import PeakFinderParams
from hitveto.models import artifact
from hitveto.offline import labels
from hitveto.offline.datasets import load_runs
from hitveto.offline.evaluate import report, summarise


def recalibrate(
    model: Path,
    runs: tuple[Path, ...],
    out: Path,
    *,
    target_sensitivity: float,
    min_peaks: int = labels.MIN_PEAKS_FOR_HIT,
    constants: Constants | None = None,
) -> str:
    """Write the model with its threshold calibrated on `runs` to `out`; returns the report."""
    import torch

    from hitveto.models.engine import Engine

    art = artifact.read(model)
    params = PeakFinderParams(**art.info.training.get("peakfinder8", {}))
    data = load_runs(runs, art.spec, params, count_peaks=False, constants=constants)
    protocol = "truth"
    if (data.strong_spots < 0).any():  # no simulator truth: peakfinder8 labels the frames
        data, protocol = load_runs(runs, art.spec, params, constants=constants), "min-peaks"
    scores = Engine(art, device="cpu", max_batch=64).score(list(data.regions))
    hits = (
        labels.by_protocol(protocol, data.peaks, data.strong_spots, min_peaks=min_peaks, seed=0) == labels.HIT
    )
    threshold = labels.calibrate_threshold(scores, hits, target_sensitivity)
    calibration = {
        "target_sensitivity": target_sensitivity,
        "on": [str(r) for r in runs],
        "labels": labels.PROTOCOLS[protocol].format(n=min_peaks),
        "frames": int(len(scores)),
        "hits": int(hits.sum()),
        "replaces": art.info.threshold,
    }
    validation = {"runs": [str(r) for r in runs], **summarise(scores, data, threshold, min_peaks)}
    info = dataclasses.replace(
        art.info,
        threshold=threshold,
        training={**art.info.training, "threshold_calibration": calibration},
        validation=validation,
    )
    scripted = torch.jit.load(io.BytesIO(art.data), map_location="cpu")
    artifact.save(out, scripted, info, art.spec.roi_index)
    lines = [
        f"threshold {art.info.threshold:.4g} -> {threshold:.4g}: {target_sensitivity} of the "
        f"{int(hits.sum())} hits in {len(scores)} frames kept ({calibration['labels']})",
        report(validation, art.info.version, threshold, min_peaks),
        f"written: {out}",
    ]
    return "\n".join(lines)
