"""What the sample delivery did on one pulse, beyond the frame's kind: a blank shot, a bright jet
streak, ice as crystallites rather than rings. The verdict classes (networks.ClassHeads) learn
these from the truth they leave.

- **Blank shot**: the pulse missed the jet (a miss, drawn among misses with blank_fraction):
  no water ring, no jet streak, no ice, only air scatter.
- **Bright jet streak**: the pulse lit the jet's surface (streak_fraction of frames): the run's
  streak streak_boost times brighter (log-uniform). Truth calls a frame's streak bright when it
  reaches JET_STREAK_PER_SR, whatever made it so (a preset's strong jet counts too).
- **Ice rings** (ice_rings): hexagonal ice Ih rings with a patchy azimuthal texture.
- **Ice crystallites**: ice_crystallite_fraction of ice frames show a few tens of sharp spots on
  the ice rings' resolutions, at random azimuths, instead of smooth rings.

Nothing is drawn for a fraction of 0 (every preset's default): runs simulated before these
existed come out the same, frame for frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hitveto.sim.bragg import Reflections
from hitveto.sim.params import FrameMix, RunParams

JET_STREAK_PER_SR = 1.5e6  # a bright streak: photons/sr on its axis (the default jet: 4e5)
ICE_SPOTS_FOR_ICE = 10  # an ice frame: rings, or at least this many strong ice spots


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    blank: bool = False
    streak_boost: float = 1.0  # the jet streak's brightness, times the run's
    crystallites: int = 0  # ice crystallite spots to paint (0: ice, if any, is rings)


NO_EVENTS = Delivery()


def draw_delivery(mix: FrameMix, rng: np.random.Generator, *, hit: bool, ice: bool) -> Delivery:
    """This pulse's delivery events; draws nothing where the mix's fractions are 0."""
    blank = not hit and not ice and mix.blank_fraction > 0 and rng.random() < mix.blank_fraction
    boost = 1.0
    if mix.streak_fraction > 0 and not blank and rng.random() < mix.streak_fraction:
        boost = _log_uniform(rng, mix.streak_boost)
    crystallites = 0
    if ice and mix.ice_crystallite_fraction > 0 and rng.random() < mix.ice_crystallite_fraction:
        crystallites = int(round(_log_uniform(rng, mix.ice_crystallite_spots)))
    return Delivery(blank=blank, streak_boost=boost, crystallites=crystallites)


def ice_crystallites(run: RunParams, rng: np.random.Generator, n: int, *, pulse: float) -> Reflections:
    """n ice spots: each on one of the ice rings (weighted by its intensity), at a random azimuth,
    with log-uniform photons (for a nominal pulse)."""
    mix, k = run.mix, 1.0 / run.beam.wavelength_a
    weights = np.asarray(mix.ice_relative_intensity, float)
    d = np.asarray(mix.ice_d_spacings_a)[rng.choice(len(weights), n, p=weights / weights.sum())]
    two_theta = 2 * np.arcsin(np.clip(0.5 / (d * k), 0.0, 1.0))
    phi = rng.uniform(-np.pi, np.pi, n)
    direction = np.stack(
        [np.sin(two_theta) * np.cos(phi), np.sin(two_theta) * np.sin(phi), np.cos(two_theta)], axis=1
    )
    low, high = np.log(mix.ice_spot_photons)
    photons = pulse * np.exp(rng.uniform(low, high, n))
    return Reflections(
        hkl=np.zeros((n, 3), np.int64),
        q=k * (direction - np.array([0.0, 0.0, 1.0])),
        excitation=np.zeros(n),
        direction=direction,
        photons=photons,
    )


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def ice_rings(s: np.ndarray, phi: np.ndarray, run: RunParams, rng: np.random.Generator) -> np.ndarray:
    """Hexagonal ice rings with a patchy azimuthal texture, photons/sr as an (s, phi) table."""
    mix = run.mix
    d = np.asarray(mix.ice_d_spacings_a)
    radial = np.exp(-0.5 * ((s[None, :] - 1.0 / d[:, None]) / mix.ice_ring_width_inv_a) ** 2)
    orders = np.arange(1, 7)
    coeff = rng.standard_normal((len(d), len(orders))) / np.sqrt(orders)
    phase = rng.uniform(0, 2 * np.pi, (len(d), len(orders)))
    wave = (coeff[:, :, None] * np.cos(orders[None, :, None] * phi + phase[:, :, None])).sum(axis=1)
    texture = np.exp(mix.ice_texture * wave / max(1e-9, float(np.sqrt((coeff**2).sum(1).mean() / 2))))
    texture /= texture.mean(axis=1, keepdims=True)
    amount = mix.ice_ring_per_sr * mean_one_lognormal(rng, 0.6)
    weights = amount * np.asarray(mix.ice_relative_intensity)[:, None]
    return radial.T @ (weights * texture)


def mean_one_lognormal(rng: np.random.Generator, sigma: float) -> float:
    """A log-normal draw of mean 1 and log-sigma `sigma`."""
    return float(np.exp(sigma * rng.standard_normal() - 0.5 * sigma**2))
