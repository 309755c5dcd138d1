"""Verdict classes beside the hit score: what beamline staff act on besides hit or miss.

- multiple: a hit with more than one crystal (wants `indexamajig --multi`, a lower crystal density);
- ice: ice rings or ice crystallites in the jet (the sample delivery needs attention now);
- jet_streak: a bright streak off the jet's surface (an unstable or misaligned jet);
- blank: the pulse missed the jet, no sample scattering at all.

The heads read what the full-detector network (networks.PanelCNN) already computes for its hit
score (the frame's features, each panel's mean level, the trunk's features per panel, the
brightest pixels) and where the frame's light lies round the beam (class_features.py), through
one small hidden layer. The hit network is not retrained with them, so its score and threshold, and
every keep or drop, are those of the model the heads were added to.
"""

from __future__ import annotations

import torch
from torch import nn

from hitveto.models.class_features import BrightPixels, Profiles
from hitveto.models.networks import HitClassifier, PanelCNN

CLASSES = ("multiple", "ice", "jet_streak", "blank")


class ClassHeads(nn.Module):
    """Logits of each class (b, classes): one hidden layer over the hit network's features (the
    frame's, each panel's level, how the trunk's features vary across panels) and where the
    frame's light lies round the beam (class_features.py)."""

    def __init__(
        self,
        net: PanelCNN,
        radius: torch.Tensor,
        azimuth: torch.Tensor,
        n_classes: int = len(CLASSES),
        hidden: int = 32,
    ) -> None:
        super().__init__()
        # A panels-rings network's frame features hold where its bright pixels lie already.
        self.bright: BrightPixels | None = None
        if net.where is None:
            self.bright = BrightPixels(radius, azimuth, float(net.sharpness.detach()), net.counted)
        self.profiles = Profiles(radius, azimuth)
        width = net.n_features + net.panels + 2 * net.n_per_panel + self.profiles.width
        width += 0 if self.bright is None else self.bright.width
        # The features' scales differ by orders of magnitude (counts, maxima, levels): each is
        # standardised (learnt on the training frames).
        self.standardise = nn.BatchNorm1d(width)
        self.classify = nn.Sequential(
            nn.Dropout(0.1), nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, n_classes)
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The trained part: logits (b, classes) of what `inputs` gives."""
        return self.classify(self.standardise(inputs))

    def inputs(
        self,
        profiles: torch.Tensor,
        frame: torch.Tensor,
        means: torch.Tensor,
        per_panel: torch.Tensor,
        bright: torch.Tensor,
        index: torch.Tensor,
    ) -> torch.Tensor:
        """(b, width) what the layers read, fixed by the hit network and the geometry: the
        profiles (self.profiles of the normalised frames), the rest as PanelCNN.features returns."""
        spread = torch.cat([per_panel.std(dim=1), per_panel.amin(dim=1)], dim=1)
        if self.bright is None:
            return torch.cat([frame, means, spread, profiles], dim=1)
        return torch.cat([frame, means, spread, self.bright(bright, index), profiles], dim=1)


class ClassifiedHits(nn.Module):
    """What an artifact with verdict classes holds: (b, 1 + classes) probabilities, P(hit) first,
    the hit score computed exactly as by the hit model alone."""

    def __init__(self, hit: HitClassifier, heads: ClassHeads) -> None:
        super().__init__()
        if not isinstance(hit.net, PanelCNN):
            raise ValueError("verdict classes need the full-detector network (panels architectures)")
        self.normalise, self.net, self.heads = hit.normalise, hit.net, heads

    def forward(self, adu: torch.Tensor) -> torch.Tensor:
        x = self.normalise(adu)
        # the profiles first: the frames are then no longer needed once the hit network is done
        # with them, as without the heads (kept alive longer, they slowed its later steps by
        # ~10 %: fresh memory for each)
        profiles = self.heads.profiles(x.reshape(x.shape[0], -1))
        frame, means, per_panel, bright, index = self.net.features(x)
        p_hit = torch.sigmoid(self.net.classify(frame))
        logits = self.heads(self.heads.inputs(profiles, frame, means, per_panel, bright, index))
        return torch.cat([p_hit, torch.sigmoid(logits)], dim=1)
