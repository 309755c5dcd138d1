"""deploy/ is proven, not just shipped: systemd unit, promtool checks, and every dashboard and rule
expression evaluated by a real Prometheus scraping a running daemon."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from hitveto_client.protocol import EventKey

from helpers import (
    DEPLOY,
    class_artifact,
    frames,
    median_threshold_artifact,
    prometheus,
    query,
    running_daemon,
    stream,
    wait_for,
)


def run(*cmd: str, cwd: Path | None = None) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_systemd_unit_verifies(tmp_path):
    unit = (DEPLOY / "systemd" / "hitveto.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "Restart=on-failure" in unit
    hitveto = shutil.which("hitveto")
    assert hitveto, "hitveto console script not installed"
    local = tmp_path / "hitveto.service"  # the same unit, pointing at this machine's install
    local.write_text(unit.replace("/opt/hitveto/venv/bin/hitveto", hitveto))
    out = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True)
    assert "hitveto.service" not in out.stderr, out.stderr


def test_promtool_checks_config_rules_and_unit_tests():
    prom = DEPLOY / "prometheus"
    run("promtool", "check", "config", "prometheus.yml", cwd=prom)
    run("promtool", "check", "rules", "hitveto.rules.yml", cwd=prom)
    assert "SUCCESS" in run("promtool", "test", "rules", "tests/hitveto.test.yml", cwd=prom)


def test_launcher_entries_start_the_same_command():
    cnf = (DEPLOY / "launcher" / "hitveto.cnf").read_text()
    script = (DEPLOY / "launcher" / "hitveto-launch").read_text()
    assert "hitveto serve --config /etc/hitveto/hitveto.toml" in cnf
    assert 'serve --config "${HITVETO_CONFIG:-/etc/hitveto/hitveto.toml}"' in script


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads((DEPLOY / "grafana" / "hitveto.json").read_text())
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "instance"}
    panels = dash["panels"]  # a row holds no query
    return [(p["title"], t["expr"].replace("$instance", ".+")) for p in panels for t in p.get("targets", [])]


def rules() -> tuple[list[str], list[str]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "hitveto.rules.yml").read_text())["groups"]
    every = [r for g in groups for r in g["rules"]]
    return [r["record"] for r in every if "record" in r], [r["expr"] for r in every if "alert" in r]


@pytest.mark.slow  # ~15 s
def test_dashboard_and_rules_return_data_from_a_real_prometheus(tmp_path):
    images = [img for _, img in frames(40)]
    # hits and misses both; verdict classes, so that their panels and rules have series (at 0)
    model = median_threshold_artifact(tmp_path / "m.pt", images, make=class_artifact)
    watched = {"shadow.workers": 1, "drift.sample_hz": 1000.0, "drift.min_frames": 20}
    with (
        running_daemon(model, **watched) as daemon,
        prometheus(tmp_path, daemon.endpoints.metrics_port) as prom,
    ):
        wait_for(prom, 'up{job="hitveto"} == 1')
        end = time.monotonic() + 8  # a replay at ~100 Hz for several scrapes
        batch = 0
        while time.monotonic() < end:
            stream(
                daemon,
                [(EventKey(run=batch, pulse_id=i), img) for i, img in enumerate(images)],
                deadline_ms=5000,
            )
            stream(daemon, [(EventKey(run=batch, pulse_id=999), np.zeros((3, 3), np.int16))])
            batch += 1
        wait_for(prom, "count_over_time(hitveto_frames_received_total[1m]) >= 6")
        wait_for(prom, "hitveto:latency_p99:seconds_rate5m")
        empty = [title for title, expr in dashboard_exprs() if not query(prom, expr)["result"]]
        records, alerts = rules()
        missing = [r for r in records if not query(prom, r)["result"]]
        alert_types = {query(prom, expr)["resultType"] for expr in alerts}
    assert not empty, f"dashboard panels without data: {empty}"
    assert not missing, f"recording rules without data: {missing}"
    assert alert_types == {"vector"}
