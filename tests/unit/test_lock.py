"""One live writer per directory (run/lock.py): a run directory or a sweep's --out that another live process
holds is refused, naming it; the lock goes with its holder, however that process ends."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hdbl_mpi.run import lock, rundir
from hdbl_mpi.run_config import ADVICE_NEW, ADVICE_RESUME, read_config
from hdbl_mpi.sweep import add_arguments, sweep
from hdbl_mpi.sweep.grid import RunSpec
from hdbl_mpi.sweep.runs import run_one

HOLD = """
import sys, time
from pathlib import Path
from hdbl_mpi.run import lock
lock.hold(Path(sys.argv[1]), sys.argv[2], "advice")
print("held", flush=True)
time.sleep(120)
"""


class Held:
    """Another process that holds `directory` until it is killed (SIGKILL: nothing of it can clean up)."""

    def __init__(self, directory: Path, what: str = "hdbl train") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory), what], stdout=subprocess.PIPE,
                                     text=True, cwd=Path(__file__).resolve().parents[2])
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "held"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def held(tmp_path):
    holders: list[Held] = []

    def start(directory: Path, what: str = "hdbl train") -> Held:
        holders.append(Held(directory, what))
        return holders[-1]

    yield start
    for h in holders:
        if h.proc.poll() is None:
            h.kill()


def test_a_held_directory_is_refused_naming_its_holder_until_the_holder_is_killed(tmp_path, held):
    run = tmp_path / "run"
    other = held(run)
    found = lock.holder(run)
    assert found is not None and (found.what, found.pid, found.host) == ("hdbl train", other.proc.pid,
                                                                         socket.gethostname())
    with pytest.raises(lock.DirectoryInUse) as err:
        lock.hold(run, "hdbl train", "Choose another.")
    message = str(err.value)
    assert message.startswith(f"{run} is in use by hdbl train (pid {other.proc.pid} on {socket.gethostname()}, since ")
    assert message.endswith("Choose another.")
    other.kill()  # SIGKILL: the kernel drops the lock with the process
    assert lock.holder(run) is None
    lock.hold(run, "hdbl train", "Choose another.")
    try:
        assert lock.holder(run).pid == os.getpid()
        lock.hold(run, "hdbl train", "Choose another.")  # again from the same process: it holds it already
    finally:
        lock.release(run)
    assert lock.holder(run) is None and (run / lock.LOCK).is_file()


def test_a_released_directory_can_be_taken_by_another_process(tmp_path):
    run = tmp_path / "run"
    lock.hold(run, "hdbl train", "x")
    lock.release(run)
    taker = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from hdbl_mpi.run import "
                            "lock; lock.hold(Path(sys.argv[1]), 'hdbl train', 'x')", str(run)],
                           capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert taker.returncode == 0, taker.stderr


def test_hdbl_train_refuses_a_run_directory_a_live_run_holds_and_says_what_to_do(tmp_path, held):
    run = tmp_path / "run"
    other = held(run)
    with pytest.raises(lock.DirectoryInUse) as err:
        read_config(None, ["train.epochs=1", "dual.batch_large=64"], None, str(run))
    assert f"in use by hdbl train (pid {other.proc.pid}" in str(err.value) and str(err.value).endswith(ADVICE_NEW)
    (run / rundir.CONFIG).write_text("train:\n  epochs: 2\ndual:\n  batch_large: 64\n")
    (run / rundir.CHECKPOINT).write_bytes(b"")
    with pytest.raises(lock.DirectoryInUse) as err:  # resuming a run that still runs: wait for it to stop
        read_config(None, [], str(run), None)
    assert str(err.value).endswith(ADVICE_RESUME)
    other.kill()
    chosen = read_config(None, ["train.epochs=1", "dual.batch_large=64"], None, str(run))
    try:
        assert chosen.run_dir == str(run) and lock.holder(run).pid == os.getpid()
    finally:
        lock.release(run)


def test_a_second_sweep_into_the_same_out_is_refused_before_it_runs_anything(tmp_path, held):
    out = tmp_path / "sweep"
    other = held(out, "hdbl sweep")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--grid", "dual.small=0,2", "--set", "dual.batch_large=64", "--out", str(out)])
    with pytest.raises(lock.DirectoryInUse, match=rf"in use by hdbl sweep \(pid {other.proc.pid} .*pass another --out"):
        sweep(args)
    assert not (out / "runs").exists()


def test_a_sweep_leaves_a_run_directory_a_live_run_holds_alone(tmp_path, held):
    out = tmp_path / "sweep"
    run = out / "runs" / "asp.s0"
    other = held(run)
    (run / rundir.COMMITS).write_text("{}\n")  # an unfinished run: the sweep would start it again from nothing
    status = run_one(None, RunSpec("asp", 0, ("ps.mode=asp",)), out, [], [])
    assert status.startswith(f"failed ({run} is in use by hdbl train (pid {other.proc.pid}")
    assert (run / rundir.COMMITS).read_text() == "{}\n"


def test_a_file_system_without_record_locks_runs_unlocked_and_says_so(tmp_path, monkeypatch, capsys):
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(lock.fcntl, "lockf", no_locks)
    lock.hold(tmp_path / "run", "hdbl train", "x")
    err = capsys.readouterr().err
    assert err.startswith(f"hdbl train: warning: {tmp_path / 'run'} cannot be locked on its file system (")
    assert "nothing will refuse a second run into it" in err
    assert lock.holder(tmp_path / "run") is None  # not held: nothing to release
