"""The `hdbl` command. Subcommands import torch and mpi4py only when they need them, so cheap ones answer
instantly on a login node."""

from __future__ import annotations

import argparse
import sys
import traceback

from hdbl_mpi.errors import HdblError, SetupError
from hdbl_mpi.precision import PRECISIONS


def _train(args: argparse.Namespace) -> int:
    from mpi4py import MPI

    from hdbl_mpi.comm.ulfm import leave, report_exit, report_up
    from hdbl_mpi.run.signals import STOP
    from hdbl_mpi.startup import shared_config

    STOP.install()  # SIGTERM/SIGUSR1: finish the work in flight, checkpoint, exit EXIT_STOPPED
    comm = MPI.COMM_WORLD
    ulfm = False
    try:
        report_up(comm)  # under `hdbl launch` with ULFM: the launcher restarts a job that dies before this
        shared = shared_config(comm, args.config, args.set, args.resume, args.run_dir,  # before torch loads
                               args.reprofile)
        from hdbl_mpi.train import train

        ulfm = shared.config.ps.fault_tolerance == "ulfm"
        result = train(shared, shared.checkpoint is not None, args.verbose, args.plan_only)
    except SetupError as err:  # every rank raised it: each exits, rank 0 says why
        if comm.rank == 0:
            print(f"hdbl train: {'error: ' if err.exit_code else ''}{err}", file=sys.stderr, flush=True)
        result = err.exit_code
    except BaseException as err:  # known to this rank only (a bug, a lost peer): abort the whole job, never hang
        kind = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        detail = "" if isinstance(err, HdblError) else f"\n{traceback.format_exc()}"  # ours say what to do
        print(f"hdbl train: rank {comm.rank}/{comm.size} {kind}: {type(err).__name__}: {err}{detail}",
              file=sys.stderr, flush=True)
        comm.Abort(1)
        return 1
    report_exit(comm.rank, result)  # under `hdbl launch` with ULFM, where mpirun's own code cannot be trusted
    if ulfm:  # MPI_Finalize can hang with a dead rank: leave without it
        leave(result)
    return result


def _numbers(text: str | None, kind: type, flag: str) -> list | None:
    if text is None:
        return None
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise HdblError(f"{flag} expects a comma-separated list of {kind.__name__} values, got {text!r}.") from None


def _plan(args: argparse.Namespace) -> int:
    """`hdbl plan`: the dual-batch plan from explicit numbers or a profile; a stable interface for scripts."""
    import json

    from hdbl_mpi.rules.plan import format_plan, plan_resolutions, plan_summary
    from hdbl_mpi.rules.worker_plan import StepLine

    resolutions = _numbers(args.resolutions, int, "--resolutions") or []  # a required flag
    batch_large = _numbers(args.batch_large, int, "--batch-large")
    time_a = _numbers(args.time_a, float, "--time-a")
    time_b = _numbers(args.time_b, float, "--time-b")
    entries = []
    if args.profile:
        from hdbl_mpi.profiling.store import load_profile, lookup

        profile = load_profile(args.profile)
        entries = [lookup(profile, args.model, r, args.precision, args.device) for r in resolutions]
        batch_large = batch_large or [e.b_max for e in entries]
        time_a = time_a or [e.a for e in entries]
        time_b = time_b or [e.b for e in entries]
    missing = [flag for flag, value in (("--batch-large", batch_large), ("--time-a", time_a),
                                        ("--time-b", time_b)) if value is None]
    if batch_large is None or (missing and not (args.small == 0 and missing == ["--time-a", "--time-b"])):
        raise HdblError(f"hdbl plan needs {', '.join(missing)} (one value per resolution) or --profile FILE.")
    time_a = time_a or [None] * len(resolutions)
    time_b = time_b or [None] * len(resolutions)
    plans = plan_resolutions(args.dataset_size, args.workers, args.small, args.extra_time, resolutions,
                             batch_large, time_a, time_b, args.factor)
    summary = plan_summary(plans, resolutions)
    text = format_plan(plans, resolutions)
    if args.per_worker or args.slower:
        from hdbl_mpi.rules.worker_plan import format_worker_plan, plans_per_worker

        own = {r: {w: StepLine(line.a, line.b) for w, line in enumerate(e.per_rank, start=1)}
               for r, e in zip(resolutions, entries, strict=False) if len(e.per_rank) == args.workers}
        per = plans_per_worker(dict(zip(resolutions, plans, strict=True)), own, _slower(args.slower))
        summary["per_worker"] = [per[r].to_dict() for r in resolutions]
        text += "\nShares per worker and epoch (" + ("each worker's own line from the profile" if own else
                                                     "the plan's line for every worker") + \
            (f", ranks {args.slower} slower" if args.slower else "") + "):\n" + \
            "\n".join(format_worker_plan(per[r], r) for r in resolutions)
    print(json.dumps(summary, indent=2) if args.json else text)
    return 0


def _slower(text: str | None) -> dict[int, float]:
    """--slower 4=2,3=1.5: rank -> factor."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        rank, _, factor = item.partition("=")
        try:
            out[int(rank)] = float(factor)
        except ValueError:
            raise HdblError(f"--slower takes RANK=FACTOR[,RANK=FACTOR...] (e.g. 4=2); got {item!r}.") from None
        if out[int(rank)] <= 0:
            raise HdblError(f"--slower {item}: the factor must be > 0.")
    return out


def _under_mpi() -> bool:
    """Started by an MPI launcher (Open MPI, MPICH/Hydra, PMIx, SLURM's srun)?"""
    import os

    return any(v in os.environ for v in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"))


def _profile(args: argparse.Namespace) -> int:
    """`hdbl profile` (hdbl_mpi/profiling/command.py): every rank under mpirun, averaged."""
    from hdbl_mpi.config import load_config
    from hdbl_mpi.profiling.command import ProfileRequest, run_profile

    comm = None
    if _under_mpi():
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    try:
        request = ProfileRequest(
            device=args.device, resolutions=_numbers(args.resolutions, int, "--resolutions"),
            config=load_config(args.config, args.set) if args.config else None, model=args.model,
            precision=args.precision, classes=args.classes, channels=args.channels, stem=args.stem,
            batches=_numbers(args.batches, int, "--batches"),
            steps=args.steps, warmup=args.warmup, memory_budget=args.memory_budget, margin=args.margin,
            max_batch=args.max_batch, threads=args.threads, output=args.output, plot=args.plot)
    except HdblError as err:  # the same on every rank
        if comm is None or comm.rank == 0:
            print(f"hdbl profile: error: {err}", file=sys.stderr)
        return 2
    return run_profile(request, comm)


def _load_runs(paths: list[str]):
    from hdbl_mpi.report.runs import load_run

    return [load_run(p) for p in paths]


def _report(args: argparse.Namespace) -> int:
    """`hdbl report`: tables from run directories (no MPI, no torch)."""
    from hdbl_mpi.report.runs import load_run
    from hdbl_mpi.report.tables import render

    runs = _load_runs(args.run_dirs)
    baseline = load_run(args.baseline) if args.baseline else runs[0]
    print(render(runs, baseline, args.format), end="")
    return 0


def _plot_cmd(args: argparse.Namespace) -> int:
    """`hdbl plot`: accuracy/loss curves and commit timelines as one PNG."""
    from hdbl_mpi.report.plots import plot_runs

    plot_runs(_load_runs(args.run_dirs), args.output)
    print(f"plot written to {args.output}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    """`hdbl schedule CONFIG|PRESET`: print the resolved stage table of a config (after --set overrides) or of
    a preset (no torch, no MPI)."""
    from pathlib import Path

    from hdbl_mpi.config import load_config
    from hdbl_mpi.datasets import native_resolution
    from hdbl_mpi.rules.schedule import format_schedule, from_config, preset

    if Path(args.target).is_file():
        config = load_config(args.target, args.set)
        print(format_schedule(from_config(config, native_resolution(config.data.name, config.data.synthetic))))
    else:
        print(format_schedule(preset(args.target)))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    """`hdbl doctor`: the checks of hdbl_mpi.launch.doctor; with --config, that config's data set must exist."""
    from hdbl_mpi.datasets import DATASET_NAMES
    from hdbl_mpi.launch.doctor import doctor

    datasets, data_dir = args.data or [n for n in DATASET_NAMES if n != "synthetic"], args.data_dir
    if args.config:
        from hdbl_mpi.config import load_config

        config = load_config(args.config, args.set)
        if config.data.name not in ("synthetic", "folder"):
            datasets, data_dir = [config.data.name], config.data.dir
    return doctor(datasets, data_dir, bool(args.config), args.json, _under_mpi())


def _evaluate(args: argparse.Namespace) -> int:
    """`hdbl evaluate`: test a checkpoint in one process."""
    import json

    from hdbl_mpi.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.target, args.config, args.set, args.resolution, args.device,
                                 args.batch_size)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['checkpoint']} (epoch {result['epoch']}, {result['mode']}): top-1 {result['top1']:.4f}, "
              f"loss {result['test_loss']:.4f} on {result['test_size']} {result['dataset']} test images at "
              f"{result['resolution']} px ({result['device']}, {result['seconds']:.1f} s)")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """`hdbl sweep`: a grid of runs over seeds, then the comparison (hdbl_mpi.sweep)."""
    from hdbl_mpi.sweep import sweep

    return sweep(args)


def _launch(args: argparse.Namespace) -> int:
    from hdbl_mpi.launch.job import launch

    return launch(args)


def _add_plan(sub) -> None:
    """`hdbl plan`'s flags: a stable interface for scripts."""
    plan = sub.add_parser("plan", help="the dual-batch plan (d_L, d_S, B_S, f per resolution) from a, b, B_L")
    plan.add_argument("--dataset-size", type=int, required=True, metavar="D", help="training-set size")
    plan.add_argument("--workers", type=int, required=True, metavar="n", help="workers (ranks minus the server)")
    plan.add_argument("--small", type=int, required=True, metavar="n_S", help="small-batch workers")
    plan.add_argument("--extra-time", type=float, default=1.05, metavar="t", help="t (default 1.05)")
    plan.add_argument("--resolutions", required=True, metavar="r1,r2,...", help="image resolutions")
    plan.add_argument("--batch-large", metavar="B1,B2,...", help="B_L per resolution (default: the profile's B_max)")
    plan.add_argument("--time-a", metavar="a1,a2,...", help="seconds per sample per resolution (tau = a*B + b)")
    plan.add_argument("--time-b", metavar="b1,b2,...", help="seconds per step per resolution")
    plan.add_argument("--factor", choices=("ratio", "sqrt", "none"), default="ratio",
                      help="model-update factor of small-batch pushes (default ratio = d_S/d_L)")
    plan.add_argument("--profile", metavar="FILE", help="take a, b and B_max from this `hdbl profile` file")
    plan.add_argument("--model", default="resnet18", help="model to look up in the profile (default resnet18)")
    plan.add_argument("--precision", default="fp32", choices=PRECISIONS, help="precision to look up")
    plan.add_argument("--device", help="device name to look up when the profile holds several")
    plan.add_argument("--per-worker", action="store_true",
                      help="each worker's share (dual.per_worker): from the profile's per-rank lines when it has "
                           "one per worker, else the plan's line for all")
    plan.add_argument("--slower", metavar="RANK=F,...", help="with the per-worker table: these workers' steps "
                      "take F times as long (what if worker 4 were twice as slow: 4=2)")
    plan.add_argument("--json", action="store_true", help="print one JSON object (a stable interface)")
    plan.set_defaults(func=_plan)


def _add_profile(sub) -> None:
    """`hdbl profile`'s flags: a model by name, or --config for the step a config trains."""
    prof = sub.add_parser("profile", help="measure step time tau(B) = a*B + b and B_max on this device")
    prof.add_argument("--config", metavar="CONFIG", help="profile the step this config trains, on its own data "
                      "(its model, precision, optimizer, memory format, compile and input pipeline)")
    prof.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    prof.add_argument("--model", help="model name (resnet18, resnet_small; default resnet18)")
    prof.add_argument("--resolutions", metavar="r1,r2,...", help="image resolutions to profile (with --config: "
                      "default its schedule's)")
    prof.add_argument("--precision", choices=PRECISIONS, help="fp32 (default), amp (CUDA only) or bf16")
    prof.add_argument("--device", default="auto", help="auto (a GPU per local rank if any), cpu, cuda, cuda:N")
    prof.add_argument("--classes", type=int, help="classifier outputs (default 100)")
    prof.add_argument("--channels", type=int, help="input channels (default 3)")
    prof.add_argument("--stem", choices=("auto", "cifar", "imagenet"), help="ResNet stem (default auto)")
    prof.add_argument("--batches", metavar="B1,B2,...", help="batch sizes to time (default: spread up to B_max)")
    prof.add_argument("--steps", type=int, default=20, help="timed steps per batch size (default 20)")
    prof.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per batch size (default 2)")
    prof.add_argument("--memory-budget", help="capacity for B_max on a CPU, e.g. 8GiB (GPUs use their memory)")
    prof.add_argument("--margin", type=float, default=0.9, help="fraction of the capacity B_max may use (0.9)")
    prof.add_argument("--max-batch", type=int, default=4096, help="never try batches above this (4096)")
    prof.add_argument("--threads", type=int, default=0, help="torch threads (0: cores / ranks on this host)")
    prof.add_argument("--output", default="profile.json", help="profile file to create or update")
    prof.add_argument("--plot", metavar="FILE.png", help="also plot time vs batch with the fit (matplotlib)")
    prof.set_defaults(func=_profile)


def build_parser() -> argparse.ArgumentParser:
    from hdbl_mpi.run_config import add_train_arguments

    parser = argparse.ArgumentParser(prog="hdbl", description=__doc__)
    sub = parser.add_subparsers(dest="subcommand", required=True)
    train = sub.add_parser("train", help="train under mpirun: rank 0 serves, the other ranks are workers")
    add_train_arguments(train)
    train.set_defaults(func=_train)

    _add_plan(sub)
    _add_profile(sub)

    report = sub.add_parser("report", help="epoch tables and a comparison of runs against a baseline")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--format", default="markdown", choices=("markdown", "csv", "json"))
    report.add_argument("--baseline", metavar="RUN_DIR", help="the run to compare against (default: the first)")
    report.set_defaults(func=_report)

    plot = sub.add_parser("plot", help="accuracy and loss vs epoch and wall time, and commit timelines (PNG)")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("-o", "--output", required=True, metavar="FILE.png")
    plot.set_defaults(func=_plot_cmd)

    schedule = sub.add_parser("schedule", help="print the resolved stage table of a config or a schedule preset")
    schedule.add_argument("target", metavar="CONFIG|PRESET", help="a YAML config, or cifar-paper, imagenet-paper, demo")
    schedule.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    schedule.set_defaults(func=_schedule)

    ev = sub.add_parser("evaluate", help="test a checkpoint (a run directory or checkpoint.pt), one process")
    ev.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    ev.add_argument("--config", help="the run's YAML (default: config.yaml beside the checkpoint)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    ev.add_argument("--resolution", type=int, help="test resolution (default: the schedule's top one)")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ev.add_argument("--batch-size", type=int, help="evaluation batch (default eval.batch_size)")
    ev.add_argument("--json", action="store_true", help="one JSON object")
    ev.set_defaults(func=_evaluate)

    doc = sub.add_parser("doctor", help="what this node (every host, under mpirun) has and lacks, with fixes")
    doc.add_argument("--config", help="also require this config's data set on every host")
    doc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    doc.add_argument("--data", action="append", metavar="NAME", help="data sets to look for (default: all)")
    doc.add_argument("--data-dir", help="where to look first (as data.dir)")
    doc.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    doc.set_defaults(func=_doctor)

    from hdbl_mpi.sweep import add_arguments as sweep_arguments

    sweep = sub.add_parser("sweep", help="a grid of runs over seeds (workstation or SLURM array), then the comparison")
    sweep_arguments(sweep)
    sweep.set_defaults(func=_sweep)

    from hdbl_mpi.launch.job import add_arguments

    launch = sub.add_parser("launch", help="start a command on hosts with mpirun, horovodrun or srun (checked first)")
    add_arguments(launch)
    launch.set_defaults(func=_launch)
    return parser


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["train"]:
        from hdbl_mpi.run.signals import STOP

        STOP.install()  # first: a stop signal while the rank starts (SLURM's may come early) must not kill it
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HdblError as err:  # an error the user can fix: one paragraph that says what to do, exit code 2
        print(f"hdbl {args.subcommand}: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
