"""ps.speed_weighted under mpirun, for every backend: a rank slowed 2x (debug.slow) gets a smaller share of each
step after the first re-split, and every step still holds n x B_L samples. What the split does to the waits is
a speed figure (docs/BENCHMARKS.md, "Stragglers"): a CI run under load once saw Horovod's wait grow."""

from __future__ import annotations

import pytest

from hdbl_mpi.baselines.allreduce import horovod_importable
from tests.conftest import run_train

BACKENDS = ["mpi4py", "ddp", pytest.param("horovod", marks=pytest.mark.skipif(
    not horovod_importable(), reason="Horovod is not installed (launchers/install_horovod.sh)"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_slow_rank_gets_a_smaller_batch_and_the_step_keeps_its_samples(tmp_path, backend):
    run = run_train(2, tmp_path / backend, ["ps.mode=allreduce", f"ps.backend={backend}", "dual.workers=2",
                                            "train.epochs=3", "ps.speed_weighted=true", "ps.rebalance_steps=4",
                                            "debug.slow.ranks={1: 2}"], timeout=200)
    assert run.returncode == 0, run.output[-4000:]
    s = run.summary()["speed_weighted"]
    assert s["history"][0] == {"at_epoch": 0.0, "batches": [64, 64], "from": "even"} and s["cap"] == 128
    assert s["changes"] >= 1 and all(sum(h["batches"]) == 128 for h in s["history"])
    fast, slow = s["batches"]
    assert slow < 0.8 * fast, s
    records = run.commits()
    steps = {r["epoch"]: r["steps"] for r in records}
    for epoch, count in steps.items():  # every step: 128 samples between the two ranks
        assert sum(r["samples"] for r in records if r["epoch"] == epoch) == 128 * count
    for rank in (0, 1):  # each record's batch is one the split handed out (its epoch's last part)
        assert {r["batch"] for r in records if r["worker"] == rank} <= {h["batches"][rank] for h in s["history"]}
    assert run.summary()["final_top1"] > 0.5  # 4 classes: chance is 0.25
