"""The whole path on real parts: simulated xtc2 run -> psana -> daemon -> hit writer -> CXI file."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from hitveto.io import geometry, shmem, sources
from hitveto.offline.replay import frames_of, live_frames, replay
from hitveto.serving.launcher import start_daemon
from hitveto.sim.run import simulate_runs
from hitveto_client.cxi import read_frames
from hitveto_client.protocol import Reason

from helpers import median_threshold_artifact, running_daemon, write_through


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    (path,) = simulate_runs(out, runs=[3], n_frames=24, preset="lysozyme", layout="raw", fmt="xtc2", seed=5)
    return path


@pytest.fixture(scope="module")
def cspad_model(tmp_path_factory, run_file):
    images = [ev.image for ev in sources.events(run_file)]
    return median_threshold_artifact(
        tmp_path_factory.mktemp("model") / "m.pt",
        images,
        roi_index=geometry.roi_index(350),
        raw_shape=geometry.RAW_SHAPE,
    )


def source_frames(run_file) -> dict[int, np.ndarray]:
    return {ev.pulse_id: ev.image for ev in sources.events(run_file)}


def test_written_file_holds_exactly_the_kept_frames_bit_identical(run_file, cspad_model, tmp_path):
    with running_daemon(cspad_model) as daemon:
        summary = replay(
            frames_of([run_file]),
            frames_endpoint=daemon.endpoints.ingest,
            verdicts_endpoint=daemon.endpoints.publish,
            out_dir=tmp_path / "hits",
            deadline_ms=10_000,
        )
    assert summary.accounted and summary.sent == 24 and summary.kept_fallback == 0
    assert 0 < summary.hits_kept < 24  # some dropped, some kept
    (cxi,) = summary.files
    data, columns = read_frames(cxi)
    assert len(data) == summary.written == summary.hits_kept
    source = source_frames(run_file)
    for image, pulse_id in zip(data, columns["event/pulse_id"]):
        assert image.dtype == np.int16 and np.array_equal(image, source[int(pulse_id)])
    assert set(columns["result_1/keep_reason"].astype(str)) == {Reason.MODEL.value}
    assert (columns["result_1/score"] >= columns["result_1/threshold"]).all()
    assert {"truth/n_crystals", "truth/kind"} <= set(columns)


def test_daemon_killed_mid_run_loses_nothing(run_file, cspad_model, tmp_path):
    daemon = start_daemon("model.device=cpu", artifact=cspad_model, log_path=tmp_path / "d.log")

    def frames_then_kill():
        for i, frame in enumerate(frames_of([run_file])):
            if i == 8:
                daemon.process.send_signal(signal.SIGKILL)  # no drain, no goodbye
            yield frame

    try:
        summary, files = write_through(daemon, frames_then_kill(), tmp_path / "hits", rate_hz=40)
    finally:
        daemon.kill()
    assert daemon.process.wait() == -signal.SIGKILL
    assert summary.sent == 24 and summary.accounted
    assert summary.kept_fallback >= 24 - 8  # after the kill: all kept
    data, columns = read_frames(files[0])
    written = columns["event/pulse_id"].tolist()
    assert len(set(written)) == len(written) == summary.written
    assert summary.written + summary.misses_dropped == 24  # every frame written or judged a miss
    assert set(range(8, 24)) <= set(written)
    source = source_frames(run_file)
    assert all(np.array_equal(img, source[int(p)]) for img, p in zip(data, written))


def test_live_shared_memory_run_streams_through_the_daemon(run_file, cspad_model, tmp_path):
    """psana's live mode: the wheel's shmemServer serves the run as a DAQ node would."""
    tag = f"hitveto-test-{os.getpid()}"
    server = shmem.serve(run_file, tag, rate_hz=60, loops=1000)
    try:
        with running_daemon(cspad_model) as daemon:
            summary = replay(
                live_frames(tag, runs=1),
                frames_endpoint=daemon.endpoints.ingest,
                verdicts_endpoint=daemon.endpoints.publish,
                out_dir=tmp_path / "hits",
                deadline_ms=10_000,
            )
    finally:
        server.kill()
        server.wait()
        shmem.remove(tag)
    # psana's monitor may skip events when this (busy) process falls behind; those it hands over
    # must all be judged, and the kept ones written bit-identical.
    assert 12 <= summary.sent <= 24 and summary.accounted and summary.kept_fallback == 0
    data, columns = read_frames(summary.files[0])
    assert len(data) == summary.hits_kept > 0
    assert (columns["event/run"] == 3).all() and "truth/kind" in columns
    source = source_frames(run_file)
    assert all(np.array_equal(img, source[int(p)]) for img, p in zip(data, columns["event/pulse_id"]))
    assert not list(Path("/dev/shm").glob(f"*{tag}*"))
    assert not _queue_exists(f"/PdsFromMonitorDiscovery_{tag}")  # left behind, they filled the quota
    assert not _queue_exists(f"/PdsToMonitorEvQueue_{tag}_0")


def _queue_exists(name: str) -> bool:
    """Whether a POSIX message queue of that name exists (mq_open without O_CREAT)."""
    import ctypes
    import ctypes.util
    import errno

    librt = ctypes.CDLL(ctypes.util.find_library("rt") or "librt.so.1", use_errno=True)
    librt.mq_open.argtypes, librt.mq_open.restype = [ctypes.c_char_p, ctypes.c_int], ctypes.c_int
    fd = librt.mq_open(name.encode(), os.O_RDONLY)
    if fd >= 0:
        librt.mq_close(fd)
        return True
    assert ctypes.get_errno() == errno.ENOENT
    return False


@pytest.mark.slow  # ~11 s
def test_replay_with_a_model_gives_the_same_verdicts_every_time(run_file, cspad_model, tmp_path):
    """`hitveto replay --model`: a daemon of its own, one frame per batch; twice, and beside
    `hitveto reprocess` on the same run, every score is the same to the last bit."""
    import subprocess
    import sys

    from hitveto.offline.reprocess import read_verdicts, reprocess

    logs = []
    for i in range(2):
        log = tmp_path / f"verdicts-{i}.csv"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "hitveto.cli",
                "replay",
                str(run_file),
                "--model",
                str(cspad_model),
                "--verdict-log",
                str(log),
                "--out",
                str(tmp_path / f"o{i}"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        logs.append(read_verdicts(log))
    assert len(logs[0]) == 24 and logs[0] == logs[1]
    offline = read_verdicts(
        reprocess(run_file.parent, experiment="hitveto", run=3, out=tmp_path / "r", model=cspad_model)
    )
    assert offline == logs[0]
