"""The verdict tail summarises what the daemon publishes: rate, hit rate, reasons."""

from __future__ import annotations

import threading

from hitveto_client.tail import tail

from helpers import frames, make_artifact, running_daemon, stream


def test_tail_counts_the_verdicts_it_sees(tmp_path):
    model = make_artifact(tmp_path / "hit.pt", bias=50.0)  # every frame a hit
    windows, subscribed = [], threading.Event()
    with running_daemon(model) as daemon:
        watcher = threading.Thread(
            target=tail,
            args=(daemon.endpoints.publish,),
            kwargs={"interval_s": 1.5, "windows": 2, "emit": windows.append, "subscribed": subscribed},
        )
        watcher.start()
        assert subscribed.wait(5)
        stream(daemon, frames(100))
        watcher.join(10)
    seen = sum(w.verdicts for w in windows)
    assert seen == 100
    assert sum(w.hits for w in windows) == 100 and windows[0].line()
