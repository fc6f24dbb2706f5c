"""End-to-end comparison on real data: the hybrid method and its parts against the baselines (issue 8).

On Fashion-MNIST, with the same model, data and epoch budget for every configuration:

- ``ps-baseline``   parameter server, 4 large-batch workers (n_S = 0), one resolution (the top one);
- ``cyclic``        cyclic progressive learning only (n_S = 0, low -> high resolution in each LR phase);
- ``dual``          dual batch only (n_S = 2, t = 1.05, top resolution);
- ``hybrid-tT-sN``  both, for t in {1.05, 1.1} and n_S in {1, 2, 3, 4};
- ``allreduce``     synchronous data parallel, 4 ranks, no server, each with B_L (the same total batch 4*B_L).

Every configuration runs with seed 0; then the PS baseline, the allreduce baseline and the best hybrid (by
final top-1 at seed 0) run again until they have ``--seeds`` seeds. The report gives mean +- standard
deviation (over seeds) of the final and best top-1, training time and evaluation time, and the speed-up and
accuracy change against the PS baseline. Each run is a real `hdbl launch train` job (1 server + 4 workers, or 4
peers) whose run directory stays under ``--out``; a run whose summary.json exists is not repeated, so an
interrupted comparison continues where it stopped.

Scale (2-core CPU): the small ResNet at width 8 and 6 epochs (LR phases of 4 and 2 epochs, 20 and 28 px for the
cyclic schedule) keep each configuration at a few minutes. The step-time model tau(B) = a*B + b that sets B_S is
measured once (``dual.profile: auto`` on the first hybrid run, all workers at once) and reused by every
later run, so that all plans come from the same measurement.

    python bench/e2e.py --out runs/e2e                 # the full comparison (about an hour on 2 cores)
    python bench/e2e.py --out /tmp/e2e --quick         # synthetic data, tiny model, a minute: checks the pipeline
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdbl_mpi.launch.commands import hdbl_program  # noqa: E402
from hdbl_mpi.run import rundir  # noqa: E402

BASELINE, ALLREDUCE = "ps-baseline", "allreduce"


@dataclass
class Scale:
    """The budget every configuration shares."""

    common: list[str]  # --set overrides of every run
    top: int  # the top (native) resolution
    low: int  # the low resolution of the cyclic schedule
    phases: list[int]  # epochs of each LR phase
    lrs: list[float]
    extra_times: list[float]
    smalls: list[int]
    timeout_s: float
    profile: list[str] = field(default_factory=list)  # how B_S's step-time model is obtained on the first run


def scale(quick: bool, epochs_scale: int) -> Scale:
    if quick:  # synthetic, 16 px, a tiny ResNet: the whole pipeline in about a minute
        return Scale(
            common=["data.name=synthetic",
                    "data.synthetic={train_size: 256, test_size: 128, channels: 1, size: 16, classes: 4}",
                    "model.name=resnet_small", "model.width=4", "train.threads=1", "dual.batch_large=32",
                    "eval.every=1", "run.checkpoint_every=0", "ps.timeout_s=60"],
            top=16, low=12, phases=[2, 2], lrs=[0.05, 0.005], extra_times=[1.1], smalls=[2], timeout_s=150,
            # A fixed step-time model (a CPU-like line: small per-step overhead) instead of measuring it.
            profile=["dual.time_a=1.0e-3", "dual.time_b=4.0e-3"],
        )
    return Scale(
        common=["data.name=fashion-mnist", "data.augment=true", "model.name=resnet_small", "model.width=8",
                "train.weight_decay=5.0e-4", "train.lr_scaling=linear", "dual.batch_large=64", "eval.every=2",
                "run.checkpoint_every=0"],
        top=28, low=20, phases=[4 * epochs_scale, 2 * epochs_scale], lrs=[0.05, 0.005],
        extra_times=[1.05, 1.1], smalls=[1, 2, 3, 4], timeout_s=1800,
        profile=["dual.profile=auto", "dual.profile_steps=5"],
    )


@dataclass
class Entry:
    name: str
    overrides: list[str]
    small: int = 0
    extra_time: float | None = None
    cyclic: bool = False


def grid(s: Scale) -> list[Entry]:
    """The configurations, hybrid ones first (the first of them measures the step-time model)."""
    epochs = sum(s.phases)
    one_res = [f"train.epochs={epochs}", f"train.lr={s.lrs[0]}", f"train.lr_milestones=[{s.phases[0]}]",
               f"data.resolution={s.top}"]
    cyclic = [f"schedule.phases={s.phases}", f"schedule.lrs={s.lrs}", f"schedule.resolutions=[{s.low}, {s.top}]",
              "schedule.dropouts=[0.0, 0.0]"]

    def dual(small: int, t: float) -> list[str]:
        return [f"dual.small={small}", f"dual.extra_time={t}"]

    entries = [Entry(f"hybrid-t{t}-s{n}", ["ps.mode=asp", *cyclic, *dual(n, t)], n, t, True)
               for t in s.extra_times for n in s.smalls]
    entries += [
        Entry(BASELINE, ["ps.mode=asp", *one_res, "dual.small=0"]),
        Entry("cyclic", ["ps.mode=asp", *cyclic, "dual.small=0"], cyclic=True),
        Entry("dual", ["ps.mode=asp", *one_res, *dual(2, s.extra_times[0])], 2, s.extra_times[0]),
        Entry(ALLREDUCE, ["ps.mode=allreduce", "ps.backend=mpi4py", *one_res, "dual.small=0"]),
    ]
    return entries


def run_one(entry: Entry, seed: int, s: Scale, out: Path, profile: Path | None) -> dict:
    """One `hdbl launch train` job (skipped when its summary exists); returns its result row."""
    run_dir = out / "runs" / f"{entry.name}-seed{seed}"
    summary_path = run_dir / rundir.SUMMARY
    if not summary_path.is_file():
        if run_dir.exists():
            shutil.rmtree(run_dir)  # an interrupted run: start it again
        sets = [*s.common, *entry.overrides, f"train.seed={seed}"]
        if entry.small:
            sets += [f"dual.profile={profile}"] if profile else s.profile
        argv = hdbl_program() + ["launch", "train", "--run-dir", str(run_dir)]
        for item in sets:
            argv += ["--set", item]
        print(f"[e2e] {entry.name} seed {seed}: {' '.join(argv[3:])}", flush=True)
        start = time.monotonic()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=s.timeout_s)
        except subprocess.TimeoutExpired:
            sys.exit(f"[e2e] {entry.name} seed {seed} did not finish within {s.timeout_s:.0f} s; see {run_dir}")
        (out / "logs").mkdir(exist_ok=True)
        (out / "logs" / f"{entry.name}-seed{seed}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not summary_path.is_file():
            sys.exit(f"[e2e] {entry.name} seed {seed} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        print(f"[e2e]   done in {time.monotonic() - start:.0f} s", flush=True)
    summary = json.loads(summary_path.read_text())
    plan = summary["plan"]
    return {
        "config": entry.name, "seed": seed, "mode": summary["mode"], "small": entry.small,
        "extra_time": entry.extra_time if entry.small else None, "cyclic": entry.cyclic,
        "batch_small": plan.get("batch_small"), "batch_large": plan["batch_large"],
        "final_top1": summary["final_top1"], "best_top1": summary["best_top1"],
        "train_time_s": summary["train_time_s"], "eval_time_s": summary["eval_time_s"],
        "wall_time_s": summary["wall_time_s"], "run_dir": str(run_dir),
        "imbalance": (summary.get("balance") or [{}])[-1].get("imbalance_compute") if entry.small else None,
    }


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and sample standard deviation over seeds of each configuration, with the change against the PS
    baseline's means (speed-up = baseline train time / train time)."""
    by_config: dict[str, list[dict]] = {}
    for row in rows:
        by_config.setdefault(row["config"], []).append(row)
    out = []
    for name, runs in by_config.items():
        agg = {"config": name, "seeds": len(runs), "small": runs[0]["small"], "extra_time": runs[0]["extra_time"],
               "batch_small": runs[0]["batch_small"]}
        for key in ("final_top1", "best_top1", "train_time_s", "eval_time_s"):
            agg[key], agg[key + "_std"] = _mean_std([r[key] for r in runs])
        out.append(agg)
    base = next((a for a in out if a["config"] == BASELINE), None)
    for agg in out:
        agg["speedup"] = base["train_time_s"] / agg["train_time_s"] if base else None
        agg["delta_final_pp"] = 100 * (agg["final_top1"] - base["final_top1"]) if base else None
    return out


def best_hybrid(rows: list[dict]) -> str | None:
    hybrids = [r for r in rows if r["config"].startswith("hybrid-") and r["seed"] == 0]
    return max(hybrids, key=lambda r: r["final_top1"])["config"] if hybrids else None


def _pm(mean: float, std: float | None, fmt: str, scale_by: float = 1.0) -> str:
    text = format(mean * scale_by, fmt)
    return text if std is None else f"{text} ± {format(std * scale_by, fmt)}"


def render(aggs: list[dict], rows: list[dict], s: Scale, args: argparse.Namespace, best: str | None,
           versions: dict, report_md: str) -> str:
    lines = [
        "# End-to-end comparison (`bench/e2e.py`)", "",
        f"Command: `python bench/e2e.py {' '.join(sys.argv[1:])}`; finished "
        f"{datetime.now(timezone.utc).isoformat(timespec='minutes')}.",
        f"Machine: {platform.node()}, {_cores()} cores, Python {platform.python_version()}, torch "
        f"{versions.get('torch')}, {versions.get('mpi_library')}.",
        f"Budget: {sum(s.phases)} epochs (LR {s.lrs[0]} then {s.lrs[1]} after epoch {s.phases[0]}), "
        f"cyclic runs at {s.low} then {s.top} px in each LR phase, the others at {s.top} px. Settings of every run: "
        f"`{' '.join(s.common)}`.",
        f"Best hybrid (by final top-1 at seed 0): {best}.", "",
        "Mean ± sample standard deviation over seeds. Final top-1: the final model at the top resolution. Best: "
        "the best of the periodic evaluations (at the stage's resolution) and the final one. Speed-up: PS "
        "baseline train time / train time. Δ: final top-1 minus the PS baseline's, in percentage points.", "",
        "| configuration | seeds | n_S | t | B_S | final top-1 (%) | best top-1 (%) | train (s) | eval (s) "
        "| speed-up | Δ final (pp) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = [BASELINE, "cyclic", "dual"] + sorted(a["config"] for a in aggs if a["config"].startswith("hybrid-")) \
        + [ALLREDUCE]
    for name in order:
        a = next((x for x in aggs if x["config"] == name), None)
        if a is None:
            continue
        cells = [f"{name}{' (best hybrid)' if name == best else ''}", a["seeds"], a["small"], a["extra_time"] or "—",
                 a["batch_small"] or "—", _pm(a["final_top1"], a["final_top1_std"], ".2f", 100),
                 _pm(a["best_top1"], a["best_top1_std"], ".2f", 100),
                 _pm(a["train_time_s"], a["train_time_s_std"], ".1f"),
                 _pm(a["eval_time_s"], a["eval_time_s_std"], ".1f"),
                 "—" if a["speedup"] is None else format(a["speedup"], ".2f"),
                 "—" if a["delta_final_pp"] is None else format(a["delta_final_pp"], "+.2f")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", "Every run (`results.csv` has the same). Imbalance: the measured compute time per commit of the "
              "slower group / the faster one at the top resolution (1.0 = the plan's balance held).", "",
              "| run | B_S | final top-1 | best top-1 | train (s) | eval (s) | wall (s) | imbalance |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        imbalance = "—" if r["imbalance"] is None else f"{r['imbalance']:.3f}"
        lines.append(f"| {r['config']} seed {r['seed']} | {r['batch_small'] or '—'} | {r['final_top1']:.4f} | "
                     f"{r['best_top1']:.4f} | {r['train_time_s']:.1f} | {r['eval_time_s']:.1f} | "
                     f"{r['wall_time_s']:.1f} | {imbalance} |")
    lines += ["", "## `hdbl report` of the seed-0 runs (baseline: ps-baseline)", "", report_md]
    return "\n".join(lines) + "\n"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the runs, results.csv and report.md")
    parser.add_argument("--quick", action="store_true", help="synthetic data, tiny model, 4 epochs (a pipeline check)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the baselines and the best hybrid (default 3)")
    parser.add_argument("--epochs-scale", type=int, default=1, help="multiply the 4+2 epochs of the full budget")
    parser.add_argument("--only", help="comma-separated configuration names to run (default: all)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    s = scale(args.quick, args.epochs_scale)
    entries = grid(s)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {e.name for e in entries}
        if unknown:
            sys.exit(f"unknown configuration(s) {sorted(unknown)}; choose from {[e.name for e in entries]}")
        entries = [e for e in entries if e.name in wanted]
    profile = out / rundir.PROFILE if (out / rundir.PROFILE).is_file() else None
    rows = []
    for entry in entries:
        rows.append(run_one(entry, 0, s, out, profile))
        if entry.small and profile is None and not args.quick:  # share the first measured step-time model
            shutil.copy(Path(rows[-1]["run_dir"]) / rundir.PROFILE, out / rundir.PROFILE)
            profile = out / rundir.PROFILE
    best = best_hybrid(rows)
    for name in (BASELINE, ALLREDUCE, best):
        entry = next((e for e in entries if e.name == name), None)
        if entry is not None:
            rows += [run_one(entry, seed, s, out, profile) for seed in range(1, args.seeds)]
    aggs = aggregate(rows)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.json").write_text(json.dumps({"runs": rows, "configurations": aggs, "best_hybrid": best},
                                                 indent=2) + "\n")
    seed0 = [r["run_dir"] for r in rows if r["seed"] == 0]
    base = next((r["run_dir"] for r in rows if r["config"] == BASELINE and r["seed"] == 0), seed0[0])
    report = subprocess.run(hdbl_program() + ["report", *seed0, "--baseline", base], capture_output=True, text=True)
    if report.returncode != 0:
        sys.exit(f"[e2e] hdbl report failed: {report.stderr}")
    versions = json.loads((Path(rows[0]["run_dir"]) / rundir.SUMMARY).read_text()).get("versions", {})
    (out / "report.md").write_text(render(aggs, rows, s, args, best, versions, report.stdout))
    print(f"[e2e] {len(rows)} runs; report: {out / 'report.md'}", flush=True)


if __name__ == "__main__":
    main()
