"""CXI writer: CrystFEL's layout, bit-identical frames, rolling by count and by size."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hitveto_client.cxi import CxiWriter, read_frames


@pytest.mark.parametrize(
    "limits, files", [({"max_frames": 4}, 3), ({"max_bytes": 3 * 20 * 30 * 2}, 4), ({}, 1)]
)
def test_rolls_files_and_keeps_every_frame(tmp_path, limits, files):
    images = [np.full((20, 30), i, np.int16) for i in range(10)]
    with CxiWriter(tmp_path / "hits", **limits) as w:
        for i, img in enumerate(images):
            w.write(img, run=2, pulse_id=i, score=0.9, keep_reason="model", model_version="m")
    assert len(w.files) == files and w.written == 10
    back = [(img, int(p)) for f in w.files for img, p in zip(*_frames_and_ids(f))]
    assert [p for _, p in back] == list(range(10))
    assert all(np.array_equal(img, images[p]) for img, p in back)
    with h5py.File(w.files[0]) as f:
        assert f["entry_1/data_1/data"].dtype == np.int16 and "entry_1/event/pulse_id" in f


def _frames_and_ids(path):
    data, columns = read_frames(path)
    return data, columns["event/pulse_id"]


def test_a_file_is_read_while_the_writer_has_it_open(tmp_path):
    """An SWMR reader in another process sees the frames written so far, then the later ones."""
    import subprocess
    import sys

    reader = (
        "import sys, h5py; f = h5py.File(sys.argv[1], 'r', swmr=True); d = f['entry_1/data_1/data']\n"
        "for line in sys.stdin:\n"
        "    d.refresh(); f['entry_1/event/pulse_id'].refresh()\n"
        "    print(len(d), int(d[-1].max()), int(f['entry_1/event/pulse_id'][-1]), flush=True)\n"
    )
    with CxiWriter(tmp_path / "hits") as w:
        for i in range(3):
            w.write(np.full((20, 30), i, np.int16), run=1, pulse_id=100 + i, keep_reason="model")
        with subprocess.Popen(
            [sys.executable, "-c", reader, str(w.files[0])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            assert proc.stdin and proc.stdout
            proc.stdin.write("\n")
            proc.stdin.flush()
            seen_early = proc.stdout.readline().split()
            for i in range(3, 5):
                w.write(np.full((20, 30), i, np.int16), run=1, pulse_id=100 + i, keep_reason="model")
            proc.stdin.write("\n")
            proc.stdin.close()
            seen_late = proc.stdout.readline().split()
        assert not (tmp_path / "hits.lst").exists()  # not complete yet: CrystFEL waits for it
    assert seen_early == ["3", "2", "102"] and seen_late == ["5", "4", "104"]
    assert (tmp_path / "hits.lst").read_text().split() == [str(w.files[0].resolve())]


def test_the_files_carry_what_indexing_needs(tmp_path):
    from hitveto_client.cxi import Experiment, read_experiment

    mask = np.zeros((20, 30), np.uint16)
    mask[3, 4] = 4
    experiment = Experiment(
        photon_energy_ev=9500.0,
        distance_m=0.1,
        adu_per_photon=35.0,
        saturation_adu=15000.0,
        beam_center_m=(1e-3, -2e-3),
        mask=mask,
    )
    with CxiWriter(tmp_path / "hits", experiment=experiment) as w:
        w.write(np.zeros((20, 30), np.int16), run=1, pulse_id=1)
        w.write(np.zeros((20, 30), np.int16), run=1, pulse_id=2, photon_energy_ev=9400.0, distance_m=0.12)
    back, shape = read_experiment(w.files[0])
    assert shape == (20, 30) and np.array_equal(back.mask, mask)
    assert (back.photon_energy_ev, back.distance_m, back.adu_per_photon) == (9500.0, 0.1, 35.0)
    assert back.saturation_adu == 15000.0 and back.beam_center_m == (1e-3, -2e-3)
    with h5py.File(w.files[0]) as f:  # the frame's own values where it had them
        assert list(f["LCLS/photon_energy_eV"]) == [9500.0, 9400.0]
        assert list(f["entry_1/instrument_1/detector_1/distance"]) == [0.1, 0.12]
        joules = f["entry_1/instrument_1/source_1/energy"][()]
    assert np.allclose(joules / 1.602176634e-19, [9500.0, 9400.0])


def test_class_probabilities_get_a_column_each_from_the_first_frame_that_has_them(tmp_path):
    image = np.zeros((20, 30), np.int16)
    with CxiWriter(tmp_path / "hits") as w:
        w.write(image, run=1, pulse_id=0, keep_reason="overload")  # not judged: no classes
        w.write(image, run=1, pulse_id=1, class_scores={"ice": 0.25, "multiple": 0.5})
        w.write(image, run=1, pulse_id=2, keep_reason="no_verdict")
        w.write(image, run=1, pulse_id=3, class_scores={"ice": 0.75})
        w.write(image, run=1, pulse_id=4, class_scores={"ice": 0.5, "jet_streak": 1.0})  # a new class
    (_, first), (_, second), (_, third) = (read_frames(f) for f in w.files)
    assert list(first["event/pulse_id"]) == [0] and "result_1/class_ice" not in first
    assert list(second["event/pulse_id"]) == [1, 2, 3] and second["result_1/class_ice"].dtype == np.float32
    assert np.array_equal(second["result_1/class_ice"], [0.25, np.nan, 0.75], equal_nan=True)
    assert np.array_equal(second["result_1/class_multiple"], [0.5, np.nan, np.nan], equal_nan=True)
    classes = {k.removeprefix("result_1/class_"): float(v[0]) for k, v in third.items() if "class_" in k}
    assert set(classes) == {"ice", "jet_streak", "multiple"}  # a class once seen keeps its column
    assert classes["ice"] == 0.5 and classes["jet_streak"] == 1.0 and np.isnan(classes["multiple"])
