"""The audit sample: a seeded random share of the frames the model calls misses is kept anyway.

The daemon marks them `audit` (keep, with the model's score); the writer stores them with that
reason. Read back later (`hitveto audit FILE...`) and labelled by truth or peakfinder8, they
estimate how many hits the veto threw away, which nothing else can tell once the misses are gone.

The pick is a hash of (seed, detector, run, pulse id), not a random draw: the same frame is picked
on every replay and by every daemon behind a load balancer, and each run gets its own sample.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.protocol import EventKey, Reason

_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class AuditSample:
    fraction: float          # share of misses kept for audit, 0 = off
    seed: int = 0

    def picks(self, key: EventKey) -> bool:
        if self.fraction <= 0.0:
            return False
        # As unsigned 64-bit words: the same bytes as signed ids, and no id can make pack raise
        # (an id out of range once silenced the inference thread).
        words = (w & _U64 for w in (self.seed, key.run, key.pulse_id))
        digest = hashlib.blake2b(struct.pack("<QQQ", *words) + key.detector.encode(),
                                 digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64 < self.fraction


@dataclass(frozen=True, slots=True, kw_only=True)
class HitLoss:
    audited: int             # misses kept for audit
    audited_hits: int        # of which true hits (by truth, or peakfinder8)
    kept_hits: int           # frames kept as model hits that are true hits
    fraction: float
    labels: str              # "truth" or "peakfinder8 >= N"
    lost: float              # estimated hits vetoed
    lost_low: float          # 95 % Wilson interval
    lost_high: float

    @property
    def loss_share(self) -> tuple[float, float, float]:
        """Estimated share of all hits that were vetoed: (estimate, low, high)."""
        return tuple(x / (x + self.kept_hits) if x + self.kept_hits else 0.0
                     for x in (self.lost, self.lost_low, self.lost_high))

    def lines(self) -> list[str]:
        est, lo, hi = self.loss_share
        return [f"audit frames        {self.audited} (fraction {self.fraction:g} of the misses)",
                f"hits among them     {self.audited_hits} (labels: {self.labels})",
                f"hits kept by model  {self.kept_hits}",
                f"hits vetoed (est.)  {self.lost:.1f}, 95% interval {self.lost_low:.1f}-{self.lost_high:.1f}",
                f"hit loss            {100 * est:.2f}% (95% interval {100 * lo:.2f}-{100 * hi:.2f}%)"]


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def estimate(files: list[Path], *, fraction: float, min_peaks: int = 10) -> HitLoss:
    """Hit loss from the audit frames of CXI files written by the hit writer."""
    from clients.cxi import read_frames

    audited = audited_hits = kept_hits = 0
    labels = "truth"
    for path in files:
        data, columns = read_frames(path)
        reasons = columns["result_1/keep_reason"].astype(str)
        hit, labels = _true_hits(data, columns, min_peaks)
        audit = reasons == Reason.AUDIT.value
        audited += int(audit.sum())
        audited_hits += int((audit & hit).sum())
        kept_hits += int(((reasons == Reason.MODEL.value) & hit).sum())
    scale = 1.0 / fraction if fraction > 0 else 0.0             # misses per audited miss
    lo, hi = wilson(audited_hits, audited)
    return HitLoss(audited=audited, audited_hits=audited_hits, kept_hits=kept_hits, fraction=fraction,
                   labels=labels, lost=audited_hits * scale, lost_low=lo * audited * scale,
                   lost_high=hi * audited * scale)


def _true_hits(data: np.ndarray, columns: dict, min_peaks: int) -> tuple[np.ndarray, str]:
    if "truth/n_crystals" in columns:
        return columns["truth/n_crystals"] > 0, "truth"
    from service.peaks import PeakFinderParams, region_peak_finder
    from service.preprocess import region
    from service.train import input_spec
    spec = input_spec(350, 35.0)
    finder = region_peak_finder(spec, PeakFinderParams())
    counts = [finder.count(region(frame, spec)) for frame in data]
    return np.array(counts) >= min_peaks, f"peakfinder8 >= {min_peaks}"
