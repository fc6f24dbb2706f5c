"""`dual.profile: auto` measured once and reused (profiling/reuse.py): a second run of the same setting takes the
store's entries and measures nothing, --reprofile measures again, another setting measures its own; summary.json
says where the profile came from and how long the start-up took."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import run_train

AUTO = ["dual.workers=2", "dual.small=1", "train.epochs=1", "dual.batch_large=null", "dual.profile=auto",
        "dual.profile_steps=3", "dual.profile_max_batch=32", "dual.extra_time=1.1"]


def test_a_second_run_reuses_the_profile_and_reprofile_measures_again(tmp_path):
    first = run_train(3, tmp_path / "first", AUTO, timeout=240)
    assert first.returncode == 0, first.output[-3000:]
    made = first.summary()["startup"]
    assert made["profile"]["measured"] == [16] and made["profile"]["reused"] == []
    assert made["profile"]["seconds"] > 0 and made["seconds"] >= made["profile"]["seconds"]
    store = Path(made["profile"]["store"])
    assert store.parent == Path(os.environ["HDBL_PROFILE_STORE"]) and store.is_file()
    facts = json.loads(store.with_suffix(".setting.json").read_text())
    assert facts["optimizer"] == "sgd" and len(facts["workers"]) == 2

    again = run_train(3, tmp_path / "again", AUTO, timeout=240)
    assert again.returncode == 0, again.output[-3000:]
    reused = again.summary()["startup"]["profile"]
    assert reused == {**made["profile"], "reused": [16], "measured": [], "seconds": 0.0}
    assert again.summary()["plan"] == first.summary()["plan"]  # the same lines, so the same plan
    assert "reused from the profile store for 16 px" in again.output

    forced = run_train(3, tmp_path / "forced", AUTO, timeout=240, flags=["--reprofile"])
    assert forced.returncode == 0, forced.output[-3000:]
    assert forced.summary()["startup"]["profile"]["measured"] == [16]

    other = run_train(3, tmp_path / "other", [*AUTO, "train.optimizer=adamw", "train.lr=0.001"], timeout=240)
    assert other.returncode == 0, other.output[-3000:]
    assert other.summary()["startup"]["profile"]["measured"] == [16]
    assert other.summary()["startup"]["profile"]["store"] != str(store)


def test_a_run_trains_the_same_whether_its_profile_was_measured_or_reused(tmp_path):
    """Allreduce (deterministic here) with dual.profile: auto: the run that measures the profile and the one that
    takes it from the store start from the same weights and train identically (the profile's random numbers are
    put back: before, the measuring run's rank 0 built its model from a different random state)."""
    peer = ["ps.mode=allreduce", "ps.backend=mpi4py", "dual.workers=2", "train.epochs=1", "dual.profile=auto",
            "dual.profile_steps=3", "dual.profile_max_batch=32", "dual.batch_large=32"]
    measured = run_train(2, tmp_path / "measured", peer, timeout=240)
    reused = run_train(2, tmp_path / "reused", peer, timeout=240)
    assert measured.returncode == 0 and reused.returncode == 0, measured.output[-2000:] + reused.output[-2000:]
    assert measured.summary()["startup"]["profile"]["measured"] == [16]
    assert reused.summary()["startup"]["profile"]["reused"] == [16]
    rows = [(tmp_path / d / "epochs.csv").read_text().splitlines()[1].split(",")[:8] for d in ("measured", "reused")]
    assert rows[0] == rows[1]  # epoch, ..., train_loss, train_acc, test_loss, test_acc: to the last digit
