"""The audit sample: a seeded random share of the frames the model calls misses is kept anyway.

The daemon marks them `audit` (keep, with the model's score); the writer stores them with that
reason. Read back later (`hitveto audit FILE...`) and labelled by truth or peakfinder8, they
estimate how many hits the veto threw away, which nothing else can tell once the misses are gone
(offline/estimate.py).

The pick is a hash of (seed, detector, run, pulse id), not a random draw: the same frame is picked
on every replay and by every daemon behind a load balancer, and each run gets its own sample.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

from hitveto_client.protocol import EventKey

_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class AuditSample:
    fraction: float  # share of misses kept for audit, 0 = off
    seed: int = 0

    def picks(self, key: EventKey) -> bool:
        if self.fraction <= 0.0:
            return False
        # As unsigned 64-bit words: the same bytes as signed ids, and no id can make pack raise
        # (an id out of range once silenced the inference thread).
        words = (w & _U64 for w in (self.seed, key.run, key.pulse_id))
        digest = hashlib.blake2b(struct.pack("<QQQ", *words) + key.detector.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64 < self.fraction


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


NO_AUDIT = AuditSample(0.0)
