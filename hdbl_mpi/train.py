"""`hdbl train`: the shared set-up (hdbl_mpi.startup), then the mode's trainer, then the run's summary.

Parameter-server modes (asp, bsp, ssp) run in hdbl_mpi.ps, the data-parallel baselines (allreduce, localsgd) in
hdbl_mpi.baselines; both return a :class:`~hdbl_mpi.run.book.RunResult` on the rank that owns the run
directory, and this module writes summary.json and the final line for every mode alike. After set-up, an
exception on any rank aborts the whole job (see cli.py).
"""

from __future__ import annotations

import sys

from mpi4py import MPI

from hdbl_mpi.run import rundir
from hdbl_mpi.run.book import RunResult, Stopped
from hdbl_mpi.run.facts import run_facts
from hdbl_mpi.run.records import Summary
from hdbl_mpi.schema import has_server
from hdbl_mpi.startup import RunSetup, SharedConfig, set_up


def train(shared: SharedConfig, resume: bool, verbose: bool, plan_only: bool = False) -> int:
    """Run the job of `shared` (the config rank 0 read and every rank received, see hdbl_mpi.startup); with
    `plan_only`, stop after the set-up (profile: auto included) and print the plan it made."""
    setup = set_up(shared, resume)
    if plan_only:
        if setup.world.rank == 0:
            print_plan(setup)
        return 0
    if has_server(setup.config):
        from hdbl_mpi.ps.run import run_parameter_server

        result = run_parameter_server(setup, verbose)
    else:
        from hdbl_mpi.baselines.peer import run_data_parallel

        result = run_data_parallel(setup)
    if isinstance(result, Stopped):
        from hdbl_mpi.run.signals import EXIT_STOPPED, STOP

        if setup.world.rank == 0:
            print(result.line(STOP.name()), flush=True)
        return EXIT_STOPPED
    return finish(setup, result) if result is not None else 0


def print_plan(setup: RunSetup) -> None:
    from hdbl_mpi.rules.plan import format_plan

    resolutions = sorted(setup.plans)
    print(format_plan([setup.plans[r] for r in resolutions], resolutions))
    if setup.config.dual.per_worker:
        from hdbl_mpi.rules.worker_plan import format_worker_plan, plans_per_worker

        per = plans_per_worker(setup.plans, setup.worker_lines)
        print("Shares per worker and epoch (dual.per_worker):\n"
              + "\n".join(format_worker_plan(per[r], r) for r in resolutions))
    print(f"hdbl train: plan only: {setup.run_dir / rundir.PLAN}"
          + (f", measured profile {setup.run_dir / rundir.PROFILE}" if (setup.run_dir / rundir.PROFILE).is_file()
             else ""), flush=True)


def finish(setup: RunSetup, result: RunResult) -> int:
    """Write summary.json and print the run's last line (or end the job with the result's abort code); return
    the exit code: 0, or 1 for a run that ended incomplete (its summary says why)."""
    summary = Summary(result.outcome, run_facts(setup), result.figures)
    path = setup.run_dir / rundir.SUMMARY
    rundir.write_summary(path, summary)
    if result.abort_code is not None:
        print(f"hdbl train: {result.abort_reason}", file=sys.stderr, flush=True)
        MPI.COMM_WORLD.Abort(result.abort_code)
    o = result.outcome
    if result.incomplete:
        print(f"hdbl train: incomplete: {result.incomplete} The weights merged so far reach top-1 "
              f"{o.final_top1:.4f}; summary (marked incomplete): {path}", file=sys.stderr, flush=True)
        return 1
    print(f"hdbl train: done: final top-1 {o.final_top1:.4f}, best {o.best_top1:.4f}, train {o.train_time_s:.1f} s, "
          f"eval {o.eval_time_s:.1f} s, wall {o.wall_time_s:.1f} s; {result.done} -> {path}", flush=True)
    return 0
