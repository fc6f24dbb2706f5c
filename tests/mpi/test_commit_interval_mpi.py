"""dual.commit_interval in a real run: auto measures the exchange between the server and worker 1 at start-up and
picks k; "H steps" picks k from the plan; the run commits n x k times an epoch, summary.json says what was chosen
and the exchange's measured share, and a resumed run keeps its k."""

from __future__ import annotations

import csv

from hdbl_mpi.run import rundir
from tests.conftest import run_train

STEP_MODEL = ["dual.workers=2", "dual.time_a=1e-4", "dual.time_b=2e-3", "train.epochs=2"]


def test_auto_measures_the_exchange_and_keeps_it_within_its_share(tmp_path):
    run = run_train(3, tmp_path / "auto", [*STEP_MODEL, "dual.commit_interval=auto", "dual.commit_share=0.2"])
    assert run.returncode == 0, run.output[-3000:]
    s = run.summary()
    chosen = s["startup"]["commit_interval"]
    assert chosen["asked"] == "auto" and chosen["exchange_s"] > 0 and chosen["k"] >= 1
    assert chosen["resolutions"] == [16] and (chosen["share"][0] <= 0.2 or chosen["k"] == 1)
    assert s["commits_per_epoch"] == chosen["k"] and s["commits_total"] == 2 * 2 * chosen["k"]
    assert 0 <= s["exchange_share"] < 1
    assert "(dual.commit_interval auto: exchange" in run.output


def test_steps_pick_k_from_the_plan_and_a_resume_keeps_it(tmp_path):
    # 1024 samples over 2 workers at B_L 64: 8 steps a worker's epoch; every 2 steps: k = 4
    first = run_train(3, tmp_path / "run", [*STEP_MODEL, "dual.commit_interval=2 steps", "run.checkpoint_every=1",
                                            "debug.raise_on_rank=1", "debug.raise_at_commit=6"])
    assert first.returncode != 0
    resumed = run_train(3, tmp_path / "run", [], resume=True)
    assert resumed.returncode == 0, resumed.output[-3000:]
    s = resumed.summary()
    assert s["commits_per_epoch"] == 4 and s["commits_total"] == 16
    assert s["startup"]["commit_interval"] is None  # resumed: the k of the run's own config, not chosen again


def test_each_resolution_gets_its_own_k_and_a_resume_counts_epochs_by_them(tmp_path):
    """A cyclic schedule (2 epochs at 12 px, 2 at 16 px) whose 12 px epoch is predicted 2.6x shorter: "0.0168 s"
    gives k = 2 at 12 px (0.026 s / 0.0168 s = 1.6) and k = 4 at 16 px (0.067 s / 0.0168 s = 4.0), so a commit
    lasts about as long at both. Epochs are 4, 4, 8, 8 commits; a run that dies in the last epoch resumes from the
    end of an epoch counted by those lengths (commit 16 is the end of the third, not of the second as one k of 4
    would have it)."""
    cyclic = ["schedule.phases=[4]", "schedule.lrs=[0.05]", "schedule.resolutions=[12, 16]", "schedule.dropouts=[0, 0]"]
    model = ["dual.workers=2", "dual.time_a=[2e-5, 1e-4]", "dual.time_b=2e-3", *cyclic, "eval.every=0"]
    first = run_train(3, tmp_path / "run", [*model, "dual.commit_interval=0.0168 s", "run.checkpoint_every=1",
                                            "debug.raise_on_rank=1", "debug.raise_at_commit=9"])
    assert first.returncode != 0
    assert "2/4 commits at 12/16 px per worker and epoch (dual.commit_interval 0.0168 s)" in first.output
    resumed = run_train(3, tmp_path / "run", [], resume=True)
    assert resumed.returncode == 0, resumed.output[-3000:]
    s = resumed.summary()
    restart = s["restarts"][0]  # the end of the third epoch, or of the second if worker 1 ran ahead of worker 2
    assert (restart["epoch"], restart["at_commit"]) in ((3, 16), (2, 8)), restart
    assert s["commits_per_epoch"] == [2, 4] and s["commits_total"] == 24
    rows = list(csv.DictReader(open(tmp_path / "run" / rundir.EPOCHS)))
    assert [(int(r["epoch"]), int(r["commits"]), int(r["resolution"])) for r in rows] == \
        [(1, 4, 12), (2, 4, 12), (3, 8, 16), (4, 8, 16)]
    records = sorted(resumed.commits(), key=lambda r: r["global_commit"])
    assert [r["global_commit"] for r in records] == list(range(1, 25))
    # each commit is a quarter (16 px) or a half (12 px) of a worker's 512 samples: one epoch is 1024 samples
    assert {(r["resolution"], r["samples"]) for r in records} == {(12, 256), (16, 128)}
