"""A sweep's results: one record per finished run (its own outcome from summary.json), results.csv/json, the
report over seeds and the plot of the best run of each mode.
"""

from __future__ import annotations

import csv
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hdbl_mpi.errors import HdblError
from hdbl_mpi.launch.commands import hdbl_program
from hdbl_mpi.run import rundir
from hdbl_mpi.run.records import Outcome
from hdbl_mpi.sweep.grid import RunSpec


@dataclass
class SweepRun:
    """One finished run of the sweep: which run it was, the run's own outcome record (summary.json), and what
    its plan was; results.csv holds one row of it."""

    spec: RunSpec
    outcome: Outcome
    small: int
    extra_time: float
    commits_per_epoch: int | str | None  # '8/16': one k per resolution
    batch_small: int | None
    imbalance: float | None
    run_dir: str

    @property
    def config(self) -> str:
        return self.spec.config

    def row(self) -> dict[str, object]:
        o = self.outcome
        return {"name": self.spec.name, "config": self.spec.config, "seed": self.spec.seed, "mode": o.mode,
                "small": self.small, "extra_time": self.extra_time, "commits_per_epoch": self.commits_per_epoch,
                "batch_small": self.batch_small, "final_top1": o.final_top1, "best_top1": o.best_top1,
                "train_time_s": o.train_time_s, "eval_time_s": o.eval_time_s, "wall_time_s": o.wall_time_s,
                "imbalance": self.imbalance, "run_dir": self.run_dir}


def collect(specs: list[RunSpec], out: Path) -> list[SweepRun]:
    from hdbl_mpi.report.runs import load_run

    rows = []
    for spec in specs:
        run_dir = out / "runs" / spec.name
        if not rundir.finished(run_dir):
            continue
        run = load_run(run_dir)
        plan, extra = run.summary.facts.plan, run.summary.extra
        balance = (extra.get("balance") or [{}])[-1].get("imbalance_compute") if run.small else None
        rows.append(SweepRun(spec, run.summary.outcome, run.small, run.extra_time, run.commits_per_epoch,
                             plan.get("batch_small"), balance, str(run_dir)))
    return rows


def write_results(out: Path, rows: list[SweepRun], baseline: str | None, notes: list[str]) -> str:
    """results.csv and results.json, report.md from `hdbl report` (mean ± std over seeds first) and plot.png of
    the best run of each mode; the report's text."""
    if not rows:
        raise HdblError(f"no finished run in {out}/runs to report on.")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].row()))
        writer.writeheader()
        writer.writerows(r.row() for r in rows)
    dirs = [r.run_dir for r in rows]
    base = next((r.run_dir for r in rows if r.config == baseline), dirs[0])
    report = _hdbl(["report", *dirs, "--baseline", base])
    best = _best_of_each_mode(rows)
    _hdbl(["plot", *best, "-o", str(out / "plot.png")])
    (out / "results.json").write_text(json.dumps({"runs": [r.row() for r in rows], "baseline": baseline,
                                                  "best_of_each_mode": best, "notes": notes}, indent=2) + "\n")
    text = "\n".join([f"# hdbl sweep: {out}", "", *[f"- {n}" for n in notes], "", report])
    (out / "report.md").write_text(text)
    return text


def _best_of_each_mode(rows: list[SweepRun]) -> list[str]:
    """The seed-0 run of the configuration with the best mean final top-1, per mode."""
    means: dict[str, list[float]] = {}
    for r in rows:
        means.setdefault(r.config, []).append(r.outcome.final_top1)
    best: dict[str, SweepRun] = {}
    for r in rows:
        score = sum(means[r.config]) / len(means[r.config])
        current = best.get(r.outcome.mode)
        if current is None or score > sum(means[current.config]) / len(means[current.config]) or (
                r.config == current.config and r.spec.seed < current.spec.seed):
            best[r.outcome.mode] = r
    return [r.run_dir for r in best.values()]


def _hdbl(args: list[str]) -> str:
    proc = subprocess.run(hdbl_program() + args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HdblError(f"`hdbl {args[0]}` failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout
