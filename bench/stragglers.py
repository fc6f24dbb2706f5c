"""Issue 24's benchmark: slow, mixed and straggling workers, paced; one `hdbl sweep` per setting, then the goal.

    python bench/stragglers.py --setting static --seeds 3 --out runs/stragglers-static
    python bench/stragglers.py --setting changing --seeds 3 --out runs/stragglers-changing
    python bench/stragglers.py --setting homogeneous --seeds 3 --out runs/stragglers-homogeneous
    python bench/stragglers.py --setting static --out runs/stragglers-static --report-only   # the table again

Each is exactly `hdbl sweep configs/compare-fashion-mnist.yaml --grids configs/sweeps/stragglers-SETTING.yaml
--seeds N --out OUT` with the profile store at OUT/profiles (unless HDBL_PROFILE_STORE says otherwise), so the
sweep profiles each resolution once and every run paces its steps from the same step-time model. Then, per
configuration over its seeds: final top-1, train time, wall time (start-up and profiling included), start-up,
and the wall time to reach the plain mpi4py allreduce's mean final top-1 minus 0.5 pp (from the evaluations,
every epoch), and the goal's verdict for the setting (the issue's words):

- static: the best hybrid's mean top-1 no lower than the best synchronous configuration's minus 0.3 pp, in no
  more wall time, and at least 1.6x faster in wall time than plain allreduce (every backend);
- changing: at least 1.3x faster in wall time than every synchronous configuration, at no more than -0.3 pp;
- homogeneous: no goal of its own here (no worse than the homogeneous table in docs/BENCHMARKS.md).

Written to OUT/stragglers.md and printed, whichever way it comes out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdbl_mpi.sweep import add_arguments, sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "compare-fashion-mnist.yaml"
SETTINGS = ("static", "changing", "homogeneous")
SYNCHRONOUS = ("allreduce", "localsgd")
TARGET_CONFIG = "allreduce.backend-mpi4py"
TARGET_BELOW_PP = 0.5
MARGIN_PP = 0.3
FASTER = {"static": 1.6, "changing": 1.3}


@dataclass
class Figures:
    """One configuration over its seeds (means; `reached` runs of `seeds` got to the target top-1)."""

    config: str
    mode: str
    seeds: int
    top1: float
    top1_sd: float
    train_s: float
    wall_s: float
    startup_s: float
    to_target_s: float | None
    reached: int

    @property
    def synchronous(self) -> bool:
        return self.mode in SYNCHRONOUS

    @property
    def hybrid(self) -> bool:
        return self.config.startswith("hybrid")


def time_to(epochs_csv: Path, target: float) -> float | None:
    """Wall seconds (start-up included) at the first evaluation at or above `target`; None if none was."""
    for row in csv.DictReader(epochs_csv.open()):
        if row["test_acc"] and float(row["test_acc"]) >= target:
            return float(row["wall_s"])
    return None


def figures(results_csv: Path) -> tuple[float | None, list[Figures]]:
    """The target top-1 (None without a plain mpi4py allreduce) and each configuration's figures."""
    rows = list(csv.DictReader(results_csv.open()))
    plain = [float(r["final_top1"]) for r in rows if r["config"] == TARGET_CONFIG]
    target = statistics.fmean(plain) - TARGET_BELOW_PP / 100 if plain else None
    out = []
    for config in dict.fromkeys(r["config"] for r in rows):
        runs = [r for r in rows if r["config"] == config]
        top1 = [float(r["final_top1"]) for r in runs]
        times = [time_to(Path(r["run_dir"]) / "epochs.csv", target) for r in runs] if target is not None else []
        reached = [t for t in times if t is not None]
        out.append(Figures(config, runs[0]["mode"], len(runs), statistics.fmean(top1),
                           statistics.stdev(top1) if len(top1) > 1 else 0.0,
                           statistics.fmean(float(r["train_time_s"]) for r in runs),
                           statistics.fmean(float(r["wall_time_s"]) for r in runs),
                           statistics.fmean(_startup(Path(r["run_dir"])) for r in runs),
                           statistics.fmean(reached) if reached else None, len(reached)))
    return target, out


def _startup(run_dir: Path) -> float:
    summary = json.loads((run_dir / "summary.json").read_text())
    return float((summary.get("startup") or {}).get("seconds") or 0.0)


def table(target: float | None, figs: list[Figures]) -> str:
    reach = f"wall to {100 * target:.2f} % (s)" if target is not None else "wall to target (s)"
    lines = [f"| configuration | seeds | final top-1 (%) | train (s) | wall (s) | start-up (s) | {reach} |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for f in figs:
        to = ("–" if target is None else "not reached" if f.to_target_s is None else
              f"{f.to_target_s:.1f}" + (f" ({f.reached} of {f.seeds})" if f.reached < f.seeds else ""))
        lines.append(f"| {f.config} | {f.seeds} | {100 * f.top1:.2f} ± {100 * f.top1_sd:.2f} | {f.train_s:.1f} | "
                     f"{f.wall_s:.1f} | {f.startup_s:.1f} | {to} |")
    return "\n".join(lines) + "\n"


def why(results_csv: Path) -> str:
    """The parameter-server configurations' side of the story, means over seeds: the staleness of a push
    (merges since its worker pulled), the shares re-planned from measured speeds, the last measured imbalance of
    commit times between the groups (slowest / fastest), and the pushes rejected as non-finite."""
    rows = [r for r in csv.DictReader(results_csv.open()) if r["mode"] not in SYNCHRONOUS]
    lines = ["| configuration | mean staleness | re-plans | commit imbalance | rejected pushes |",
             "| --- | --- | --- | --- | --- |"]
    for config in dict.fromkeys(r["config"] for r in rows):
        summaries = [json.loads((Path(r["run_dir"]) / "summary.json").read_text()) for r in rows
                     if r["config"] == config]
        staleness = statistics.fmean((s.get("staleness") or {}).get("mean", 0.0) for s in summaries)
        replans = statistics.fmean(sum(1 for c in s.get("replans") or [] if c.get("kind") == "speeds" and
                                       "kept" not in c) for s in summaries)
        imbalance = [i for s in summaries if (b := s.get("balance")) and (i := b[-1].get("imbalance_commit"))]
        rejected = statistics.fmean(sum((s.get("nonfinite_rejected") or {}).values()) for s in summaries)
        shown = f"{statistics.fmean(imbalance):.2f}" if imbalance else "–"
        lines.append(f"| {config} | {staleness:.2f} | {replans:.1f} | {shown} | {rejected:.1f} |")
    return "\n".join(lines) + "\n" if rows else ""


def verdict(setting: str, figs: list[Figures]) -> str:
    """The goal of `setting`, judged on the means; says which configurations decided it."""
    hybrids, sync = [f for f in figs if f.hybrid], [f for f in figs if f.synchronous]
    if setting not in FASTER:
        return "No goal of its own: compare with the homogeneous table in docs/BENCHMARKS.md.\n"
    if not hybrids or not sync:
        return "Not judged: the sweep has no hybrid or no synchronous configuration.\n"
    best = max(hybrids, key=lambda f: f.top1)
    lines = [f"Best hybrid (by mean top-1): `{best.config}`, {100 * best.top1:.2f} % in {best.wall_s:.1f} s wall."]
    if setting == "static":
        rival = max(sync, key=lambda f: f.top1)
        checks = [(f"top-1 against the most accurate synchronous `{rival.config}` ({100 * rival.top1:.2f} %): "
                   f"{_gap(best, rival):+.2f} pp (goal ≥ −{MARGIN_PP})", _gap(best, rival) >= -MARGIN_PP - 1e-9),
                  (f"its wall time {rival.wall_s:.1f} s: ×{best.wall_s / rival.wall_s:.2f} (goal ≤ 1)",
                   best.wall_s <= rival.wall_s)]
        checks += [(f"faster than plain `{f.config}` ({f.wall_s:.1f} s): {f.wall_s / best.wall_s:.2f}x (goal "
                    f"≥ {FASTER[setting]}x)", f.wall_s / best.wall_s >= FASTER[setting])
                   for f in sync if f.config.startswith("allreduce.")]
    else:
        checks = [(f"against `{f.config}` ({100 * f.top1:.2f} %, {f.wall_s:.1f} s): {f.wall_s / best.wall_s:.2f}x "
                   f"faster (goal ≥ {FASTER[setting]}x), {_gap(best, f):+.2f} pp (goal ≥ −{MARGIN_PP})",
                   f.wall_s / best.wall_s >= FASTER[setting] and _gap(best, f) >= -MARGIN_PP - 1e-9) for f in sync]
    met = all(ok for _, ok in checks)
    lines += [f"- {text}: {'met' if ok else 'not met'}" for text, ok in checks]
    return "\n".join([*lines, "", f"The goal ({setting}): **{'met' if met else 'not met'}**."]) + "\n"


def _gap(a: Figures, b: Figures) -> float:
    return 100 * (a.top1 - b.top1)


def main() -> None:
    own = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    own.add_argument("--setting", choices=SETTINGS, required=True)
    own.add_argument("--out", required=True)
    own.add_argument("--seeds", type=int, default=3)
    own.add_argument("--report-only", action="store_true", help="run nothing; judge the finished runs")
    args = own.parse_args()
    out = Path(args.out)
    os.environ.setdefault("HDBL_PROFILE_STORE", str(out.resolve() / "profiles"))
    sweep_args = argparse.ArgumentParser()
    add_arguments(sweep_args)
    argv = [str(CONFIG), "--grids", str(ROOT / "configs" / "sweeps" / f"stragglers-{args.setting}.yaml"),
            "--seeds", str(args.seeds), "--out", str(out)] + ["--report-only"] * args.report_only
    code = sweep(sweep_args.parse_args(argv))
    target, figs = figures(out / "results.csv")
    text = (f"## Stragglers, {args.setting}\n\n{table(target, figs)}\n{why(out / 'results.csv')}\n"
            f"{verdict(args.setting, figs)}")
    (out / "stragglers.md").write_text(text)
    print(text, flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
