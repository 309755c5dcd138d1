"""Runs written through psana's DgramEdit read back bit-identical through psana.DataSource."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hitveto.io import xtc2
from hitveto.io.psana_import import import_psana
from hitveto.io.xtc2 import (
    DetectorNotInRun,
    RunEvent,
    read_experiment_run,
    read_run,
    run_path,
    smalldata_path,
    write_run,
)
from hitveto_client import detectors

MPIRUN = Path(sys.executable).with_name("mpirun")


def make_events(shape, dtype, n=3, truth=True):
    rng = np.random.default_rng(0)
    return [
        RunEvent(
            timestamp=(i + 1) << 24,
            pulse_id=i,
            image=rng.integers(-50, 16000, shape).astype(dtype),
            truth={"n_crystals": i % 3, "n_strong_spots": 7 * i, "kind": i % 5} if truth else {},
        )
        for i in range(n)
    ]


def assert_same(written, read):
    assert len(read) == len(written)
    for a, b in zip(written, read):
        assert b.image.dtype == a.image.dtype and np.array_equal(a.image, b.image)
        assert (b.timestamp, b.pulse_id, b.truth) == (a.timestamp, a.pulse_id, a.truth)


@pytest.mark.parametrize(
    "shape, dtype", [((32, 185, 388), np.int16), ((350, 350), np.int16), ((350, 350), np.float32)]
)
def test_round_trip_is_bit_identical_in_both_modes(tmp_path, shape, dtype):
    events = make_events(shape, dtype)
    path = run_path(tmp_path, "hitveto", 3)
    assert write_run(path, iter(events)) == 3
    assert smalldata_path(path).stat().st_size > 0
    assert_same(events, list(read_run(path)))
    assert_same(events, list(read_experiment_run(tmp_path, experiment="hitveto", run=3)))


def test_real_data_without_truth_reads_with_empty_truth(tmp_path):
    # After a run with truth fields: psana must not carry them over to this one.
    write_run(tmp_path / "a.xtc2", make_events((4, 5), np.int16))
    list(read_run(tmp_path / "a.xtc2"))
    write_run(tmp_path / "b.xtc2", make_events((4, 5), np.int16, truth=False))
    assert [e.truth for e in read_run(tmp_path / "b.xtc2")] == [{}, {}, {}]


def test_bad_runs_are_refused_and_leave_no_file(tmp_path):
    with pytest.raises(ValueError, match="at least one event"):
        write_run(tmp_path / "e.xtc2", [])
    backwards = make_events((4, 5), np.int16)[::-1]
    with pytest.raises(ValueError, match="timestamp"):
        write_run(tmp_path / "x-r0001-s000-c000.xtc2", backwards)
    with pytest.raises(ValueError, match="names experiment x run 1"):
        write_run(tmp_path / "x-r0001-s000-c000.xtc2", backwards, run=2)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


def test_experiment_run_is_shared_among_mpi_ranks(tmp_path):
    events = make_events((8, 8), np.int16, n=60)  # 30 batches: enough that a late-starting rank gets some
    write_run(run_path(tmp_path, "hitveto", 7), events)
    script = (
        "import json, os, sys; from hitveto.io.xtc2 import read_experiment_run as r; "
        f"ids = [e.pulse_id for e in r({str(tmp_path)!r}, experiment='hitveto', run=7, "
        "batch_size=2)]; open(sys.argv[1] + os.environ['PMI_RANK'], 'w').write(json.dumps(ids))"
    )
    out = tmp_path / "rank"
    done = subprocess.run(
        [str(MPIRUN), "-n", "4", sys.executable, "-c", script, str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shares = [json.loads(tmp_path.joinpath(f"rank{rank}").read_text()) for rank in range(4)]
    assert sorted(sum(shares, [])) == list(range(60))  # each event once
    assert sum(1 for s in shares if s) == 2  # ranks 2 and 3 are the big-data ranks


def test_killed_psana_process_leaves_no_shared_memory():
    script = (
        "import os, signal; from hitveto.io.psana_import import import_psana; import_psana(); "
        "print(os.getpid(), flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL
    pid = int(done.stdout.split()[0])
    assert not list(Path("/dev/shm").glob(f"mpich_shm_{pid:x}_*"))


def test_a_dataset_string_reads_the_run_through_its_experiment_directory(tmp_path):
    from hitveto.io import sources

    events = make_events((6, 7), np.int16, n=4)
    write_run(run_path(tmp_path, "hitveto", 9), events)
    assert_same(events, list(sources.events(f"exp=hitveto:run=9:dir={tmp_path}")))
    with pytest.raises(ValueError, match="missing"):
        list(sources.events(f"exp=hitveto:dir={tmp_path}"))
    from hitveto.io.peaks import PeakFinderParams
    from hitveto.offline.datasets import input_spec, load_runs

    spec = input_spec(350, 35.0)
    write_run(run_path(tmp_path, "hitveto", 10), make_events((350, 350), np.int16, n=3))
    data = load_runs((f"exp=hitveto:run=10:dir={tmp_path}",), spec, PeakFinderParams())
    assert data.regions.shape == (3, 350, 350)  # labelled, peak counts cached
    assert list(tmp_path.glob("hitveto-r0010-s000-c000.xtc2.pf8-*.npy"))


LCLS2 = Path(__file__).parent / "data" / "lcls2"  # real runs from psana's own tests (README there)


@pytest.mark.parametrize(
    "name, detector, shape",
    [("test_jungfrau05M_calib", "jungfrau", (1, 512, 1024)), ("test_epix_calib", "epixquad", (4, 352, 384))],
)
def test_a_real_lcls2_detector_reads_through_psanas_detector_interface(name, detector, shape):
    events = list(read_run(LCLS2 / f"{name}.xtc2", detector=detector))
    assert [ev.pulse_id for ev in events] == [0, 1]
    assert all(ev.image.shape == shape and ev.image.dtype == np.uint16 for ev in events)
    assert events[0].timestamp < events[1].timestamp and events[0].truth == {}
    assert not np.array_equal(events[0].image, events[1].image)  # two frames, not one read twice
    assert events[0].run == {"test_jungfrau05M_calib": 7, "test_epix_calib": 109}[name]


def test_a_detector_the_run_lacks_is_named_with_those_it_has():
    with pytest.raises(DetectorNotInRun, match=r"no detector 'cspad'.*jungfrau \(jungfrau\)"):
        next(read_run(LCLS2 / "test_jungfrau05M_calib.xtc2"))


def test_replay_of_a_run_without_the_detector_says_so_without_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "hitveto.cli", "replay", str(LCLS2 / "test_epix_calib.xtc2")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "it has: epixquad (epix10ka)" in done.stderr and "Traceback" not in done.stderr


def test_real_jungfrau_frames_sent_to_a_cspad_model_are_kept_not_judged(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "hitveto.cli", "replay", str(LCLS2 / "test_jungfrau05M_calib.xtc2")]
        + ["--detector", "jungfrau", "--model", "service/hitveto/models/default.pt", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr
    assert "kept by fallback   2 (malformed 2)" in done.stdout  # the daemon's unknown_detector
    assert "frames written     2" in done.stdout


@pytest.mark.parametrize("name", ["jungfrau4m", "epix10k2m"])
def test_a_raw_stack_is_written_as_the_daqs_own_detector_and_read_as_psana_users_read_it(tmp_path, name):
    """Raw Jungfrau and ePix10ka runs are the DAQ's segments of psana's own dettype, read by its
    class (`run.Detector(name).raw.raw`), the truth beside them; calibrated frames stay in hitveto's
    container."""
    description = detectors.get(name)
    raw, calibrated = make_events(description.raw_shape, np.uint16, n=2), make_events((8, 16, 32), np.float32)
    write_run(tmp_path / "raw.xtc2", iter(raw), detector=name)
    write_run(tmp_path / "calib.xtc2", iter(calibrated), detector=name)
    assert_same(raw, list(read_run(tmp_path / "raw.xtc2", detector=name)))
    assert_same(calibrated, list(read_run(tmp_path / "calib.xtc2", detector=name)))

    ds = import_psana().DataSource(files=[str(tmp_path / "raw.xtc2")], skip_calib_load="all")
    run = next(ds.runs())
    assert xtc2.detectors(run) == {name: description.psana_dettype, "hitveto": "generic_container"}
    psana_class = run.Detector(name).raw
    version = "_".join(map(str, description.psana_raw_version))
    assert type(psana_class).__name__ == f"{description.psana_dettype}_raw_{version}"
    assert np.array_equal(psana_class.raw(next(run.events())), raw[0].image)
    ds = import_psana().DataSource(files=[str(tmp_path / "calib.xtc2")], skip_calib_load="all")
    assert xtc2.detectors(next(ds.runs())) == {name: "generic_container"}
