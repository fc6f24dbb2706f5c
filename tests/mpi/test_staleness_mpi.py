"""Each push's staleness in the records, and the merge options that use it (ps.staleness_decay, the delayed outer
momentum of ps.merge=delta) in a real ASP job, on sharded servers too."""

from __future__ import annotations

import torch

from hdbl_mpi.run.rundir import load_checkpoint
from tests.conftest import run_train


def test_staleness_is_recorded_and_the_delayed_momentum_trains_on_two_servers(tmp_path):
    run = run_train(5, tmp_path / "run", [
        "dual.workers=3", "train.epochs=6", "dual.commits_per_epoch=2", "ps.servers=2", "ps.merge=delta",
        "ps.outer_lr=0.3333", "ps.outer_momentum=0.5", "ps.outer_delayed=true", "ps.staleness_decay=0.5"])
    assert run.returncode == 0, run.output[-4000:]
    records = run.commits()
    assert all(isinstance(r["staleness"], int) and 0 <= r["staleness"] for r in records)
    first = {r["worker"]: r for r in sorted(records, key=lambda r: r["global_commit"])[::-1]}
    assert min(r["staleness"] for r in records) == 0 and max(r["staleness"] for r in records) >= 1
    s = run.summary()
    assert s["staleness"]["decay"] == 0.5 and s["staleness"]["max"] == max(r["staleness"] for r in records)
    assert set(s["staleness"]["by_worker"]) == {str(w) for w in first}
    assert s["outer"] == {"lr": 0.3333, "momentum": 0.5, "delayed": True}
    assert "momentum 0.5 once per round" in run.output and "staleness decay 0.5" in run.output
    weights, _ = load_checkpoint(run.run_dir / "checkpoint.pt")
    # 4 classes, chance 0.25 (momentum 0.9, DiLoCo's, stays at chance on this 12-round task: docs/BENCHMARKS.md)
    assert bool(torch.isfinite(weights).all()) and s["best_top1"] > 0.6, s["best_top1"]
