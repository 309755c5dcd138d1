"""Runs written through psana's DgramEdit read back bit-identical through psana.DataSource."""

from __future__ import annotations

import numpy as np
import pytest

from service.xtc2 import RunEvent, read_run, write_run


@pytest.mark.parametrize("shape, dtype", [((32, 185, 388), np.int16), ((350, 350), np.int16),
                                          ((350, 350), np.float32)])
def test_round_trip_is_bit_identical(tmp_path, shape, dtype):
    rng = np.random.default_rng(0)
    events = [RunEvent(timestamp=(i + 1) << 24, pulse_id=i,
                       image=rng.integers(-50, 16000, shape).astype(dtype),
                       truth={"n_crystals": i % 3, "n_strong_spots": 7 * i, "kind": i % 5})
              for i in range(4)]
    path = tmp_path / "hitveto-r0003-s000-c000.xtc2"
    assert write_run(path, events) == 4
    back = list(read_run(path))
    assert len(back) == 4
    for a, b in zip(events, back):
        assert b.image.dtype == a.image.dtype and np.array_equal(a.image, b.image)
        assert (b.timestamp, b.pulse_id, b.truth) == (a.timestamp, a.pulse_id, a.truth)


def test_real_data_without_truth_reads_with_empty_truth(tmp_path):
    path = tmp_path / "x-r0001-s000-c000.xtc2"
    write_run(path, [RunEvent(timestamp=1 << 30, pulse_id=0, image=np.ones((4, 5), np.int16))])
    (event,) = read_run(path)
    assert event.truth == {} and event.image.shape == (4, 5)


def test_empty_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one event"):
        write_run(tmp_path / "e.xtc2", [])
