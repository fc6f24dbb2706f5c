"""The parameter-server modes (ASP, BSP, SSP; method §3): this rank's part after the shared set-up.

Rank 0 serves (hdbl_mpi.ps.server), ranks 1..n train (hdbl_mpi.ps.worker), and with sharded servers ranks
n+1..n+k-1 merge their slices (hdbl_mpi.ps.shards).
"""

from __future__ import annotations

import time

from hdbl_mpi.comm.world import SHARD, SPARE, World
from hdbl_mpi.ps.assign import Assignments
from hdbl_mpi.ps.evaluator import Evaluator
from hdbl_mpi.ps.failures import EveryWorkerLost
from hdbl_mpi.ps.server import Server
from hdbl_mpi.ps.shards import serve_shard
from hdbl_mpi.ps.spare import take_role
from hdbl_mpi.ps.state import ServerState
from hdbl_mpi.ps.worker import Worker
from hdbl_mpi.rules.plan import Plan
from hdbl_mpi.rules.schedule import Schedule
from hdbl_mpi.rules.worker_plan import format_worker_plan
from hdbl_mpi.run import rundir
from hdbl_mpi.run.book import RunResult, Stopped
from hdbl_mpi.run.records import from_mapping
from hdbl_mpi.run.slow import make_slowdown
from hdbl_mpi.schema import Config
from hdbl_mpi.startup import RunSetup

RESUME_POLICY = ("global weights, server counters and epoch history come from the checkpoint, and each worker's "
                 "optimizer state, random-number generators and data stream from its rank file "
                 "(checkpoint-ranks/); a worker without one starts with fresh momentum and reseeded RNGs")


def timeout_for(timeout_s: float, plans: dict[int, Plan]) -> float:
    """Longest wait for any message: the configured one, else 600 s plus 20 of the longest planned commits."""
    if timeout_s > 0:
        return timeout_s
    predicted = [p.epoch_time for p in plans.values() if p.epoch_time is not None]
    return 600.0 + 20.0 * max(predicted, default=0.0)


def run_parameter_server(setup: RunSetup, verbose: bool) -> RunResult | Stopped | None:
    """Serve, train or merge a shard, as this rank's role says; the server returns the run's result."""
    world, config, layout = setup.world, setup.config, setup.layout
    assert layout is not None
    timeout_s = timeout_for(config.ps.timeout_s, setup.plans)
    if world.role == SHARD:
        _, start, end = next(part for part in layout.parts if part[0] == world.rank)
        serve_shard(world.comm, setup.flat.host, start, end, timeout_s, layout.split(start), config.ps.outer_momentum,
                    config.ps.outer_delayed)
        return None
    if world.is_worker:
        _worker(setup, world, timeout_s, verbose).run()
        return None
    if world.role == SPARE:
        taken = take_role(setup)
        if taken is not None:
            _worker(setup, taken.world, timeout_s, verbose, taken.replaces).run(taken.start_header)
        return None
    return _serve(setup, timeout_s)


def _worker(setup: RunSetup, world: World, timeout_s: float, verbose: bool, replaces: int | None = None) -> Worker:
    """A worker rank's loop, or a spare's once it took a lost worker's role (it starts with fresh momentum)."""
    config = setup.config
    assert setup.train_source is not None
    slowdown = make_slowdown(config.debug.slow, world.rank, world.rank - 1, setup.t_start, setup.plans)
    return Worker(world, config, setup.model, setup.flat, setup.train_source, setup.device, timeout_s, verbose,
                  setup.layout, None if replaces else setup.rank_state, setup.warm_up, slowdown, setup.resumed,
                  replaces)


def _serve(setup: RunSetup, timeout_s: float) -> RunResult | Stopped:
    config, n = setup.config, setup.config.dual.workers
    state = from_mapping(ServerState, setup.restored) if setup.restored else ServerState()
    workers = list(range(1, n + 1))
    assign = Assignments(config, setup.schedule, setup.plans, state, workers, setup.worker_lines)
    assign.send_first(setup.world.comm, workers)  # the workers start while the server builds itself
    assert setup.test_source is not None
    evaluator = Evaluator(setup.model, setup.test_source, config.eval.batch_size, setup.device)
    # The global model lives on the host, where MPI receives and merges; the model's own vector (on ps.device)
    # becomes the evaluator's staging area.
    weights = setup.flat.snapshot()
    server = Server(setup.world, config, setup.schedule, setup.plans, weights, setup.run_dir, evaluator, state,
                    timeout_s, setup.layout, assign, setup.flat.layout())
    if setup.restored and "outer_velocity" in setup.restored:
        server.own.velocity = setup.restored["outer_velocity"].clone()
    server.line(_start_line(setup))
    if assign.shares is not None:
        top = setup.top
        server.line("hdbl train: shares per worker and epoch (dual.per_worker), " +
                    format_worker_plan(assign.shares[top], top))
    lost = None
    try:
        server.serve()
    except EveryWorkerLost as err:
        lost = str(err)
        server.line(f"hdbl train: {lost} Evaluating the weights merged so far for the summary.")
        server.end_without_workers()
    finally:
        server.close()
    if server.epochs.interrupted:
        return Stopped(f"commit {state.merged} (epoch {server.lengths.position(state.merged):.2f})", setup.run_dir)
    wall = state.wall_time_s + time.perf_counter() - setup.t_start
    policy = RESUME_POLICY + ("; with sharded servers the outer momentum restarts from zero"
                              if config.ps.outer_momentum and config.ps.servers > 1 else "")
    outcome = server.epochs.book.outcome(config.ps.mode, server.elapsed_train(), wall,
                                         server.lengths.done(state.merged), policy)
    result = RunResult(outcome, server.mode_figures(), f"{state.merged} commits")
    stalled = sorted(server.roster.stalled)
    if lost is not None:  # a summary that says what the weights are worth, marked so that the run is resumed
        result.figures[rundir.INCOMPLETE] = result.incomplete = lost
    elif stalled:  # finished without them; they cannot be waited for at MPI_Finalize
        result.abort_code = 3
        result.abort_reason = (f"finished without stalled rank(s) {stalled} (see summary.json); ending the job with "
                               "code 3 because they never returned")
    return result


def _start_line(setup: RunSetup) -> str:
    config, schedule = setup.config, setup.schedule
    plan, servers = setup.plans[setup.top], config.ps.servers
    return (f"hdbl train: {setup.world.size} ranks ({servers} server{'s' if servers > 1 else ''}, "
            f"{plan.small} small-batch, {plan.large} large-batch workers), mode {config.ps.mode}, "
            f"D={setup.dataset_size}, d_L={plan.d_large} B_L={plan.batch_large}"
            + (f", d_S={plan.d_small} B_S={plan.batch_small} f={plan.factor_small:.4f}" if plan.small else "")
            + f", {_commits_text(config, schedule)} per worker and epoch{_interval_text(setup)}, merge "
            f"{_merge_text(config)}"
            + f", {schedule.epochs} epochs in {len(schedule.stages)} stage(s) at "
            f"{'/'.join(map(str, schedule.resolutions))} px, run dir {setup.run_dir}")


def _commits_text(config: Config, schedule: Schedule) -> str:
    """'16 commit(s)', or with a k per resolution '8/16 commits at 20/28 px'."""
    k = config.dual.commits_per_epoch
    if not isinstance(k, list):
        return f"{k} commit(s)"
    return f"{'/'.join(map(str, k))} commits at {'/'.join(map(str, schedule.resolutions))} px"


def _interval_text(setup: RunSetup) -> str:
    chosen = setup.startup.commit_interval if setup.startup else None
    if not chosen:
        return ""
    text = f" (dual.commit_interval {chosen['asked']}"
    if chosen["exchange_s"] is not None:
        ks = chosen["k"] if isinstance(chosen["k"], list) else [chosen["k"]] * len(chosen["resolutions"])
        commits = "/".join(f"{e / k:.3g}" for e, k in zip(chosen["epoch_s"], ks, strict=True))
        shares = "/".join(f"{100 * s:.1f}" for s in chosen["share"])
        text += f": exchange {1e3 * chosen['exchange_s']:.1f} ms, {shares} % of a {commits} s commit"
    return text + ")"


def _merge_text(config: Config) -> str:
    ps = config.ps
    decay = f", staleness decay {ps.staleness_decay:g}" if ps.staleness_decay else ""
    if ps.merge != "delta":
        return ps.merge + decay
    lr = ps.outer_lr or 1.0 / config.dual.workers
    momentum = f", momentum {ps.outer_momentum:g}" + (" once per round" if ps.outer_delayed else "")
    return f"delta (outer lr {lr:g}" + (momentum if ps.outer_momentum else "") + ")" + decay
