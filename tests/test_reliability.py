"""One frame must never silence the veto, and no hit may be dropped on a bad pixel (issue #18).

Each test here is one attack or accident that once broke the daemon or the writer; each failed on
the code before its fix. Real sockets on loopback, a real tmpfs for the full disk.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
import zmq
import zmq.auth

from hitveto_client.veto import CurveKeys, VetoClient
from hitveto.models import artifact
from hitveto import config
from hitveto_client.protocol import PROTOCOL_VERSION, EventKey, Reason
from hitveto.serving.security import create_keys
from tests.conftest import RAW, ROI, make_artifact, median_threshold_artifact, running_daemon
from tests.test_daemon import frames, stream


def raw_message(pixels: bytes | None = None, **header) -> list[bytes]:
    """A frame message with any header fields, as a hostile or buggy sender would make it."""
    meta = {"v": PROTOCOL_VERSION, "run": 1, "pulse_id": 0, "timestamp": 0, "detector": "cspad",
            "dtype": "int16", "shape": list(RAW), "sent_ns": 0, "meta": {}} | header
    return [msgpack.packb(meta), np.zeros(RAW, np.int16).tobytes() if pixels is None else pixels]


def push_raw(daemon, *messages: list[bytes]) -> None:
    with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as push:
        push.connect(daemon.endpoints.ingest)
        for parts in messages:
            push.send_multipart(parts)
        push.close(linger=2000)


def sample(daemon, name: str, **labels) -> float:
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


# 1. One frame made the daemon deaf for good --------------------------------------------------------

def test_an_event_id_beyond_64_bits_signed_is_refused_and_judging_goes_on(tmp_path):
    misses = make_artifact(tmp_path / "miss.pt", bias=-50.0)       # every frame a miss: audit picks
    with running_daemon(misses, **{"audit.fraction": 1.0}) as daemon:
        push_raw(daemon, raw_message(pulse_id=1 << 63), raw_message(run=(1 << 64) - 1),
                 raw_message(pulse_id=-(1 << 63)))                   # the last one is in range
        counts, decisions = stream(daemon, frames(200))
        assert counts.sent == counts.decided == 200 and counts.kept_fallback == 0
        assert {d.reason for d in decisions} == {Reason.AUDIT}
        refused = sample(daemon, "hitveto_bad_frames_total", reason="bad_header")
        judged_edge = sample(daemon, "hitveto_verdicts_total", outcome="keep", reason="audit")
        down = daemon.unhealthy()
    assert refused == 2 and judged_edge == 201 and down == []


def test_a_crashed_worker_thread_is_restarted_and_counted(tiny_artifact, monkeypatch):
    from hitveto.serving.batcher import Batcher
    real, calls = Batcher.next_batch, []

    def crash_once(self, timeout_s):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected bug in the inference loop")
        return real(self, timeout_s)
    monkeypatch.setattr(Batcher, "next_batch", crash_once)
    with running_daemon(tiny_artifact) as daemon:
        time.sleep(0.5)
        counts, decisions = stream(daemon, frames(100))
        assert counts.sent == counts.decided == 100
        assert {d.reason for d in decisions} == {Reason.MODEL}
        crashes = sample(daemon, "hitveto_thread_crashes_total", thread="hitveto-infer-0")
        down = daemon.unhealthy()
    assert crashes == 1 and down == []


def test_a_thread_that_stays_down_ends_readiness_and_the_watchdog_and_exits_1(
        tiny_artifact, tmp_path, monkeypatch):
    from hitveto.serving.batcher import Batcher

    def always_crash(self, timeout_s):
        time.sleep(0.01)
        raise RuntimeError("injected: the inference loop cannot run")
    notify_path = str(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")          # a ping every 0.1 s while healthy
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(0.05)
        with running_daemon(tiny_artifact) as daemon:
            loop = threading.Thread(target=daemon.serve_forever_without_signals)
            loop.start()
            healthy = _messages(notify, 0.6)
            monkeypatch.setattr(Batcher, "next_batch", always_crash)
            loop.join(10)
            after = _messages(notify, 0.5)
            ready = sample(daemon, "hitveto_ready")
            crashes = sample(daemon, "hitveto_thread_crashes_total", thread="hitveto-infer-0")
    assert not loop.is_alive() and daemon.exit_code == 1 and ready == 0 and crashes == 6
    assert "WATCHDOG=1" in healthy
    down = next(i for i, m in enumerate(after) if m.startswith("STATUS=worker threads down"))
    assert "WATCHDOG=1" not in after[down:] and "STOPPING=1" in after[down:]


def _messages(sock: socket.socket, seconds: float) -> list[str]:
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            out += sock.recv(4096).decode().splitlines()
        except TimeoutError:
            pass
    return out


# 2. A NaN pixel dropped a hit ----------------------------------------------------------------------

def test_nan_and_inf_pixels_are_masked_and_the_frame_judged_as_without_them(tmp_path):
    rng = np.random.default_rng(3)
    images = [rng.poisson(0.3 + (i % 4), RAW).astype(np.float32) * 10 for i in range(40)]
    model = median_threshold_artifact(tmp_path / "m.pt", images)
    spec = artifact.read(model).spec
    flat = spec.roi_index.ravel()
    judged_pixel = int(flat[flat >= 0][7])                       # a pixel the model sees
    poisoned = []
    for i, image in enumerate(images):
        bad = image.copy()
        bad.flat[judged_pixel] = (np.nan, np.inf, -np.inf)[i % 3]
        image.flat[judged_pixel] = 0.0                           # masked means: read as 0
        poisoned.append((EventKey(run=2, pulse_id=i), bad))
    clean = [(EventKey(run=1, pulse_id=i), image) for i, image in enumerate(images)]
    with running_daemon(model) as daemon:
        _, with_nan = stream(daemon, poisoned)
        _, without = stream(daemon, clean)
        masked = sample(daemon, "hitveto_nonfinite_pixel_frames_total")
    score = {(d.key.run, d.key.pulse_id): d.verdict.score for d in with_nan + without}
    assert all(score[(2, i)] == score[(1, i)] for i in range(40))
    assert sum(d.keep for d in with_nan) == sum(d.keep for d in without) > 0   # the hits are kept
    assert {d.reason for d in with_nan} == {Reason.MODEL} and masked == 40


def test_a_score_that_is_not_a_number_is_kept_with_its_own_reason(tmp_path):
    broken = make_artifact(tmp_path / "nan.pt", bias=float("nan"))
    with running_daemon(broken) as daemon:
        counts, decisions = stream(daemon, frames(30))
        counted = sample(daemon, "hitveto_verdicts_total", outcome="keep", reason="bad_score")
    assert all(d.keep for d in decisions)                     # before: all dropped as misses
    assert {d.reason for d in decisions} == {Reason.BAD_SCORE}
    assert counts.kept_by_reason == {Reason.BAD_SCORE: 30} and counted == 30


# 3. CURVE intake died on a client connection -------------------------------------------------------

def curve_settings(keys) -> dict[str, str]:
    return {"security.curve": "true", "security.server_secret_file": str(keys["server_secret"]),
            "security.clients_dir": str(keys["clients_dir"])}


def test_curve_intake_survives_clients_coming_and_going_and_counts_every_refusal(
        tiny_artifact, tmp_path, monkeypatch):
    keys = create_keys(tmp_path / "keys")
    _, intruder_secret = zmq.auth.create_certificates(tmp_path, "intruder")
    good = CurveKeys.from_files(str(keys["server_public"]), str(keys["client_secret"]))
    wrong = CurveKeys.from_files(str(keys["server_public"]), intruder_secret)
    real_proxy, calls = zmq.proxy_steerable, []

    def proxy_failing_once(*sockets):       # what a client connection did to the CURVE intake
        calls.append(1)
        if len(calls) == 1:
            raise zmq.Again()
        return real_proxy(*sockets)
    monkeypatch.setattr(zmq, "proxy_steerable", proxy_failing_once)
    judged = []
    with running_daemon(tiny_artifact, **curve_settings(keys)) as daemon:
        for run, client in enumerate([good, wrong, None, good, wrong, None, good]):
            with VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish, curve=client,
                            deadline_ms=2000 if client is good else 300) as veto:
                if client is good:
                    veto.wait_subscribed()
                for i in range(10):
                    veto.send(EventKey(run=run, pulse_id=i), np.zeros(RAW, np.int16))
                judged.append(sum(d.verdict is not None for d in veto.flush(timeout_s=5)))
        time.sleep(0.3)
        refused = daemon.metrics.auth_failures.collect()[0].samples[0].value
        received = sample(daemon, "hitveto_frames_received_total")
    print(f"CURVE churn: judged {judged}, refusals counted {refused:.0f}")
    assert judged == [10, 0, 0, 10, 0, 0, 10] and received == 30
    assert refused >= 4                     # two wrong-keyed and two unkeyed clients, at least once


# 4. The control socket let anyone on the host swap the model ---------------------------------------

def test_control_socket_is_a_private_unix_socket_and_tcp_needs_curve(tiny_artifact):
    with running_daemon(tiny_artifact) as daemon:
        mode = stat.S_IMODE(os.stat(daemon.endpoints.control.removeprefix("ipc://")).st_mode)
    assert mode == 0o600
    with pytest.raises(config.ConfigError, match="needs security.curve"):
        config.load(overrides={"control.endpoint": "tcp://127.0.0.1:5552"})
    with pytest.raises(config.ConfigError, match="socket_mode"):
        config.load(overrides={"control.socket_mode": "0666"})


def test_reload_takes_only_regular_files_from_the_reload_folders(tiny_artifact, tmp_path):
    from hitveto.serving.control import request
    elsewhere = make_artifact(tmp_path / "elsewhere" / "zero.pt", version="test-1", bias=-50.0)
    allowed = tmp_path / "models"
    fifo = allowed / "fifo.pt"
    allowed.mkdir()
    os.mkfifo(fifo)
    (allowed / "link.pt").symlink_to(elsewhere)
    with running_daemon(tiny_artifact, **{"model.reload_dirs": f"{allowed},/dev"}) as daemon:
        ep = daemon.endpoints.control
        outside = request(ep, "reload", artifact=str(elsewhere))
        via_link = request(ep, "reload", artifact=str(allowed / "link.pt"))
        t0 = time.monotonic()
        from_fifo = request(ep, "reload", artifact=str(fifo), timeout_s=5)
        from_zero = request(ep, "reload", artifact="/dev/zero", timeout_s=5)
        seconds = time.monotonic() - t0
        version = request(ep, "status")["result"]["version"]
        refused = sample(daemon, "hitveto_reloads_total", result="refused")
    assert "not in a reload folder" in outside["error"] and "not in a reload folder" in via_link["error"]
    assert "not a regular file" in from_fifo["error"] and "not a regular file" in from_zero["error"]
    assert seconds < 5 and refused == 4
    assert version == artifact.read(tiny_artifact).served_version


def test_the_served_version_changes_with_the_file_not_only_the_metadata(tiny_artifact, tmp_path):
    from hitveto.serving.control import request
    impostor = make_artifact(tmp_path / "impostor.pt", version="test-1", bias=-50.0)
    with running_daemon(tiny_artifact) as daemon:     # the model's own folder: a reload folder
        _, before = stream(daemon, frames(5))
        assert request(daemon.endpoints.control, "reload", artifact=str(impostor))["ok"]
        _, after = stream(daemon, frames(5))
    (mine,), (theirs,) = ({d.verdict.model_version for d in ds} for ds in (before, after))
    assert mine != theirs                       # same metadata, another file: another version
    assert mine.startswith("test-1@") and theirs == artifact.read(impostor).served_version


# 5. The hit writer lost kept frames on a full disk -------------------------------------------------

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
    from hitveto_client.cxi import read_frames
    from hitveto_client.protocol import encode_frame
    from hitveto.serving.sockets import free_tcp_endpoint
    rng = np.random.default_rng(5)
    sent = [rng.integers(0, 4000, (32, 185, 388), dtype=np.int16) for _ in range(12)]  # 4.6 MB
    listen = free_tcp_endpoint()
    with running_daemon(tiny_artifact) as daemon:     # frames of another layout: all kept
        writer = subprocess.Popen(
            [sys.executable, "-m", "hitveto.cli", "write", "--listen", listen, "--frames",
             daemon.endpoints.ingest, "--verdicts", daemon.endpoints.publish, "--out", str(small_disk),
             "--count", str(len(sent))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in writer.stderr:
            if "listening for frames" in line:
                break
        with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as push:
            push.connect(listen)
            for i, image in enumerate(sent):
                push.send_multipart(encode_frame(EventKey(run=1, pulse_id=i), image), copy=False)
            out, err = writer.communicate(timeout=60)
    files = sorted(small_disk.glob("hits-*.cxi"))
    data, columns = read_frames(files[0])                 # the file opens and holds whole frames
    written = len(data)
    print(f"full disk: {written} of {len(sent)} frames written, {len(sent) - written} counted")
    assert writer.returncode == 1, err[-2000:]
    assert 0 < written < len(sent) and len(files) == 1
    assert f"NOT WRITTEN        {len(sent) - written} kept frames" in out and "No space" in out
    assert len(columns["event/pulse_id"]) == written
    assert all(np.array_equal(data[k], sent[int(p)]) for k, p in enumerate(columns["event/pulse_id"]))


# 6. Smaller defects --------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("shape", [True, True]), ("v", True), ("v", 1.0),
                                          ("timestamp", "late"), ("detector", "")])
def test_mistyped_header_fields_are_refused_and_answered_when_the_key_is_readable(
        tiny_artifact, field, value):
    with running_daemon(tiny_artifact) as daemon, \
            VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish) as veto:
        veto.wait_subscribed()
        # [true, true] declares 1x1 pixels: with 2 bytes the size check passes, numpy's reshape raised
        pixels = bytes(2) if field == "shape" else None
        push_raw(daemon, raw_message(pixels, **{field: value}), raw_message(pulse_id=1))
        time.sleep(0.5)
        answered = sample(daemon, "hitveto_verdicts_total", outcome="keep", reason="malformed")
        judged = sample(daemon, "hitveto_verdicts_total", outcome="keep", reason="model") + \
            sample(daemon, "hitveto_verdicts_total", outcome="drop", reason="model")
        internal = sample(daemon, "hitveto_bad_frames_total", reason="internal_error")
    keyed = field in ("shape", "v")
    assert internal == 0 and judged == 1 and answered == (1 if keyed else 0)


def test_a_message_larger_than_a_frame_is_refused_before_it_is_read(tiny_artifact):
    from hitveto_client.protocol import MAX_FRAME_BYTES, MAX_HEADER_BYTES
    with running_daemon(tiny_artifact) as daemon:     # ZMQ drops the sender, nothing is read
        push_raw(daemon, [raw_message()[0], bytes(MAX_FRAME_BYTES + MAX_HEADER_BYTES + 1)])
        counts, _ = stream(daemon, frames(20))
        received = sample(daemon, "hitveto_frames_received_total")
    assert received == 20 and counts.decided == 20       # the big one never reached a worker


def test_subscribers_are_bounded_and_one_over_the_limit_gets_no_verdicts(tiny_artifact):
    with running_daemon(tiny_artifact, **{"publish.max_subscribers": 2}) as daemon:
        subs = [VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish, deadline_ms=500)
                for _ in range(3)]
        for s in subs:
            s.wait_subscribed()
        admitted = _gauge_after(daemon, "hitveto_subscribers", 2)
        time.sleep(0.3)
        for i, s in enumerate(subs):
            s.send(EventKey(run=9, pulse_id=i), np.zeros(RAW, np.int16))
        judged = [sum(d.verdict is not None for d in s.flush(timeout_s=2)) for s in subs]
        refused = sample(daemon, "hitveto_subscribers_refused_total")
        for s in subs:
            s.close()
        left = _gauge_after(daemon, "hitveto_subscribers", 0)
        late = VetoClient(daemon.endpoints.ingest, daemon.endpoints.publish)   # room again
        late.wait_subscribed()
        late.send(EventKey(run=9, pulse_id=9), np.zeros(RAW, np.int16))
        (decision,) = late.flush(timeout_s=5)
        late.close()
    assert admitted == 2 and refused == 1 and left == 0
    assert sorted(judged) == [0, 1, 1] and decision.reason is Reason.MODEL


def _gauge_after(daemon, name: str, want: float, timeout_s: float = 5.0) -> float:
    end = time.monotonic() + timeout_s
    while (value := sample(daemon, name)) != want and time.monotonic() < end:
        time.sleep(0.1)
    return value


def test_shutdown_before_start_and_metrics_after_shutdown(tiny_artifact):
    from prometheus_client import CollectorRegistry

    from hitveto.serving.daemon import Daemon
    from tests.conftest import loopback_config
    Daemon(loopback_config(tiny_artifact), registry=CollectorRegistry()).shutdown()   # no error
    with running_daemon(tiny_artifact) as daemon:
        port = daemon.endpoints.metrics_port
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()


def test_region_frames_in_float_keep_their_shape_when_masked(tiny_artifact):
    from hitveto.models.preprocess import masked_region
    spec = artifact.read(tiny_artifact).spec
    roi = np.ones(ROI, np.float32)
    roi[3, 4] = np.nan
    out, n = masked_region(roi, spec)
    assert n == 1 and out.shape == ROI and out[3, 4] == 0 and np.isnan(roi[3, 4])   # input untouched


def test_uint16_frames_are_judged_not_failed(tiny_artifact):
    """Found by benchmarks/fuzz_header.py: torch has no amax for uint16, so every uint16 frame (an
    allowed wire dtype, and what Jungfrau's raw data are) was kept as model_error."""
    items = [(key, image.astype(np.uint16)) for key, image in frames(20)]
    with running_daemon(tiny_artifact) as daemon:
        counts, decisions = stream(daemon, items)
    assert {d.reason for d in decisions} == {Reason.MODEL} and counts.decided == 20


def test_the_writer_exports_what_it_could_not_write(tmp_path):
    from hitveto_client.cxi import CxiWriter
    from hitveto_client.relay import serve_metrics
    from prometheus_client.parser import text_string_to_metric_families
    with CxiWriter(tmp_path / "hits", min_free_bytes=1 << 60) as writer:   # never room: all refused
        server = serve_metrics(writer, 0)
        for i in range(3):
            assert not writer.write(np.zeros(RAW, np.int16), run=1, pulse_id=i)
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        server.shutdown()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert values["hitveto_writer_frames_not_written_total"] == 3
    assert values["hitveto_writer_frames_written_total"] == 0 and "No space left" in writer.error
