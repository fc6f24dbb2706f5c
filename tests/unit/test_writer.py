"""Checkpoints are written off the training loop (run/writer.py, run/book.py): save() hands the files to a
background thread and returns; close() waits for them and raises a failed write."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from hdbl_mpi.rules.epoch_lengths import EpochLengths
from hdbl_mpi.run import rundir
from hdbl_mpi.run.book import BookPolicy, BookState, EpochBook
from hdbl_mpi.run.progress import Progress
from hdbl_mpi.run.writer import BackgroundWriter


def make_book(tmp_path) -> EpochBook:
    progress = Progress(8, 0, EpochLengths.uniform(4, 2), None, interactive=False)
    return EpochBook(BookState(), BookPolicy(1, 1, 0, 0.0), tmp_path, progress, None)


def test_save_returns_before_a_slow_disk_and_close_waits_for_it(tmp_path, monkeypatch):
    real, written = rundir.save_checkpoint, threading.Event()

    def slow(path, vector, state):
        time.sleep(1.0)  # a slow file system
        real(path, vector, state)
        written.set()

    monkeypatch.setattr(rundir, "save_checkpoint", slow)
    book = make_book(tmp_path)
    counters = {"merged": 7, "history": [1, 2]}
    start = time.perf_counter()
    book.save(torch.arange(5, dtype=torch.float32), counters)
    assert time.perf_counter() - start < 0.5 and not written.is_set()
    counters["merged"], counters["history"][0] = 8, 99  # the loop goes on: the checkpoint keeps commit 7
    book.close()
    assert written.is_set()
    vector, state = rundir.load_checkpoint(tmp_path / rundir.CHECKPOINT)
    assert vector.tolist() == [0, 1, 2, 3, 4] and state["merged"] == 7 and state["history"] == [1, 2]


def test_a_failed_write_is_raised_in_the_training_thread(tmp_path, monkeypatch):
    def full(path, vector, state):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir, "save_checkpoint", full)
    book = make_book(tmp_path)
    book.save(torch.zeros(3), {"merged": 1})
    with pytest.raises(OSError, match="No space left"):
        book.close()
    assert not (tmp_path / rundir.CHECKPOINT).exists()


def test_jobs_run_in_order_and_a_failure_stops_the_later_ones():
    writer, done = BackgroundWriter(), []
    for i in range(5):
        writer.submit(lambda i=i: (time.sleep(0.01 * (5 - i)), done.append(i)))
    writer.wait()
    assert done == [0, 1, 2, 3, 4] and len(writer.seconds) == 5

    go = threading.Event()

    def boom():
        go.wait(5)
        raise RuntimeError("disk gone")

    writer.submit(boom)
    writer.submit(lambda: done.append("after"))  # queued before the failure: not written over it
    go.set()
    with pytest.raises(RuntimeError, match="disk gone"):
        writer.close()
    assert done[-1] == 4


_KILLED_WRITER = """
import os, sys, time
import torch
from hdbl_mpi.run.book import BookPolicy, BookState, EpochBook
from hdbl_mpi.run.progress import Progress
from hdbl_mpi.rules.epoch_lengths import EpochLengths
from pathlib import Path

def book():
    return EpochBook(BookState(), BookPolicy(1, 1, 0, 0.0), Path(sys.argv[1]),
                     Progress(8, 0, EpochLengths.uniform(4, 2), None, interactive=False), None)

first = book()
first.save(torch.full((1000,), 1.0), {"merged": 1})
first.close()  # written
real_fsync = os.fsync

def stuck_fsync(fd):  # the second checkpoint's bytes are in its temporary file; the disk is slow to confirm
    print("writing", flush=True)
    time.sleep(60)
    real_fsync(fd)

os.fsync = stuck_fsync
book().save(torch.full((1000,), 2.0), {"merged": 2})
time.sleep(60)
"""


def test_a_kill_during_the_background_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    import signal
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "writing"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{rundir.CHECKPOINT}.")]
    assert len(leftovers) == 1  # the killed write's temporary file: the kill landed inside the write
    vector, state = rundir.load_checkpoint(tmp_path / rundir.CHECKPOINT)  # checksum verified
    assert state["merged"] == 1 and torch.equal(vector, torch.full((1000,), 1.0))
