"""Cyclic progressive training under mpirun: every worker switches stage at the same global epoch."""

from __future__ import annotations

import csv

from hdbl_mpi.rules.schedule import cyclic
from tests.conftest import run_train

SCHEDULE = ["schedule.phases=[2, 2]", "schedule.lrs=[0.05, 0.005]", "schedule.resolutions=[12, 16]",
            "schedule.dropouts=[0.0, 0.2]"]


def test_hybrid_run_switches_stages_consistently(tmp_path):
    run = run_train(4, tmp_path / "run", ["dual.workers=3", "dual.small=1", "dual.extra_time=1.1",
                                          "dual.batch_large=[48, 64]", "dual.time_a=[0.0008, 0.0012]",
                                          "dual.time_b=[0.004, 0.004]", *SCHEDULE], timeout=240)
    assert run.returncode == 0, run.output
    schedule = cyclic([2, 2], [0.05, 0.005], [12, 16], [0.0, 0.2])
    summary, records = run.summary(), run.commits()
    plans = summary["plans"]
    assert plans["resolutions"] == [12, 16] and plans["batch_large"] == [48, 64]
    assert summary["commits_total"] == 4 * 3 == len(records)
    by_worker: dict[int, list[dict]] = {}
    for record in sorted(records, key=lambda r: r["global_commit"]):
        by_worker.setdefault(record["worker"], []).append(record)
    for worker, recs in by_worker.items():
        # The first commit starts in stage 0; each later commit runs in the stage of the global epoch that the
        # server's reply to the previous commit reported: the switch depends on the global count only.
        assert recs[0]["stage"] == 0
        for before, after in zip(recs, recs[1:], strict=False):
            assert after["stage"] == schedule.index_at(before["epoch"]), (worker, before, after)
        for r in recs:
            stage = schedule.stages[r["stage"]]
            i = plans["resolutions"].index(stage.resolution)
            expected_batch = plans["batch_small"][i] if r["group"] == "small" else plans["batch_large"][i]
            assert (r["resolution"], r["batch"], r["dropout"]) == (stage.resolution, expected_batch, stage.dropout)
    assert {r["resolution"] for r in records} == {12, 16}  # both stages were trained
    rows = list(csv.DictReader(open(run.run_dir / "epochs.csv")))
    assert [(int(r["stage"]), int(r["resolution"]), float(r["lr"])) for r in rows] == [
        (0, 12, 0.05), (1, 16, 0.05), (2, 12, 0.005), (3, 16, 0.005)]
    assert all(r["test_acc"] for r in rows)  # evaluated at each stage's resolution
    assert "at 16 px" in run.output and summary["final_top1"] is not None  # final evaluation at the top one
    assert {b["resolution"] for b in summary["balance"]} == {12, 16}


def test_schedule_settings_are_checked(tmp_path):
    run = run_train(3, tmp_path / "run", ["dual.workers=2", "schedule.phases=[2]", "schedule.lrs=[0.1, 0.01]",
                                          "schedule.resolutions=[16]", "schedule.dropouts=[0.0]"], timeout=90)
    assert run.returncode == 2 and "one learning rate per phase" in run.output
    run = run_train(3, tmp_path / "run2", ["dual.workers=2", "dual.batch_large=[32, 64]"], timeout=90)
    assert run.returncode == 2 and "dual.batch_large has 2 values but the schedule has 1 resolutions" in run.output
