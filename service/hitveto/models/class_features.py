"""Where a frame's light lies round the beam: what the verdict classes (heads.py) read besides the
hit network's own features. Both are fixed maps of the detector's pooled pixels, built once from
its geometry (their radius and azimuth from the detector's centre), applied to a whole batch.

- `BrightPixels`: where the frame's brightest pixels (the hit network's soft-counted ones) lie:
  histograms of their radius and azimuth, the largest share of them on one line through the
  beam, a few of their values by rank. Ice crystallites put them on a few radii, Bragg spots of
  one or more lattices anywhere.
- `Profiles`: the mean level by radius (a sample of the pooled pixels: a ring is long) and
  its sharp part (the profile less its 7-bin running mean: ice rings are sharp, the water ring is
  broad), and by azimuth in two annuli near the beam, where a jet streak is a line through the
  beam (its two opposite azimuths above the annulus's median). A jet streak is faint beside
  Bragg spots and seldom among the brightest pixels; an ice ring, beside a hit's spots, neither.

Measured on the validation runs of the class training (docs/MODEL.md), AUC with the hit
network's features alone / with BrightPixels / with both: jet_streak 0.77 / 0.90 / 0.98, ice
0.95 / 0.97 / 0.98, multiple 0.88 / 0.93 / 0.93.
"""

# no `from __future__ import annotations`: TorchScript reads the buffers' annotations as types
import math

import torch
from torch import nn

RADII, AZIMUTHS = 32, 16  # BrightPixels' histogram bins
RANKS = (0, 7, 31, 63, 127)  # the brightest pixel's value, the 8th's, ...
BRIGHT = 4.0  # sqrt-photons above background where a pixel counts as bright (a sigmoid)
PROFILE_BINS = 96  # the radial profile's bins, out to the detector's farthest pixel
ANNULI = ((0.03, 0.125), (0.125, 0.31))  # where the azimuthal profiles are taken, of that radius
ANNULUS_BINS = 64
# Every how many pooled pixels (along rows and columns) the profiles read: rings and the water
# ring are long, so a sparse sample gives their level; a streak is one pixel wide, so the inner
# annulus reads every pixel.
RADIAL_STRIDE = 4
ANNULUS_STRIDES = (1, 2)
SHARP = 7  # bins of the running mean the sharp part of the radial profile is taken against


class BrightPixels(nn.Module):
    radius_bin: torch.Tensor  # each pooled pixel's bins (buffers: constants, folded when frozen)
    azimuth_bin: torch.Tensor

    def __init__(self, radius: torch.Tensor, azimuth: torch.Tensor, sharpness: float, counted: int) -> None:
        super().__init__()
        self.ranks = [r for r in RANKS if r < counted]
        self.sharpness, self.bright, self.radii, self.azimuths = sharpness, BRIGHT, RADII, AZIMUTHS
        r = (radius.flatten() / radius.max() * RADII).long().clamp(max=RADII - 1)
        phi = ((azimuth.flatten() + math.pi) / (2 * math.pi) * AZIMUTHS).long() % AZIMUTHS
        self.register_buffer("radius_bin", r.to(torch.int16))  # small tables: a small artifact
        self.register_buffer("azimuth_bin", phi.to(torch.int16))
        self.width = 2 * RADII + AZIMUTHS + 2 + len(self.ranks)

    def forward(self, bright: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        weight = torch.sigmoid(self.sharpness * (bright - self.bright))
        radii = _histogram(self.radius_bin[index].long(), weight, self.radii)
        azimuths = _histogram(self.azimuth_bin[index].long(), weight, self.azimuths)
        total = weight.sum(dim=1, keepdim=True) + 1e-3
        line = (azimuths + azimuths.roll(self.azimuths // 2, dims=1)).amax(dim=1, keepdim=True) / total
        ranked = bright[:, self.ranks]
        return torch.cat(
            [torch.log1p(radii), radii / total, torch.log1p(azimuths), line, ranked, torch.log1p(total)],
            dim=1,
        )


class Profiles(nn.Module):
    radial_pixels: torch.Tensor  # which pooled pixels, their bins, 1 / pixels in each bin
    radial_bin: torch.Tensor
    radial_weight: torch.Tensor
    annulus0_pixels: torch.Tensor
    annulus0_bin: torch.Tensor
    annulus0_weight: torch.Tensor
    annulus1_pixels: torch.Tensor
    annulus1_bin: torch.Tensor
    annulus1_weight: torch.Tensor

    def __init__(self, radius: torch.Tensor, azimuth: torch.Tensor) -> None:
        super().__init__()
        r = radius / radius.max()
        pixels = torch.nonzero(_every(r, RADIAL_STRIDE).flatten()).flatten()
        bins = (r.flatten()[pixels] * PROFILE_BINS).long().clamp(max=PROFILE_BINS - 1)
        self.register_buffer("radial_pixels", pixels)
        self.register_buffer("radial_bin", bins.unsqueeze(0))
        self.register_buffer("radial_weight", _inverse_counts(bins, PROFILE_BINS))
        for i, ((inner, outer), stride) in enumerate(zip(ANNULI, ANNULUS_STRIDES)):
            near = (r >= inner) & (r < outer) & _every(r, stride)
            pixels = torch.nonzero(near.flatten()).flatten()
            phi = azimuth.flatten()[pixels]
            bins = ((phi + math.pi) / (2 * math.pi) * ANNULUS_BINS).long() % ANNULUS_BINS
            self.register_buffer(f"annulus{i}_pixels", pixels)
            self.register_buffer(f"annulus{i}_bin", bins.unsqueeze(0))
            self.register_buffer(f"annulus{i}_weight", _inverse_counts(bins, ANNULUS_BINS))
        self.bins, self.annulus_bins, self.sharp = PROFILE_BINS, ANNULUS_BINS, SHARP
        self.width = 2 * PROFILE_BINS + 3 + 2 * (ANNULUS_BINS + 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: the normalised frames, (b, pixels) flat."""
        radial = _profile(x, self.radial_pixels, self.radial_bin, self.radial_weight, self.bins)
        running = nn.functional.avg_pool1d(
            radial.unsqueeze(1), self.sharp, 1, self.sharp // 2, count_include_pad=False
        ).squeeze(1)
        sharp = radial - running
        parts = [radial, sharp, sharp.topk(3, dim=1).values]
        for pixels, bins, weight in (
            (self.annulus0_pixels, self.annulus0_bin, self.annulus0_weight),
            (self.annulus1_pixels, self.annulus1_bin, self.annulus1_weight),
        ):
            parts.append(self._streak(_profile(x, pixels, bins, weight, self.annulus_bins)))
        return torch.cat(parts, dim=1)

    def _streak(self, around: torch.Tensor) -> torch.Tensor:
        """An annulus's azimuthal profile less its median, and how far its two opposite azimuths
        (a line through the beam) stand above that: the two largest, and the largest in units of
        the profile's spread."""
        # the (lower) median as the k-th largest: ONNX has no median
        median = around.topk(self.annulus_bins // 2 + 1, dim=1).values[:, -1:]
        level = around - median
        line = (level + level.roll(self.annulus_bins // 2, dims=1)) / 2
        top = line.topk(2, dim=1).values
        return torch.cat([level, top, top[:, :1] / (around.std(dim=1, keepdim=True) + 1e-3)], dim=1)


def _histogram(bins: torch.Tensor, weight: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(weight.shape[0], n, dtype=weight.dtype, device=weight.device)
    return out.scatter_add(1, bins, weight)


def _profile(
    x: torch.Tensor, pixels: torch.Tensor, bins: torch.Tensor, weight: torch.Tensor, n: int
) -> torch.Tensor:
    """The mean of x over the pixels of each bin, (b, n); bins (1, pixels). scatter_add with int64
    indices: index_add along the batch's rows took 1.3-18x longer (one core; int32 indices the
    most)."""
    values = x.index_select(1, pixels)
    out = torch.zeros(x.shape[0], n, dtype=x.dtype, device=x.device)
    return out.scatter_add(1, bins.expand(values.shape[0], -1), values) * weight


def _every(r: torch.Tensor, stride: int) -> torch.Tensor:
    """True on every stride-th row and column of each panel (n_panels, rows, cols)."""
    sampled = torch.zeros_like(r, dtype=torch.bool)
    sampled[:, ::stride, ::stride] = True
    return sampled


def _inverse_counts(bins: torch.Tensor, n: int) -> torch.Tensor:
    return 1.0 / torch.bincount(bins, minlength=n).clamp(min=1).float()
