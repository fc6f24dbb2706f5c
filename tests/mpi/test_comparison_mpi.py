"""The comparison's pieces in real jobs: the commit interval k, the delta merge rule, the PyTorch DDP baseline, and
`hdbl sweep` (grid, resume, report, SLURM array)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import torch

from hdbl_mpi.run import rundir
from tests.conftest import FAST, run_train

CYCLIC = ["schedule.phases=[2]", "schedule.lrs=[0.05]", "schedule.resolutions=[12, 16]", "schedule.dropouts=[0, 0]"]


def _epoch_of(commit: int, per_epoch: int) -> int:
    return (commit - 1) // per_epoch + 1


def _assigned_at(records: list[dict]) -> list[tuple[int, int]]:
    """(commits merged when the commit was assigned, its resolution) of every commit. In ASP a worker gets its
    next assignment with the reply to its previous commit, when that commit's global id had just been merged."""
    out = []
    for worker in {r["worker"] for r in records}:
        previous = 0
        for r in sorted((r for r in records if r["worker"] == worker), key=lambda r: r["local_commit"]):
            out.append((previous, r["resolution"]))
            previous = r["global_commit"]
    return out


def test_k_commits_per_epoch_split_the_same_samples_into_k_times_the_commits(tmp_path):
    """k = 4: each worker commits 4 times per epoch on a quarter of its share, so an epoch has 4x the commits and
    the same samples, and the stage (12 px, then 16 px) switches at the same epoch: every commit assigned
    before the first epoch's end trains at 12 px, every one assigned after it at 16 px."""
    common = ["dual.workers=2", *CYCLIC, "eval.every=0"]
    one = run_train(3, tmp_path / "k1", common)
    four = run_train(3, tmp_path / "k4", [*common, "dual.commits_per_epoch=4"])
    assert one.returncode == 0, one.output
    assert four.returncode == 0, four.output
    s1, s4 = one.summary(), four.summary()
    assert (s1["commits_total"], s4["commits_total"]) == (4, 16) and s4["commits_per_epoch"] == 4
    for run, per_epoch in ((one, 2), (four, 8)):
        by_epoch: dict[int, list[dict]] = {}
        for record in run.commits():
            by_epoch.setdefault(_epoch_of(record["global_commit"], per_epoch), []).append(record)
        assert [sum(r["samples"] for r in by_epoch[e]) for e in (1, 2)] == [1024, 1024]
        assigned = _assigned_at(run.commits())
        assert all(res == (12 if at < per_epoch else 16) for at, res in assigned), sorted(assigned)
        assert {res for _, res in assigned} == {12, 16}
    rows = list(csv.DictReader(open(four.run_dir / rundir.EPOCHS)))
    assert [int(r["commits"]) for r in rows] == [8, 8]
    assert "4 commit(s) per worker and epoch" in four.output


def test_the_delta_rule_trains_on_every_server_shard(tmp_path):
    """ASP with workers pushing their change (the default outer lr: 1/n = 0.5) on two sharded servers learns."""
    run = run_train(4, tmp_path / "delta", ["dual.workers=2", "train.epochs=4", "dual.commits_per_epoch=2",
                                            "ps.merge=delta", "ps.servers=2"])
    assert run.returncode == 0, run.output
    s = run.summary()
    assert s["merge"] == "delta" and s["outer"] == {"lr": 0.5, "momentum": 0.0, "delayed": False}
    assert s["final_top1"] > 0.5  # 4 classes: chance is 0.25
    assert s["shard_servers"]["3"]["pushes"] == s["commits_total"] == 16
    assert "merge delta (outer lr 0.5)" in run.output


def test_ddp_trains_the_same_weights_as_the_mpi4py_backend(tmp_path):
    """Same data, seeds and steps: DistributedDataParallel (gloo, from the MPI world) and the bucketed mpi4py
    allreduce end with the same weights, BatchNorm statistics included (averaged at the epoch's end by both)."""
    common = ["ps.mode=allreduce", "dual.workers=2", "train.epochs=1", "eval.every=0"]
    mpi = run_train(2, tmp_path / "mpi4py", [*common, "ps.backend=mpi4py"])
    ddp = run_train(2, tmp_path / "ddp", [*common, "ps.backend=ddp"])
    assert mpi.returncode == 0, mpi.output
    assert ddp.returncode == 0, ddp.output
    w_mpi, _ = rundir.load_checkpoint(mpi.run_dir / rundir.CHECKPOINT)
    w_ddp, _ = rundir.load_checkpoint(ddp.run_dir / rundir.CHECKPOINT)
    assert torch.allclose(w_mpi, w_ddp, rtol=0, atol=1e-5), float((w_mpi - w_ddp).abs().max())
    s = ddp.summary()
    assert s["backend"] == "ddp" and s["ddp"]["process_group"] == "gloo" and s["syncs"] == 8
    assert s["backend_reason"] == "ps.backend=ddp, process group gloo (the ranks train on the CPU)"
    assert mpi.summary()["gradient_path"] is None  # the CPU reduces its own memory: no GPU path to choose


def test_ddp_under_hdbl_launch(tmp_path):
    run_dir = tmp_path / "run"
    sets = [*FAST, "ps.mode=allreduce", "ps.backend=ddp", "dual.workers=2", "train.epochs=1"]
    argv = [sys.executable, "-m", "hdbl_mpi.cli", "launch", "-H", "localhost:2", "train", "--run-dir", str(run_dir),
            *[a for item in sets for a in ("--set", item)]]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    assert (summary["backend"], summary["world_size"], summary["epochs_completed"]) == ("ddp", 2, 1)


def _sweep(out, *extra: str, timeout: float = 400) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "hdbl_mpi.cli", "sweep", "--out", str(out),
            *[a for item in [*FAST, "train.epochs=1", "dual.workers=2"] for a in ("--set", item)],
            "--grid", "dual.commits_per_epoch=1,2", "--grid", "ps.mode=asp,allreduce", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def test_sweep_runs_the_grid_reports_and_resumes(tmp_path):
    """2 x 2 grid: k = 2 with allreduce is refused (no commits there), the other three run; the report has the
    comparison and the plot; a second call repeats no run."""
    out = tmp_path / "sweep"
    first = _sweep(out)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "skipped commits_per_epoch-2.mode-allreduce: dual.commits_per_epoch is 2 but ps.mode=allreduce" \
        in first.stderr
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["commits_per_epoch-1.mode-allreduce.s0", "commits_per_epoch-1.mode-asp.s0",
                    "commits_per_epoch-2.mode-asp.s0"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert sorted((r["mode"], r["commits_per_epoch"]) for r in rows) == [("allreduce", ""), ("asp", "1"), ("asp", "2")]
    report = (out / "report.md").read_text()
    assert "## Comparison (baseline: commits_per_epoch-1.mode-asp.s0)" in report and (out / "plot.png").is_file()
    again = _sweep(out)
    assert again.returncode == 0 and again.stdout.count("skipped (finished)") == 3


def test_sweep_over_seeds_reports_the_mean_and_spread(tmp_path):
    out = tmp_path / "seeds"
    argv = [sys.executable, "-m", "hdbl_mpi.cli", "sweep", "--out", str(out), "--seeds", "2",
            *[a for item in [*FAST, "train.epochs=1", "dual.workers=2"] for a in ("--set", item)],
            "--grid", "ps.mode=asp"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = (out / "report.md").read_text()
    assert "## Mean over seeds (± sample standard deviation)" in report
    assert "| mode-asp (baseline) | 2 | asp |" in report


def test_sweep_as_a_slurm_array(tmp_path):
    """--slurm --dry-run prints a valid array job over the runs the config takes (bash parses it; submitting it
    needs a SLURM cluster)."""
    proc = _sweep(tmp_path / "slurm", "--slurm", "--dry-run", timeout=60)
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout.split("# then, after the array:")[0]
    assert "#SBATCH --array=1-3" in script and "#SBATCH --ntasks=3" in script
    lines = (tmp_path / "slurm" / "runs.txt").read_text().splitlines()
    assert len(lines) == 3 and lines[0].endswith("--set ps.mode=asp --set train.seed=0")
    (tmp_path / "a.sbatch").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "a.sbatch")]).returncode == 0
