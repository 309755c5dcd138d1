"""`hitveto write` as its own process: a DAQ sender pushes frames, the writer keeps what the daemon keeps."""

from __future__ import annotations

import signal

import h5py
import numpy as np
import zmq

from hitveto.serving.sockets import free_tcp_endpoint
from hitveto_client.cxi import read_frames
from hitveto_client.protocol import EventKey, Reason, encode_frame

from helpers import RAW, median_threshold_artifact, running_daemon, start_writer

DEADLINE = ("--deadline-ms", "5000")


def frames(n: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(11)
    return {
        i: rng.poisson(0.3 + (i % 4) * 0.5, RAW).astype(np.int16) * 10 for i in range(n)
    }  # < 2 photons: calibrated


def summary_value(out: str, label: str) -> int:
    (line,) = [ln for ln in out.splitlines() if ln.startswith(label)]
    return int(line[len(label) :].split()[0].rstrip(":"))


def test_writer_joins_frames_with_verdicts_and_counts_malformed(tmp_path):
    sent = frames(40)
    model = median_threshold_artifact(tmp_path / "m.pt", list(sent.values()))
    listen = free_tcp_endpoint()
    with running_daemon(model) as daemon:
        beam = ("--photon-energy-ev", "9500", "--distance-mm", "100")
        writer = start_writer(listen, daemon, tmp_path / "out", *DEADLINE, "--max-frames", "8", *beam)
        with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as push:
            push.connect(listen)
            for pulse_id, image in sent.items():
                meta = {"photon_energy_ev": 9000.0 + pulse_id} if pulse_id % 2 else {}  # the pulse's own
                key = EventKey(run=5, pulse_id=pulse_id)
                push.send_multipart(encode_frame(key, image, meta=meta), copy=False)
                if pulse_id == 10:
                    push.send_multipart([b"not msgpack", b"x"])
                    push.send_multipart([b"a", b"b", b"c"])
        writer.send_signal(signal.SIGTERM)  # frames on their way must be taken
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err[-2000:]
    assert summary_value(out, "frames sent") == 40
    assert "rejected           2 malformed messages (bad_header 1, bad_parts 1)" in out
    hits = summary_value(out, "verdicts (model)")
    files = sorted((tmp_path / "out").glob("hits-*.cxi"))
    kept, energy = {}, {}
    for f in files:
        data, columns = read_frames(f)
        assert len(data) <= 8  # rolled by count
        kept |= dict(zip(columns["event/pulse_id"].tolist(), data))
        with h5py.File(f) as h:
            energy |= dict(zip(columns["event/pulse_id"].tolist(), h["LCLS/photon_energy_eV"][()]))
            assert (h["entry_1/instrument_1/detector_1/distance"][()] == 0.1).all()
        assert set(columns["result_1/keep_reason"].astype(str)) == {Reason.MODEL.value}
        assert (columns["event/run"] == 5).all()
    assert energy == {p: 9000.0 + p if p % 2 else 9500.0 for p in kept}
    assert 0 < len(kept) < 40 and summary_value(out, "frames written") == len(kept) <= hits
    assert all(np.array_equal(image, sent[p]) for p, image in kept.items())


def test_writer_keeps_everything_when_the_daemon_is_gone(tmp_path):
    listen = free_tcp_endpoint()
    model = median_threshold_artifact(tmp_path / "m.pt", list(frames(4).values()))
    with running_daemon(model) as daemon:
        writer = start_writer(listen, daemon, tmp_path / "out", *DEADLINE, "--count", "12")
    # The daemon has stopped, after the writer subscribed.
    with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as push:
        push.connect(listen)
        for pulse_id, image in frames(12).items():
            push.send_multipart(encode_frame(EventKey(run=1, pulse_id=pulse_id), image))
        out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err[-2000:]
    (f,) = (tmp_path / "out").glob("hits-*.cxi")
    data, columns = read_frames(f)
    assert sorted(columns["event/pulse_id"].tolist()) == list(range(12))
    assert set(columns["result_1/keep_reason"].astype(str)) <= {
        Reason.NO_VERDICT.value,
        Reason.OVERLOAD.value,
    }
    assert "accounting         sent 12 = 0 + 0 + 0 + 12: OK" in out
