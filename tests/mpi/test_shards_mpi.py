"""Sharded servers (ps.servers = k) in real training jobs."""

from __future__ import annotations

import torch

from hdbl_mpi.run.rundir import load_checkpoint
from tests.conftest import run_train

DUAL = ["dual.small=1", "dual.time_a=0.0012", "dual.time_b=0.004", "dual.extra_time=1.1"]


def test_two_servers_give_bit_identical_weights_to_one_in_bsp(tmp_path):
    """The same BSP job (2 workers, so every round's sum is the same whatever the arrival order; a small-batch
    worker, so factors differ from 1) with one server and with two: the global weights are bit-identical after
    every checkpoint, and the second server did its share of the merges and replies."""
    common = ["dual.workers=2", "train.epochs=3", "ps.mode=bsp", "run.checkpoint_every=1", *DUAL]
    one = run_train(3, tmp_path / "one", common)
    assert one.returncode == 0, one.output
    two = run_train(4, tmp_path / "two", [*common, "ps.servers=2"])
    assert two.returncode == 0, two.output
    w1, s1 = load_checkpoint(one.run_dir / "checkpoint.pt")
    w2, s2 = load_checkpoint(two.run_dir / "checkpoint.pt")
    assert s1["merged"] == s2["merged"] == 6
    assert torch.equal(w1, w2), f"max difference {float((w1 - w2).abs().max())}"
    assert [r["test_acc"] for r in s1["history"]] == [r["test_acc"] for r in s2["history"]]
    summary = two.summary()
    assert summary["servers"] == 2 and summary["world_size"] == 4
    (own, shard) = summary["shards"]
    assert own["rank"] == 0 and own["start"] == 0 and shard["rank"] == 3 and shard["end"] == w1.numel()
    assert own["end"] == shard["start"] and own["end"] % 1024 == 0
    counters = summary["shard_servers"]["3"]
    assert counters["pushes"] == 6 and counters["replies"] == 6 and counters["gathers"] == 3
    assert "2 servers" in two.output


def test_asp_with_two_servers_trains_and_rejects_nan_on_every_shard(tmp_path):
    """ASP with sharded servers learns the synthetic task, and a NaN push is rejected on every shard (a NaN
    merged into the second shard would end up in the final weights)."""
    run = run_train(5, tmp_path / "run", ["dual.workers=3", "train.epochs=4", "ps.servers=2", *DUAL,
                                          "debug.nan_rank=2", "debug.nan_at_commit=2", "ps.max_nonfinite=2"])
    assert run.returncode == 0, run.output
    summary = run.summary()
    assert summary["nonfinite_rejected"] == {"2": 1}
    assert summary["shard_servers"]["4"]["pushes"] == summary["commits_total"] == 12
    weights, _ = load_checkpoint(run.run_dir / "checkpoint.pt")
    assert bool(torch.isfinite(weights).all())
    assert summary["final_top1"] > 0.5, summary["final_top1"]  # 4 classes: chance is 0.25
