"""`hitveto reprocess`: a model over a recorded xtc2 run, in parallel under mpirun.

    mpirun -n 6 hitveto reprocess DIR --experiment EXP --run N --out OUT [--model ARTIFACT]

psana distributes the run (`DataSource(exp=, run=, dir=)`): rank 0 reads the smalldata index,
rank 1 builds events, ranks 2.. judge their share. Each frame is scored alone (batch 1), so a
verdict depends on the frame and the artifact only: the same whatever the number of ranks, and
the same at every replay. Writes

    OUT/verdicts-r<run>.csv          every event: pulse_id, timestamp, score, hit (rank 0, sorted)
    OUT/hits-r<run>-rank<k>-*.cxi    the hits, one CXI series per judging rank (no frame crosses MPI)

Without mpirun it runs serially on the same files.
"""

from __future__ import annotations

import csv
from dataclasses import astuple, dataclass
from pathlib import Path

from hitveto.io.psana_import import import_psana
from hitveto.io.xtc2 import read_experiment_run
from hitveto.models import artifact as artifacts
from hitveto_client.cxi import CxiWriter

FIELDS = ("pulse_id", "timestamp", "score", "hit")


@dataclass(frozen=True, slots=True)
class Row:
    pulse_id: int
    timestamp: int
    score: float
    hit: bool


def reprocess(
    directory: Path,
    *,
    experiment: str,
    run: int,
    out: Path,
    model: Path | None = None,
    detector: str = "cspad",
    batch_size: int = 10,
) -> Path | None:
    """Judge every event of the run; returns the verdict file on rank 0 (None on the others)."""
    from hitveto.models.engine import Engine
    from hitveto.models.preprocess import region

    comm = import_psana("mpi4py.MPI").COMM_WORLD
    loaded = artifacts.read(model or artifacts.DEFAULT_ARTIFACT)
    engine = Engine(loaded, device="cpu", max_batch=1, threads=1)
    out = Path(out)
    rows: list[Row] = []
    writer: CxiWriter | None = None
    for ev in read_experiment_run(
        directory, experiment=experiment, run=run, detector=detector, batch_size=batch_size
    ):
        score = float(engine.infer([region(ev.image, loaded.spec)])[0])
        rows.append(Row(ev.pulse_id, ev.timestamp, score, score >= loaded.info.threshold))
        if rows[-1].hit:
            writer = writer or CxiWriter(out / f"hits-r{run:04d}-rank{comm.Get_rank():03d}")
            if not writer.write(
                ev.image,
                run=run,
                pulse_id=ev.pulse_id,
                timestamp=ev.timestamp,
                score=score,
                keep_reason="model",
                model_version=loaded.info.version,
                threshold=loaded.info.threshold,
                truth=ev.truth,
            ):
                raise OSError(f"hit {ev.pulse_id} of run {run} not written ({writer.error})")
    if writer is not None:
        writer.close()
    gathered = comm.gather(rows, root=0)  # every rank calls it: collective
    if comm.Get_rank() != 0:
        return None
    return write_verdicts(out / f"verdicts-r{run:04d}.csv", [r for part in gathered for r in part])


def write_verdicts(path: Path, rows: list[Row]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for row in sorted(rows, key=lambda r: r.timestamp):
            pulse_id, timestamp, score, hit = astuple(row)
            w.writerow([pulse_id, timestamp, repr(score), int(hit)])  # repr: every bit of the score
    return path


def read_verdicts(path: Path) -> list[Row]:
    with open(path, newline="") as f:
        return [
            Row(int(r["pulse_id"]), int(r["timestamp"]), float(r["score"]), r["hit"] == "1")
            for r in csv.DictReader(f)
        ]
