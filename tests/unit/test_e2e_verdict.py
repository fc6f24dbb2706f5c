"""bench/e2e.py's verdict on the goal, on hand-made results."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location("e2e", Path(__file__).resolve().parents[2] / "bench" / "e2e.py")
e2e = importlib.util.module_from_spec(_SPEC)
sys.modules["e2e"] = e2e
_SPEC.loader.exec_module(e2e)


def _results(path: Path, rows: list[tuple[str, str, float, float]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["config", "mode", "final_top1", "train_time_s"])
        writer.writerows(rows)
    return path


def test_the_best_hybrid_is_judged_against_the_best_data_parallel_baseline(tmp_path):
    rows = [("hybrid.k-16", "asp", 0.870, 60.0), ("hybrid.k-16", "asp", 0.874, 62.0),  # mean 0.872, 61 s
            ("hybrid.k-1", "asp", 0.850, 55.0), ("ps-baseline", "asp", 0.880, 50.0),  # not hybrids: not judged
            ("allreduce.mpi4py", "allreduce", 0.874, 80.0), ("allreduce.mpi4py", "allreduce", 0.876, 90.0),
            ("localsgd", "localsgd", 0.860, 70.0)]
    text = e2e.verdict(_results(tmp_path / "r.csv", rows))
    assert "Best hybrid: `hybrid.k-16`, 87.20 % in 61.0 s" in text
    assert "Best data-parallel baseline: `allreduce.mpi4py`, 87.50 % in 85.0 s" in text
    assert "Top-1 -0.30 pp" in text and "train time ×0.72" in text and "**met**" in text


def test_a_hybrid_too_slow_or_too_inaccurate_misses_the_goal(tmp_path):
    slow = e2e.verdict(_results(tmp_path / "a.csv", [("hybrid", "asp", 0.88, 91.0), ("allreduce", "allreduce", 0.88,
                                                                                     90.0)]))
    worse = e2e.verdict(_results(tmp_path / "b.csv", [("hybrid", "asp", 0.876, 50.0), ("allreduce", "allreduce",
                                                                                      0.88, 90.0)]))
    assert "**not met**" in slow and "**not met**" in worse and "Top-1 -0.40 pp" in worse


def test_the_verdict_also_lists_the_hybrid_against_each_baseline(tmp_path):
    rows = [("hybrid", "asp", 0.875, 60.0), ("allreduce", "allreduce", 0.877, 90.0),
            ("allreduce-cyclic", "allreduce", 0.880, 59.0), ("localsgd", "localsgd", 0.873, 80.0)]
    text = e2e.verdict(_results(tmp_path / "r.csv", rows))
    assert "Best data-parallel baseline: `allreduce-cyclic`" in text and "**not met**" in text
    lines = [line for line in text.splitlines() if line.startswith("- ")]
    assert lines == ["- `allreduce-cyclic`: 88.00 % in 59.0 s; the best hybrid -0.50 pp, train time ×1.02: not met",
                     "- `allreduce`: 87.70 % in 90.0 s; the best hybrid -0.20 pp, train time ×0.67: met",
                     "- `localsgd`: 87.30 % in 80.0 s; the best hybrid +0.20 pp, train time ×0.75: met"]
