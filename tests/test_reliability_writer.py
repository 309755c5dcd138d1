"""The hit writer when it cannot write (issue #18): a real full disk, and what it exports.

Each test here is one accident that once lost kept frames; each failed on the code before its fix.
Real sockets on loopback, a real tmpfs for the full disk.
"""

from __future__ import annotations

import os
import subprocess
import urllib.request

import numpy as np
import pytest
import zmq

from hitveto_client.protocol import EventKey

from helpers import RAW, running_daemon, start_writer

# The hit writer lost kept frames on a full disk ---------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 80 MiB tmpfs (needs root, as CI is)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=80m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_the_writer_on_a_full_disk_counts_every_frame_it_could_not_write(small_disk, tiny_artifact):
    from hitveto.serving.sockets import free_tcp_endpoint
    from hitveto_client.cxi import read_frames
    from hitveto_client.protocol import encode_frame

    rng = np.random.default_rng(5)
    sent = [rng.integers(0, 4000, (32, 185, 388), dtype=np.int16) for _ in range(12)]  # 4.6 MB
    listen = free_tcp_endpoint()
    with running_daemon(tiny_artifact) as daemon:  # frames of another layout: all kept
        writer = start_writer(listen, daemon, small_disk, "--count", str(len(sent)))
        with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as push:
            push.connect(listen)
            for i, image in enumerate(sent):
                push.send_multipart(encode_frame(EventKey(run=1, pulse_id=i), image), copy=False)
            out, err = writer.communicate(timeout=60)
    files = sorted(small_disk.glob("hits-*.cxi"))
    data, columns = read_frames(files[0])  # the file opens and holds whole frames
    written = len(data)
    print(f"full disk: {written} of {len(sent)} frames written, {len(sent) - written} counted")
    assert writer.returncode == 1, err[-2000:]
    assert 0 < written < len(sent) and len(files) == 1
    assert f"NOT WRITTEN        {len(sent) - written} kept frames" in out and "No space" in out
    assert len(columns["event/pulse_id"]) == written
    assert all(np.array_equal(data[k], sent[int(p)]) for k, p in enumerate(columns["event/pulse_id"]))


# What it could not write was not exported ---------------------------------------------------------


def test_the_writer_exports_what_it_could_not_write(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from hitveto_client.cxi import CxiWriter
    from hitveto_client.relay import serve_metrics

    with CxiWriter(tmp_path / "hits", min_free_bytes=1 << 60) as writer:  # never room: all refused
        server = serve_metrics(writer, 0)
        for i in range(3):
            assert not writer.write(np.zeros(RAW, np.int16), run=1, pulse_id=i)
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        server.shutdown()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert values["hitveto_writer_frames_not_written_total"] == 3
    assert values["hitveto_writer_frames_written_total"] == 0 and "No space left" in writer.error
