"""The verdict tail summarises what the daemon publishes: rate, hit rate, reasons, verdict classes."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np

from hitveto_client.protocol import EventKey
from hitveto_client.tail import tail

from helpers import ROI, class_artifact, frames, make_artifact, running_daemon, stream


def watch(daemon, items, interval_s: float = 1.5) -> list:
    """The tail's windows (two of interval_s) over a stream of `items` through `daemon`."""
    windows, subscribed = [], threading.Event()
    watcher = threading.Thread(
        target=tail,
        args=(daemon.endpoints.publish,),
        kwargs={"interval_s": interval_s, "windows": 2, "emit": windows.append, "subscribed": subscribed},
    )
    watcher.start()
    assert subscribed.wait(5)
    stream(daemon, items)
    watcher.join(10)
    return windows


def test_tail_counts_the_verdicts_it_sees(tmp_path):
    model = make_artifact(tmp_path / "hit.pt", bias=50.0)  # every frame a hit
    with running_daemon(model) as daemon:
        windows = watch(daemon, frames(100))
    seen = sum(w.verdicts for w in windows)
    assert seen == 100
    assert sum(w.hits for w in windows) == 100 and windows[0].line()
    assert all(w.classes == {} for w in windows)  # a hit-only model: no class shares


def test_tail_shows_each_class_share_of_the_judged_frames(tmp_path):
    images = [np.zeros(ROI, np.int16) for _ in range(40)]
    for i, image in enumerate(images):  # P(hit) 0.9; ice on 1 frame in 4, multiple on none
        image[0, :3] = 90, 0, 50 if i % 4 == 0 else 0
    unjudged = (EventKey(run=2, pulse_id=0), np.zeros((5, 5), np.int16))  # not in the shares
    with running_daemon(class_artifact(tmp_path / "classes.pt")) as daemon:
        windows = watch(
            daemon, [(EventKey(run=1, pulse_id=i), im) for i, im in enumerate(images)] + [unjudged]
        )
    seen = [w for w in windows if w.judged]
    assert sum(w.verdicts for w in windows) == 41 and sum(w.judged for w in seen) == 40
    assert sum((Counter(w.classes) for w in seen), Counter()) == {"ice": 10}  # 1 in 4
    assert all(w.classes.keys() == {"ice", "multiple"} for w in seen)  # a class at 0 is shown
    for w in seen:
        share = w.class_shares()
        assert share["ice"] == w.classes["ice"] / w.judged and share["multiple"] == 0.0
        assert f"ice {100 * share['ice']:.1f}%" in w.line() and "multiple 0.0%" in w.line()
