"""Training recipes: optimiser, schedule, batch, epochs, augmentation, and the loss's hit weight.

The study's recipe (`seed`): SGD lr 0.002 momentum 0.9, batch 100, 3 epochs. `fast` (AdamW, 8
epochs) trains the compact network, which SGD at lr 0.002 barely moves in three epochs; `full`
trains the full-detector model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

OPTIMISERS = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipe:
    """Optimiser and schedule."""

    optimiser: Literal["sgd", "adamw"]
    lr: float
    momentum: float = 0.0
    batch_size: int = 100
    epochs: int = 3
    augment: bool = False  # fresh hot and dead pixels per sample (see augment())
    gain_range: float = 1.0  # and each sample's ADU scaled by a factor in [1/g, 1] (see augment())
    hot_pixels: bool = True  # augment() adds hot pixels (off for the raw layout: its pool caps them)
    hit_weight: float = 1.0  # a hit's weight in the loss against a miss's (BCE pos_weight)
    cosine: bool = False  # the learning rate falls along a cosine to 0 over the epochs

    def __post_init__(self) -> None:
        if self.optimiser not in OPTIMISERS:
            raise ValueError(f"optimiser {self.optimiser!r}: one of {sorted(OPTIMISERS)}")
        if min(self.lr, self.hit_weight) <= 0 or min(self.batch_size, self.epochs) < 1 or self.gain_range < 1:
            raise ValueError(f"recipe out of range: {self}")


RECIPES = {
    "seed": Recipe(optimiser="sgd", lr=0.002, momentum=0.9, batch_size=100, epochs=3),  # the study's
    "fast": Recipe(optimiser="adamw", lr=0.003, batch_size=64, epochs=8, augment=True),
    # fast, and gains down to 1/8 of the runs': a detector in a lower gain mode (CSPAD low gain:
    # 1/6.9) looks like these, so the model need not be told the gain
    "fast-gain": Recipe(optimiser="adamw", lr=0.003, batch_size=64, epochs=8, augment=True, gain_range=8.0),
    # fast, a hit weighing 4 misses: the full-detector model, run at sensitivity 0.995, must rank
    # the faintest hits above the empty frames (specificity at that sensitivity 0.34 after one
    # epoch, 0.08 unweighted); the learning rate decays so that the last epoch does not leave the
    # threshold's tail where one noisy step put it
    "full": Recipe(
        optimiser="adamw", lr=0.003, batch_size=64, epochs=12, augment=True, hit_weight=4.0, cosine=True
    ),
}


def optimiser_for(
    net: torch.nn.Module, r: Recipe, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    optimiser: torch.optim.Optimizer = (
        torch.optim.SGD(net.parameters(), lr=r.lr, momentum=r.momentum)
        if r.optimiser == "sgd"
        else torch.optim.AdamW(net.parameters(), lr=r.lr)
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps) if r.cosine else None
    return optimiser, schedule
