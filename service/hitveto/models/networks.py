"""CNN architectures for hit finding. Every model maps a batch of ADU regions (B, H, W) to P(hit).

- `SeedCNN`: the study's network (conv, ReLU, max-pool, fully connected), ~10 ms/frame on one core.
- `CompactCNN`: the region model: an input max-pool that keeps Bragg peaks (a peak survives
  max-pooling, the background shrinks), three strided convolutions and global pooling, so it runs
  in a fraction of a millisecond and does not depend on where in the region a peak falls.
- `PanelCNN`: the full-detector model (the raw layout): every panel, pooled before it comes in
  (preprocess.pool_panels), as sqrt(photons); soft counts of the bright pixels over the whole
  detector beside one small convolution trunk shared by all panels (with each pixel's distance
  from the beam as a learned input), pooled over pixels, then over panels. `panels-local` counts
  spots above their neighbourhood (low-noise detectors); `panels-rings` also reads where the
  counted pixels lie round the beam (ice crystallites on a few radii, a jet streak on one line).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from copy import deepcopy
from functools import partial

import torch
from torch import nn

from hitveto.models.class_features import BrightPixels


class Normalise(nn.Module):
    """ADU -> photons -> log(1 + photons) (region models) or sqrt(photons) (full-detector models),
    after an optional max-pool of the raw integers.

    log1p, sqrt, clamping and scaling are monotonic, so they commute with max-pooling: pooling
    first, on the integers, gives the same numbers as pooling the normalised image, at a quarter of
    the cost for 2x2 (the normalisation and the pool were most of a compact model's time on CPU).
    sqrt makes photon (Poisson) noise about as large on a bright ring as on a dark panel, so a spot
    is "so far above its panel" whatever the background.
    """

    def __init__(self, adu_per_photon: float, pool: int = 1, transform: str = "log1p") -> None:
        super().__init__()
        if transform not in ("log1p", "sqrt"):
            raise ValueError(f"transform {transform!r}: log1p or sqrt")
        self.scale = 1.0 / float(adu_per_photon)
        self.pool = pool
        self.transform = transform

    def forward(self, adu: torch.Tensor) -> torch.Tensor:
        if self.pool > 1:
            b, h, w = adu.shape
            p = self.pool
            adu = adu.view(b, h // p, p, w).amax(2).view(b, h // p, w // p, p).amax(3)
        photons = adu.float().clamp_min(0.0) * self.scale
        if self.transform == "sqrt":
            return torch.sqrt(photons).unsqueeze(1)
        return torch.log1p(photons).unsqueeze(1)


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


COUNTED = 128  # the brightest pixels of a frame that are counted: a count saturates there
# panels-rings: a hit among a hundred ice crystallites (two or three bright pooled pixels each)
# must still have its own spots among those counted
COUNTED_WITH_WHERE = 512


class PanelCNN(nn.Module):
    """The whole detector: (B, n_panels * h, w) pooled panels in, one logit per frame out.

    Its input is sqrt(photons) (Normalise, `input_transform`), each panel less its mean: photon
    noise is then about the same everywhere, so "a pixel this far above its panel" means the same
    on a bright ring as on a dark panel. Two views of the frame meet in the last layers:

    - **How many spots**: soft counts of the pixels above a few learned levels (sigmoids summed
      over the frame's 128 brightest pixels, levels starting at 3-6 sqrt-photons). A hit is "at
      least 10 strong spots anywhere": a count is its natural feature, and a max over panels (the
      trunk's) cannot count.
      On validation runs 71 and 73, the count of pooled pixels > 4 sqrt-photons above their
      panel's mean, by hand, kept 99.5 % of the hits while dropping 94 % of the empty frames; the
      trunk alone, trained, 45 %.
    - **What the bright pixels look like** (rings, streaks, or spots): one small trunk shared by
      all panels, its pixels' 2x2 neighbourhoods as 4 channels (space to depth: no pixel dropped,
      and a strided convolution on 4 channels runs several times faster on a CPU than one on a
      single channel at full resolution), three stride-2 convolutions, each pixel's distance from
      the beam a learned per-channel input after the first, so that a ring at a fixed radius (ice,
      water) can be told from Bragg spots, which fall anywhere; max and mean over a panel, then
      over the panels. No convolution straddles two sensors.
    """

    input_transform = "sqrt"
    LEVELS = (3.0, 4.0, 5.0, 6.0)  # sqrt-photons above the panel's mean, where the counts start

    def __init__(
        self,
        radius: torch.Tensor,
        azimuth: torch.Tensor | None = None,
        channels: int = 8,
        local_background: int = 0,
        where: bool = False,
        counted: int = COUNTED,
    ) -> None:
        super().__init__()
        self.panels, self.h, self.w = (int(s) for s in radius.shape)
        self.local_background = local_background
        self.pad_h, self.pad_w = self.h % 2, self.w % 2  # space to depth needs even sides
        c = channels
        # Batch norm after each convolution (folded into it by torch.jit.freeze: free at
        # inference): without it training stalled for ~100 steps, or died at lr 0.01.
        self.first = nn.Sequential(nn.Conv2d(4, c, 3, stride=2, padding=1), nn.BatchNorm2d(c))
        self.rest = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1),
            nn.BatchNorm2d(4 * c),
            nn.ReLU(),
        )
        # The radius (0 to 1) where the first convolution's outputs sit; a fixed input, not a
        # weight: a parameter that is never trained (moved by .to(), folded by torch.jit.freeze).
        grid = _halved((self.h + self.pad_h) // 2), _halved((self.w + self.pad_w) // 2)
        shaped = nn.functional.adaptive_avg_pool2d((radius / radius.max()).unsqueeze(1), grid)
        self.radius = nn.Parameter(shaped, requires_grad=False)
        self.radius_weight = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.levels = nn.Parameter(torch.tensor(self.LEVELS).reshape(1, -1, 1))
        self.sharpness = nn.Parameter(torch.tensor(3.0))  # of the sigmoid that counts a pixel
        self.counted = min(counted, self.panels * self.h * self.w)  # a small test detector has fewer
        features = 16 * c + len(self.LEVELS)
        # Where the counted pixels lie (panels-rings): ice crystallites put them on a few radii, a
        # jet streak on one line through the beam, a lattice's spots anywhere. A fixed sharpness:
        # the learned one's constant must stay the graph's only one of its kind (offline/rebuild).
        self.where: BrightPixels | None = None
        if where:
            if azimuth is None:
                raise ValueError("panels-rings needs the panels' azimuth map beside their radius")
            self.where = BrightPixels(radius, azimuth, float(self.sharpness.detach()), self.counted)
            features += self.where.width
        self.n_features, self.n_per_panel = features, 8 * c  # what features() returns, per frame and panel
        self.classify = nn.Sequential(nn.Linear(features, 4 * c), nn.ReLU(), nn.Linear(4 * c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x)[0]).squeeze(1)

    def features(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What the classifier reads, (b, 16c + levels); and for verdict classes (heads.ClassHeads)
        each panel's mean (b, panels), the trunk's features per panel (b, panels, 8c), and the
        frame's brightest pixels (b, COUNTED) above their background: values and flat indices."""
        b = x.shape[0]
        panels = x.reshape(b * self.panels, 1, self.h, self.w)
        # Each panel less its mean: a spot stands out of 0 whatever the panel's background, and
        # the padding (0) looks like background. Without it the trunk's maxima sat on the padded
        # border at first and training never found the spots.
        means = panels.mean(dim=(2, 3), keepdim=True)
        panels = panels - means
        bright, where = self.brightest(panels, b)
        counts = self.spot_counts(bright)
        if self.pad_h or self.pad_w:
            panels = nn.functional.pad(panels, (0, self.pad_w, 0, self.pad_h))
        f = self.first(nn.functional.pixel_unshuffle(panels, 2))
        f = f.reshape(b, self.panels, f.shape[1], f.shape[2], f.shape[3]) + self.radius_weight * self.radius
        f = self.rest(f.reshape(b * self.panels, f.shape[2], f.shape[3], f.shape[4]))
        per_panel = torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1).reshape(b, self.panels, -1)
        frame = torch.cat([per_panel.amax(dim=1), per_panel.mean(dim=1), counts], dim=1)
        if self.where is not None:
            frame = torch.cat([frame, self.where(bright, where)], dim=1)
        return frame, means.reshape(b, self.panels), per_panel, bright, where

    def brightest(self, panels: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The frame's COUNTED brightest pixels, (b, COUNTED) values and flat indices, for the soft
        counts ((b, levels) log(1 + soft count) of the pixels above each level): above their panel's
        mean, or (local_background) above their neighbourhood's, so that a spot on a bright ring
        counts and the ring does not (on the ePix10k2M's 400 test frames, counting pooled pixels
        3 sqrt-photons above the 5 x 5 mean kept 99.5 % of the hits and dropped 98.7 % of the
        frames without a crystal; above the panel's mean, 92.6 %)."""
        above = panels - _local_mean(panels, self.local_background) if self.local_background > 0 else panels
        # Among the frame's brightest pixels only: a sigmoid on every pixel cost 8 ms a frame.
        top = torch.topk(above.reshape(b, -1), self.counted, dim=1)
        return top.values, top.indices

    def spot_counts(self, bright: torch.Tensor) -> torch.Tensor:
        """(b, levels) log(1 + soft count) of the brightest pixels above each level."""
        return torch.log1p(torch.sigmoid(self.sharpness * (bright.unsqueeze(1) - self.levels)).sum(dim=2))


def _local_mean(panels: torch.Tensor, window: int) -> torch.Tensor:
    """Each pooled pixel's neighbourhood mean (window x window, within its panel): avg_pool2d's
    without padding counted (to 1e-5), as differences of running sums along each axis, at a
    quarter of its cost (one core, a Jungfrau 4M batch: 1.8 against 10.5 ms a frame)."""
    sums = _sliding_sum(_sliding_sum(panels, window, 2), window, 3)
    ones = torch.ones_like(panels[:1])
    return sums / _sliding_sum(_sliding_sum(ones, window, 2), window, 3)


def _sliding_sum(x: torch.Tensor, window: int, dim: int) -> torch.Tensor:
    """The sum of each `window` values centred on each place along `dim` (2 or 3) of a 4-d tensor,
    zeros beyond its ends."""
    pad = window // 2
    widths = [0, 0, 0, 0]  # F.pad's (left, right) pairs count from the last dimension
    widths[2 * (3 - dim)] = pad + 1  # and one zero more, so that a sum is a difference
    widths[2 * (3 - dim) + 1] = pad
    running = nn.functional.pad(x, widths).cumsum(dim)
    n = x.shape[dim]
    return running.narrow(dim, window, n) - running.narrow(dim, 0, n)


def _halved(n: int) -> int:
    """The output size of a 3x3, stride 2, padding 1 convolution over n."""
    return (n - 1) // 2 + 1


class HitClassifier(nn.Module):
    """What the artifact holds: normalisation, a network returning logits, and the sigmoid."""

    def __init__(self, net: nn.Module, adu_per_photon: float) -> None:
        super().__init__()
        self.normalise = Normalise(
            adu_per_photon,
            pool=getattr(net, "input_pool", 1),
            transform=getattr(net, "input_transform", "log1p"),
        )
        self.net = net

    def logits(self, adu: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalise(adu))

    def forward(self, adu: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(adu))


LOCAL_BACKGROUND = 5  # panels-local: spots counted above their 5 x 5 pooled pixels' mean
# Each architecture's network from its one argument: the region's side, or the panels' radius map.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "seed": SeedCNN,
    "compact": CompactCNN,
    "panels": PanelCNN,
    "panels-local": partial(PanelCNN, local_background=LOCAL_BACKGROUND),
    "panels-rings": partial(PanelCNN, where=True, counted=COUNTED_WITH_WHERE),
}
# the input each architecture takes
LAYOUT_OF = {"seed": "roi", "compact": "roi", "panels": "raw", "panels-local": "raw", "panels-rings": "raw"}


def build(
    architecture: str,
    roi: int,
    adu_per_photon: float,
    radius: torch.Tensor | None = None,
    azimuth: torch.Tensor | None = None,
) -> HitClassifier:
    """A new network: a region model for a roi x roi region, or the full-detector model for
    pooled panels whose pixels lie at `radius` and `azimuth` (geometry.panel_radius, panel_azimuth)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    if LAYOUT_OF[architecture] == "raw":
        if radius is None:
            raise ValueError(f"{architecture!r} takes the whole detector: it needs the panels' radius map")
        return HitClassifier(ARCHITECTURES[architecture](radius, azimuth), adu_per_photon)
    return HitClassifier(ARCHITECTURES[architecture](roi), adu_per_photon)


def weights_digest(net: nn.Module, extra: bytes = b"") -> str:
    """8 hex digits of the weights (and `extra`): the second half of a model version."""
    weights = b"".join(p.detach().cpu().numpy().tobytes() for p in net.parameters())
    return hashlib.sha256(weights + extra).hexdigest()[:8]


def at_gain(net: HitClassifier, adu_per_photon: float) -> HitClassifier:
    """A copy of the network normalising for another detector gain (the same weights)."""
    copy = deepcopy(net)
    copy.normalise = Normalise(adu_per_photon, pool=net.normalise.pool, transform=net.normalise.transform)
    return copy
