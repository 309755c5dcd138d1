"""A short soak (the real script, a few seconds): nothing lost, memory bounded, figures saved."""

from __future__ import annotations

import pytest

from helpers import run_benchmark

pytestmark = pytest.mark.slow  # its one test: ~15 s


def test_short_soak_loses_nothing_and_memory_stays_bounded(tmp_path):
    args = ("--seconds", "8", "--rate", "60", "--kind", "full", "--window", "2")
    result = run_benchmark("soak", *args, out=tmp_path, timeout_s=120)
    assert result["sent"] >= 450 and result["lost"] == 0 and result["fallback_keeps"] == 0
    rss = [w["rss_mb"] for w in result["windows"]]
    assert max(rss) < 1.5 * rss[0] + 50  # no growth with the frames streamed
    assert (tmp_path / "soak.png").stat().st_size > 0
