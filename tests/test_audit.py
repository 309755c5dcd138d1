"""The audit sample: its share is honoured, it is the same on a replay, nothing is lost with it on,
and `hitveto audit` estimates the hit loss from it."""

from __future__ import annotations

import numpy as np

from hitveto.offline.estimate import estimate
from hitveto.serving.audit import AuditSample, wilson
from hitveto_client.cxi import CxiWriter
from hitveto_client.protocol import EventKey, Reason

from helpers import RAW, make_artifact, running_daemon, stream


def test_the_share_of_misses_kept_is_the_configured_one_and_the_same_on_a_replay(tmp_path):
    misses_only = make_artifact(tmp_path / "m.pt", bias=-50.0)  # every frame a miss
    image = np.ones(RAW, np.int16)
    items = [(EventKey(run=3, pulse_id=i), image) for i in range(3000)]
    picked = []
    for _ in range(2):
        with running_daemon(misses_only, **{"audit.fraction": 0.05, "audit.seed": 9}) as daemon:
            counts, decisions = stream(daemon, items)
        picked.append(sorted(d.key.pulse_id for d in decisions if d.reason is Reason.AUDIT))
        assert counts.sent == counts.decided == 3000 and counts.kept_fallback == 0
        assert counts.audited == len(picked[-1]) and counts.hits == 0
        assert all(
            d.keep and not d.verdict.hit and d.verdict.score < 0.5
            for d in decisions
            if d.reason is Reason.AUDIT
        )
    # 5 % of 3000 = 150 with sd 11.9: within 4 sd, and the very same frames both times.
    assert abs(len(picked[0]) - 150) < 48 and picked[0] == picked[1]
    other_run = [AuditSample(0.05, 9).picks(EventKey(run=4, pulse_id=i)) for i in range(3000)]
    assert set(np.flatnonzero(other_run)) != set(picked[0])  # a new sample each run


def test_hit_loss_estimate_from_audit_frames_with_truth(tmp_path):
    """200 audited misses of which 10 are true hits, sampled at 5 %: about 200 hits vetoed."""
    with CxiWriter(tmp_path / "hits") as w:
        for i in range(300):
            audited = i < 200
            w.write(
                np.zeros((4, 4), np.int16),
                run=1,
                pulse_id=i,
                score=0.1 if audited else 0.9,
                keep_reason=(Reason.AUDIT if audited else Reason.MODEL).value,
                truth={"n_crystals": int(i < 10 or not audited)},
            )
    loss = estimate(w.files, fraction=0.05)
    assert (loss.audited, loss.audited_hits, loss.kept_hits, loss.labels) == (200, 10, 100, "truth")
    assert loss.lost == 200 and loss.lost_low < 200 < loss.lost_high
    lo, hi = wilson(10, 200)
    assert np.isclose(loss.lost_low, lo * 4000) and np.isclose(loss.lost_high, hi * 4000)
    est, low, high = loss.loss_share
    assert np.isclose(est, 200 / 300) and low < est < high
