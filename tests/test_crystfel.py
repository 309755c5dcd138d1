"""CrystFEL reads what hitveto writes: geometry, the demo's hits indexed as printed, and CrystFEL as
the judge in `hitveto evaluate --crystfel`. The vendored CrystFEL is built once (crystfel_build)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import crystfel_build
import numpy as np
import pytest

from hitveto.io import crystfel, geometry, sources
from hitveto.offline.indexing import indexed_events
from hitveto.sim.params import PRESETS
from hitveto.sim.run import simulate_runs


@pytest.mark.parametrize(
    "detector, layout, tolerance_px, n_panels",
    [
        ("cspad", "raw", 0.01, 64),  # 32 2x1s of two ASICs
        ("cspad", "roi", 0.75, 1),
        ("jungfrau4m", "raw", 0.01, 64),  # 8 modules of 2 x 4 ASICs
        ("epix10k2m", "raw", 0.01, 64),  # 16 panels of 2 x 2 ASICs
    ],
)
def test_the_geometry_puts_every_pixel_where_psana_does(detector, layout, tolerance_px, n_panels):
    offset = (2.0e-3, -1.0e-3)  # the beam 2 mm off centre in x, -1 mm in y
    pixels = geometry.pixel_map(layout, 0.1, detector=detector)
    xy = np.stack([pixels.x_m - offset[0], pixels.y_m - offset[1]], axis=-1) / pixels.pixel_size_m
    worst = 0.0
    found = crystfel.panels(layout, offset, detector)
    for p in found:
        ss, fs = np.mgrid[p.min_ss : p.max_ss + 1, p.min_fs : p.max_fs + 1]
        # CrystFEL: a pixel's centre is the corner plus (index - min + 0.5) steps along fs and ss
        at = np.array([p.corner_x, p.corner_y]) + (
            (fs - p.min_fs + 0.5)[..., None] * p.fs[:2] + (ss - p.min_ss + 0.5)[..., None] * p.ss[:2]
        )
        truth = xy[(*p.leading, slice(p.min_ss, p.max_ss + 1), slice(p.min_fs, p.max_fs + 1))]
        real = pixels.mask[(*p.leading, slice(p.min_ss, p.max_ss + 1), slice(p.min_fs, p.max_fs + 1))]
        error = np.abs(at - truth).max(axis=-1)
        inner = real.copy()
        inner[[0, -1], :] = inner[:, [0, -1]] = False
        worst = max(worst, float(error[inner].max()))
        # an ASIC's edge pixels: the Jungfrau's are double, their centres half a pixel further out
        assert error[real].max() < 0.51
    assert worst < tolerance_px
    assert len(found) == n_panels
    covered = np.zeros(pixels.mask.shape, int)  # every pixel in exactly one panel
    for p in found:
        covered[(*p.leading, slice(p.min_ss, p.max_ss + 1), slice(p.min_fs, p.max_fs + 1))] += 1
    assert np.all(covered == 1)


def test_a_stream_is_read_for_the_frames_that_indexed():
    chunk = "----- Begin chunk -----\nEvent: //{}\nindexed_by = {}\n----- End chunk -----\n"
    text = "CrystFEL stream format 2.3\n" + "".join(
        chunk.format(n, method)
        for n, method in ((0, "none"), (1, "asdf-nolatt-cell"), (7, "asdf"), (9, "none"))
    )
    assert indexed_events(text) == {1, 7}


def test_a_cell_file_names_the_lattice_its_metric_shows():
    hexagonal = crystfel.cell_text((92.9, 92.9, 130.4), (90, 90, 120))
    monoclinic = crystfel.cell_text((64.6, 30.9, 34.8), (90, 105.8, 90))
    assert "lattice_type = hexagonal" in hexagonal and "unique_axis = c" in hexagonal
    assert "lattice_type = monoclinic" in monoclinic and "unique_axis = b" in monoclinic


@pytest.mark.slow
def test_the_demos_hits_index_with_the_printed_command_and_give_the_simulated_cell(tmp_path):
    program = crystfel_build.indexamajig()
    work = tmp_path / "demo"
    demo = subprocess.run(
        [sys.executable, "-m", "hitveto.cli", "demo", "--workdir", str(work), "--frames", "120"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    (line,) = [x for x in demo.stdout.splitlines() if x.startswith("index them")]
    command = shlex.split(line.removeprefix("index them").strip())
    assert command[0] == "indexamajig"
    done = subprocess.run([str(program), *command[1:]], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    stream = (work / "hits" / "hits.stream").read_text()
    indexed = indexed_events(stream)
    cells = np.array(
        [
            [float(v) for v in m.groups()]
            for m in re.finditer(r"^Cell parameters (\S+) (\S+) (\S+) nm, (\S+) (\S+) (\S+)", stream, re.M)
        ]
    )
    crystal = PRESETS["lysozyme"].crystal
    expected = np.array([*(a / 10 for a in crystal.cell_a), *crystal.cell_angles_deg])  # nm, degrees
    assert len(indexed) >= 10
    assert np.all(np.abs(np.median(cells, axis=0) / expected - 1) < 0.005)


@pytest.mark.slow
def test_evaluate_with_crystfel_counts_the_indexable_frames_the_veto_dropped(tmp_path):
    program = crystfel_build.indexamajig()
    (run,) = simulate_runs(
        tmp_path, runs=[4], n_frames=60, preset="lysozyme", layout="raw", fmt="cxi", seed=8
    )
    out = tmp_path / "eval"
    done = subprocess.run(
        [sys.executable, "-m", "hitveto.cli", "evaluate", str(_shipped()), str(run), "--crystfel",
         "--indexamajig", str(program), "--out", str(out), "--index-dir", str(tmp_path / "index")],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "evaluation.json").read_text())["crystfel"]
    kinds = np.array([ev.truth["kind"] for ev in sources.events(run)])
    stream = (tmp_path / "index" / f"{run.name.split('.')[0]}.stream").read_text()
    indexed = sorted(indexed_events(stream))
    assert result["indexable"] == len(indexed) > 0
    assert set(kinds[indexed]) <= {2, 3, 4}  # only frames with a crystal index: no false lattice
    assert result["dropped"] == sum(d for _, d in result["by_kind"].values())
    assert result["model"]["tp"] + result["model"]["fn"] == len(indexed)
    assert "the veto dropped" in done.stdout


def _shipped():
    from hitveto.models.artifact import DEFAULT_ARTIFACT

    return DEFAULT_ARTIFACT
