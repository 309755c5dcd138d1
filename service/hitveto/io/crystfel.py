"""CrystFEL geometry files for the frames hitveto stores: `hitveto geom`.

A geometry file tells CrystFEL where each pixel of a stored frame lies and where to find the photon
energy, the detector distance and the bad-pixel mask. The panels come from the detector's psana
geometry (`hitveto.io.geometry`), the same pixel positions the simulator paints spots at:

- raw stack (N, *raw shape): one panel per ASIC (`p{panel}a{asic}`; CSPAD 185 x 194 pixels,
  Jungfrau 256 x 256), since a panel's ASICs sit apart by wider pixels (psana's wide middle columns
  of a CSPAD 2x1, the Jungfrau's double pixels); `dim0 = %` (the frame), `dim1` the panel. A
  panel is a uniform grid to CrystFEL: the Jungfrau's double-size edge pixels lie half a pixel
  from where it puts them (every other pixel within 0.01);
- region (N, 350, 350): one panel, fitted to the positions of the region's real pixels (the
  assembled image's nearest-pixel grid: within half a pixel).

CrystFEL places a panel by the very corner of its first pixel, in pixels from the beam, and by its
fast- and slow-scan steps in the lab frame (+z along the beam, +y up: psana's LAB frame too). The
beam may cross the detector off its nominal centre (`Experiment.beam_center_m`); the corners are
measured from where it does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hitveto.io import geometry
from hitveto_client import detectors
from hitveto_client.cxi import DETECTOR, Experiment, read_experiment

DATA = "/entry_1/data_1/data"
ENERGY = "/LCLS/photon_energy_eV"
DISTANCE = f"/{DETECTOR}/distance"
MASK = f"/{DETECTOR}/mask"


@dataclass(frozen=True, slots=True, kw_only=True)
class Panel:
    """One CrystFEL panel: its pixels in the stored array, and where they are."""

    name: str
    leading: tuple[int, ...]  # fixed array indices before (ss, fs), after the frame's
    min_fs: int
    max_fs: int
    min_ss: int
    max_ss: int
    fs: np.ndarray  # (3,) lab-frame step of one fast-scan pixel, in pixels
    ss: np.ndarray
    corner_x: float  # the panel's very corner (not its first pixel's centre), pixels from the beam
    corner_y: float
    coffset_m: float  # the panel's z offset from the detector's nominal plane


def panels(
    layout: str, beam_center_m: tuple[float, float] = (0.0, 0.0), detector: str = "cspad"
) -> list[Panel]:
    """The panels of a detector's raw stack ("raw") or its region ("roi")."""
    pixels = geometry.pixel_map(layout, 0.0, detector=detector)
    xyz = np.stack([pixels.x_m, pixels.y_m, pixels.z_m], axis=-1).astype(np.float64)
    xyz[..., 0] -= beam_center_m[0]
    xyz[..., 1] -= beam_center_m[1]
    if layout == "roi":
        return [_fit("p0", (), xyz, pixels.mask, pixels.pixel_size_m)]
    rows, cols = detectors.get(detector).asic_shape
    per_row = xyz.shape[2] // cols
    inner = np.zeros((rows, cols), bool)
    inner[1:-1, 1:-1] = True  # an ASIC's edge pixels may be wide (Jungfrau: double): the fit skips them
    return [
        _fit(f"p{s}a{a}", (s,), xyz[s, r : r + rows, c : c + cols], inner, pixels.pixel_size_m, (r, c))
        for s in range(xyz.shape[0])
        for a, (r, c) in enumerate(
            (r, c) for r in range(0, xyz.shape[1], rows) for c in range(0, per_row * cols, cols)
        )
    ]


def _fit(
    name: str,
    leading: tuple[int, ...],
    xyz: np.ndarray,
    mask: np.ndarray | None,
    pixel_m: float,
    first: tuple[int, int] = (0, 0),
) -> Panel:
    """A panel from its pixels' positions (rows, cols, 3): least squares, exact for a flat grid."""
    rows, cols = xyz.shape[:2]
    rr, cc = np.indices((rows, cols))
    use = np.ones((rows, cols), bool) if mask is None else np.asarray(mask, bool)
    design = np.column_stack([np.ones(use.sum()), rr[use], cc[use]])
    (origin, ss, fs), *_ = np.linalg.lstsq(design, xyz[use] / pixel_m, rcond=None)
    corner = origin - 0.5 * fs - 0.5 * ss  # from the first pixel's centre to its very corner
    first_row, first_col = first
    return Panel(
        name=name,
        leading=leading,
        min_fs=first_col,
        max_fs=first_col + cols - 1,
        min_ss=first_row,
        max_ss=first_row + rows - 1,
        fs=fs,
        ss=ss,
        corner_x=float(corner[0]),
        corner_y=float(corner[1]),
        coffset_m=float((origin[2] + (rows - 1) / 2 * ss[2] + (cols - 1) / 2 * fs[2]) * pixel_m),
    )


def geometry_text(
    layout: str, experiment: Experiment, *, from_file: bool = True, has_mask: bool = False
) -> str:
    """The geometry file for frames of `layout` stored by `CxiWriter`.

    from_file: photon energy and distance are read per frame from the file's columns; else the
    experiment's values are written in literally (for files that lack them). has_mask: the files
    hold the bad-pixel mask (`Experiment.mask`).
    """
    if not from_file and not (
        math.isfinite(experiment.photon_energy_ev) and math.isfinite(experiment.distance_m)
    ):
        raise ValueError("literal energy and distance wanted, but the experiment does not give them")
    energy = ENERGY if from_file else f"{experiment.photon_energy_ev:.3f} eV"
    distance = f"{DISTANCE} m" if from_file else f"{experiment.distance_m:.6f} m"
    detector = detectors.get(experiment.detector)
    found = panels(layout, experiment.beam_center_m, detector.name)
    lines = [
        f"; CrystFEL geometry for hitveto CXI files: {detector.name} {layout} layout, {len(found)} panel(s),",
        f"; from psana's {detector.geometry_file} (written by `hitveto geom`)",
        f"photon_energy = {energy}",
        f"clen = {distance}",
        f"res = {1 / detector.pixel_size_m:.4f}",
        *(
            [f"adu_per_photon = {experiment.adu_per_photon:g}"]
            if math.isfinite(experiment.adu_per_photon)
            else []
        ),
        *([f"max_adu = {experiment.saturation_adu:g}"] if math.isfinite(experiment.saturation_adu) else []),
        f"data = {DATA}",
        "dim0 = %",
        *([f"mask0_data = {MASK}", "mask0_goodbits = 0x0", "mask0_badbits = 0xffff"] if has_mask else []),
        "",
    ]
    for p in found:
        lines += _panel_lines(p) + [""]
    return "\n".join(lines)


def layout_of(frame_shape: tuple[int, ...], detector: str = "cspad") -> str:
    """The layout frames of this shape are stored in: "raw" (the panel stack) or "roi" (the region)."""
    raw_shape = detectors.get(detector).raw_shape
    if frame_shape == raw_shape:
        return "raw"
    if frame_shape == geometry.roi_index(detector=detector).shape:
        return "roi"
    raise ValueError(f"frames of shape {frame_shape}: no {detector} layout (raw {raw_shape} or region)")


def geometry_for_file(path: Path, *, from_file: bool = True) -> str:
    """The geometry for a CXI file `CxiWriter` wrote (and for every file written like it)."""
    experiment, frame_shape = read_experiment(path)
    return geometry_text(
        layout_of(frame_shape, experiment.detector),
        experiment,
        from_file=from_file,
        has_mask=experiment.mask is not None,
    )


def cell_text(lengths_a: tuple[float, ...], angles_deg: tuple[float, ...]) -> str:
    """A CrystFEL unit cell file for a cell; the lattice type is the one its metric shows."""
    a, b, c = lengths_a
    al, be, ga = angles_deg
    right = [abs(x - 90) < 1e-3 for x in (al, be, ga)]
    same = lambda x, y: abs(x - y) < 1e-3  # noqa: E731
    unique = ""
    if all(right):
        lattice = "cubic" if same(a, b) and same(b, c) else "tetragonal" if same(a, b) else "orthorhombic"
        unique = "c" if lattice == "tetragonal" else ""
    elif right[0] and right[1] and abs(ga - 120) < 1e-3 and same(a, b):
        lattice, unique = "hexagonal", "c"
    elif sum(right) == 2:
        lattice, unique = "monoclinic", "abc"[right.index(False)]
    else:
        lattice = "triclinic"
    return "\n".join(
        [
            "CrystFEL unit cell file version 1.0",
            "",
            f"lattice_type = {lattice}",
            *([f"unique_axis = {unique}"] if unique else []),
            "centering = P",
            *(f"{n} = {v:g} A" for n, v in zip("abc", lengths_a)),
            *(f"{n} = {v:g} deg" for n, v in zip(("al", "be", "ga"), angles_deg)),
            "",
        ]
    )


def _panel_lines(p: Panel) -> list[str]:
    dims = [*(str(i) for i in p.leading), "ss", "fs"]
    return [
        *(f"{p.name}/dim{n + 1} = {d}" for n, d in enumerate(dims)),
        f"{p.name}/min_fs = {p.min_fs}",
        f"{p.name}/max_fs = {p.max_fs}",
        f"{p.name}/min_ss = {p.min_ss}",
        f"{p.name}/max_ss = {p.max_ss}",
        f"{p.name}/fs = {_vector(p.fs)}",
        f"{p.name}/ss = {_vector(p.ss)}",
        f"{p.name}/corner_x = {p.corner_x:.4f}",
        f"{p.name}/corner_y = {p.corner_y:.4f}",
        f"{p.name}/coffset = {p.coffset_m:.7f}",
    ]


def _vector(v: np.ndarray) -> str:
    return " ".join(f"{c:+.7f}{axis}" for c, axis in zip(v, "xyz"))
