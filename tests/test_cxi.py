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
