"""bench/stragglers.py's figures and verdicts, on hand-made runs (results.csv, epochs.csv, summary.json)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location("stragglers", Path(__file__).resolve().parents[2] / "bench" /
                                               "stragglers.py")
stragglers = importlib.util.module_from_spec(_SPEC)
sys.modules["stragglers"] = stragglers
_SPEC.loader.exec_module(stragglers)


def _run(root: Path, name: str, evals: list[tuple[float, float]], startup: float) -> Path:
    """A run directory: its evaluations as (wall_s, test_acc), and its start-up seconds."""
    run = root / name
    run.mkdir(parents=True)
    with open(run / "epochs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "test_acc", "wall_s"])
        writer.writerows((i + 1, acc, wall) for i, (wall, acc) in enumerate(evals))
    (run / "summary.json").write_text(json.dumps({"startup": {"seconds": startup}}))
    return run


def _results(tmp_path: Path, runs: list[tuple[str, str, list[tuple[float, float]], float]]) -> Path:
    """results.csv over hand-made runs (config, mode, evaluations, wall); the final top-1 is the last evaluation."""
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["config", "mode", "final_top1", "train_time_s", "wall_time_s", "run_dir"])
        for i, (config, mode, evals, wall) in enumerate(runs):
            run = _run(tmp_path / "runs", f"{config}.s{i}", evals, startup=5.0 + i)
            writer.writerow([config, mode, evals[-1][1], wall - 10, wall, run])
    return path


def test_time_to_target_is_the_first_evaluation_at_or_above_it(tmp_path):
    run = _run(tmp_path, "r", [(10.0, 0.80), (20.0, 0.865), (30.0, 0.85), (40.0, 0.87)], 1.0)
    assert stragglers.time_to(run / "epochs.csv", 0.865) == 20.0
    assert stragglers.time_to(run / "epochs.csv", 0.90) is None


def test_figures_take_the_target_from_plain_mpi4py_allreduce_and_average_over_seeds(tmp_path):
    results = _results(tmp_path, [
        ("allreduce.backend-mpi4py", "allreduce", [(50.0, 0.80), (100.0, 0.870)], 110.0),
        ("allreduce.backend-mpi4py", "allreduce", [(50.0, 0.86), (100.0, 0.880)], 130.0),  # mean 0.875: target 0.87
        ("hybrid-per-worker", "asp", [(30.0, 0.871), (60.0, 0.872)], 70.0),
        ("hybrid-per-worker", "asp", [(30.0, 0.85), (60.0, 0.860)], 70.0)])  # never reaches 0.87
    target, figs = stragglers.figures(results)
    assert abs(target - 0.870) < 1e-12
    plain, hybrid = figs
    assert (plain.seeds, plain.wall_s, plain.startup_s, plain.to_target_s, plain.reached) == (2, 120.0, 5.5, 100.0, 2)
    assert abs(hybrid.top1 - 0.866) < 1e-12 and (hybrid.to_target_s, hybrid.reached) == (30.0, 1)
    text = stragglers.table(target, figs)
    assert "| hybrid-per-worker | 2 | 86.60 ± 0.85 | 60.0 | 70.0 | 7.5 | 30.0 (1 of 2) |" in text
    assert "wall to 87.00 % (s)" in text


def _figs(*rows: tuple[str, str, float, float]) -> list:
    return [stragglers.Figures(c, m, 3, top1, 0.0, wall, wall, 0.0, None, 0) for c, m, top1, wall in rows]


def test_static_goal_needs_the_accuracy_no_more_wall_time_and_1_6x_over_plain_allreduce():
    met = _figs(("allreduce.backend-mpi4py", "allreduce", 0.880, 200.0), ("allreduce.backend-ddp", "allreduce",
                0.879, 170.0), ("allreduce-speed-cyclic", "allreduce", 0.881, 110.0),
                ("hybrid-per-worker", "asp", 0.878, 100.0), ("hybrid-x", "asp", 0.85, 60.0))
    text = stragglers.verdict("static", met)
    assert "Best hybrid (by mean top-1): `hybrid-per-worker`" in text
    assert "`allreduce-speed-cyclic` (88.10 %): -0.30 pp" in text and "**met**" in text
    too_close = _figs(("allreduce.backend-mpi4py", "allreduce", 0.880, 150.0), ("hybrid", "asp", 0.880, 100.0))
    text = stragglers.verdict("static", too_close)
    assert "1.50x (goal ≥ 1.6x): not met" in text and "**not met**" in text


def test_changing_goal_is_judged_against_every_synchronous_configuration():
    figs = _figs(("allreduce.backend-mpi4py", "allreduce", 0.880, 140.0), ("localsgd", "localsgd", 0.870, 120.0),
                 ("hybrid", "asp", 0.879, 100.0))
    text = stragglers.verdict("changing", figs)
    assert "`allreduce.backend-mpi4py` (88.00 %, 140.0 s): 1.40x faster (goal ≥ 1.3x), -0.10 pp" in text
    assert "`localsgd` (87.00 %, 120.0 s): 1.20x faster" in text and "**not met**" in text
    assert "No goal of its own" in stragglers.verdict("homogeneous", figs)


def test_without_plain_allreduce_there_is_no_target_and_the_why_table_reads_the_summaries(tmp_path):
    results = _results(tmp_path, [("hybrid", "asp", [(30.0, 0.85)], 40.0)])
    summary = tmp_path / "runs" / "hybrid.s0" / "summary.json"
    summary.write_text(json.dumps({"startup": {"seconds": 1.0}, "staleness": {"mean": 2.5}, "nonfinite_rejected":
                                   {"1": 2}, "replans": [{"kind": "speeds"}, {"kind": "speeds", "kept": "noise"}],
                                   "balance": [{"imbalance_commit": 1.5}, {"imbalance_commit": 1.04}]}))
    target, figs = stragglers.figures(results)
    assert target is None and "| hybrid | 1 | 85.00 ± 0.00 | 30.0 | 40.0 | 1.0 | – |" in stragglers.table(None, figs)
    assert "| hybrid | 2.50 | 1.0 | 1.04 | 2.0 |" in stragglers.why(results)
