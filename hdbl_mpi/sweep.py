"""`hdbl sweep`: a grid of runs over seeds, then the comparison (method §7 asks for it; the papers' tables are it).

    hdbl sweep configs/demo.yaml --grid dual.small=0,2,4 --grid dual.commits_per_epoch=1,4,16 \\
        --grid ps.mode=asp,allreduce --seeds 3 --out runs/sweep

Every combination of the grids' values is one configuration, run once per seed (train.seed = 0 .. N-1) as a
real `hdbl launch train` job with the right rank count for its mode, in --out/runs/NAME. A combination the
config refuses (say, dual.small=2 with ps.mode=allreduce, which has no server) is listed as skipped with the
reason. Runs whose summary.json exists are not repeated, so an interrupted sweep continues where it stopped.
On a workstation the runs go one after another; with --slurm they become one SLURM job array (one task per
run, the #SBATCH options of launchers/slurm/hdbl.sbatch) and a dependent job that writes the report.

The sweep ends with --out/results.csv (one row per run), results.json, report.md (`hdbl report`'s comparison,
with mean ± std over seeds first) and plot.png (`hdbl plot` of the best run of each mode). Presets run the
papers' experiments: ``--preset paper-cifar100`` / ``paper-imagenet`` (the t × n_S grid, the factor ablation,
conference vs journal merge, cyclic only, the all-large-batch baseline).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from hdbl_mpi.config import load_config
from hdbl_mpi.errors import HdblError
from hdbl_mpi.launch.commands import hdbl_program
from hdbl_mpi.run import rundir

Grid = list[tuple[str, list[str]]]  # (key, values) in command-line order


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its configuration's name, the seed and the --set overrides (the seed's last)."""

    config: str
    seed: int
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.config}.s{self.seed}" if self.config else f"s{self.seed}"


@dataclass(frozen=True)
class Preset:
    """A paper's experiments: the config and the overrides that make a run single-resolution (the all-large-batch
    baseline and dual-batch only train at the top resolution with the phases' learning rates)."""

    config: str
    single: tuple[str, ...]
    seeds: int
    note: str

    def grids(self) -> list[tuple[str, Grid]]:
        """(label, grid) pairs; the label names the experiment in the run names."""
        one = [(key, [value]) for key, value in (item.split("=", 1) for item in self.single)]
        t_grid = [("dual.small", ["1", "2", "3", "4"]), ("dual.extra_time", ["1.05", "1.1"])]
        return [
            ("baseline", [("dual.small", ["0"]), *one]),
            ("cyclic", [("dual.small", ["0"])]),
            ("dual", [*t_grid, *one]),
            ("hybrid", t_grid),
            ("factor", [("dual.small", ["3"]), ("dual.extra_time", ["1.05"]), ("dual.factor", ["sqrt", "none"])]),
            ("merge", [("dual.small", ["3"]), ("dual.extra_time", ["1.05"]), ("ps.merge", ["conference"])]),
        ]


PRESETS = {
    "paper-cifar100": Preset(
        "configs/cifar100-paper.yaml",
        ("schedule.preset=null", "train.epochs=140", "train.lr=0.2", "train.lr_milestones=[80,120]",
         "data.resolution=32"),
        3, "the CIFAR-100 experiments of the journal version (ResNet-18, 1 server + 4 GPU workers)"),
    "paper-imagenet": Preset(
        "configs/imagenet-paper.yaml",
        ("schedule.preset=null", "train.epochs=105", "train.lr=0.2", "train.lr_milestones=[60,90]",
         "data.resolution=288"),
        1, "the ImageNet experiments (ResNet-18, DALI folders); one seed, as published"),
}


def parse_grid(items: list[str]) -> Grid:
    """`key=v1,v2,...` items; commas inside [] or {} belong to one value (e.g. schedule.lrs=[0.1,0.01])."""
    grid: Grid = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise HdblError(f"--grid expects key=v1,v2,..., got {item!r} (e.g. --grid dual.small=0,2,4).")
        grid.append((key.strip(), _split_values(values)))
    return grid


def load_grids(path: str) -> list[tuple[str, Grid]]:
    """Labelled grids from a YAML file: a list of {label: NAME, grid: {key: [values ...] or value}}; each grid's
    runs are named by its label and the values that vary in it."""
    import yaml

    try:
        entries = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise HdblError(f"--grids {path}: cannot read it ({err}).") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("grid"), dict)
                                                for e in entries):
        raise HdblError(f"--grids {path} must be a YAML list of {{label: NAME, grid: {{key: [values]}}}} entries.")
    grids = []
    for e in entries:
        grid = [(str(k), [_yaml_text(v) for v in (vs if isinstance(vs, list) else [vs])])
                for k, vs in e["grid"].items()]
        grids.append((str(e.get("label", "")), grid))
    return grids


def _yaml_text(value: object) -> str:
    """A grid value as --set would spell it (YAML flow style for lists and mappings)."""
    import yaml

    if isinstance(value, (list, dict)) or value is None:
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value).lower() if isinstance(value, bool) else str(value)


def _split_values(text: str) -> list[str]:
    values, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += ch
    values.append(current.strip())
    return [v for v in values if v]


def _slug(key: str, value: str) -> str:
    return f"{key.rsplit('.', 1)[-1]}-{re.sub(r'[^A-Za-z0-9.+-]+', '_', value).strip('_')}"


def expand(grids: list[tuple[str, Grid]], seeds: int) -> list[RunSpec]:
    """Every combination of each (label, grid)'s values, for every seed; a combination two grids share runs
    once. A run is named by its label and the grid values that vary within its grid."""
    specs: list[RunSpec] = []
    seen: set[tuple[str, ...]] = set()
    for label, grid in grids:
        for combo in itertools.product(*[[(k, v) for v in values] for k, values in grid]):
            sets = tuple(f"{k}={v}" for k, v in combo)
            if sets in seen:
                continue
            seen.add(sets)
            varying = [_slug(k, v) for k, v in combo if len(dict(grid)[k]) > 1]
            if not label and not varying:  # one value per key: name the run by all of them
                varying = [_slug(k, v) for k, v in combo]
            name = ".".join([label] * bool(label) + varying)
            specs += [RunSpec(name, seed, (*sets, f"train.seed={seed}")) for seed in range(seeds)]
    return specs


def refusal(config: str | None, spec: RunSpec, common: list[str]) -> str | None:
    """Why the config refuses this run's overrides, or None when it takes them."""
    try:
        load_config(config, [*common, *spec.overrides])
    except HdblError as err:
        return str(err)
    return None


def launch_argv(config: str | None, spec: RunSpec, out: Path, common: list[str], launch_args: list[str]) -> list[str]:
    argv = hdbl_program() + ["launch", *launch_args, "train", *([config] if config else []), "--run-dir",
                             str(out / "runs" / spec.name)]
    for item in [*common, *spec.overrides]:
        argv += ["--set", item]
    return argv


def run_one(config: str | None, spec: RunSpec, out: Path, common: list[str], launch_args: list[str],
            timeout_s: float = 0.0) -> str:
    """Run `spec` unless its summary exists (timeout_s 0: no limit); "done ...", "skipped (finished)" or
    "failed (...)"."""
    run_dir = out / "runs" / spec.name
    if rundir.finished(run_dir):
        return "skipped (finished)"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run: start it again
    argv = launch_argv(config, spec, out, common, launch_args)
    print(f"[sweep] {spec.name}: {shlex.join(argv[3:])}", flush=True)
    start = time.monotonic()
    log = out / "logs" / f"{spec.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s or None)
    except subprocess.TimeoutExpired as err:
        log.write_text(f"{err.stdout or ''}{err.stderr or ''}" if isinstance(err.stdout, str) else "")
        return f"failed (no end within {timeout_s:.0f} s; log {log})"
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not (run_dir / rundir.SUMMARY).is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return f"failed (exit {proc.returncode}: {tail[0][:200]}; log {log})"
    return f"done in {time.monotonic() - start:.0f} s"


# -- SLURM ---------------------------------------------------------------------------------------------------------
SBATCH_TEMPLATE = Path(__file__).resolve().parents[1] / "launchers" / "slurm" / "hdbl.sbatch"


def sbatch_options(ntasks: int, template: Path = SBATCH_TEMPLATE) -> list[str]:
    """The #SBATCH options of launchers/slurm/hdbl.sbatch (nodes, tasks per node, GPUs, time, ...) with --ntasks
    set to what the sweep's largest run needs; job name, output and array are the sweep's own."""
    options = [f"--ntasks={ntasks}"]
    text = template.read_text() if template.is_file() else ""
    for line in text.splitlines():
        match = re.match(r"#SBATCH\s+(\S+)", line)
        if match and not re.match(r"--(job-name|output|array|ntasks)=", match.group(1)):
            options.append(match.group(1))
    return options


def slurm_array(config: str | None, specs: list[RunSpec], out: Path, ntasks: int, python: str) -> str:
    """A SLURM array job: task i runs line i of out/runs.txt (one `hdbl launch --launcher srun train ...
    --resume auto`, which starts as many of the allocation's tasks as that run's mode needs, and continues a run a
    time limit stopped: the task requeues itself on exit code 75, as launchers/slurm/hdbl.sbatch does)."""
    options = "\n".join(f"#SBATCH {o}" for o in sbatch_options(ntasks))
    manifest = shlex.quote(str(out / "runs.txt"))
    train = shlex.join([python, "-m", "hdbl_mpi.cli", "launch", "--launcher", "srun", "train",
                        *([config] if config else [])])
    what = config or "the default config"
    return f"""#!/usr/bin/env bash
# hdbl sweep: {len(specs)} runs of {what}, one array task each (written by `hdbl sweep --slurm`).
#SBATCH --job-name=hdbl-sweep
#SBATCH --array=1-{len(specs)}
#SBATCH --output={out}/logs/%A_%a.out
{options}
set -uo pipefail
export HDBL_PROGRESS=lines
export OMP_NUM_THREADS="${{SLURM_CPUS_PER_TASK:-1}}"
eval "set -- $(sed -n "${{SLURM_ARRAY_TASK_ID}}p" {manifest})"
run_dir="$1"; shift
[ -f "$run_dir/{rundir.SUMMARY}" ] && ! grep -q '"{rundir.INCOMPLETE}"' "$run_dir/{rundir.SUMMARY}" && \
    {{ echo "finished already: $run_dir"; exit 0; }}
# As launchers/slurm/hdbl.sbatch: pass SLURM's warning on, requeue a run stopped with a checkpoint (code 75).
{train} --run-dir "$run_dir" --resume auto "$@" &
job=$!
trap 'kill -USR1 "$job"' USR1
status=0
while kill -0 "$job" 2>/dev/null; do wait "$job"; status=$?; done
if [ "$status" -eq 75 ]; then scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"; exit 0; fi
exit "$status"
"""


# -- results -------------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """One finished run, as results.csv holds it."""

    name: str
    config: str
    seed: int
    mode: str
    small: int
    extra_time: float
    commits_per_epoch: int | None
    batch_small: int | None
    final_top1: float
    best_top1: float
    train_time_s: float
    eval_time_s: float
    wall_time_s: float
    imbalance: float | None
    run_dir: str


def collect(specs: list[RunSpec], out: Path) -> list[RunResult]:
    from hdbl_mpi.report.runs import load_run

    rows = []
    for spec in specs:
        run_dir = out / "runs" / spec.name
        if not rundir.finished(run_dir):
            continue
        run = load_run(run_dir)
        o, plan, extra = run.summary.outcome, run.summary.facts.plan, run.summary.extra
        balance = (extra.get("balance") or [{}])[-1].get("imbalance_compute") if run.small else None
        rows.append(RunResult(spec.name, spec.config, spec.seed, o.mode, run.small, run.extra_time,
                              run.commits_per_epoch, plan.get("batch_small"), o.final_top1, o.best_top1,
                              o.train_time_s, o.eval_time_s, o.wall_time_s, balance, str(run_dir)))
    return rows


def write_results(out: Path, rows: list[RunResult], baseline: str | None, notes: list[str]) -> str:
    """results.csv and results.json, report.md from `hdbl report` (mean ± std over seeds first) and plot.png of
    the best run of each mode; the report's text."""
    if not rows:
        raise HdblError(f"no finished run in {out}/runs to report on.")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    dirs = [r.run_dir for r in rows]
    base = next((r.run_dir for r in rows if r.config == baseline), dirs[0])
    report = _hdbl(["report", *dirs, "--baseline", base])
    best = _best_of_each_mode(rows)
    _hdbl(["plot", *best, "-o", str(out / "plot.png")])
    (out / "results.json").write_text(json.dumps({"runs": [asdict(r) for r in rows], "baseline": baseline,
                                                  "best_of_each_mode": best, "notes": notes}, indent=2) + "\n")
    text = "\n".join([f"# hdbl sweep: {out}", "", *[f"- {n}" for n in notes], "", report])
    (out / "report.md").write_text(text)
    return text


def _best_of_each_mode(rows: list[RunResult]) -> list[str]:
    """The seed-0 run of the configuration with the best mean final top-1, per mode."""
    means: dict[str, list[float]] = {}
    for r in rows:
        means.setdefault(r.config, []).append(r.final_top1)
    best: dict[str, RunResult] = {}
    for r in rows:
        score = sum(means[r.config]) / len(means[r.config])
        current = best.get(r.mode)
        if current is None or score > sum(means[current.config]) / len(means[current.config]) or (
                r.config == current.config and r.seed < current.seed):
            best[r.mode] = r
    return [r.run_dir for r in best.values()]


def _hdbl(args: list[str]) -> str:
    proc = subprocess.run(hdbl_program() + args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise HdblError(f"`hdbl {args[0]}` failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


# -- the command ---------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config every run starts from (default: the defaults and "
                        "--set; a --preset brings its own)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="values of one config key; the runs are every combination (repeatable)")
    parser.add_argument("--grids", metavar="FILE.yaml", help="several labelled grids in one sweep: a YAML list of "
                        "{label: NAME, grid: {key: [values]}}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every run (repeatable)")
    parser.add_argument("--seeds", type=int, help="runs per configuration, train.seed = 0..N-1 (default 1, or the "
                        "preset's)")
    parser.add_argument("--out", required=True, help="directory for runs/, logs/, results.csv, report.md, plot.png")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="the papers' experiments: " + "; ".join(
        f"{name}: {p.note}" for name, p in sorted(PRESETS.items())))
    parser.add_argument("--baseline", help="configuration the speed-ups are measured against (default: the first)")
    parser.add_argument("--slurm", action="store_true", help="submit one SLURM job array (and a report job after it)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs, or the SLURM script; start nothing")
    parser.add_argument("--report-only", action="store_true", help="run nothing; report the finished runs")
    parser.add_argument("--timeout", type=float, default=0.0, help="seconds one run may take (0: no limit)")
    parser.add_argument("--launch-args", default="", metavar="'ARGS'",
                        help="more `hdbl launch` arguments for every run, e.g. '-H n1:5,n2:4'")


def _resolve(args: argparse.Namespace) -> tuple[str | None, list[tuple[str, Grid]], int]:
    if args.preset:
        preset = PRESETS[args.preset]
        config = args.config or preset.config
        grids = preset.grids() + ([("", parse_grid(args.grid))] if args.grid else [])
        return config, grids, args.seeds or preset.seeds
    grids = load_grids(args.grids) if args.grids else []
    grids += [("", parse_grid(args.grid))] if args.grid else []
    if not grids:
        raise HdblError("hdbl sweep needs --grid KEY=V1,V2,... or --grids FILE (or --preset NAME).")
    return args.config, grids, args.seeds or 1


def sweep(args: argparse.Namespace) -> int:
    config, grids, seeds = _resolve(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runnable, notes = [], []
    for spec in expand(grids, seeds):
        reason = refusal(config, spec, args.set)
        if reason is None:
            runnable.append(spec)
        elif spec.seed == 0:
            notes.append(f"skipped {spec.config}: {reason}")
    for note in notes:
        print(f"[sweep] {note}", file=sys.stderr, flush=True)
    if not runnable:
        raise HdblError("every combination of the grid was refused by the config (see above).")
    baseline = args.baseline or runnable[0].config
    if args.slurm:
        return _submit(args, config, runnable, out)
    if args.dry_run:
        for spec in runnable:
            print(shlex.join(launch_argv(config, spec, out, args.set, shlex.split(args.launch_args))))
        return 0
    failures = 0
    if not args.report_only:
        for i, spec in enumerate(runnable, 1):
            status = run_one(config, spec, out, args.set, shlex.split(args.launch_args), args.timeout)
            failures += status.startswith("failed")
            print(f"[sweep] {i}/{len(runnable)} {spec.name}: {status}", flush=True)
    write_results(out, collect(runnable, out), baseline, notes)
    print(f"[sweep] report: {out / 'report.md'}; results: {out / 'results.csv'}; plot: {out / 'plot.png'}", flush=True)
    return 1 if failures else 0


def _submit(args: argparse.Namespace, config: str | None, specs: list[RunSpec], out: Path) -> int:
    """Write runs.txt and sweep.sbatch; print them (--dry-run) or submit the array and a report job after it."""
    from hdbl_mpi.schema import required_ranks

    ntasks = max(required_ranks(load_config(config, [*args.set, *s.overrides])) for s in specs)
    (out / "logs").mkdir(exist_ok=True)
    (out / "runs.txt").write_text("\n".join(manifest_lines(specs, out, args.set)) + "\n")
    script = slurm_array(config, specs, out, ntasks, sys.executable)
    (out / "sweep.sbatch").write_text(script)
    report = shlex.join(_report_command(args, config))
    if args.dry_run:
        print(script)
        print(f"# then, after the array: sbatch --dependency=afterany:JOBID --wrap {shlex.quote(report)}")
        return 0
    if shutil.which("sbatch") is None:
        raise HdblError("--slurm needs sbatch on PATH (run on a SLURM login node), or use --dry-run to see the script.")
    job = subprocess.run(["sbatch", "--parsable", str(out / "sweep.sbatch")], capture_output=True, text=True,
                         check=True)
    array_id = job.stdout.strip().split(";")[0]
    after = subprocess.run(["sbatch", "--parsable", f"--dependency=afterany:{array_id}",
                            "--job-name=hdbl-sweep-report", f"--output={out}/logs/report-%j.out", "--wrap", report],
                           capture_output=True, text=True, check=True)
    print(f"[sweep] submitted array job {array_id} ({len(specs)} runs) and report job {after.stdout.strip()}; "
          f"the report will be {out / 'report.md'}", flush=True)
    return 0


def _report_command(args: argparse.Namespace, config: str | None) -> list[str]:
    """This sweep's command with --report-only (what the job after the array runs)."""
    argv = [sys.executable, "-m", "hdbl_mpi.cli", "sweep", *([config] if config else []), "--out", args.out,
            "--report-only"]
    for flag, values in (("--grid", args.grid), ("--set", args.set), ("--grids", [args.grids] if args.grids else [])):
        argv += [a for v in values for a in (flag, v)]
    for flag, value in (("--seeds", args.seeds), ("--preset", args.preset), ("--baseline", args.baseline)):
        argv += [flag, str(value)] if value else []
    return argv


def manifest_lines(specs: list[RunSpec], out: Path, common: list[str]) -> list[str]:
    """One line per run for the array: its run directory, then its --set arguments (shell words)."""
    return [shlex.join([str(out / "runs" / s.name), *[a for item in [*common, *s.overrides] for a in ("--set", item)]])
            for s in specs]
