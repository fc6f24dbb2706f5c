"""debug.slow under mpirun: a rank slowed 2x takes twice its own step time in the parameter-server, allreduce
and LocalSGD modes alike (read from its commit records), the others are not slowed, and summary.json says what
was emulated."""

from __future__ import annotations

import pytest

from tests.conftest import run_train

MODES = {  # ranks, the slowed rank, the mode's settings
    "asp": (3, 2, ["dual.workers=2", "ps.mode=asp", "dual.commits_per_epoch=2"]),
    "allreduce": (2, 1, ["dual.workers=2", "ps.mode=allreduce", "ps.backend=mpi4py"]),
    "localsgd": (2, 1, ["dual.workers=2", "ps.mode=localsgd", "local.h=4"]),
}


@pytest.mark.parametrize("mode", MODES)
def test_a_rank_slowed_twice_takes_twice_its_own_step_time(tmp_path, mode):
    ranks, slow, settings = MODES[mode]
    run = run_train(ranks, tmp_path / mode, [*settings, "train.epochs=2", f"debug.slow.ranks={{{slow}: 2}}"],
                    timeout=180)
    assert run.returncode == 0, run.output[-3000:]
    records = run.commits()
    mine = [r for r in records if r["worker"] == slow]
    assert mine and all(r["slowed_s"] > 0 for r in mine)
    ratios = [r["compute_s"] / (r["compute_s"] - r["slowed_s"]) for r in mine]
    assert all(1.7 <= x <= 2.3 for x in ratios), ratios  # 2x, within 15 %
    assert all(r["slowed_s"] == 0 for r in records if r["worker"] != slow)
    s = run.summary()["slow"]
    assert s["ranks"] == {str(slow): 2} and "emulation" in s
    assert s["slept_s"][str(slow)] == pytest.approx(sum(r["slowed_s"] for r in mine), abs=0.01)
