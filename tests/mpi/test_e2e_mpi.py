"""bench/e2e.py's quick mode: the whole comparison pipeline (real jobs, seeds, aggregation, report) in small."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_quick_comparison_runs_every_seed_and_writes_a_report(tmp_path):
    out = tmp_path / "e2e"
    cmd = [sys.executable, str(ROOT / "bench" / "e2e.py"), "--out", str(out), "--quick", "--seeds", "2",
           "--only", "ps-baseline,hybrid-t1.1-s2"]  # the allreduce summary's fields: test_baselines_mpi
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail("bench/e2e.py --quick did not finish within 240 s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted((r["config"], r["seed"]) for r in rows) == [
        (c, s) for c in ("hybrid-t1.1-s2", "ps-baseline") for s in ("0", "1")]
    results = json.loads((out / "results.json").read_text())
    assert results["best_hybrid"] == "hybrid-t1.1-s2"
    base = next(a for a in results["configurations"] if a["config"] == "ps-baseline")
    finals = [float(r["final_top1"]) for r in rows if r["config"] == "ps-baseline"]
    assert base["seeds"] == 2 and base["final_top1"] == pytest.approx(statistics.fmean(finals))
    assert base["final_top1_std"] == pytest.approx(statistics.stdev(finals))
    hybrid = next(a for a in results["configurations"] if a["config"] == "hybrid-t1.1-s2")
    assert hybrid["batch_small"] and hybrid["speedup"] > 0
    report = (out / "report.md").read_text()
    assert "| ps-baseline | 2 | 0 |" in report and "hybrid-t1.1-s2 (best hybrid) | 2 | 2 | 1.1 |" in report
    assert "## Comparison (baseline: ps-baseline-seed0)" in report  # hdbl report's own table follows
    # A second call finds every summary and repeats nothing.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert again.returncode == 0 and "launch train" not in again.stdout
