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
