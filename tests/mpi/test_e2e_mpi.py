"""bench/e2e.py --quick: the whole comparison pipeline (a real sweep over seeds, the report, the verdict) in small."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_comparison_runs_every_seed_and_judges_the_goal(tmp_path):
    out = tmp_path / "e2e"
    cmd = [sys.executable, str(ROOT / "bench" / "e2e.py"), "--out", str(out), "--quick", "--seeds", "2"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail("bench/e2e.py --quick did not finish within 420 s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted((r["config"], r["seed"]) for r in rows) == [
        (c, s) for c in ("allreduce", "hybrid", "ps-baseline") for s in ("0", "1")]
    hybrid = [r for r in rows if r["config"] == "hybrid"]
    assert all(r["batch_small"] and r["commits_per_epoch"] == "4" for r in hybrid)
    report = (out / "report.md").read_text()
    assert "## Mean over seeds (± sample standard deviation)" in report
    assert "| merge=delta" in report or "hybrid" in report
    assert "## The goal\n\nBest hybrid: `hybrid`" in report and "Best data-parallel baseline: `allreduce`" in report
    assert ("**met**" in report) != ("**not met**" in report)
    # A second call finds every summary and repeats nothing.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 0 and again.stdout.count("skipped (finished)") == 6
