"""kill -9 of the daemon mid-stream, restarted by a supervisor on the same endpoints (as systemd's
Restart=on-failure does): the endpoints vanish and come back, the writer's client reconnects by
itself, every frame is decided once, and no frame the model would call a hit is lost."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

from hitveto.models import artifact
from hitveto.models.engine import Engine
from hitveto.models.preprocess import region
from hitveto.serving.launcher import start_daemon
from hitveto_client.cxi import read_frames
from hitveto_client.hitwriter import Frame
from hitveto_client.protocol import EventKey, Reason

from helpers import RAW, median_threshold_artifact, write_through

pytestmark = pytest.mark.slow  # its one test: ~12 s

KILL_AT = 100
RESTART_SEC = 1.0


def test_daemon_restarted_by_supervisor_after_kill_9(tmp_path):
    rng = np.random.default_rng(3)
    pool = [rng.poisson(0.5 + i % 5, RAW).astype(np.int16) * 10 for i in range(16)]
    model = median_threshold_artifact(tmp_path / "m.pt", pool)
    loaded = artifact.read(model)
    hit = Engine(loaded, device="cpu").infer([region(i, loaded.spec) for i in pool]) >= loaded.info.threshold

    first = start_daemon("model.device=cpu", artifact=model, log_path=tmp_path / "daemon.log")
    restarted = []

    def supervisor():  # systemd: Restart=on-failure, RestartSec=1
        if first.process.wait() != 0:
            time.sleep(RESTART_SEC)
            restarted.append(first.restart())

    threading.Thread(target=supervisor, daemon=True).start()

    def frames():
        after_restart = 0
        for i in range(3000):
            if i == KILL_AT:
                first.process.send_signal(signal.SIGKILL)
            after_restart += bool(restarted)
            if after_restart > 100:  # two seconds of frames after the restart
                return
            yield Frame(key=EventKey(run=1, pulse_id=i), image=pool[i % len(pool)])

    try:
        summary, files = write_through(first, frames(), tmp_path / "hits", rate_hz=50)
    finally:
        first.process.kill()
        for d in restarted:
            d.stop()
    assert first.process.returncode == -signal.SIGKILL and len(restarted) == 1
    assert summary.accounted and summary.sent > KILL_AT + 100
    data, columns = read_frames(files[0])
    kept = dict(zip(columns["event/pulse_id"].tolist(), columns["result_1/keep_reason"].astype(str)))
    model_hits = {p for p in range(summary.sent) if hit[p % len(pool)]}
    assert model_hits <= kept.keys()  # no hit lost
    dropped = set(range(summary.sent)) - kept.keys()
    assert len(dropped) == summary.misses_dropped and not dropped & model_hits
    # The restarted daemon judges again: model verdicts for frames sent after it came back.
    assert any(p > KILL_AT + 50 and r == Reason.MODEL.value for p, r in kept.items())
    assert {p for p in dropped if p > KILL_AT + 50}
    # The frames the dead daemon never answered were kept by the client's deadline.
    assert (
        summary.kept_by_reason.get(Reason.NO_VERDICT.value, 0)
        + summary.kept_by_reason.get(Reason.OVERLOAD.value, 0)
        > 0
    )
    assert all(np.array_equal(img, pool[p % len(pool)]) for img, p in zip(data, columns["event/pulse_id"]))
