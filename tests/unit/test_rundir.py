"""Run-directory files: atomic writes, epochs.csv round trip, commit log truncation on resume, checkpoints."""

import json

import pytest
import torch

from hdbl_mpi.errors import HdblError
from hdbl_mpi.run import rundir


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "summary.json"
    rundir.write_json(target, {"a": 1})
    rundir.write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_epochs_csv_round_trip(tmp_path):
    rows = [{"epoch": 2, "lr": 0.1, "train_loss": 0.5, "train_acc": 0.8, "test_loss": None, "test_acc": None,
             "wall_s": 3.0, "train_time_s": 2.5},
            {"epoch": 1, "lr": 0.1, "train_loss": 0.9, "train_acc": 0.6, "test_loss": 0.7, "test_acc": 0.75,
             "wall_s": 1.5, "train_time_s": 1.2}]
    rundir.write_epochs(tmp_path / "epochs.csv", rows)
    back = rundir.read_epochs(tmp_path / "epochs.csv")
    assert [r["epoch"] for r in back] == [1, 2]  # sorted by epoch
    assert back[0]["test_acc"] == 0.75 and back[1]["test_acc"] is None


def test_commit_log_drops_records_after_the_checkpoint(tmp_path):
    path = tmp_path / "commits.jsonl"
    log = rundir.CommitLog(path)
    for i in range(1, 6):
        log.write({"global_commit": i})
    log.close()
    log = rundir.CommitLog(path, keep_up_to=3)
    log.write({"global_commit": 4})
    log.close()
    assert [r["global_commit"] for r in rundir.read_commits(path)] == [1, 2, 3, 4]


def test_checkpoint_round_trip_and_refusals(tmp_path):
    path = tmp_path / "checkpoint.pt"
    rundir.save_checkpoint(path, torch.arange(5, dtype=torch.float32), {"merged": 8, "history": [{"epoch": 1}]})
    vector, state = rundir.load_checkpoint(path)
    assert torch.equal(vector, torch.arange(5, dtype=torch.float32)) and state["merged"] == 8
    with pytest.raises(HdblError, match="no checkpoint"):
        rundir.load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": 99}, tmp_path / "other.pt")
    with pytest.raises(HdblError, match="not an hdbl checkpoint of format 1"):
        rundir.load_checkpoint(tmp_path / "other.pt")
