"""Overload at 5x capacity, the real script in its short version, with the audit sample, a shadow
peakfinder8 and the drift monitor on: nothing lost, memory within the bound the config sets, the
excess kept with reason `overload`, and every frame judged again after."""

from __future__ import annotations

import pytest

from helpers import run_benchmark

pytestmark = pytest.mark.slow  # its one test: ~29 s


def test_five_times_capacity_is_kept_bounded_and_recovers(tmp_path):
    r = run_benchmark("overload", "--quick", "--watchers", out=tmp_path, timeout_s=300)
    assert r["lost"] == 0 and r["sent"] == r["decided"]
    assert r["offered_overload_hz"] > 3 * r["capacity_hz"]  # the client did overload it
    assert r["kept_by_reason"].get("overload", 0) > 0
    assert set(r["kept_by_reason"]) <= {"overload", "no_verdict"}
    assert r["memory_ok"] and r["rss_max_mb"] - r["rss_nominal_mb"] <= r["memory_bound_mb"]
    over = [w for w in r["windows"] if w["phase"] == "overload"]
    assert sum(w["judged_hz"] for w in over) > 0  # it still judges under overload
    assert r["recovered"] and (tmp_path / "overload.png").stat().st_size > 0
    assert r["audited"] > 0 and r["shadowed"] > 0 and r["drift_measured"] >= 20  # they were working
