"""`hdbl launch --max-restarts N` with real jobs: a worker that fails once (after the first checkpoint) is
restarted once from that checkpoint and the run finishes with every epoch and commit; a failure that comes back
every start spends the budget and the launch fails with it."""

from __future__ import annotations

import json

from tests.conftest import run_train

# 2 workers, k = 1, 8 epochs: 16 commits, about 8 each (ASP: not exactly). Epoch 1 is merged commits 1-2 and
# checkpointed; a worker starts its 4th commit only after its 3rd push was merged, so by then the epoch-1
# checkpoint is due (its write is in the background: milliseconds for this model).
JOB = ["dual.workers=2", "train.epochs=8", "run.checkpoint_every=1", "debug.raise_on_rank=2",
       "debug.raise_at_commit=4", "debug.crash=exit"]
BUDGET = ["--max-restarts", "2", "--restart-backoff", "0.5"]


def test_a_worker_that_fails_once_is_restarted_from_the_checkpoint_and_the_run_finishes(tmp_path):
    run = run_train(3, tmp_path / "run", [*JOB, "debug.crash_on_resume=false"], launch=True, extra=BUDGET,
                    timeout=240)
    assert run.returncode == 0, run.output[-4000:]
    assert "injected failure (debug.raise_on_rank=2) at local commit 4: exiting with code 3" in run.output
    assert "restart 1 of 2 in 0.5 s, from the last checkpoint" in run.output
    summary = run.summary()
    assert summary["epochs_completed"] == 8 and summary["commits_total"] == 16
    (restart,) = summary["restarts"]
    assert restart["launch_restart"] == 1 and restart["after_exit_code"] != 0 and restart["epoch"] >= 1
    assert restart["since_checkpoint_s"] >= 0 and restart["down_s"] >= 0.5
    logged = [json.loads(line) for line in (tmp_path / "run" / "launch.jsonl").read_text().splitlines()]
    assert [(r["restart"], r["of"]) for r in logged] == [(1, 2)]


def test_a_failure_in_every_start_spends_the_budget(tmp_path):
    run = run_train(3, tmp_path / "run", [*JOB, "debug.raise_at_commit=1"], launch=True,
                    extra=["--max-restarts", "1", "--restart-backoff", "0.5"], timeout=240)
    assert run.returncode != 0
    assert run.output.count("injected failure (debug.raise_on_rank=2)") == 2
    assert "restart(s) are spent: giving up" in run.output
    assert not (tmp_path / "run" / "summary.json").exists()
    assert len((tmp_path / "run" / "launch.jsonl").read_text().splitlines()) == 1


def test_a_killed_server_is_restarted_and_loses_at_most_the_work_since_the_checkpoint(tmp_path):
    """The server SIGKILLed at its 5th merge (epoch 3 of 4): the restart resumes from the last checkpoint on disk
    (epoch 2's, merge 4, unless its background write had not finished: then epoch 1's) and the run ends
    complete."""
    job = ["dual.workers=2", "train.epochs=4", "run.checkpoint_every=1", "debug.raise_on_rank=0",
           "debug.raise_at_commit=5", "debug.crash=kill", "debug.crash_on_resume=false"]
    run = run_train(3, tmp_path / "run", job, launch=True, extra=BUDGET, timeout=240)
    assert run.returncode == 0, run.output[-4000:]
    assert "injected failure (debug.raise_on_rank=0) at merged commit 5: killing itself" in run.output
    summary = run.summary()
    assert summary["epochs_completed"] == 4 and summary["commits_total"] == 8
    (restart,) = summary["restarts"]
    assert restart["launch_restart"] == 1 and (restart["epoch"], restart["at_commit"]) in ((2, 4), (1, 2))


def test_a_killed_allreduce_rank_is_restarted_from_the_last_epochs_checkpoint(tmp_path):
    """The data-parallel modes have no server to survive a lost rank: rank 1 of a 2-rank allreduce SIGKILLs itself
    as it starts epoch 3; Open MPI ends the job, the restart budget resumes it from the last checkpoint on disk
    (epoch 2's, or epoch 1's if the kill came while epoch 2's was still being written), and the run finishes its
    4 epochs."""
    run = run_train(2, tmp_path / "run", ["ps.mode=allreduce", "ps.backend=mpi4py", "dual.workers=2",
                                          "train.epochs=4", "run.checkpoint_every=1", "debug.raise_on_rank=1",
                                          "debug.raise_at_commit=3", "debug.crash=kill",
                                          "debug.crash_on_resume=false"],
                    launch=True, extra=BUDGET, timeout=240)
    assert run.returncode == 0, run.output[-4000:]
    assert "injected failure (debug.raise_on_rank=1) at epoch 3: killing itself (SIGKILL)" in run.output
    summary = run.summary()
    (restart,) = summary["restarts"]
    assert restart["epoch"] in (1, 2) and restart["launch_restart"] == 1 and summary["epochs_completed"] == 4
