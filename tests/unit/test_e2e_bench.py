"""bench/e2e.py's arithmetic: mean and sample standard deviation over seeds, speed-up and change vs baseline."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("e2e", Path(__file__).resolve().parents[2] / "bench" / "e2e.py")
e2e = importlib.util.module_from_spec(_SPEC)
sys.modules["e2e"] = e2e  # dataclasses look their module up there
_SPEC.loader.exec_module(e2e)


def _row(config, seed, final, train, small=0):
    return {"config": config, "seed": seed, "small": small, "extra_time": 1.05 if small else None,
            "batch_small": 12 if small else None, "final_top1": final, "best_top1": final + 0.01,
            "train_time_s": train, "eval_time_s": 10.0}


def test_aggregate_over_seeds_against_the_baseline():
    rows = [_row("ps-baseline", 0, 0.80, 100.0), _row("ps-baseline", 1, 0.84, 120.0),
            _row("hybrid-t1.05-s2", 0, 0.85, 80.0, 2), _row("hybrid-t1.05-s3", 0, 0.83, 70.0, 3)]
    aggs = {a["config"]: a for a in e2e.aggregate(rows)}
    base = aggs["ps-baseline"]
    assert base["seeds"] == 2 and base["final_top1"] == pytest.approx(0.82)
    assert base["final_top1_std"] == pytest.approx(0.0282843, rel=1e-5)  # sample std (n - 1)
    assert base["train_time_s"] == pytest.approx(110.0) and base["speedup"] == pytest.approx(1.0)
    hybrid = aggs["hybrid-t1.05-s2"]
    assert hybrid["final_top1_std"] is None  # one seed: no spread to report
    assert hybrid["speedup"] == pytest.approx(110.0 / 80.0)
    assert hybrid["delta_final_pp"] == pytest.approx(3.0)
    assert e2e.best_hybrid(rows) == "hybrid-t1.05-s2"


def test_the_grid_has_every_configuration_the_comparison_needs():
    names = [e.name for e in e2e.grid(e2e.scale(quick=False, epochs_scale=1))]
    assert names[:8] == [f"hybrid-t{t}-s{n}" for t in (1.05, 1.1) for n in (1, 2, 3, 4)]
    assert names[8:] == ["ps-baseline", "cyclic", "dual", "allreduce"]
