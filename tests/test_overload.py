"""Overload at 5x capacity, the real script in its short version, with the audit sample, a shadow
peakfinder8 and the drift monitor on: nothing lost, memory within the bound the config sets, the
excess kept with reason `overload`, and every frame judged again after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_five_times_capacity_is_kept_bounded_and_recovers(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overload.py"), "--quick",
                          "--watchers", "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.loads((tmp_path / "overload.json").read_text())
    assert r["lost"] == 0 and r["sent"] == r["decided"]
    assert r["offered_overload_hz"] > 3 * r["capacity_hz"]          # the client did overload it
    assert r["kept_by_reason"].get("overload", 0) > 0
    assert set(r["kept_by_reason"]) <= {"overload", "no_verdict"}
    assert r["memory_ok"] and r["rss_max_mb"] - r["rss_nominal_mb"] <= r["memory_bound_mb"]
    over = [w for w in r["windows"] if w["phase"] == "overload"]
    assert sum(w["judged_hz"] for w in over) > 0                   # it still judges under overload
    assert r["recovered"] and (tmp_path / "overload.png").stat().st_size > 0
    assert r["audited"] > 0 and r["shadowed"] > 0 and r["drift_measured"] >= 20   # they were working
