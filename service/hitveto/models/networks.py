"""CNN architectures for hit finding. Every model maps a batch of ADU regions (B, H, W) to P(hit).

- `SeedCNN`: the study's network (conv, ReLU, max-pool, fully connected), ~10 ms/frame on one core.
- `CompactCNN`: this project's default: an input max-pool that keeps Bragg peaks (a peak survives
  max-pooling, the background shrinks), three strided convolutions and global pooling, so it runs
  in a fraction of a millisecond and does not depend on where in the region a peak falls.
"""

from __future__ import annotations

import hashlib
from copy import deepcopy

import torch
from torch import nn


class Normalise(nn.Module):
    """ADU -> log(1 + photons), after an optional max-pool of the raw integers.

    log1p, clamping and scaling are monotonic, so they commute with max-pooling: pooling first, on
    the integers, gives the same numbers as pooling the normalised image, at a quarter of the cost
    for 2x2 (the normalisation and the pool were most of a compact model's time on CPU).
    """

    def __init__(self, adu_per_photon: float, pool: int = 1) -> None:
        super().__init__()
        self.scale = 1.0 / float(adu_per_photon)
        self.pool = pool

    def forward(self, adu: torch.Tensor) -> torch.Tensor:
        if self.pool > 1:
            b, h, w = adu.shape
            p = self.pool
            adu = adu.view(b, h // p, p, w).amax(2).view(b, h // p, w // p, p).amax(3)
        return torch.log1p(adu.float().clamp_min(0.0) * self.scale).unsqueeze(1)


class SeedCNN(nn.Module):
    """The study's shape: three conv/ReLU/max-pool blocks and two fully connected layers."""

    def __init__(self, roi: int = 350) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = roi // 8
        self.classify = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * side * side, 64), nn.ReLU(), nn.Linear(64, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x)).squeeze(1)


class CompactCNN(nn.Module):
    """Three stride-2 convolutions, global max and mean pooling, one linear layer.

    Its input is max-pooled input_pool x input_pool first (by Normalise): a Bragg spot (1-2 pixels
    rms) survives as a bright pooled pixel. A 5x5 pool was 5x faster (0.15 vs 0.7 ms per 350x350
    frame on one core) but lost weak spots in the pooled background noise (held-out sensitivity
    0.81 vs 0.94), so the default stays 2x2.
    """

    def __init__(self, roi: int = 350, channels: int = 16, input_pool: int = 2) -> None:
        super().__init__()
        if roi % input_pool:
            raise ValueError(f"region side {roi} is not a multiple of the input pool {input_pool}")
        self.input_pool = input_pool
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c // 2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c // 2, c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.classify = nn.Linear(4 * c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)
        return self.classify(pooled).squeeze(1)


class HitClassifier(nn.Module):
    """What the artifact holds: normalisation, a network returning logits, and the sigmoid."""

    def __init__(self, net: nn.Module, adu_per_photon: float) -> None:
        super().__init__()
        self.normalise = Normalise(adu_per_photon, pool=getattr(net, "input_pool", 1))
        self.net = net

    def logits(self, adu: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(adu))

    def forward(self, adu: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(adu))


ARCHITECTURES: dict[str, type[nn.Module]] = {"seed": SeedCNN, "compact": CompactCNN}


def build(architecture: str, roi: int, adu_per_photon: float) -> HitClassifier:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    return HitClassifier(ARCHITECTURES[architecture](roi), adu_per_photon)


def weights_digest(net: nn.Module, extra: bytes = b"") -> str:
    """8 hex digits of the weights (and `extra`): the second half of a model version."""
    weights = b"".join(p.detach().cpu().numpy().tobytes() for p in net.parameters())
    return hashlib.sha256(weights + extra).hexdigest()[:8]


def at_gain(net: HitClassifier, adu_per_photon: float) -> HitClassifier:
    """A copy of the network normalising for another detector gain (the same weights)."""
    copy = deepcopy(net)
    copy.normalise = Normalise(adu_per_photon, pool=net.normalise.pool)
    return copy
