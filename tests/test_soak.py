"""A short soak (the real script, a few seconds): nothing lost, memory bounded, figures saved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_short_soak_loses_nothing_and_memory_stays_bounded(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--seconds", "8",
                          "--rate", "60", "--kind", "full", "--window", "2", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["sent"] >= 450 and result["lost"] == 0 and result["fallback_keeps"] == 0
    rss = [w["rss_mb"] for w in result["windows"]]
    assert max(rss) < 1.5 * rss[0] + 50        # no growth with the frames streamed
    assert (tmp_path / "soak.png").stat().st_size > 0
