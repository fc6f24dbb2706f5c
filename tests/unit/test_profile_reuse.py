"""The profile store (profiling/reuse.py) without MPI: which facts make a setting, what is found at which
resolution, and a store that cannot be written is a note, not a failure."""

from __future__ import annotations

import os

import pytest

from hdbl_mpi.config import config_from_dict
from hdbl_mpi.profiling.entry import ProfileEntry
from hdbl_mpi.profiling.reuse import remember, setting, store_dir, store_path, stored

WORKERS = [("vm:cpu", 1, 1), ("vm:cpu", 1, 1)]


def _facts(**train) -> dict:
    config = config_from_dict({"dual": {"profile": "auto"}, "train": train})
    return setting(config, WORKERS, "2.14.1")


def _entry(resolution: int) -> ProfileEntry:
    return ProfileEntry.from_dict({"device": "vm:cpu", "torch": "2.14.1", "model": "resnet18", "precision": "fp32",
                                   "resolution": resolution, "a": 1e-4, "b": 2e-3, "r2": 0.99, "b_max": 64})


def test_the_store_is_where_the_environment_says():
    assert store_dir() == __import__("pathlib").Path(os.environ["HDBL_PROFILE_STORE"])  # conftest: per test


def test_each_fact_the_timings_depend_on_names_another_file():
    base = store_path(_facts())
    assert store_path(_facts()) == base
    for change in ({"optimizer": "adamw"}, {"precision": "bf16"}, {"channels_last": True}, {"compile": True}):
        assert store_path(_facts(**change)) != base, change
    config = config_from_dict({"dual": {"profile": "auto"}})
    assert store_path(setting(config, WORKERS[:1], "2.14.1")) != base  # another layout of workers
    assert store_path(setting(config, WORKERS, "2.15.0")) != base  # another torch


def test_found_are_the_stored_resolutions_only():
    facts = _facts()
    assert stored(facts, [20, 28]) == ({}, None)
    assert remember(facts, [_entry(20)]) is None
    found, note = stored(facts, [20, 28])
    assert set(found) == {20} and found[20].a == pytest.approx(1e-4) and note is None
    assert store_path(facts).with_suffix(".setting.json").is_file()


def test_a_damaged_or_unwritable_store_is_a_note(monkeypatch, tmp_path):
    facts = _facts()
    store_path(facts).parent.mkdir(parents=True, exist_ok=True)
    store_path(facts).write_text("{not json")
    found, note = stored(facts, [20])
    assert found == {} and "unreadable" in note
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("HDBL_PROFILE_STORE", str(blocked / "store"))  # a path below a plain file
    assert "not written" in remember(facts, [_entry(20)])
