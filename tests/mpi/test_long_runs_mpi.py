"""Long runs: a run stopped by a signal and resumed ends exactly where the uninterrupted run ends (BSP, allreduce);
an ASP worker resumes with its own saved momentum; a second signal stops at once; --resume auto."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from hdbl_mpi.launch.commands import hdbl_program, local_mpirun
from hdbl_mpi.run import rundir
from hdbl_mpi.run.rankstate import RankState
from hdbl_mpi.run.signals import EXIT_STOPPED, EXIT_STOPPED_AT_ONCE
from tests.conftest import FAST, run_train

BSP = ["ps.mode=bsp", "dual.workers=2", "train.epochs=4", "dual.commits_per_epoch=4", "run.checkpoint_every=1"]
SLOW = ["debug.slow.delay_s={1: 0.25}"]  # time to signal mid-run; changes no arithmetic


def start(np_: int, run_dir: Path, overrides: list[str], *, resume: str | None = None) -> subprocess.Popen:
    args = ["train", "--run-dir", str(run_dir)] + (["--resume", resume] if resume else [])
    for item in FAST + overrides:
        args += ["--set", item]
    argv, env = local_mpirun(np_, hdbl_program() + args)
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the job did not end within {timeout} s:\n{proc.communicate()[0][-3000:]}")
    return proc.returncode, out


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the job ended before {what}:\n{proc.communicate()[0][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.05)


def commits(run_dir: Path) -> int:
    path = run_dir / rundir.COMMITS
    return len(path.read_text().splitlines()) if path.is_file() else 0


def weights(run_dir: Path) -> torch.Tensor:
    return rundir.load_checkpoint(run_dir / rundir.CHECKPOINT)[0]


def rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"OMPI_COMM_WORLD_RANK="):
            return int(item.split(b"=", 1)[1])
    return None


def rank_pid(run_dir: Path, rank: int) -> int:
    """The pid of one rank of the job training into `run_dir` (found through /proc)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"hdbl_mpi.cli" in cmdline and str(run_dir).encode() in cmdline and rank_of(int(entry.name)) == rank:
                return int(entry.name)
    raise AssertionError(f"no rank {rank} of the job in {run_dir}")


def test_bsp_stopped_by_a_signal_and_resumed_auto_ends_bit_identical_to_the_uninterrupted_run(tmp_path):
    whole = run_train(3, tmp_path / "whole", BSP, timeout=180)
    assert whole.returncode == 0, whole.output
    run = tmp_path / "stopped"
    proc = start(3, run, BSP + SLOW, resume="auto")  # auto on an empty directory: a new run
    wait_for(lambda: commits(run) >= 10, proc, "10 commits")
    signalled = time.monotonic()
    proc.send_signal(signal.SIGUSR1)  # mpirun forwards it to every rank
    code, out = finish(proc)
    stopped_in = time.monotonic() - signalled
    assert code == EXIT_STOPPED, out
    assert "stopped on SIGUSR1 at commit" in out and f"--resume {run}" in out, out
    assert not (run / rundir.SUMMARY).exists()  # not finished
    state = rundir.load_checkpoint(run / rundir.CHECKPOINT)[1]
    at = state["merged"]
    assert 10 <= at < 32 and at % 2 == 0  # a whole BSP round, mid-run
    assert sorted(state["rank_states"]["ranks"]) == ["1", "2"] and state["rank_states"]["at"] == at
    assert stopped_in < 30
    code, out = finish(start(3, run, BSP + SLOW, resume="auto"))  # auto with a checkpoint: the resume
    assert code == 0, out
    summary = json.loads((run / rundir.SUMMARY).read_text())
    assert [r["at_commit"] for r in summary["restarts"]] == [at] and summary["restarts"][0]["rank_states"] == 2
    assert summary["commits_total"] == 32
    assert torch.equal(weights(run), weights(whole.run_dir))  # as if never stopped
    code, out = finish(start(3, run, BSP, resume="auto"))  # auto on a finished run: nothing to do
    assert code == 0 and "already finished" in out, out


def test_a_sigterm_to_hdbl_launch_stops_cleanly_and_the_run_resumes(tmp_path):
    """SIGTERM (what a scheduler's preemption or cancel sends) to `hdbl launch`: it reaches Open MPI's mpirun as
    SIGUSR1, so the run checkpoints and exits 75 instead of being killed half a second later; --resume auto
    through `hdbl launch` finishes it."""
    run = tmp_path / "run"
    args = ["launch", "train", "--run-dir", str(run), "--resume", "auto"]
    for item in FAST + BSP + SLOW:
        args += ["--set", item]
    proc = subprocess.Popen(hdbl_program() + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: commits(run) >= 10, proc, "10 commits")
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == EXIT_STOPPED, out[-3000:]
    assert "SIGTERM passed on to mpirun as SIGUSR1" in out and "stopped on SIGUSR1 at commit" in out, out[-3000:]
    at = rundir.load_checkpoint(run / rundir.CHECKPOINT)[1]["merged"]
    assert 10 <= at < 32
    code, out = finish(subprocess.Popen(hdbl_program() + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True))
    assert code == 0, out[-3000:]
    summary = json.loads((run / rundir.SUMMARY).read_text())
    assert summary["commits_total"] == 32 and [r["at_commit"] for r in summary["restarts"]] == [at]


def test_allreduce_stopped_by_a_signal_and_resumed_ends_bit_identical(tmp_path):
    common = ["ps.mode=allreduce", "ps.backend=mpi4py", "dual.workers=2", "train.epochs=4", "run.checkpoint_every=0"]
    whole = run_train(2, tmp_path / "whole", common, timeout=180)
    assert whole.returncode == 0, whole.output
    run = tmp_path / "stopped"
    proc = start(2, run, common)
    wait_for(lambda: commits(run) >= 2, proc, "the first epoch")  # one record per rank and epoch
    proc.send_signal(signal.SIGUSR1)
    code, out = finish(proc)
    assert code == EXIT_STOPPED, out
    epoch = rundir.load_checkpoint(run / rundir.CHECKPOINT)[1]["epoch"]
    assert 1 <= epoch < 4 and f"stopped on SIGUSR1 at the end of epoch {epoch}" in out
    resumed = run_train(2, run, [], resume=True, timeout=180)
    assert resumed.returncode == 0, resumed.output
    assert torch.equal(weights(run), weights(whole.run_dir))


def test_asp_workers_resume_with_their_own_saved_momentum(tmp_path):
    first = run_train(3, tmp_path / "run", ["dual.workers=2", "train.epochs=1", "dual.commits_per_epoch=2"])
    assert first.returncode == 0, first.output
    state = rundir.load_checkpoint(first.run_dir / rundir.CHECKPOINT)[1]
    saved = {}
    for rank, entry in state["rank_states"]["ranks"].items():
        rank_state = RankState(**rundir.load_blob(first.run_dir / entry["file"])[0])
        momentum = [s["momentum_buffer"] for s in rank_state.optimizer["state"].values()]
        assert momentum and all(torch.count_nonzero(m) for m in momentum)  # SGD momentum after training
        assert 1 <= rank_state.at <= 4  # the commit of its last reply (the run's last commit is 4)
        saved[int(rank)] = (rank_state.at, rank_state.optimizer_l1())
    resumed = run_train(3, first.run_dir, ["train.epochs=2"], resume=True)
    assert resumed.returncode == 0, resumed.output
    for rank, (at, l1) in saved.items():  # what each worker's optimizer held before its first resumed step
        assert f"rank {rank}: own state from commit {at}, optimizer state L1 {l1:.6g}" in resumed.output, \
            resumed.output


def test_a_signal_to_one_worker_stops_the_run_and_a_second_one_stops_at_once(tmp_path):
    run = tmp_path / "run"
    # Rank 2 sleeps 3 s per commit, so the commits in flight after the first signal take seconds.
    slow = BSP + ["train.epochs=40", "dual.commits_per_epoch=1", "debug.slow.delay_s={2: 3}"]
    proc = start(3, run, slow)
    wait_for(lambda: (run / rundir.CHECKPOINT).is_file(), proc, "the first checkpoint")
    before = (run / rundir.CHECKPOINT).read_bytes()
    os.kill(rank_pid(run, 1), signal.SIGTERM)  # one worker only: it tells the server in its next push
    wait_for(lambda: "stopping after the" in (run / rundir.LOG).read_text(), proc, "the server's stop line")
    proc.send_signal(signal.SIGUSR1)  # the second signal for rank 1, while the commits in flight finish
    code, out = finish(proc)
    assert code == EXIT_STOPPED_AT_ONCE, out
    assert "second signal (SIGUSR1): stopping at once" in out
    assert (run / rundir.CHECKPOINT).read_bytes() == before  # the last checkpoint, intact, with its rank files
    state = rundir.load_checkpoint(run / rundir.CHECKPOINT)[1]
    assert all((run / entry["file"]).is_file() for entry in state["rank_states"]["ranks"].values())


def test_time_based_checkpoints_come_between_epochs(tmp_path):
    run = run_train(3, tmp_path / "run", ["ps.mode=bsp", "dual.workers=2", "train.epochs=2", "dual.commits_per_epoch=8",
                                          "run.checkpoint_every=0", "run.checkpoint_minutes=0.005",
                                          "debug.slow.delay_s={1: 0.15}"], timeout=180)
    assert run.returncode == 0, run.output
    at = [int(c) for c in re.findall(r"checkpoint at commit (\d+) \(run.checkpoint_minutes=0.005\)", run.output)]
    assert at and any(c % 16 for c in at), run.output  # inside epochs (16 commits each), every ~0.3 s ...
    assert all(c % 2 == 0 for c in at)  # ... but never inside a BSP round (2 commits)
    assert [p.name for p in (run.run_dir / "checkpoint-ranks").iterdir()] == ["32"]  # the final one's, alone
