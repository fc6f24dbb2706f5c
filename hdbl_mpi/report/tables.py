"""`hdbl report`: per-run epoch tables and a comparison of runs against a baseline, from run directories only.

The question a user asks is "is the hybrid run faster and at least as accurate as the baseline?", so the
comparison reports, for every run, final and best top-1, training and evaluation time, and the speed-up
(baseline train time / run train time) and accuracy change (percentage points) against the baseline run.
When the runs differ in n_S and t (and mode), the same figures are also laid out as a grid, as the papers'
tables are.
"""

from __future__ import annotations

import csv
import io
import json

from hdbl_mpi.errors import HdblError
from hdbl_mpi.report.runs import Run, epoch_rows
from hdbl_mpi.report.seeds import group_runs, render_seed_table, seed_rows


def comparison_rows(runs: list[Run], baseline: Run) -> list[dict]:
    """One row per run with its figures and the change against `baseline`."""
    rows = []
    b = baseline.summary.outcome
    for run in runs:
        s = run.summary.outcome
        rows.append({
            "run": run.name,
            "mode": run.mode,
            "n_S": run.small,
            "t": run.extra_time,
            "k": run.commits_per_epoch,
            "resolutions": "/".join(str(r) for r in run.resolutions),
            "epochs": s.epochs_completed,
            "final_top1": s.final_top1,
            "best_top1": s.best_top1,
            "train_time_s": s.train_time_s,
            "eval_time_s": s.eval_time_s,
            "speedup": b.train_time_s / s.train_time_s,
            "final_delta_pp": 100.0 * (s.final_top1 - b.final_top1),
            "best_delta_pp": 100.0 * (s.best_top1 - b.best_top1),
            "baseline": run.path.resolve() == baseline.path.resolve(),
        })
    return rows


def grid(rows: list[dict]) -> dict[str, dict] | None:
    """n_S x t tables per mode, resolutions and commits per epoch (so that cyclic and one-resolution runs of the
    same n_S and t never share a cell), when the runs vary in n_S or t; None otherwise. Cells hold final top-1
    and train time; a combination run twice keeps the last one given."""
    if len({r["n_S"] for r in rows}) < 2 and len({r["t"] for r in rows}) < 2:
        return None
    out: dict[str, dict] = {}
    for row in rows:
        kind = f"{row['mode']} at {row['resolutions']} px" + (f", k={row['k']}" if row["k"] not in (None, 1) else "")
        table = out.setdefault(kind, {"n_S": [], "t": [], "cells": {}})
        if row["n_S"] not in table["n_S"]:
            table["n_S"].append(row["n_S"])
        if row["t"] not in table["t"]:
            table["t"].append(row["t"])
        table["cells"][f"{row['n_S']}|{row['t']}"] = {"final_top1": row["final_top1"],
                                                      "train_time_s": row["train_time_s"], "run": row["run"]}
    for table in out.values():
        table["n_S"].sort()
        table["t"].sort()
    return out


def _markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def render(runs: list[Run], baseline: Run, fmt: str) -> str:
    """The report in markdown, csv or json."""
    rows = comparison_rows(runs, baseline)
    table = grid(rows)
    groups = group_runs(runs)
    seeds = None
    if any(len(g.runs) > 1 for g in groups):  # some configuration ran with several seeds
        seeds = seed_rows(groups, next(g for g in groups if baseline in g.runs))
    if fmt == "json":
        return json.dumps({"baseline": baseline.name, "runs": {r.name: epoch_rows(r) for r in runs},
                           "comparison": rows, "grid": table, "over_seeds": seeds}, indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        buffer.write("\n")
        epoch_writer = csv.writer(buffer, lineterminator="\n")
        epoch_writer.writerow(["run", "epoch", "train_acc", "valid_acc", "time_s"])
        for run in runs:
            for r in epoch_rows(run):
                epoch_writer.writerow([run.name, r["epoch"], r["train_acc"], "" if r["valid_acc"] is None
                                       else r["valid_acc"], r["time_s"]])
        return buffer.getvalue()
    if fmt != "markdown":
        raise HdblError(f"unknown report format {fmt!r}; use markdown, csv or json.")
    parts = []
    if seeds:
        parts += ["## Mean over seeds (± sample standard deviation)", "", render_seed_table(seeds), ""]
    parts += [f"## Comparison (baseline: {baseline.name})", ""]
    parts.append(_markdown_table(
        ["run", "mode", "n_S", "t", "k", "resolutions", "final top-1", "best top-1", "train s", "eval s", "speed-up",
         "Δ final (pp)", "Δ best (pp)"],
        [[r["run"] + (" (baseline)" if r["baseline"] else ""), r["mode"], str(r["n_S"]), f"{r['t']:g}",
          "—" if r["k"] is None else str(r["k"]), r["resolutions"], _pct(r["final_top1"]), _pct(r["best_top1"]),
          f"{r['train_time_s']:.1f}",
          f"{r['eval_time_s']:.1f}", f"{r['speedup']:.3f}x", f"{r['final_delta_pp']:+.2f}",
          f"{r['best_delta_pp']:+.2f}"] for r in rows]))
    if table:
        for kind, t in table.items():
            parts += ["", f"## Grid: {kind} (final top-1 / train seconds; rows n_S, columns t)", ""]
            body = []
            for n_s in t["n_S"]:
                cells = [t["cells"].get(f"{n_s}|{tt}") for tt in t["t"]]
                body.append([str(n_s)] + ["" if c is None else f"{_pct(c['final_top1'])} / {c['train_time_s']:.0f} s"
                                          for c in cells])
            parts.append(_markdown_table(["n_S \\ t"] + [f"{tt:g}" for tt in t["t"]], body))
    for run in runs:
        parts += ["", f"## {run.name}: epochs", ""]
        parts.append(_markdown_table(
            ["epoch", "train accuracy", "valid accuracy", "time s"],
            [[str(r["epoch"]), f"{r['train_acc']:.4f}", "" if r["valid_acc"] is None else f"{r['valid_acc']:.4f}",
              f"{r['time_s']:.2f}"] for r in epoch_rows(run)]))
    return "\n".join(parts) + "\n"
