"""`hitveto reprocess` under psana's MPI gives the verdicts one process gives, bit for bit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hitveto.io import geometry, sources
from hitveto.io.xtc2 import run_path
from hitveto.offline.reprocess import read_verdicts, reprocess
from hitveto.sim.run import simulate_runs
from hitveto_client.cxi import read_frames

from helpers import median_threshold_artifact

MPIRUN = Path(sys.executable).with_name("mpirun")
N = 40


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A simulated run (350x350 regions) in an experiment directory, with its smalldata index."""
    folder = tmp_path_factory.mktemp("exp")
    (path,) = simulate_runs(folder, runs=[5], n_frames=N, preset="lysozyme", layout="roi", fmt="xtc2", seed=8)
    assert path == run_path(folder, "hitveto", 5)
    images = [ev.image for ev in sources.events(path)]
    model = median_threshold_artifact(
        folder / "m.pt", images, roi_index=geometry.roi_index(350), raw_shape=geometry.RAW_SHAPE
    )
    return folder, model, images


def test_serial_reprocess_judges_every_event_and_writes_the_hits(experiment, tmp_path):
    folder, model, images = experiment
    path = reprocess(folder, experiment="hitveto", run=5, out=tmp_path, model=model)
    rows = read_verdicts(path)
    assert [r.pulse_id for r in rows] == list(range(N)) and 0 < sum(r.hit for r in rows) < N
    (cxi,) = tmp_path.glob("hits-r0005-rank000-*.cxi")
    data, columns = read_frames(cxi)
    assert columns["event/pulse_id"].tolist() == [r.pulse_id for r in rows if r.hit]
    assert all(np.array_equal(d, images[p]) for d, p in zip(data, columns["event/pulse_id"]))


@pytest.mark.slow  # ~9-11 s each
@pytest.mark.parametrize("ranks", [3, 4])
def test_mpirun_gives_the_serial_verdicts(experiment, tmp_path, ranks):
    folder, model, _ = experiment
    serial = read_verdicts(reprocess(folder, experiment="hitveto", run=5, out=tmp_path / "one", model=model))
    cmd = [
        str(MPIRUN),
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        "hitveto.cli",
        "reprocess",
        str(folder),
        "--experiment",
        "hitveto",
        "--run",
        "5",
        "--out",
        str(tmp_path / "mpi"),
        "--model",
        str(model),
        "--batch-size",
        "4",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_verdicts(tmp_path / "mpi" / "verdicts-r0005.csv") == serial  # every bit
    per_rank = sorted((tmp_path / "mpi").glob("hits-r0005-rank*.cxi"))
    hits = [p for f in per_rank for p in read_frames(f)[1]["event/pulse_id"].tolist()]
    assert sorted(hits) == [r.pulse_id for r in serial if r.hit]
    assert len(per_rank) == ranks - 2  # ranks 2.. judged: psana shared the run out
