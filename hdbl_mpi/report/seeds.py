"""Runs of the same configuration over several seeds: mean and sample standard deviation, and the change against
a baseline configuration. `hdbl report` adds this section when a configuration was run with more than one seed,
and `hdbl sweep` ends with it.

Two runs belong to one configuration when their resolved configs (config.yaml) differ only in train.seed, the
run directory, and dual.profile (where the step-time model came from: a measurement is an input of the plan,
not a setting). A key a run's config lacks (written by an older version, before the key existed) counts as its
default, so a sweep resumed across versions keeps its seeds together. A configuration is named by its runs'
common name without the seed (`hdbl sweep` names them NAME.sN), or else by the keys whose values differ between
the configurations shown.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from hdbl_mpi.report.runs import Run
from hdbl_mpi.schema import Config

IGNORED = ("train.seed", "run.dir", "dual.profile")
FIGURES = ("final_top1", "best_top1", "train_time_s", "eval_time_s")


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "synthetic":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclass
class Group:
    """One configuration and its runs (one per seed)."""

    key: tuple
    settings: dict[str, Any]
    runs: list[Run]
    label: str = ""

    def mean_std(self, figure: str) -> tuple[float, float | None]:
        values = [float(getattr(r.summary.outcome, figure)) for r in self.runs]
        return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by configuration, in the order their first run appears; each group labelled by what sets it
    apart from the others."""
    groups: dict[tuple, Group] = {}
    defaults = flatten(asdict(Config()))
    for run in runs:
        settings = {k: v for k, v in {**defaults, **flatten(run.config)}.items() if k not in IGNORED}
        key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
        groups.setdefault(key, Group(key, settings, [])).runs.append(run)
    found = list(groups.values())
    stems = [{re.sub(r"\.s\d+$", "", r.name) for r in g.runs} for g in found]  # sweep run names without seed
    if all(len(s) == 1 for s in stems) and len({next(iter(s)) for s in stems}) == len(found):
        for g, s in zip(found, stems, strict=True):
            g.label = next(iter(s))
        return found
    varying = sorted({k for g in found for k, v in g.settings.items()
                      if any(other.settings.get(k) != v for other in found)})
    for g in found:
        g.label = " ".join(f"{k.split('.', 1)[-1]}={_short(g.settings.get(k))}" for k in varying) or g.runs[0].name
    return found


def _short(value: Any) -> str:
    text = "-" if value is None else str(value).replace(" ", "")
    return text if len(text) <= 24 else text[:21] + "..."


def seed_rows(groups: list[Group], baseline: Group) -> list[dict[str, Any]]:
    """Mean ± std of each configuration's figures, with the speed-up and top-1 change against `baseline`."""
    base_train, _ = baseline.mean_std("train_time_s")
    base_final, _ = baseline.mean_std("final_top1")
    rows = []
    for g in groups:
        first = g.runs[0]
        row: dict[str, Any] = {"configuration": g.label, "seeds": len(g.runs), "mode": first.mode, "n_S": first.small,
                               "t": first.extra_time, "k": first.commits_per_epoch, "baseline": g is baseline}
        for figure in FIGURES:
            row[figure], row[figure + "_std"] = g.mean_std(figure)
        row["speedup"] = base_train / row["train_time_s"]
        row["final_delta_pp"] = 100.0 * (row["final_top1"] - base_final)
        rows.append(row)
    return rows


def _pm(mean: float, std: float | None, scale: float, digits: int) -> str:
    text = f"{mean * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def render_seed_table(rows: list[dict[str, Any]]) -> str:
    head = ("| configuration | seeds | mode | n_S | t | k | final top-1 (%) | best top-1 (%) | train s | eval s "
            "| speed-up | Δ final (pp) |")
    lines = [head, "|" + " --- |" * 12]
    for r in rows:
        lines.append("| " + " | ".join([
            r["configuration"] + (" (baseline)" if r["baseline"] else ""), str(r["seeds"]), r["mode"],
            str(r["n_S"]), f"{r['t']:g}", "—" if r["k"] is None else str(r["k"]),
            _pm(r["final_top1"], r["final_top1_std"], 100, 2), _pm(r["best_top1"], r["best_top1_std"], 100, 2),
            _pm(r["train_time_s"], r["train_time_s_std"], 1, 1), _pm(r["eval_time_s"], r["eval_time_s_std"], 1, 1),
            f"{r['speedup']:.3f}x", f"{r['final_delta_pp']:+.2f}"]) + " |")
    return "\n".join(lines)
