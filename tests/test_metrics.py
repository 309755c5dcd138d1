"""Prometheus metrics over HTTP: the accounting identity holds on what a scraper sees."""

from __future__ import annotations

import urllib.request

import numpy as np
import zmq
from prometheus_client.parser import text_string_to_metric_families

from hitveto.models import artifact
from hitveto_client.protocol import EventKey, Reason

from helpers import CLASSES, ROI, class_artifact, frames, running_daemon, stream


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels) -> float:
    return sum(
        v
        for (n, lab), v in samples.items()
        if n == name and all((k, val) in lab for k, val in labels.items())
    )


def test_scraped_counters_account_for_every_frame(tiny_artifact):
    with running_daemon(tiny_artifact) as daemon:
        bad = [(EventKey(run=2, pulse_id=0), np.zeros((5, 5), np.int16))]
        stream(daemon, list(frames(50)) + bad)
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(daemon.endpoints.ingest)
        push.send_multipart([b"junk"])  # unanswerable: counted as bad only
        push.close(linger=1000)
        stream(daemon, list(frames(1, seed=9)))  # ensures the junk was read before we scrape
        m = scrape(daemon.endpoints.metrics_port)
    received = total(m, "hitveto_frames_received_total")
    verdicts = total(m, "hitveto_verdicts_total")
    bad_all = total(m, "hitveto_bad_frames_total")
    answered_bad = total(m, "hitveto_verdicts_total", reason="malformed")
    assert received == 53 and bad_all == 2 and answered_bad == 1
    assert received == verdicts + bad_all - answered_bad
    served = artifact.read(tiny_artifact).served_version  # trained version @ file digest
    assert served.startswith("test-1@") and total(m, "hitveto_model_info", version=served) == 1
    assert total(m, "hitveto_batch_size_count") >= 1 and total(m, "hitveto_ready") == 1
    assert total(m, "hitveto_frame_latency_seconds_count") == verdicts


def test_each_verdict_class_of_the_served_model_is_scraped_at_0_before_its_first_frame(tmp_path):
    with running_daemon(class_artifact(tmp_path / "classes.pt")) as daemon:
        before = scrape(daemon.endpoints.metrics_port)
        called = np.zeros(ROI, np.int16)
        called[0, :3] = 90, 80, 70  # a hit, called both classes
        stream(daemon, [(EventKey(run=1, pulse_id=0), called)])
        stream(daemon, list(frames(1, shape=ROI)))  # its count is in (one publisher, in order)
        after = scrape(daemon.endpoints.metrics_port)
    labels = sorted(lab for (name, lab) in before if name == "hitveto_frame_classes_total")
    assert labels == [(("class", c),) for c in sorted(CLASSES)]
    assert all(total(before, "hitveto_frame_classes_total", **{"class": c}) == 0 for c in CLASSES)
    assert all(total(after, "hitveto_frame_classes_total", **{"class": c}) == 1 for c in CLASSES)


def test_every_verdict_series_a_daemon_publishes_is_scraped_at_0_before_its_first_frame(tiny_artifact):
    """rate() over a series that appears with its first sample misses that sample: a first burst
    of overload or model_error keeps would not move an alert."""
    with running_daemon(tiny_artifact) as daemon:
        before = scrape(daemon.endpoints.metrics_port)
    labels = {
        dict(lab)["reason"] + "/" + dict(lab)["outcome"]
        for (name, lab) in before
        if name == "hitveto_verdicts_total"
    }
    daemon_side = {r.value for r in Reason} - {Reason.NO_VERDICT.value, Reason.DUPLICATE.value}
    assert labels == {f"{r}/keep" for r in daemon_side} | {"model/drop"}
    assert total(before, "hitveto_verdicts_total") == 0
