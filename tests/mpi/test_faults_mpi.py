"""Failures injected on purpose (the `debug:` section): crashes of a worker or the server by exception, exit
code and signal, a diverging worker (NaN pushes), a stalled worker, and bad configs under mpirun. Each must
end the job promptly with a message that names the rank, or be survived where that is the promise."""

from __future__ import annotations

import time

import pytest

from hdbl_mpi.run import rundir
from tests.conftest import run_train

TWO = ["dual.workers=2", "train.epochs=3", "run.checkpoint_every=1"]


def test_a_nan_push_is_rejected_and_the_run_goes_on(tmp_path):
    run = run_train(3, tmp_path / "nan", [*TWO, "debug.nan_rank=1", "debug.nan_at_commit=2"])
    assert run.returncode == 0, run.output
    s = run.summary()
    assert s["nonfinite_rejected"] == {"1": 1} and s["commits_total"] == 6
    assert "rejected a non-finite push from rank 1 (commit 2" in run.output
    rejected = [r for r in run.commits() if r["rejected"]]
    assert [(r["worker"], r["local_commit"]) for r in rejected] == [(1, 2)]
    assert s["final_top1"] is not None and s["final_top1"] == s["final_top1"]  # finite: NaN never merged


def test_repeated_nan_pushes_stop_the_run_with_advice(tmp_path):
    start = time.monotonic()
    run = run_train(3, tmp_path / "diverged", [*TWO, "train.epochs=20", "debug.nan_rank=2", "debug.nan_commits=99",
                                               "ps.max_nonfinite=3"], timeout=90)
    assert run.returncode != 0
    assert "3 pushes in a row from rank 2 had a non-finite loss or weights" in run.output
    assert "Lower train.lr (now 0.05)" in run.output and "Traceback" not in run.output
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("rank, crash, commit, resume", [
    (2, "exit", 3, False),  # a worker exits with code 3 without MPI_Finalize (a SIGKILLed worker: test_ulfm_*)
    (0, "raise", 3, False),  # the server raises after its third merge
    (0, "kill", 3, True),  # the server is SIGKILLed
])
def test_a_crash_ends_the_job_promptly_naming_the_rank_and_resume_finishes(tmp_path, rank, crash, commit, resume):
    run_dir = tmp_path / "run"
    start = time.monotonic()
    crashed = run_train(3, run_dir, [*TWO, f"debug.raise_on_rank={rank}", f"debug.raise_at_commit={commit}",
                                     f"debug.crash={crash}"], timeout=90)
    elapsed = time.monotonic() - start
    assert crashed.returncode != 0 and elapsed < 30, (elapsed, crashed.output)
    assert f"injected failure (debug.raise_on_rank={rank})" in crashed.output  # the rank says it, then dies
    if crash != "raise":  # and the launcher names the rank that died
        assert f"rank {rank}" in crashed.output.replace("Rank", "rank") or f",{rank}]" in crashed.output
    assert not (run_dir / "summary.json").exists() and (run_dir / "checkpoint.pt").exists()
    if not resume:  # resuming is the same path whichever way the job died: the server kill shows it
        return
    resumed = run_train(3, run_dir, ["debug.raise_on_rank=-1"], resume=True)
    assert resumed.returncode == 0, resumed.output
    summary = resumed.summary()
    assert summary["epochs_completed"] == 3 and summary["commits_total"] == 6
    assert len(summary["restarts"]) == 1


@pytest.mark.parametrize("mode", ["bsp", "ssp"])
def test_a_stalled_worker_fails_bsp_and_ssp_after_the_timeout(tmp_path, mode):
    start = time.monotonic()
    run = run_train(3, tmp_path / mode, [*TWO, f"ps.mode={mode}", "ps.staleness=1", "ps.timeout_s=5",
                                         "debug.slow.delay_s={2: 600}"], timeout=90)
    assert run.returncode != 0
    assert "no message from any worker for 5 s" in run.output and "still training: ranks [2]" in run.output
    assert time.monotonic() - start < 30


def test_bad_configs_end_every_rank_within_seconds(tmp_path):
    """The config is read and checked before torch loads; every rank exits with 2, one message, no traceback."""
    for override, message in (("train.lr=-1", "train.lr is -1.0; it must be > 0."),
                              ("ps.mode=fast", "ps.mode is 'fast'"),
                              ("dual.batch_large=[]", "dual.batch_large is an empty list")):
        start = time.monotonic()
        run = run_train(5, tmp_path / "bad", [override], timeout=60)
        assert run.returncode == 2 and message in run.output, run.output
        assert run.output.count(message) == 1 and "Traceback" not in run.output
        assert time.monotonic() - start < 10


def test_a_resumed_run_ends_as_accurate_as_an_uninterrupted_one(tmp_path):
    common = ["dual.workers=2", "train.epochs=5", "run.checkpoint_every=1"]
    whole = run_train(3, tmp_path / "whole", common)
    crashed = run_train(3, tmp_path / "cut", [*common, "debug.raise_on_rank=1", "debug.raise_at_commit=3",
                                              "debug.crash=kill"], timeout=90)
    resumed = run_train(3, tmp_path / "cut", ["debug.raise_on_rank=-1"], resume=True)
    assert whole.returncode == 0 and crashed.returncode != 0 and resumed.returncode == 0, resumed.output
    a, b = whole.summary()["final_top1"], resumed.summary()["final_top1"]
    print(f"uninterrupted {a:.4f}, crashed at local commit 3 and resumed {b:.4f}")
    assert b > 0.7 and abs(a - b) <= 0.1  # ASP on 2 cores is not deterministic: runs differ by a few points


def test_asp_goes_on_without_a_stalled_worker(tmp_path):
    """Rank 2 stalls before its first push. Rank 1 is never held for it; it is told to stop once its own commits
    and the one rank 2 has under way complete the run. After ps.timeout_s / 2 the server gives up on rank 2,
    closes the last epoch one commit short, writes the summary, and ends the job with code 3 because rank 2
    never returns."""
    start = time.monotonic()
    run = run_train(3, tmp_path / "asp", [*TWO, "ps.timeout_s=10", "debug.slow.delay_s={2: 600}"],
                    timeout=90)
    assert run.returncode == 3, run.output
    assert "rank 2 has not committed for 5 s (half of ps.timeout_s): going on without it" in run.output
    s = run.summary()
    assert s["stalled_workers"] == [2] and s["commits_by_worker"] == {"1": 5, "2": 0}
    assert (s["commits_total"], s["missing_commits"], s["epochs_completed"]) == (5, 1, 2)
    assert [r.epoch for r in rundir.read_epochs(run.run_dir / rundir.EPOCHS)] == [1, 2, 3]
    assert s["final_top1"] is not None and time.monotonic() - start < 60


@pytest.mark.parametrize("crash", ["kill", "exit"])
def test_ulfm_asp_survives_a_lost_worker(tmp_path, crash):
    """With ps.fault_tolerance=ulfm (mpirun --with-ft ulfm + heartbeat), the server notices a dead worker, drops
    it and finishes the run with the survivors; the summary says who was lost. mpirun's exit code does not
    tell (0 after a SIGKILL, the worker's code after an exit), so the summary must, and `hdbl launch` ends with
    the code rank 0 reported."""
    # A SIGKILL is noticed at once; an exit(3) after up to ps.ft_detector_timeout_s.
    run = run_train(4, tmp_path / crash, ["dual.workers=3", "train.epochs=4", "ps.fault_tolerance=ulfm",
                                          "ps.ft_detector_timeout_s=10", "debug.raise_on_rank=2",
                                          "debug.raise_at_commit=2", f"debug.crash={crash}"],
                    timeout=180, launch=True)
    assert (tmp_path / crash / "summary.json").is_file(), run.output
    assert run.returncode == 0, run.output[-3000:]  # rank 0 finished the run; mpirun said 0 or the worker's 3
    s = run.summary()
    assert [w["rank"] for w in s["lost_workers"]] == [2], run.output
    assert "rank 2 failed" in run.output and "going on with 2 worker(s)" in run.output
    assert s["commits_total"] == 12 and s["commits_by_worker"]["2"] == 1  # survivors took over its commits
    assert s["final_top1"] is not None and s["epochs_completed"] == 4


def test_a_ulfm_job_whose_server_dies_fails_although_mpirun_says_0(tmp_path):
    """Under ULFM mpirun ends with 0 when ranks die of a signal: the server SIGKILLed at its third merge must
    still make `hdbl launch` fail (a worker that loses its server ends the job, and had it not, the launcher's
    check of rank 0's report would: tests/unit/test_launch.py). An idle spare waiting for the server leaves too:
    the job does not hang."""
    run = run_train(4, tmp_path / "server", ["dual.workers=2", "train.epochs=3", "ps.fault_tolerance=ulfm",
                                             "ps.spares=1", "debug.raise_on_rank=0", "debug.raise_at_commit=3",
                                             "debug.crash=kill"],
                    timeout=180, launch=True)
    assert "injected failure (debug.raise_on_rank=0) at merged commit 3" in run.output, run.output[-3000:]
    assert run.returncode != 0 and not (tmp_path / "server" / "summary.json").exists(), run.output[-3000:]
    assert "rank 0 leaves with exit code" not in run.output


def test_a_ulfm_run_that_loses_every_worker_writes_a_checkpoint_and_an_incomplete_summary(tmp_path):
    """The only worker SIGKILLed under ULFM: the server checkpoints, evaluates the weights merged so far, writes
    summary.json marked incomplete (so `hdbl report` refuses it and --resume auto continues it) and the job ends
    with code 1; resuming finishes the run."""
    import subprocess
    import sys

    run_dir = tmp_path / "alone"
    run = run_train(2, run_dir, ["dual.workers=1", "train.epochs=3", "ps.fault_tolerance=ulfm",
                                 "debug.raise_on_rank=1", "debug.raise_at_commit=2", "debug.crash=kill"],
                    timeout=180, launch=True)
    assert run.returncode == 1, run.output[-3000:]
    assert "every worker was lost at commit 1 of 3" in run.output, run.output[-3000:]
    s = run.summary()
    assert s[rundir.INCOMPLETE].startswith("every worker was lost at commit 1 of 3") and not rundir.finished(run_dir)
    assert [w["rank"] for w in s["lost_workers"]] == [1] and s["commits_total"] == 1
    assert 0.0 <= s["final_top1"] <= 1.0
    assert rundir.load_checkpoint(run_dir / rundir.CHECKPOINT)[1]["merged"] == 1
    report = subprocess.run([sys.executable, "-m", "hdbl_mpi.cli", "report", str(run_dir)], capture_output=True,
                            text=True, timeout=60)
    assert report.returncode == 2 and "did not finish: every worker was lost" in report.stderr
    resumed = run_train(2, run_dir, ["debug.raise_on_rank=-1"], resume=True, timeout=180, launch=True)
    assert resumed.returncode == 0, resumed.output[-3000:]
    done = resumed.summary()
    assert rundir.INCOMPLETE not in done and done["commits_total"] == 3 and rundir.finished(run_dir)


def test_ulfm_replans_the_data_shares_for_the_survivors(tmp_path):
    """Losing the only small-batch worker of a dual-batch run: the two large-batch survivors get a plan for
    D * 2/3 samples over 2 workers (d_L = 342, 5 steps of 64), so their 3 commits per epoch cover the data set
    once; before the loss a large commit was d_L = round(1.1 * 1024 / 3) = 375 (6 steps)."""
    run = run_train(4, tmp_path / "replan", ["dual.workers=3", "dual.small=1", "dual.time_a=0.0012",
                                             "dual.time_b=0.004", "dual.extra_time=1.1", "train.epochs=4",
                                             "ps.fault_tolerance=ulfm", "ps.ft_detector_timeout_s=10",
                                             "debug.raise_on_rank=1", "debug.raise_at_commit=2", "debug.crash=kill"],
                    timeout=180, launch=True)
    assert (tmp_path / "replan" / "summary.json").is_file(), run.output
    s = run.summary()
    (change,) = [c for c in s["replans"] if c.get("reason") == "lost rank(s) [1]"]
    assert (change["workers"], change["small"], change["d_large"]) == (2, 0, 342)
    assert "re-planned for 2 survivors (0 small-batch): d_L=342" in run.output
    commits = run.commits()
    for worker in (2, 3):
        mine = sorted((r for r in commits if r["worker"] == worker), key=lambda r: r["local_commit"])
        assert mine[0]["steps"] == 6 and mine[-1]["steps"] == 5, [r["steps"] for r in mine]
    assert s["commits_total"] == 12 and s["final_top1"] is not None


def test_ulfm_demo_sized_job_loses_exactly_the_killed_worker_and_exits_promptly(tmp_path):
    """The demo as a user runs it (hdbl launch, real Fashion-MNIST, 1 server + 4 workers on this machine's cores)
    under ULFM, worker 2 SIGKILLed at its second commit (after the first epoch): exactly rank 2 is lost, the run
    finishes its 2 epochs and the whole job exits 0 within 60 s of the last commit."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from hdbl_mpi.data import find_dataset
    from hdbl_mpi.errors import DataError

    try:
        find_dataset("fashion-mnist")
    except DataError:
        pytest.skip("Fashion-MNIST is not installed (./bootstrap.sh installs Debian's dataset-fashion-mnist)")
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "hdbl_mpi.cli", "launch", "train", "configs/demo.yaml", "--run-dir", str(run_dir)]
    for item in ("train.device=cpu", "ps.fault_tolerance=ulfm", "train.epochs=2", "debug.raise_on_rank=2",
                 "debug.raise_at_commit=2", "debug.crash=kill"):
        argv += ["--set", item]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2])
    ended = time.time()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and (run_dir / rundir.SUMMARY).is_file(), (proc.returncode, out[-6000:])
    summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    assert [w["rank"] for w in summary["lost_workers"]] == [2], out[-4000:]
    assert "reported dead by someone else" not in out and summary["epochs_completed"] == 2
    last_commit = max(r.time for r in rundir.read_commits(run_dir / rundir.COMMITS))
    assert ended - last_commit < 60, (ended - last_commit, out[-2000:])
