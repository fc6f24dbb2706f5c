"""Run-directory files: atomic writes, epochs.csv round trip, commit log truncation on resume, checkpoints."""

import json

import pytest
import torch

from hdbl_mpi.errors import HdblError
from hdbl_mpi.run import rundir
from hdbl_mpi.run.records import CommitRecord, EpochRow


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "summary.json"
    rundir.write_json(target, {"a": 1})
    rundir.write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_epochs_csv_round_trip(tmp_path):
    rows = [EpochRow(epoch=2, stage=0, resolution=28, lr=0.1, train_loss=0.5, train_acc=0.8, test_loss=None,
                     test_acc=None, wall_s=3.0, train_time_s=2.5),
            EpochRow(epoch=1, stage=0, resolution=28, lr=0.1, train_loss=0.9, train_acc=0.6, test_loss=0.7,
                     test_acc=0.75, wall_s=1.5, train_time_s=1.2)]
    rundir.write_epochs(tmp_path / "epochs.csv", rows)
    back = rundir.read_epochs(tmp_path / "epochs.csv")
    assert [r.epoch for r in back] == [1, 2]  # sorted by epoch
    assert back[0].test_acc == 0.75 and back[1].test_acc is None


def _record(commit: int) -> CommitRecord:
    return CommitRecord(worker=1, group="large", host="h", global_commit=commit, local_commit=commit, epoch=0,
                        stage=0, resolution=16, batch=8, steps=1, samples=8, lr=0.1, train_loss=1.0, train_acc=0.5,
                        compute_s=0.1, exchange_s=0.01, wait_s=0.0, commit_s=0.11, time=1.0)


def _logged(path, commits: int):
    """commits.jsonl with the records of commits 1..`commits`."""
    log = rundir.CommitLog(path)
    for i in range(1, commits + 1):
        log.write(_record(i))
    log.close()
    return path


def test_commit_log_drops_records_after_the_checkpoint(tmp_path):
    path = _logged(tmp_path / "commits.jsonl", 5)
    log = rundir.CommitLog(path, keep_up_to=3)
    log.write(_record(4))
    log.close()
    assert [r.global_commit for r in rundir.read_commits(path)] == [1, 2, 3, 4]


def test_a_record_a_crash_cut_short_is_dropped_on_resume(tmp_path):
    path = _logged(tmp_path / "commits.jsonl", 3)
    whole = path.read_text()
    path.write_text(whole + whole.splitlines()[0][:40])  # a kill in the middle of the fourth record
    rundir.CommitLog(path, keep_up_to=2).close()
    assert [r.global_commit for r in rundir.read_commits(path)] == [1, 2]
    rundir.CommitLog(path, keep_up_to=0).close()  # a new run in a directory an earlier one left
    assert path.read_text() == ""


def test_checkpoint_round_trip_and_refusals(tmp_path):
    path = tmp_path / "checkpoint.pt"
    rundir.save_checkpoint(path, torch.arange(5, dtype=torch.float32), {"merged": 8, "history": [{"epoch": 1}]})
    vector, state = rundir.load_checkpoint(path)
    assert torch.equal(vector, torch.arange(5, dtype=torch.float32)) and state["merged"] == 8
    assert path.read_bytes().startswith(b"HDBLCKPT 2 ")
    with pytest.raises(HdblError, match="no checkpoint"):
        rundir.load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": 1, "vector": torch.zeros(2), "state": {}}, tmp_path / "old.pt")
    with pytest.raises(HdblError, match="not an hdbl checkpoint .* older hdbl \\(format 1"):
        rundir.load_checkpoint(tmp_path / "old.pt")


def test_damaged_truncated_and_other_version_checkpoints_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    rundir.save_checkpoint(path, torch.randn(1000), {"merged": 3})
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[-100] ^= 0x01  # one bit in the weights
    (tmp_path / "flipped.pt").write_bytes(bytes(flipped))
    with pytest.raises(HdblError, match="is damaged: its SHA-256 does not match"):
        rundir.load_checkpoint(tmp_path / "flipped.pt")
    (tmp_path / "short.pt").write_bytes(data[:-10])
    with pytest.raises(HdblError, match="truncated or damaged"):
        rundir.load_checkpoint(tmp_path / "short.pt")
    (tmp_path / "v9.pt").write_bytes(data.replace(b"HDBLCKPT 2 ", b"HDBLCKPT 9 ", 1))
    with pytest.raises(HdblError, match="has checkpoint format 9, this hdbl reads format 2"):
        rundir.load_checkpoint(tmp_path / "v9.pt")


WRITER = """
import sys, torch
from pathlib import Path
from hdbl_mpi.run import rundir
from hdbl_mpi.run.records import CommitRecord, EpochRow
print("writing", flush=True)
while True:  # rewrite a large checkpoint until killed, so the kill lands inside a write
    rundir.save_checkpoint(Path(sys.argv[1]), torch.full((40_000_000,), 2.0), {"merged": 99})
"""


def test_a_crash_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "checkpoint.pt"
    rundir.save_checkpoint(path, torch.ones(10), {"merged": 1})
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".checkpoint.pt.") for p in tmp_path.iterdir()):  # a write under way
            assert time.monotonic() < deadline, "the writer never started a write"
            time.sleep(0.005)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.wait(timeout=30)
    vector, state = rundir.load_checkpoint(path)  # the old checkpoint, or a complete new one: never a torn file
    assert (state["merged"], vector.numel()) in ((1, 10), (99, 40_000_000))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".checkpoint.pt.")]
    assert leftovers  # the killed write's temporary file, never renamed over the checkpoint
