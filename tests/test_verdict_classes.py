"""Verdict classes (#23): a model's class heads reach the verdicts (protocol v2), the metrics, the
ice alert, the dashboard and the hit files; a v1 sender still gets v1 verdicts it can read."""

from __future__ import annotations

import json
import math

import msgpack
import numpy as np
import pytest
import zmq

from hitveto.serving.control import request
from hitveto_client.cxi import CxiWriter, read_frames
from hitveto_client.hitwriter import Frame
from hitveto_client.hitwriter import stream as write_stream
from hitveto_client.protocol import WELCOME, EventKey, Reason, decode_verdict, encode_frame
from hitveto_client.veto import VetoClient

from helpers import (
    CLASSES,
    DEPLOY,
    ROI,
    class_artifact,
    daemons_under_alerts,
    firing,
    query,
    running_daemon,
    sample,
    stream,
    wait_for,
)

# pulse: (the class model's outputs in percent: hit, multiple, ice; the verdict's hit, its classes).
# Thresholds: hit 0.5, multiple 0.5, ice 0.3 (helpers.CLASSES).
CASES = {
    0: ((80, 60, 40), True, ("multiple", "ice")),
    1: ((10, 40, 31), False, ("ice",)),  # a miss called ice: dropped all the same
    2: ((90, 70, -1), True, ("multiple",)),  # P(ice) NaN: in no class, the hit unaffected
    3: ((20, 10, 0), False, ()),
}
V1_KEYS = {
    *("v", "run", "pulse_id", "timestamp", "detector", "keep", "hit", "score", "threshold"),
    *("model_version", "reason", "sent_ns", "received_ns", "published_ns", "inference_ms"),
}  # what a v1 verdict carries, and all a v1 decoder reads


def region(hit: int, multiple: int, ice: int) -> np.ndarray:
    """A region-shaped frame for which the class model gives these percentages (-1: NaN)."""
    image = np.zeros(ROI, np.int16)
    image[0, :3] = hit, multiple, ice
    return image


def cases() -> list[tuple[EventKey, np.ndarray]]:
    return [(EventKey(run=1, pulse_id=p), region(*pixels)) for p, (pixels, _, _) in CASES.items()]


def classes_counted(daemon) -> dict[str, float | None]:
    """hitveto_frame_classes_total by class; None where the daemon has no such series."""
    get = daemon.metrics.registry.get_sample_value
    return {name: get("hitveto_frame_classes_total", {"class": name}) for name in CLASSES}


def test_verdicts_carry_the_classes_at_their_thresholds_and_the_counter_counts_them(tmp_path):
    unjudged = [
        (EventKey(run=1, pulse_id=9), region(-1, 90, 90)),  # P(hit) NaN: bad_score, kept unjudged
        (EventKey(run=1, pulse_id=10), np.zeros((5, 5), np.int16)),  # malformed
    ]
    with running_daemon(class_artifact(tmp_path / "classes.pt")) as daemon:
        at_start = classes_counted(daemon)
        _, decisions = stream(daemon, cases() + unjudged)
        stream(daemon, [(EventKey(run=2, pulse_id=0), region(0, 0, 0))])  # the counts above are in
        counted = classes_counted(daemon)
        status = request(daemon.endpoints.control, "status")
    assert status["result"]["classes"] == dict(CLASSES)  # `hitveto ctl status`: each class, its threshold
    verdicts = {d.key.pulse_id: d.verdict for d in decisions if d.key.run == 1}
    assert {p: (v.hit, v.keep, v.classes) for p, v in verdicts.items() if p in CASES} == {
        p: (hit, hit, classes) for p, (_, hit, classes) in CASES.items()
    }
    assert verdicts[0].class_scores == pytest.approx({"multiple": 0.6, "ice": 0.4})
    assert verdicts[2].class_scores["multiple"] == pytest.approx(0.7)
    assert math.isnan(verdicts[2].class_scores["ice"]) and verdicts[2].reason is Reason.MODEL
    for pulse, reason in ((9, Reason.BAD_SCORE), (10, Reason.MALFORMED)):
        v = verdicts[pulse]
        assert (v.reason, v.keep, v.classes, v.class_scores) == (reason, True, (), {})
    assert at_start == {"multiple": 0.0, "ice": 0.0}  # there before the first frame: rate() works
    assert counted == {"multiple": 2.0, "ice": 2.0}


def test_a_hit_only_model_has_no_classes_and_no_class_series(tiny_artifact):
    with running_daemon(tiny_artifact) as daemon:
        _, decisions = stream(daemon, cases())
        counted = classes_counted(daemon)
    assert {(d.verdict.classes, tuple(d.verdict.class_scores)) for d in decisions} == {((), ())}
    assert counted == {"multiple": None, "ice": None}


def test_a_v1_sender_gets_v1_verdicts_without_class_fields(tmp_path):
    sent = {  # pulse: (the frame header's protocol version, image)
        0: (1, region(80, 60, 40)),
        1: (1, np.zeros((5, 5), np.int16)),  # malformed: answered, in v1 too
        2: (2, region(80, 60, 40)),
        3: (3, region(80, 60, 40)),  # a version not served: bad_version, answered in the newest
    }
    ctx = zmq.Context.instance()
    with running_daemon(class_artifact(tmp_path / "classes.pt")) as daemon:
        sub, push = ctx.socket(zmq.SUB), ctx.socket(zmq.PUSH)
        try:
            sub.setsockopt(zmq.RCVTIMEO, 10_000)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(daemon.endpoints.publish)
            assert sub.recv() == WELCOME
            push.connect(daemon.endpoints.ingest)
            for pulse, (version, image) in sent.items():
                push.send_multipart(encode_frame(EventKey(run=1, pulse_id=pulse), image, version=version))
            raw = [sub.recv() for _ in sent]
        finally:
            sub.close(linger=0)
            push.close(linger=0)
        refused = sample(daemon, "hitveto_bad_frames_total", reason="bad_version")
    wire = {m["pulse_id"]: m for m in map(msgpack.unpackb, raw)}
    assert set(wire[0]) == set(wire[1]) == V1_KEYS and wire[0]["v"] == wire[1]["v"] == 1
    assert set(wire[2]) == V1_KEYS | {"classes", "class_scores"} and wire[2]["v"] == 2
    assert wire[2]["classes"] == ["multiple", "ice"] and set(wire[2]["class_scores"]) == set(CLASSES)
    assert (wire[3]["v"], wire[3]["reason"], refused) == (2, "malformed", 1)
    verdicts = {v.key.pulse_id: v for v in map(decode_verdict, raw)}
    old, new = verdicts[0], verdicts[2]
    assert (old.version, old.reason, old.hit, old.classes, old.class_scores) == (
        1,
        Reason.MODEL,
        True,
        (),
        {},
    )
    assert old.score == new.score and new.classes == ("multiple", "ice")
    assert verdicts[1].reason is Reason.MALFORMED and verdicts[1].version == 1


def test_the_hit_writer_stores_each_kept_frame_s_class_probabilities(tmp_path):
    frames = [Frame(key=key, image=image) for key, image in cases()]
    malformed = Frame(key=EventKey(run=1, pulse_id=10), image=np.zeros((5, 5), np.int16))
    with (
        running_daemon(class_artifact(tmp_path / "classes.pt")) as daemon,
        VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish) as veto,
        CxiWriter(tmp_path / "hits") as writer,
    ):
        veto.wait_subscribed()
        write_stream([malformed], veto, writer)  # kept unjudged: a file without class columns
        summary = write_stream(frames, veto, writer)  # the first classes: the next file has them
    first, second = (read_frames(path)[1] for path in writer.files)
    assert summary.ok and not [name for name in first if name.startswith("result_1/class_")]
    row = {int(p): i for i, p in enumerate(second["event/pulse_id"])}
    assert sorted(row) == [p for p, (_, hit, _) in CASES.items() if hit]  # the misses dropped
    ice, multiple = second["result_1/class_ice"], second["result_1/class_multiple"]
    assert ice.dtype == multiple.dtype == np.float32
    assert (ice[row[0]], multiple[row[0]]) == pytest.approx((0.4, 0.6))
    assert math.isnan(ice[row[2]]) and multiple[row[2]] == pytest.approx(0.7)


def test_the_dashboard_has_a_verdict_classes_row():
    panels = json.loads((DEPLOY / "grafana" / "hitveto.json").read_text())["panels"]
    row = [p["title"] for p in panels].index("verdict classes")
    below = [t["expr"] for p in panels[row + 1 :] for t in p["targets"]]
    assert panels[row]["type"] == "row" and below
    assert all("hitveto_frame_classes_total" in expr for expr in below)


@pytest.mark.slow  # ~12 s: a real Prometheus
def test_the_ice_alert_fires_on_the_daemon_whose_judged_frames_show_ice(tmp_path):
    models = [class_artifact(tmp_path / "a.pt"), class_artifact(tmp_path / "b.pt")]
    with daemons_under_alerts(tmp_path, models) as ((icy, clear), prom):
        for daemon in (icy, clear):  # 20 judged frames each, scraped before the ice: the rate's baseline
            stream(daemon, [(EventKey(run=0, pulse_id=i), region(10, 0, 0)) for i in range(20)])
        wait_for(prom, 'count(hitveto_verdicts_total{reason="model"} == 20) == 2')
        wait_for(prom, 'count(hitveto_frame_classes_total{class="ice"} == 0) == 2')
        for daemon, every in ((icy, 5), (clear, 20)):  # ice on 20 % and 5 % of the judged frames
            ice = [region(10, 0, 50 if i % every == 0 else 0) for i in range(100)]
            stream(daemon, [(EventKey(run=1, pulse_id=i), image) for i, image in enumerate(ice)])
        wait_for(prom, 'count(hitveto:class_share:ratio_rate1m{class="ice"} > 0.04) == 2')
        wait_for(prom, 'ALERTS{alertname="HitvetoIceRateHigh", alertstate="firing"}')
        shares = query(prom, 'hitveto:class_share:ratio_rate1m{class="ice"}')["result"]
        fired = firing(prom, "HitvetoIceRateHigh")
    share = {r["metric"]["instance"]: float(r["value"][1]) for r in shares}
    port = {d: f"127.0.0.1:{d.endpoints.metrics_port}" for d in (icy, clear)}
    assert share[port[icy]] == pytest.approx(0.2, rel=0.2) and share[port[clear]] == pytest.approx(
        0.05, rel=0.2
    )
    assert fired == {port[icy]}


def test_a_model_whose_outputs_disagree_with_its_classes_is_refused_at_load(tmp_path):
    """Three outputs a frame, metadata naming one class: refused when warmed up (at start and on
    reload), not kept batch after batch as model_error."""
    from hitveto.models import artifact
    from hitveto.models.engine import Engine

    good = artifact.read(class_artifact(tmp_path / "good.pt"))
    Engine(good, device="cpu", max_batch=2).warm_up()
    wrong = artifact.read(artifact.rewrite(good, tmp_path / "wrong.pt", classes=("ice",)))
    with pytest.raises(artifact.ArtifactError, match="3 outputs a frame"):
        Engine(wrong, device="cpu", max_batch=2).warm_up()
