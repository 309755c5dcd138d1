"""The detector layer: each description agrees with psana's geometry, and the simulator, the
geometry tables and the model input follow the description, not the CSPAD."""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys

import crystfel_build
import numpy as np
import pytest

from hitveto.io import geometry
from hitveto.models import artifact, preprocess
from hitveto.offline.datasets import input_spec
from hitveto.offline.indexing import indexed_events
from hitveto.sim.params import PRESETS, on_detector
from hitveto.sim.run import frames
from hitveto_client import detectors
from hitveto_client.cxi import read_experiment, read_frames

NAMES = sorted(detectors.DETECTORS)


@pytest.mark.parametrize("name", NAMES)
def test_each_description_matches_its_psana_geometry(name):
    detector = detectors.get(name)
    pixels = geometry.pixel_map("raw", 0.1, detector=name)
    assert pixels.x_m.shape == detector.raw_shape
    # neighbouring pixels of a panel lie one pixel pitch apart, as the description says
    step = np.hypot(np.diff(pixels.x_m[0, 0, :3]), np.diff(pixels.y_m[0, 0, :3]))
    assert np.allclose(step, detector.pixel_size_m, rtol=0.02)  # CSPAD: two wide pixels per row only
    radius = geometry.radius_px(pixels)
    # the beam passes through the central hole: no pixel within 2 mm, every panel within 150 mm
    assert radius.min() * detector.pixel_size_m > 2e-3
    assert radius.max() * detector.pixel_size_m < 0.15
    image = geometry.assemble(np.ones(detector.raw_shape, np.uint8), name)
    r, c = geometry.beam_pixel(name)
    assert image[r, c] == 0  # the hole
    assert image.sum() > 0.9 * np.prod(detector.raw_shape)  # nearest-pixel assembly loses few


@pytest.mark.parametrize("name", NAMES)
def test_each_detector_has_a_shipped_full_detector_model(name):
    shipped = artifact.read(artifact.SHIPPED[name])
    assert shipped.info.detector == name and shipped.spec.layout == "raw"
    assert shipped.spec.raw_shape == detectors.get(name).raw_shape


def test_a_daqs_detector_name_maps_to_the_description_its_frames_fit():
    # psana names a Jungfrau 4M `jungfrau`, as it names a 0.5M module: the frames' shape tells them
    assert detectors.describing("jungfrau", (8, 512, 1024)) == "jungfrau4m"
    assert detectors.describing("epix10k2M", (16, 352, 384)) == "epix10k2m"
    assert detectors.describing("jungfrau", (1, 512, 1024)) == "jungfrau"  # no such description
    assert detectors.describing("cspad", (350, 350)) == "cspad"  # a known name stays


def test_unknown_detector_names_those_known():
    with pytest.raises(KeyError, match="jungfrau4m"):
        detectors.get("agipd1m")
    assert detectors.of_shape((8, 512, 1024)) is detectors.JUNGFRAU4M
    assert detectors.of_shape((350, 350)) is None


def test_gain_bits_decode_as_psana_does():
    # psana's UtilsJungfrau: gain bits 00 -> stage 0, 01 -> 1, 11 -> 2, 10 invalid; ADC in 14 bits
    bits = detectors.JUNGFRAU4M.gain
    assert bits is not None and bits.data_mask == 0x3FFF and detectors.JUNGFRAU4M.stages == 3
    word = np.array([5, (1 << 14) | 7, (3 << 14) | 9], np.uint16)
    assert list(word >> bits.data_bits) == list(bits.stage_codes)
    assert list(word & bits.data_mask) == [5, 7, 9]
    assert detectors.CSPAD.stages == 1 and detectors.EPIX10K2M.stages == 2


@pytest.mark.parametrize("name", ["jungfrau4m", "epix10k2m"])
def test_simulated_frames_of_another_detector_are_its_calibrated_frames(name):
    params = dataclasses.replace(on_detector(PRESETS["lysozyme"], name), seed=5, n_frames=8)
    assert params.detector.adu_per_photon == pytest.approx(9.5)  # keV per 9.5 keV photon
    assert params.detector.distance_m == PRESETS["lysozyme"].detector.distance_m
    events = list(frames(params, "raw"))
    images = np.stack([e.image for e in events])
    assert images.shape[1:] == detectors.get(name).raw_shape and images.dtype == np.float32
    empty = [e.image for e in events if e.truth["n_crystals"] == 0]
    hits = [e for e in events if e.truth["n_strong_spots"] >= 10]
    assert empty and hits, [e.truth for e in events]
    # an empty frame is noise about 0 keV; a hit's spots reach many photons
    assert abs(float(np.median(empty[0]))) < 0.5 * params.detector.adu_per_photon
    assert max(float(e.image.max()) for e in hits) > 20 * params.detector.adu_per_photon
    # spots anywhere on the detector: most of a hit's bright pixels lie outside the central region
    bright = np.flatnonzero(hits[0].image.ravel() > 5 * params.detector.adu_per_photon)
    centre = geometry.roi_index(350, name)
    assert np.isin(bright, centre[centre >= 0]).mean() < 0.5


@pytest.mark.parametrize("name", NAMES)
def test_model_input_follows_the_detector(name):
    detector = detectors.get(name)
    spec = input_spec(350, 9.5, "raw", name)
    assert spec.detector == name and spec.raw_shape == detector.raw_shape
    n, rows, cols = detector.raw_shape
    pooled = preprocess.region(np.zeros(detector.raw_shape, np.float32), spec)
    assert pooled.shape == (n * (rows // 4), cols // 4) == spec.roi_shape
    assert geometry.panel_radius(4, name).shape == (n, rows // 4, cols // 4)
    with pytest.raises(preprocess.InputMismatch):
        preprocess.region(np.zeros((32, 185, 388) if name != "cspad" else (8, 512, 1024)), spec)


@pytest.mark.slow
def test_the_jungfrau_demo_calibrates_raw_frames_and_its_hits_index(tmp_path):
    program = crystfel_build.indexamajig()
    work = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "hitveto.cli", "demo", "--detector", "jungfrau4m", "--workdir", str(work),
         "--frames", "48", "--rate", "10"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "accounting         sent 48 = " in done.stdout and ": OK" in done.stdout
    experiment, shape = read_experiment(work / "hits" / "hits-0000.cxi")
    assert experiment.detector == "jungfrau4m" and shape == detectors.JUNGFRAU4M.raw_shape
    assert experiment.mask is not None and experiment.mask.any()  # the dark's bad pixels
    frames, columns = read_frames(work / "hits" / "hits-0000.cxi")
    assert frames.dtype == np.float32  # stored calibrated, keV
    assert float(np.median(frames)) == pytest.approx(0.0, abs=1.0)  # not raw words (~3000 ADC)
    geom = (work / "hits" / "hits.geom").read_text()
    assert "res = 13333.3333" in geom and geom.count("/corner_x") == 64
    assert "--threshold=41 " in done.stdout  # peakfinder8's threshold in keV: 4.3 photons of 9.5 keV
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("index them")]
    command = shlex.split(line.removeprefix("index them").strip())
    indexed = subprocess.run([str(program), *command[1:]], capture_output=True, text=True, timeout=900)
    assert indexed.returncode == 0, indexed.stderr[-2000:]
    stream = (work / "hits" / "hits.stream").read_text()
    cells = np.array(
        [
            [float(v) for v in m.groups()]
            for m in re.finditer(r"^Cell parameters (\S+) (\S+) (\S+) nm", stream, re.M)
        ]
    )
    truth = [t for t in columns.get("truth/n_strong_spots", []) if t >= 100]
    assert len(indexed_events(stream)) >= len(truth) // 2 >= 2  # half the strong hits kept, at least
    expected = np.array(PRESETS["lysozyme"].crystal.cell_a) / 10  # nm
    assert np.all(np.abs(np.median(cells, axis=0) / expected - 1) < 0.005)
