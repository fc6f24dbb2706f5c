"""Reports, plots, trace and TensorBoard scalars, on run directories made by short real runs."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from hdbl_mpi.cli import main
from tests.conftest import run_train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    base = run_train(3, root / "baseline", ["dual.workers=2", "dual.small=0", "train.epochs=2"])
    dual = run_train(3, root / "dual", ["dual.workers=2", "dual.small=1", "train.epochs=2", "dual.time_a=0.0012",
                                        "dual.time_b=0.004", "dual.extra_time=1.1"])
    assert base.returncode == 0, base.output
    assert dual.returncode == 0, dual.output
    return base, dual


def _report(capsys, *args):
    code = main(["report", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_epoch_lines_are_parse_friendly(runs):
    base, _ = runs
    lines = [line for line in base.output.splitlines() if line.startswith("Epoch[")]
    assert [line.split("]")[0] for line in lines] == ["Epoch[1", "Epoch[2"]
    assert all("Train-accuracy=" in line and "Valid-accuracy=" in line and " Time=" in line for line in lines)


def test_report_numbers_equal_the_run_files(capsys, runs):
    base, dual = runs
    code, out, _ = _report(capsys, str(base.run_dir), str(dual.run_dir), "--baseline", str(base.run_dir),
                           "--format", "json")
    assert code == 0
    report = json.loads(out)
    assert report["baseline"] == "baseline"
    rows = {r["run"]: r for r in report["comparison"]}
    for run in (base, dual):
        summary = run.summary()
        row = rows[run.run_dir.name]
        assert row["final_top1"] == summary["final_top1"] and row["best_top1"] == summary["best_top1"]
        assert row["train_time_s"] == summary["train_time_s"] and row["eval_time_s"] == summary["eval_time_s"]
        assert row["n_S"] == summary["plan"]["small"] and row["mode"] == "asp"
        epochs = list(csv.DictReader(open(run.run_dir / "epochs.csv")))
        table = report["runs"][run.run_dir.name]
        assert [r["epoch"] for r in table] == [int(e["epoch"]) for e in epochs]
        assert [r["valid_acc"] for r in table] == [float(e["test_acc"]) for e in epochs]
        assert [r["time_s"] for r in table] == [float(e["wall_s"]) for e in epochs]
    b, d = base.summary(), dual.summary()
    assert rows["dual"]["speedup"] == pytest.approx(b["train_time_s"] / d["train_time_s"])
    assert rows["dual"]["final_delta_pp"] == pytest.approx(100 * (d["final_top1"] - b["final_top1"]))
    assert rows["baseline"]["speedup"] == pytest.approx(1.0) and rows["baseline"]["baseline"]
    assert report["grid"]["asp at 16 px"]["n_S"] == [0, 1]  # the runs differ in n_S and t: a grid


def test_baseline_choice_changes_the_deltas(capsys, runs):
    base, dual = runs
    code, out, _ = _report(capsys, str(base.run_dir), str(dual.run_dir), "--baseline", str(dual.run_dir),
                           "--format", "csv")
    assert code == 0
    rows = {r["run"]: r for r in csv.DictReader(out.split("\n\n")[0].splitlines())}
    b, d = base.summary(), dual.summary()
    assert float(rows["baseline"]["speedup"]) == pytest.approx(d["train_time_s"] / b["train_time_s"])
    assert float(rows["dual"]["speedup"]) == pytest.approx(1.0)
    code, out, _ = _report(capsys, str(base.run_dir), str(dual.run_dir))
    assert "## Comparison (baseline: baseline)" in out and "## Grid: asp" in out and "## dual: epochs" in out


def test_plot_trace_and_tensorboard(runs, tmp_path):
    base, dual = runs
    png = tmp_path / "runs.png"
    assert main(["plot", str(base.run_dir), str(dual.run_dir), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    trace = json.loads((dual.run_dir / "trace.json").read_text())
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    commits = dual.commits()
    assert len(slices) == 3 * len(commits)  # compute, exchange, wait for every commit
    assert {e["name"] for e in slices} == {"compute", "exchange", "wait"}
    by_commit = {}
    for e in slices:
        by_commit.setdefault(e["args"]["global_commit"], []).append(e)
    assert sorted(by_commit) == sorted(r["global_commit"] for r in commits)
    record = commits[0]
    compute = next(e for e in by_commit[record["global_commit"]] if e["name"] == "compute")
    assert compute["dur"] == pytest.approx(record["compute_s"] * 1e6, abs=1) and compute["tid"] == record["worker"]
    events = list((dual.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and dual.summary()["tensorboard"].startswith("scalars in")


def test_missing_files_give_a_clear_error(capsys, runs, tmp_path):
    _, dual = runs
    broken = tmp_path / "broken"
    shutil.copytree(dual.run_dir, broken)
    (broken / "summary.json").unlink()
    code, out, err = _report(capsys, str(broken))
    assert code == 2 and out == ""
    assert "has no summary.json: the run has not finished" in err
    code, _, err = _report(capsys, str(tmp_path / "nowhere"))
    assert code == 2 and "is not a directory" in err
    assert main(["plot", str(broken), "-o", str(tmp_path / "x.png")]) == 2
