"""`hdbl launch --max-restarts N` without MPI: which ends are restarted, how often, with which command and
environment; what the run directory and the resumed run's restart record get; a transient injected failure."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import pytest

from hdbl_mpi.launch import restarts
from hdbl_mpi.launch.commands import LaunchError
from hdbl_mpi.launch.job import prepare, restart_target
from hdbl_mpi.launch.restarts import resume_command, run_with_restarts
from hdbl_mpi.run.faults import maybe_crash
from hdbl_mpi.run.restarts import RESTART_ENV, Restart, restart_record


class FakeJob:
    """Ends with the given exit codes in turn; keeps each start's command and extra environment."""

    def __init__(self, codes: list[int]) -> None:
        self.codes, self.starts = list(codes), []

    def __call__(self, command: list[str], env: dict[str, str]) -> int:
        self.starts.append((command, env))
        return self.codes.pop(0)


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch):
    monkeypatch.setattr(restarts.time, "sleep", lambda s: None)


def _run(job: FakeJob, run_dir, n: int = 2, stopped=lambda: False) -> int:
    return run_with_restarts(job, ["train", "c.yaml", "--run-dir", str(run_dir)], str(run_dir), n, 5.0, stopped)


def test_a_failure_is_restarted_with_resume_auto_and_the_restart_in_its_environment(tmp_path, capsys):
    job = FakeJob([1, 0])
    assert _run(job, tmp_path / "run") == 0
    (first, env0), (second, env1) = job.starts
    assert env0 == {} and first == ["train", "c.yaml", "--run-dir", str(tmp_path / "run")]
    assert second == first + ["--resume", "auto"]
    told = Restart.from_env(env1[RESTART_ENV])
    assert (told.restart, told.of, told.exit) == (1, 2, 1) and abs(told.failed_at - time.time()) < 60
    logged = [json.loads(line) for line in (tmp_path / "run" / "launch.jsonl").read_text().splitlines()]
    assert [(r["restart"], r["of"], r["exit"], r["backoff_s"]) for r in logged] == [(1, 2, 1, 5.0)]
    assert "the job failed with exit code 1: restart 1 of 2 in 5 s" in capsys.readouterr().err


@pytest.mark.parametrize("code, said", [(0, ""), (2, "exit code 2, not restarted: refused (a config"),
                                        (75, "exit code 75, not restarted: stopped by a signal with a checkpoint"),
                                        (76, "exit code 76, not restarted: stopped at once")])
def test_success_a_refusal_and_a_signal_stop_are_not_restarted(tmp_path, capsys, code, said):
    job = FakeJob([code])
    assert _run(job, tmp_path / "run") == code and len(job.starts) == 1
    assert not (tmp_path / "run" / "launch.jsonl").exists()
    assert said in capsys.readouterr().err


def test_the_budget_is_respected_and_the_give_up_said(tmp_path, capsys):
    job = FakeJob([1, 3, 137, 0])
    assert _run(job, tmp_path / "run", n=2) == 137 and len(job.starts) == 3
    backoffs = [json.loads(line)["backoff_s"] for line in (tmp_path / "run" / "launch.jsonl").read_text().splitlines()]
    assert backoffs == [5.0, 10.0]  # k x the back-off
    assert "failed with exit code 137 and its 2 restart(s) are spent" in capsys.readouterr().err


def test_nothing_is_restarted_after_hdbl_launch_was_told_to_stop(tmp_path, capsys):
    job = FakeJob([143, 0])
    assert _run(job, tmp_path / "run", stopped=lambda: True) == 143 and len(job.starts) == 1
    assert "exit code 143, not restarted: hdbl launch was told to stop" in capsys.readouterr().err


def test_the_resume_command_continues_the_same_directory():
    assert resume_command(["train", "c.yaml"], "runs/x") == ["train", "c.yaml", "--resume", "auto", "--run-dir",
                                                             "runs/x"]
    assert resume_command(["train", "--resume", "runs/y"], "runs/y") == ["train", "--resume", "runs/y"]
    same = ["train", "c.yaml", "--run-dir", "r", "--resume", "auto"]
    assert resume_command(same, "r") == same


def test_the_restart_target_is_the_run_directory_chosen_up_front(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command, chosen = restart_target(["train", "--set", "dual.batch_large=32"])
    assert chosen.startswith("runs/") and command[-2:] == ["--run-dir", chosen]
    assert restart_target(["train", "--run-dir", "mine"])[1] == "mine"
    assert restart_target(["train", "--set", "dual.batch_large=32", "--set", "run.dir=from-config"]) == (
        ["train", "--set", "dual.batch_large=32", "--set", "run.dir=from-config", "--run-dir", "from-config"],
        "from-config")


def test_max_restarts_is_refused_for_anything_but_training():
    args = SimpleNamespace(command=["doctor"], max_restarts=2, hosts=None, hostfile=None, np=None)
    with pytest.raises(LaunchError, match="restarts are for training jobs"):
        prepare(args, environ={})


def test_a_restarted_run_records_the_restart_and_the_time_it_lost(tmp_path):
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"x")
    os.utime(checkpoint, (time.time() - 30, time.time() - 30))
    failed = Restart(1, 3, 1, time.time() - 4, 0.0)
    record = restart_record(failed.env_value(), checkpoint)
    assert (record["launch_restart"], record["max_restarts"], record["after_exit_code"]) == (1, 3, 1)
    assert 25 <= record["since_checkpoint_s"] <= 27 and 3.9 <= record["down_s"] <= 10
    assert record["lost_s"] == pytest.approx(record["since_checkpoint_s"] + record["down_s"], abs=0.11)
    assert restart_record(None, checkpoint) == {}


def test_a_transient_injected_failure_does_not_come_back_in_a_resumed_start():
    debug = SimpleNamespace(raise_on_rank=2, raise_at_commit=3, crash="raise", crash_on_resume=False)
    maybe_crash(debug, 2, 5, resumed=True)  # nothing
    with pytest.raises(RuntimeError, match="injected failure"):
        maybe_crash(debug, 2, 3, resumed=False)
    with pytest.raises(RuntimeError):
        maybe_crash(SimpleNamespace(**{**vars(debug), "crash_on_resume": True}), 2, 3, resumed=True)
