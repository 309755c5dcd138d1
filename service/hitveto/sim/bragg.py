"""Crystal lattice in the lab frame: which reflections a still shot excites, and how many photons each.

Reciprocal vectors have no 2 pi: |q| = s = 1/d in 1/Angstrom. The beam runs along +z with
k_in = (0, 0, 1/lambda). The model is written out in `service/hitveto/sim/physics.py`'s docstring.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from hitveto.sim.params import BeamParams, CrystalParams

R_E_A = 2.8179403e-5  # classical electron radius, Angstrom
PARTIALITY_CUT = 3.0  # reflections within this many sigma of the Ewald sphere are excited
MIN_SPOT_PHOTONS = 0.2  # fainter reflections are not painted


@dataclass(frozen=True, slots=True, kw_only=True)
class Reflections:
    """Excited reflections of one crystal; photons are integrated over the spot, before the detector."""

    hkl: np.ndarray  # (n, 3) int
    q: np.ndarray  # (n, 3) reciprocal-lattice vectors in the lab frame, 1/A
    excitation: np.ndarray  # (n,) |k_in + q| - 1/lambda, 1/A
    direction: np.ndarray  # (n, 3) unit vectors of k_out: the ray from the crystal to the spot
    photons: np.ndarray  # (n,) expected integrated photons, polarisation included


def direct_basis(cell_a: tuple[float, ...], angles_deg: tuple[float, ...]) -> np.ndarray:
    """Columns a, b, c in Angstrom (a along x, b in the xy plane)."""
    a, b, c = cell_a
    ca, cb, cg = np.cos(np.radians(angles_deg))
    sg = np.sin(np.radians(angles_deg[2]))
    cy = c * (ca - cb * cg) / sg
    return np.array(
        [[a, b * cg, c * cb], [0.0, b * sg, cy], [0.0, 0.0, np.sqrt(c * c - (c * cb) ** 2 - cy * cy)]]
    )


def reciprocal_basis(cell_a: tuple[float, ...], angles_deg: tuple[float, ...]) -> np.ndarray:
    """Columns a*, b*, c* in 1/Angstrom, with a* . a = 1: q = reciprocal_basis @ hkl."""
    return np.linalg.inv(direct_basis(cell_a, angles_deg)).T


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3) (normalised Gaussian quaternion)."""
    quat = rng.standard_normal(4)
    w, x, y, z = quat / np.linalg.norm(quat)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


@functools.lru_cache(maxsize=8)
def miller_indices(
    cell_a: tuple[float, ...], angles_deg: tuple[float, ...], s_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """All hkl with 0 < s <= s_max (float32, (n, 3)) and their s^2 in 1/A^2; cached per cell."""
    recip = reciprocal_basis(cell_a, angles_deg)
    # |h| <= s_max * |a| bounds each index, since h = a . q
    limits = np.ceil(s_max * np.linalg.norm(direct_basis(cell_a, angles_deg), axis=0)).astype(int)
    axes = [np.arange(-n, n + 1) for n in limits]
    hkl = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    s2 = np.einsum("ij,nj->ni", recip, hkl)
    s2 = np.einsum("ni,ni->n", s2, s2)
    keep = (s2 > 0) & (s2 <= s_max * s_max)
    return hkl[keep].astype(np.float32), s2[keep].astype(np.float32)


def wilson_f2(hkl: np.ndarray, seed: int) -> np.ndarray:
    """|F|^2 / <|F|^2>: Exponential(1) (acentric Wilson), a fixed function of (hkl, seed).

    Friedel mates get the same value, so frames of one protein can be merged like real data;
    other point-group symmetry and systematic absences are not modelled.
    """
    h = hkl.astype(np.int64)
    first = np.where(h[:, 0] != 0, h[:, 0], np.where(h[:, 1] != 0, h[:, 1], h[:, 2]))
    canon = (h * np.sign(first)[:, None]) & 0xFFFF
    key = (canon[:, 0] << 32 | canon[:, 1] << 16 | canon[:, 2]).astype(np.uint64)
    bits = _splitmix64(key ^ _splitmix64(np.array([seed], dtype=np.uint64)))
    u = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return -np.log1p(-u)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def excited_reflections(
    orientation: np.ndarray,
    crystal: CrystalParams,
    beam: BeamParams,
    *,
    s_max: float,
    size_um: float,
    fluence_per_a2: float,
    seed: int,
) -> Reflections:
    """Reflections of a crystal of edge `size_um` lit by `fluence_per_a2` photons/A^2."""
    hkl, s2 = miller_indices(crystal.cell_a, crystal.cell_angles_deg, round(s_max, 4))
    k = 1.0 / beam.wavelength_a
    ub = orientation @ reciprocal_basis(crystal.cell_a, crystal.cell_angles_deg)
    # only q_z is needed to find the excitation error of every reflection: |q| is orientation-free
    num = s2 + hkl @ (2.0 * k * ub[2]).astype(np.float32)
    # eps ~ num / 2k: a loose cut on num with the widest sigma leaves few candidates to check exactly
    widest = excitation_sigma(np.array([s_max * s_max]), crystal, beam, size_um)[0]
    near = np.flatnonzero(np.abs(num) < 2.2 * k * PARTIALITY_CUT * widest)
    hkl, s2, num = hkl[near].astype(np.int64), s2[near].astype(float), num[near].astype(float)
    eps = num / (k + np.sqrt(k * k + num))
    sigma = excitation_sigma(s2, crystal, beam, size_um)
    near = np.abs(eps) < PARTIALITY_CUT * sigma
    hkl, s2, eps, sigma = hkl[near], s2[near], eps[near], sigma[near]
    q = hkl @ ub.T
    k_out = q + np.array([0.0, 0.0, k])
    direction = k_out / np.linalg.norm(k_out, axis=1, keepdims=True)
    photons = (
        fluence_per_a2
        * R_E_A**2
        * polarisation(direction, beam)
        * beam.wavelength_a**2
        * crystal.f2_per_a3
        * illuminated_volume_a3(size_um, beam)
        / _cell_volume(crystal)
        * wilson_f2(hkl, seed)
        * np.exp(-0.5 * crystal.b_factor_a2 * s2)
        * np.exp(-0.5 * (eps / sigma) ** 2)
        / (np.sqrt(2.0 * np.pi) * sigma)
    )
    bright = photons >= MIN_SPOT_PHOTONS
    return Reflections(
        hkl=hkl[bright],
        q=q[bright],
        excitation=eps[bright],
        direction=direction[bright],
        photons=photons[bright],
    )


def excitation_sigma(s2: np.ndarray, crystal: CrystalParams, beam: BeamParams, size_um: float) -> np.ndarray:
    """Rms width of the excitation error, 1/A: mosaicity, bandwidth and crystal size in quadrature."""
    mosaic = np.radians(crystal.mosaicity_deg) ** 2 * s2
    bandwidth = (beam.bandwidth_rms * beam.wavelength_a * 0.5) ** 2 * s2 * s2
    size = (0.4 / (size_um * 1e4)) ** 2  # a Gaussian as high and as wide as a cube's sinc^2
    return np.sqrt(mosaic + bandwidth + size).astype(s2.dtype)


def polarisation(direction: np.ndarray, beam: BeamParams) -> np.ndarray:
    """Polarisation factor for unit scattered directions (..., 3), beam polarised along x."""
    f = beam.polarisation_horizontal
    return f * (1.0 - direction[..., 0] ** 2) + (1.0 - f) * (1.0 - direction[..., 1] ** 2)


def illuminated_volume_a3(size_um: float, beam: BeamParams) -> float:
    """A cube of edge `size_um`; only a focus-wide column of a larger crystal is lit."""
    edge = size_um * 1e4
    width = min(edge, beam.focus_fwhm_um * 1e4)
    return edge * width * width


def _cell_volume(crystal: CrystalParams) -> float:
    return float(abs(np.linalg.det(direct_basis(crystal.cell_a, crystal.cell_angles_deg))))
