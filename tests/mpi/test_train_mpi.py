"""The trainer under a real mpirun: outputs, synchronisation modes, stop, resume and error paths.

Each test starts 3-5 ranks on synthetic data with a hard timeout (see conftest.run_train), so a hang fails the
test instead of stalling CI.
"""

from __future__ import annotations

import csv
import json
import subprocess
import time
from collections import Counter

import pytest

from hdbl_mpi.launch.commands import hdbl_program, local_mpirun
from hdbl_mpi.run import lock, rundir
from tests.conftest import FAST, run_train

DUAL = ["dual.small=1", "dual.time_a=0.0012", "dual.time_b=0.004", "dual.extra_time=1.1"]


def _replay_counts(commits: list[dict], workers: list[int]):
    """Yield per-worker merged-commit counts after each global commit, in merge order."""
    counts = {w: 0 for w in workers}
    for record in sorted(commits, key=lambda r: r["global_commit"]):
        counts[record["worker"]] += 1
        yield dict(counts)


def test_asp_dual_batch_run_outputs(tmp_path):
    run = run_train(3, tmp_path / "run", ["dual.workers=2", "train.epochs=3", *DUAL])
    assert run.returncode == 0, run.output
    summary, commits = run.summary(), run.commits()
    plan = summary["plan"]
    # The server stops after exactly E * n commits and counts them per worker and group.
    assert summary["commits_total"] == 6 == len(commits)
    assert sorted(r["global_commit"] for r in commits) == list(range(1, 7))
    assert sum(summary["commits_by_worker"].values()) == 6
    # Each group trains with its own batch size and planned number of steps.
    small = [r for r in commits if r["group"] == "small"]
    large = [r for r in commits if r["group"] == "large"]
    assert small and large
    assert {r["batch"] for r in small} == {plan["batch_small"]} and {r["batch"] for r in large} == {plan["batch_large"]}
    assert plan["batch_small"] < plan["batch_large"]
    assert {r["steps"] for r in small} == {plan["steps_small"]} and {r["steps"] for r in large} == {plan["steps_large"]}
    assert summary["samples_by_group"]["small"] == sum(r["samples"] for r in small)
    assert summary["samples_by_group"]["large"] == sum(r["samples"] for r in large)
    for record in commits:
        assert record["bytes"] > 2 * summary["model"]["bytes"]
        assert record["compute_s"] > 0 and record["exchange_s"] >= 0 and record["wait_s"] >= 0
    # One row per epoch, evaluated; the run learns the (easy) synthetic task.
    rows = list(csv.DictReader(open(run.run_dir / "epochs.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(r["test_acc"] for r in rows)
    assert summary["final_top1"] == pytest.approx(float(rows[-1]["test_acc"]))
    assert summary["best_top1"] == pytest.approx(max(float(r["test_acc"]) for r in rows))
    assert summary["final_top1"] > 0.5  # 4 classes: chance is 0.25
    for key in ("train_time_s", "eval_time_s", "wall_time_s"):
        assert summary[key] > 0
    assert summary["train_time_s"] < summary["wall_time_s"]
    assert summary["versions"]["mpi4py"] and summary["versions"]["mpi_library"]
    assert (run.run_dir / "config.yaml").read_text().count("small: 1") == 1
    assert (run.run_dir / "plan.json").exists() and (run.run_dir / "checkpoint.pt").exists()
    assert "Epoch[3]" in run.output and "Valid-accuracy=" in run.output


def test_bsp_rounds_keep_commit_counts_equal(tmp_path):
    run = run_train(4, tmp_path / "run", ["dual.workers=3", "train.epochs=3", "ps.mode=bsp", *DUAL,
                                          "debug.slow.delay_s={3: 0.5}"])
    assert run.returncode == 0, run.output
    summary = run.summary()
    assert summary["commits_by_worker"] == {"1": 3, "2": 3, "3": 3}
    # After every full round of n merges all workers have committed equally often, slow worker included.
    for i, counts in enumerate(_replay_counts(run.commits(), [1, 2, 3]), start=1):
        if i % 3 == 0:
            assert len(set(counts.values())) == 1, counts


def test_ssp_spread_never_exceeds_bound(tmp_path):
    run = run_train(4, tmp_path / "run", ["dual.workers=3", "train.epochs=4", "ps.mode=ssp", "ps.staleness=1",
                                          "debug.slow.delay_s={3: 0.6}"])
    assert run.returncode == 0, run.output
    spreads = [max(c.values()) - min(c.values()) for c in _replay_counts(run.commits(), [1, 2, 3])]
    assert max(spreads) <= 1
    assert max(spreads) == 1  # the bound was reached: the slow worker really held the others
    assert run.summary()["commits_total"] == 12


def test_asp_slow_worker_does_not_slow_the_others(tmp_path):
    run = run_train(4, tmp_path / "run", ["dual.workers=3", "train.epochs=4", "debug.slow.delay_s={3: 1.5}"])
    assert run.returncode == 0, run.output
    summary, commits = run.summary(), run.commits()
    by_worker = Counter(r["worker"] for r in commits)
    assert summary["commits_total"] == 12 == sum(by_worker.values())
    assert by_worker[1] >= 2 * by_worker[3] and by_worker[2] >= 2 * by_worker[3], by_worker
    # The fast workers were never held by the server waiting for the slow one.
    assert max(r["wait_s"] for r in commits if r["worker"] != 3) < 0.5


def test_conference_rule_and_sqrt_factor_run(tmp_path):
    run = run_train(3, tmp_path / "run", ["dual.workers=2", "train.epochs=2", "ps.merge=conference",
                                          "dual.factor=sqrt", *DUAL])
    assert run.returncode == 0, run.output
    summary = run.summary()
    assert summary["merge"] == "conference" and summary["plan"]["factor_rule"] == "sqrt"
    assert summary["plan"]["factor_small"] == pytest.approx(
        (summary["plan"]["d_small"] / summary["plan"]["d_large"]) ** 0.5)


def test_resume_after_a_crash(tmp_path):
    run_dir = tmp_path / "run"
    common = ["dual.workers=2", "train.epochs=4", "run.checkpoint_every=1"]
    crashed = run_train(3, run_dir, common + ["debug.raise_on_rank=1", "debug.raise_at_commit=4"])
    assert crashed.returncode != 0
    assert "rank 1/3 failed: RuntimeError: injected failure" in crashed.output
    assert not (run_dir / "summary.json").exists() and (run_dir / "checkpoint.pt").exists()
    resumed = run_train(3, run_dir, ["debug.raise_on_rank=-1"], resume=True)
    assert resumed.returncode == 0, resumed.output
    summary = resumed.summary()
    assert summary["commits_total"] == 8 and summary["epochs_completed"] == 4
    assert len(summary["restarts"]) == 1 and summary["restarts"][0]["at_commit"] % 2 == 0
    assert summary["restarts"][0]["at_commit"] >= 2
    rows = list(csv.DictReader(open(run_dir / "epochs.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    ids = sorted(r["global_commit"] for r in resumed.commits())
    assert ids == list(range(1, 9))  # records after the checkpoint were dropped and redone, none duplicated
    again = run_train(3, run_dir, [], resume=True, timeout=90)
    assert again.returncode == 2 and "already finished its 4 epochs" in again.output


@pytest.mark.parametrize("np_,overrides,message", [
    (3, ["dual.workers=4"], "this job has 3 MPI rank(s) but the config asks for 1 server + dual.workers=4"),
    (3, ["dual.workers=2", "dual.small=2", "dual.time_a=0.001", "dual.time_b=0.0", "dual.extra_time=1.05"],
     "Impossible dual-batch plan"),
    (3, ["dual.workers=2", "data.name=cifar10", "data.dir=/nonexistent/cifar"], "cifar10 data not found"),
    (3, ["dual.workers=2", "train.epochs=zero"], "train.epochs must be an integer"),
])
def test_setup_errors_exit_nonzero_on_every_rank(tmp_path, np_, overrides, message):
    run = run_train(np_, tmp_path / "run", overrides, timeout=90)
    assert run.returncode != 0
    assert message in run.output, run.output
    assert "Traceback" not in run.output


def test_exception_on_one_rank_ends_the_job(tmp_path):
    run = run_train(3, tmp_path / "run", ["dual.workers=2", "train.epochs=20", "debug.raise_on_rank=2",
                                          "debug.raise_at_commit=2"], timeout=90)
    assert run.returncode != 0
    assert "rank 2/3 failed: RuntimeError: injected failure (debug.raise_on_rank=2) at local commit 2" in run.output
    assert run.seconds < 60


def test_a_second_run_into_a_live_runs_directory_is_refused_and_the_first_ends_untouched(tmp_path):
    run_dir = tmp_path / "run"
    common = ["dual.workers=2", "train.epochs=2", "debug.slow.delay_s={1: 0.5}"]  # the first lives ~10 s
    args = ["train", "--run-dir", str(run_dir)] + [a for item in FAST + common for a in ("--set", item)]
    argv, env = local_mpirun(3, hdbl_program() + args)
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while lock.holder(run_dir) is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        holder = lock.holder(run_dir)
        assert holder is not None and holder.what == "hdbl train", first.poll()
        second = run_train(3, run_dir, common, timeout=90)
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2, second.output
    assert second.output.count(f"{run_dir} is in use by hdbl train (pid {holder.pid} on ") == 1, second.output
    assert "choose another --run-dir" in second.output and "Traceback" not in second.output
    assert first.returncode == 0, out
    summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    assert summary["commits_total"] == 4 and len((run_dir / rundir.COMMITS).read_text().splitlines()) == 4
    assert lock.holder(run_dir) is None  # gone with the run
