"""`hdbl sweep`: run a grid of configurations over seeds (here, or as a SLURM array), then write the comparison.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from hdbl_mpi.config import load_config
from hdbl_mpi.errors import HdblError
from hdbl_mpi.run import lock
from hdbl_mpi.sweep.grid import PRESETS, Grid, RunSpec, expand, load_grids, parse_grid
from hdbl_mpi.sweep.results import collect, write_results
from hdbl_mpi.sweep.runs import launch_argv, manifest_lines, refusal, run_one


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
        lock.hold(out, "hdbl sweep", "Wait for it to end, or pass another --out.")
        try:
            for i, spec in enumerate(runnable, 1):
                status = run_one(config, spec, out, args.set, shlex.split(args.launch_args), args.timeout)
                failures += status.startswith("failed")
                print(f"[sweep] {i}/{len(runnable)} {spec.name}: {status}", flush=True)
        finally:
            lock.release(out)
    write_results(out, collect(runnable, out), baseline, notes)
    print(f"[sweep] report: {out / 'report.md'}; results: {out / 'results.csv'}; plot: {out / 'plot.png'}", flush=True)
    return 1 if failures else 0


def _submit(args: argparse.Namespace, config: str | None, specs: list[RunSpec], out: Path) -> int:
    """Write runs.txt and sweep.sbatch; print them (--dry-run) or submit the array and a report job after it."""
    from hdbl_mpi.launch.slurm_array import slurm_array
    from hdbl_mpi.schema import required_ranks

    ntasks = max(required_ranks(load_config(config, [*args.set, *s.overrides])) for s in specs)
    (out / "logs").mkdir(exist_ok=True)
    (out / "runs.txt").write_text("\n".join(manifest_lines(specs, out, args.set)) + "\n")
    batch_config = config
    if batch_config is None:  # the batch script takes a config file: the defaults are an empty one
        batch_config = str(out / "defaults.yaml")
        Path(batch_config).write_text("{}\n")
    script = slurm_array(batch_config, len(specs), out / "runs.txt", out / "logs", ntasks, sys.executable)
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
