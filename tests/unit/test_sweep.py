"""`hdbl sweep` without running anything: grids, run names, refusals, the SLURM array; and the mean over seeds
that `hdbl report` shows for configurations run with several seeds."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from hdbl_mpi.errors import HdblError
from hdbl_mpi.launch.slurm_array import slurm_array
from hdbl_mpi.report.runs import load_run
from hdbl_mpi.report.seeds import group_runs, seed_rows
from hdbl_mpi.run import rundir
from hdbl_mpi.run.records import EpochRow
from hdbl_mpi.sweep.grid import PRESETS, expand, parse_grid
from hdbl_mpi.sweep.runs import refusal

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs" / "demo.yaml")


def test_grid_values_split_on_commas_outside_brackets():
    assert parse_grid(["dual.small=0,2,4", "schedule.lrs=[0.1,0.01],[0.2,0.02]"]) == [
        ("dual.small", ["0", "2", "4"]), ("schedule.lrs", ["[0.1,0.01]", "[0.2,0.02]"])]
    with pytest.raises(HdblError, match="--grid expects key=v1,v2"):
        parse_grid(["dual.small"])


def test_every_combination_runs_once_per_seed_under_a_readable_name():
    specs = expand([("", parse_grid(["dual.small=0,2", "ps.mode=asp,bsp", "train.epochs=3"]))], seeds=2)
    assert [s.name for s in specs[:2]] == ["small-0.mode-asp.s0", "small-0.mode-asp.s1"]
    assert len(specs) == 8 and len({s.name for s in specs}) == 8
    assert specs[-1].overrides == ("dual.small=2", "ps.mode=bsp", "train.epochs=3", "train.seed=1")
    twice = expand([("a", [("dual.small", ["0"])]), ("b", [("dual.small", ["0"])])], seeds=1)
    assert [s.name for s in twice] == ["a.s0"]  # a combination two grids share runs once


def test_the_paper_presets_cover_the_papers_tables():
    specs = expand(PRESETS["paper-cifar100"].grids(), seeds=1)
    names = [s.config for s in specs]
    assert names[:2] == ["baseline", "cyclic"]
    assert len([n for n in names if n.startswith("hybrid.")]) == 8  # t in {1.05, 1.1} x n_S in 1..4
    assert len([n for n in names if n.startswith("dual.")]) == 8
    assert names[-3:] == ["factor.factor-sqrt", "factor.factor-none", "merge"]
    baseline = specs[0].overrides
    assert "schedule.preset=null" in baseline and "data.resolution=32" in baseline and "dual.small=0" in baseline


def test_a_combination_the_config_refuses_is_skipped_with_the_reason():
    allreduce, asp = expand([("", parse_grid(["dual.small=2", "ps.mode=allreduce,asp"]))], seeds=1)
    assert "has no server to merge two batch sizes" in refusal(DEMO, allreduce, [])
    assert refusal(DEMO, asp, []) is None


def test_the_slurm_array_runs_one_line_of_the_manifest_per_task(tmp_path):
    script = slurm_array(DEMO, 4, tmp_path / "runs.txt", tmp_path / "logs", 5, "/venv/bin/python")
    assert "#SBATCH --array=1-4" in script and "#SBATCH --ntasks=5" in script
    assert "#SBATCH --gpus-per-node=4" in script and "#SBATCH --time=12:00:00" in script  # launchers/slurm's
    assert "#SBATCH --signal=B:USR1@300" in script and "#SBATCH --requeue" in script  # stop, checkpoint, go on
    assert f"{tmp_path}/runs.txt" in script and "HDBL_PYTHON=/venv/bin/python" in script
    template = ROOT / "hdbl_mpi" / "launch" / "slurm" / "hdbl.sbatch"
    assert f"exec bash {template} {DEMO}" in script  # the one batch script passes the signal on and requeues
    assert (ROOT / "launchers" / "slurm" / "hdbl.sbatch").resolve() == template  # the user's copy is that file
    path = tmp_path / "sweep.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def _fake_run(path: Path, seed: int, small: int, final: float, train_s: float) -> None:
    """A finished run directory as `hdbl train` writes it, with only what the reports read."""
    path.mkdir(parents=True)
    config = {"train": {"seed": seed, "epochs": 2}, "dual": {"small": small, "profile": None},
              "run": {"dir": str(path)}, "ps": {"mode": "asp"}}
    (path / rundir.CONFIG).write_text(yaml.safe_dump(config))
    rundir.write_epochs(path / rundir.EPOCHS, [EpochRow(1, 0, 16, 0.1, 1.0, 0.5, 0.9, final, 1.0, train_s)])
    summary = {"final_top1": final, "final_test_loss": 0.5, "final_top1_stage_resolution": final,
               "best_top1": final, "train_time_s": train_s, "eval_time_s": 1.0, "wall_time_s": train_s + 2,
               "epochs_completed": 2, "early_stopped_at": None, "restarts": [], "mode": "asp", "resume_policy": "",
               "tensorboard": "", "commits_total": 8, "commits_per_epoch": 1, "world_size": 3, "resolutions": [16],
               "schedule": [], "dataset": {}, "decoding": {}, "skipped_files": [], "model": {},
               "plan": {"small": small, "extra_time": 1.05}, "plans": {}, "devices": {}, "host": "h",
               "versions": {}, "finished": ""}
    (path / rundir.SUMMARY).write_text(json.dumps(summary))


def test_runs_that_differ_only_in_the_seed_are_one_configuration(tmp_path):
    for seed, final, train_s in ((0, 0.80, 100.0), (1, 0.84, 120.0)):
        _fake_run(tmp_path / f"base{seed}", seed, 0, final, train_s)
    _fake_run(tmp_path / "dual0", 0, 2, 0.85, 80.0)
    runs = [load_run(tmp_path / name) for name in ("base0", "base1", "dual0")]
    groups = group_runs(runs)
    assert [g.label for g in groups] == ["small=0", "small=2"] and [len(g.runs) for g in groups] == [2, 1]
    base, dual = seed_rows(groups, groups[0])
    assert base["final_top1"] == pytest.approx(0.82) and base["final_top1_std"] == pytest.approx(0.0282843, rel=1e-5)
    assert base["train_time_s"] == pytest.approx(110.0) and base["speedup"] == pytest.approx(1.0)
    assert dual["final_top1_std"] is None and dual["speedup"] == pytest.approx(110.0 / 80.0)
    assert dual["final_delta_pp"] == pytest.approx(3.0)


def test_a_key_an_older_run_lacks_counts_as_its_default(tmp_path):
    """A sweep resumed after a version added config keys (ps.spares, debug.chaos): the new seeds' configs name the
    keys at their defaults, the old ones lack them, and they are still one configuration."""
    for name, seed, extra in (("old", 0, {}), ("new", 1, {"spares": 0}), ("k4", 0, {"spares": 0})):
        _fake_run(tmp_path / name, seed, 0, 0.8, 100.0)
        config = yaml.safe_load((tmp_path / name / rundir.CONFIG).read_text())
        config["ps"].update(extra)
        config["dual"]["commits_per_epoch"] = 4 if name == "k4" else 1
        (tmp_path / name / rundir.CONFIG).write_text(yaml.safe_dump(config))
    groups = group_runs([load_run(tmp_path / name) for name in ("old", "new", "k4")])
    assert [len(g.runs) for g in groups] == [2, 1]
    assert [g.label for g in groups] == ["commits_per_epoch=1", "commits_per_epoch=4"]


def test_the_shipped_sweeps_run_only_combinations_their_config_takes():
    from hdbl_mpi.sweep.grid import load_grids

    config = str(ROOT / "configs" / "compare-fashion-mnist.yaml")
    specs = expand(load_grids(str(ROOT / "configs" / "sweeps" / "compare-fashion-mnist.yaml")), seeds=1)
    assert len(specs) == 16 and all(refusal(config, s, []) is None for s in specs)
    delta = next(s for s in specs if s.config == "hybrid-delta.commits_per_epoch-64")
    assert {"ps.merge=delta", "dual.small=2", "schedule.resolutions=[20, 28]"} <= set(delta.overrides)


@pytest.mark.parametrize("grids", sorted(p.name for p in (ROOT / "configs" / "sweeps").glob("*.yaml")))
def test_every_shipped_sweep_file_runs_only_combinations_the_comparison_config_takes(grids: str):
    """Every grid file under configs/sweeps starts from configs/compare-fashion-mnist.yaml (its header says so);
    a combination the config checks refuse would be skipped in the middle of a benchmark, so none may be."""
    from hdbl_mpi.sweep.grid import load_grids

    config = str(ROOT / "configs" / "compare-fashion-mnist.yaml")
    assert "configs/compare-fashion-mnist.yaml" in (ROOT / "configs" / "sweeps" / grids).read_text()
    specs = expand(load_grids(str(ROOT / "configs" / "sweeps" / grids)), seeds=1)
    assert specs and [s.config for s in specs if refusal(config, s, [])] == []
