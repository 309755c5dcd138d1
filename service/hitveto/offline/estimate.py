"""Hit loss estimated from the audit sample (serving/audit.py): the share of the misses kept for
audit that are hits, scaled to all the misses, with a Wilson interval."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hitveto.io.peaks import PeakFinderParams
from hitveto.models import artifact
from hitveto.models.preprocess import InputSpec, region
from hitveto.offline.datasets import peak_counter
from hitveto.serving.audit import wilson
from hitveto_client.cxi import read_frames
from hitveto_client.protocol import Reason


@dataclass(frozen=True, slots=True, kw_only=True)
class HitLoss:
    audited: int  # misses kept for audit
    audited_hits: int  # of which true hits (by truth, or peakfinder8)
    kept_hits: int  # frames kept as model hits that are true hits
    fraction: float
    labels: str  # "truth" or "peakfinder8 >= N"
    lost: float  # estimated hits vetoed
    lost_low: float  # 95 % Wilson interval
    lost_high: float

    @property
    def loss_share(self) -> tuple[float, float, float]:
        """Estimated share of all hits that were vetoed: (estimate, low, high)."""
        est, low, high = (
            x / (x + self.kept_hits) if x + self.kept_hits else 0.0
            for x in (self.lost, self.lost_low, self.lost_high)
        )
        return est, low, high

    def lines(self) -> list[str]:
        est, lo, hi = self.loss_share
        return [
            f"audit frames        {self.audited} (fraction {self.fraction:g} of the misses)",
            f"hits among them     {self.audited_hits} (labels: {self.labels})",
            f"hits kept by model  {self.kept_hits}",
            f"hits vetoed (est.)  {self.lost:.1f}, 95% interval {self.lost_low:.1f}-{self.lost_high:.1f}",
            f"hit loss            {100 * est:.2f}% (95% interval {100 * lo:.2f}-{100 * hi:.2f}%)",
        ]


def estimate(
    files: list[Path], *, fraction: float, min_peaks: int = 10, spec: InputSpec | None = None
) -> HitLoss:
    """Hit loss from the audit frames of CXI files written by the hit writer. Without the
    simulator's truth, a hit is min_peaks peakfinder8 peaks in the region of `spec` (default: the
    region the shipped model judges)."""
    audited = audited_hits = kept_hits = 0
    labels = "truth"
    for path in files:
        data, columns = read_frames(path)
        reasons = columns["result_1/keep_reason"].astype(str)
        hit, labels = _true_hits(data, columns, min_peaks, spec)
        audit = reasons == Reason.AUDIT.value
        audited += int(audit.sum())
        audited_hits += int((audit & hit).sum())
        kept_hits += int(((reasons == Reason.MODEL.value) & hit).sum())
    scale = 1.0 / fraction if fraction > 0 else 0.0  # misses per audited miss
    lo, hi = wilson(audited_hits, audited)
    return HitLoss(
        audited=audited,
        audited_hits=audited_hits,
        kept_hits=kept_hits,
        fraction=fraction,
        labels=labels,
        lost=audited_hits * scale,
        lost_low=lo * audited * scale,
        lost_high=hi * audited * scale,
    )


def _true_hits(
    data: np.ndarray, columns: dict, min_peaks: int, spec: InputSpec | None
) -> tuple[np.ndarray, str]:
    if "truth/n_crystals" in columns:
        return columns["truth/n_crystals"] > 0, "truth"
    spec = spec or artifact.read(artifact.DEFAULT_ARTIFACT).spec
    count = peak_counter(spec, PeakFinderParams.for_gain(spec.adu_per_photon))  # region, or whole detector
    counts = [count(frame, region(frame, spec)) for frame in data]
    return np.array(counts) >= min_peaks, f"peakfinder8 >= {min_peaks}"
