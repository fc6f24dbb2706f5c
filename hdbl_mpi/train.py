"""`hdbl train`: set up every rank, agree that set-up worked, then run the server or a worker.

Set-up errors (bad config, wrong world size, missing data, impossible plan) are gathered with one allgather
on COMM_WORLD, so every rank learns that the job cannot start and exits with code 2: no rank is left waiting
in a collective. After set-up, an exception on any rank aborts the whole job (see cli.py).
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import mpi4py
import numpy as np
import torch
from mpi4py import MPI

from hdbl_mpi import __version__
from hdbl_mpi.comm.wire import FlatState
from hdbl_mpi.comm.world import SHARD, World, make_world, threads_per_rank
from hdbl_mpi.config import Config, dump_config, has_server
from hdbl_mpi.data import load_dataset
from hdbl_mpi.data.sources import DataInfo, open_source
from hdbl_mpi.engine import gpu_slot, launcher_local_rank, pick_device, wants_gpu
from hdbl_mpi.errors import ConfigError, HdblError, SetupError
from hdbl_mpi.models import build_model
from hdbl_mpi.plan import Plan, make_plan, plan_summary
from hdbl_mpi.profiles import average_entries, lookup, save_profile
from hdbl_mpi.ps.server import Evaluator, Server, ServerState
from hdbl_mpi.ps.shards import Layout, serve_shard
from hdbl_mpi.schedule import Schedule
from hdbl_mpi.schedule import from_config as schedule_from_config
from hdbl_mpi.ps.worker import run_worker
from hdbl_mpi.run import rundir
from hdbl_mpi.startup import SharedConfig


def _agree(comm: MPI.Intracomm, error: BaseException | None, value) -> list:
    """Allgather each rank's (error, value); raise the same HdblError on every rank if any rank failed."""
    message = None
    if error is not None:
        message = str(error) if isinstance(error, HdblError) else f"{type(error).__name__}: {error}"
    gathered = comm.allgather((message, value))
    failures = [(rank, msg) for rank, (msg, _) in enumerate(gathered) if msg is not None]
    if failures:
        by_message: dict[str, list[int]] = {}
        for rank, msg in failures:
            by_message.setdefault(msg, []).append(rank)
        everyone = len(by_message) == 1 and len(failures) == comm.size
        lines = [msg if everyone else f"(rank {', '.join(map(str, ranks))}) {msg}" for msg, ranks in by_message.items()]
        raise SetupError("\n".join(lines))
    return [v for _, v in gathered]


def _versions() -> dict:
    return {
        "hdbl_mpi": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi_library": MPI.Get_library_version().splitlines()[0].strip(" \x00"),
        "mpi_standard": "{}.{}".format(*MPI.Get_version()),
    }


def run_facts(config: Config, world: World, schedule: Schedule, plans: dict[int, Plan], data: DataInfo,
              dataset_size: int, infos: list, flat: FlatState) -> dict:
    """The part of summary.json every mode shares: what ran, on what, where. `infos` are the per-rank tuples
    agreed at set-up (train size, native resolution, host:device, threads, decoder, skipped files, local-rank
    source)."""
    resolutions = sorted(plans)
    return {
        "world_size": world.size,
        "resolutions": resolutions,
        "schedule": [asdict(s) for s in schedule.stages],
        "dataset": {"name": data.name, "train_size": dataset_size, "test_size": data.test_size,
                    "source": data.source, "classes": data.num_classes},
        "decoding": {str(rank): info[4] for rank, info in enumerate(infos)},  # in-memory, dali-*, torchvision
        "skipped_files": sorted({f for info in infos for f in info[5]}),
        "model": {"name": config.model.name, "parameters_and_buffers": flat.numel, "bytes": flat.nbytes},
        "plan": plans[resolutions[-1]].to_dict(),  # at the top resolution; "plans" has every resolution
        "plans": plan_summary([plans[r] for r in resolutions], resolutions),
        "devices": {str(rank): {"device": info[2], "threads": info[3], "local_rank_from": info[6]}
                    for rank, info in enumerate(infos)},
        "host": socket.gethostname(),
        "versions": _versions(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _place(world: World, config: Config) -> tuple[torch.device, str]:
    """This rank's device and where its local rank came from. Workers use train.device, the server ps.device
    (CPU by default: it only merges, and evaluates), a shard server the CPU (it only merges). Ranks that take a
    GPU in turn share out their host's GPUs in the order of the launcher's local ranks."""
    requested = config.ps.device if world.is_server else "cpu" if world.role == SHARD else config.train.device
    found = launcher_local_rank(dict(os.environ))
    local_rank, source = found if found else (world.local_rank, "MPI shared-memory split")
    peers = world.local_comm.allgather((local_rank, wants_gpu(requested)))
    return pick_device(requested, gpu_slot(local_rank, peers)), source


def _timeout(config: Config, plans: dict[int, Plan]) -> float:
    """Longest wait for any message: the configured one, else 600 s plus 20 of the longest planned commits."""
    if config.ps.timeout_s > 0:
        return config.ps.timeout_s
    predicted = [p.epoch_time for p in plans.values() if p.epoch_time is not None]
    return 600.0 + 20.0 * max(predicted, default=0.0)


def _load_data(world: World, config: Config, device: torch.device, seed: int) -> tuple[DataInfo, object]:
    """The servers need the test split (only rank 0 evaluates; shard servers open it to check the same files), a
    worker the training split. A download (only when data.download is set) is made by one rank per host while
    the host's other ranks wait, so they never race on the files."""
    c = config.data
    if c.download and c.name.lower() != "folder":
        if world.local_rank == 0:
            try:
                load_dataset(c.name, c.dir, True, synthetic=c.synthetic)
            finally:
                world.local_comm.Barrier()
        else:
            world.local_comm.Barrier()
    return open_source(config, train=world.is_worker, device=device, seed=seed)


def _auto_profile(config: Config, data: DataInfo, resolution: int, device: torch.device,
                  ranks_on_host: int, model_resolution: int) -> dict:
    """`profile: auto`: measure tau(B) and B_max of this worker's device at one of the run's resolutions. All
    workers do it at once, so the timings include the contention of the real run on shared hosts."""
    from hdbl_mpi.profile import parse_bytes, profile_resolution

    budget = None
    if device.type == "cpu":
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        budget = parse_bytes(config.dual.memory_budget) if config.dual.memory_budget else total // ranks_on_host
    c = config.model
    entry = profile_resolution(
        lambda: build_model(c.name, data.num_classes, data.channels, model_resolution, c.stem, c.dropout, c.width),
        data.num_classes, data.channels, resolution, device, "fp32", steps=config.dual.profile_steps, warmup=1,
        memory_budget=budget, max_batch=min(config.dual.profile_max_batch, config.dual.batch_large or 1 << 30),
    )
    entry["model"] = c.name
    return entry


def _make_plan(config: Config, dataset_size: int, profile_entry: dict | None, index: int, count: int) -> Plan:
    """The plan of the `index`-th of `count` resolutions. Explicit config values win (one value for every
    resolution, or a list with one per resolution); the profile fills in B_L (its B_max), a and b."""
    d = config.dual

    def pick(value, key: str):
        if isinstance(value, list):
            if len(value) != count:
                raise ConfigError(f"dual.{'batch_large' if key == 'b_max' else 'time_' + key} has {len(value)} "
                                  f"values but the schedule has {count} resolutions; give one per resolution.")
            return value[index]
        return value if value is not None or profile_entry is None else profile_entry[key]

    return make_plan(dataset_size, d.workers, d.small, pick(d.batch_large, "b_max"), pick(d.time_a, "a"),
                     pick(d.time_b, "b"), d.extra_time, d.factor)


def _prepare_run_dir(run_path: Path, checkpoint: str | None, config: Config, schedule: Schedule,
                     plans: dict[int, Plan], flat: FlatState, measured_profile: list[dict]) -> ServerState:
    """Server only: create the run directory, load the checkpoint when resuming, write config, plan and the
    profile measured at start-up."""
    state = ServerState()
    run_path.mkdir(parents=True, exist_ok=True)
    if measured_profile:
        save_profile(run_path / rundir.PROFILE, measured_profile)
    if checkpoint:
        state = ServerState(**rundir.restore_checkpoint(Path(checkpoint), flat.vector))
        n = config.dual.workers
        if state.early_stopped_at is not None:
            raise HdblError(f"{run_path} stopped early after epoch {state.early_stopped_at} "
                            "(train.early_stop_patience); there is nothing to resume.")
        if state.merged >= schedule.epochs * n:
            raise HdblError(
                f"{run_path} already finished its {state.merged // n} epochs; to train longer, resume with "
                f"--set train.epochs=N (N > {schedule.epochs})."
            )
        state.restarts.append({"at_commit": state.merged, "epoch": state.merged // n,
                               "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    rundir.atomic_write_text(run_path / rundir.CONFIG, dump_config(config))
    resolutions = sorted(plans)
    rundir.write_json(run_path / rundir.PLAN, plan_summary([plans[r] for r in resolutions], resolutions))
    return state


def train(shared: SharedConfig, resume: bool, verbose: bool) -> int:
    """Run the job of `shared` (the config rank 0 read and every rank received, see hdbl_mpi.startup)."""
    comm = MPI.COMM_WORLD
    t_wall = shared.t_start
    config, chosen_dir, checkpoint, stored_profile = shared.config, shared.run_dir, shared.checkpoint, shared.profile
    if not has_server(config):  # allreduce / localsgd: every rank a worker
        from hdbl_mpi.baselines.peer import train_peers

        return train_peers(comm, config, chosen_dir, checkpoint, resume, t_wall)

    # 2. Local set-up on every rank, then agreement.
    world: World | None = None
    data: DataInfo | None = None
    source = None
    device = torch.device("cpu")
    failure: BaseException | None = None
    try:
        world = make_world(config.dual.workers, config.dual.small, comm, config.ps.servers)
        torch.set_num_threads(threads_per_rank(world.local_size, config.train.threads))
        torch.manual_seed(config.train.seed)
        device, local_source = _place(world, config)
        seed = config.train.seed * 1_000_003 + comm.rank * 7919 + (1 if resume else 0) * 104_729
        data, source = _load_data(world, config, device, seed)
    except Exception as err:  # reported on every rank by _agree
        failure = err
    mine = None if data is None else (data.train_size, data.native_resolution,
                                      f"{socket.gethostname()}:{device}", torch.get_num_threads(), data.decoder,
                                      data.skipped, local_source)
    sizes = _agree(comm, failure, mine)
    worker_sizes = {s[0] for s in sizes[1:config.dual.workers + 1]}
    if len(worker_sizes) != 1:
        raise SetupError(f"the workers see training sets of different sizes {sorted(worker_sizes)}; "
                        "point data.dir at the same files on every host.")
    dataset_size = worker_sizes.pop()
    assert world is not None and data is not None
    try:
        schedule = schedule_from_config(config, sizes[0][1])
    except HdblError as err:  # identical on every rank
        raise SetupError(str(err)) from None
    resolutions = schedule.resolutions
    top = resolutions[-1]  # the model's stem is chosen for the top resolution; final evaluation happens there

    # 3. The step-time model per resolution: measured now by every worker (profile: auto), or from a profile.
    entries: list[dict | None] = [None] * len(resolutions)
    if config.dual.profile == "auto" and stored_profile is None:
        local, failure = None, None
        if world.is_worker:
            try:
                local = [_auto_profile(config, data, r, device, world.local_size, top) for r in resolutions]
            except Exception as err:
                failure = err
        per_rank = [e for e in _agree(comm, failure, local) if e is not None]
        entries = [average_entries([rank_entries[i] for rank_entries in per_rank]) for i in range(len(resolutions))]

    # 4. Plans and model on every rank; the server also prepares the run directory and, when resuming, loads
    #    the checkpoint. One more agreement, so a failure on any rank stops every rank cleanly.
    state, failure = ServerState(), None
    plans: dict[int, Plan] = {}
    model = flat = layout = None
    try:
        if stored_profile is not None:
            entries = [lookup(stored_profile, config.model.name, r, "fp32", config.dual.profile_device,
                              torch.__version__) for r in resolutions]
        plans = {r: _make_plan(config, dataset_size, entries[i], i, len(resolutions))
                 for i, r in enumerate(resolutions)}
        model = build_model(config.model.name, data.num_classes, data.channels, top, config.model.stem,
                            config.model.dropout, config.model.width).to(device)
        flat = FlatState(model)
        layout = Layout.make(flat.numel, config.dual.workers, config.ps.servers)
        if world.is_server:
            state = _prepare_run_dir(Path(chosen_dir), checkpoint, config, schedule, plans, flat,
                                     [e for e in entries if e is not None] if stored_profile is None else [])
    except Exception as err:
        failure = err
    _agree(comm, failure, None)
    assert plans and model is not None and flat is not None and layout is not None
    plan = plans[top]

    # 5. Everyone starts from the server's weights and control state.
    comm.Bcast(flat.to_host(), root=0)
    flat.from_host()
    control = comm.bcast({"epoch": state.merged // config.dual.workers, "restarts": state.restarts,
                          "batch_small": {str(r): state.batch_small.get(str(r), p.batch_small)  # keeps replans
                                          for r, p in plans.items()}}
                         if world.is_server else None, root=0)
    timeout_s = _timeout(config, plans)

    if world.role == SHARD:
        _, start, end = next(part for part in layout.parts if part[0] == world.rank)
        serve_shard(comm, flat.host, start, end, timeout_s)
        return 0
    if not world.is_server:
        run_worker(world, config, schedule, plans, model, flat, source, device, control, timeout_s, verbose, layout)
        return 0

    run_path = Path(chosen_dir)
    evaluator = Evaluator(model, source, config.eval.batch_size, device)
    # The global model lives on the host, where MPI receives and merges; the model's own vector (on ps.device)
    # becomes the evaluator's staging area.
    weights = flat.vector.detach().to("cpu", copy=True)
    server = Server(world, config, schedule, plans, weights, run_path, evaluator, state, timeout_s, layout)
    server.progress.line(
        f"hdbl train: {world.size} ranks ({config.ps.servers} server{'s' if config.ps.servers > 1 else ''}, "
        f"{plan.small} small-batch, {plan.large} large-batch workers), "
        f"mode {config.ps.mode}, D={dataset_size}, d_L={plan.d_large} B_L={plan.batch_large}"
        + (f", d_S={plan.d_small} B_S={plan.batch_small} f={plan.factor_small:.4f}" if plan.small else "")
        + f", {schedule.epochs} epochs in {len(schedule.stages)} stage(s) at {'/'.join(map(str, resolutions))} px"
        + f", run dir {run_path}"
    )
    try:
        server.serve()
    finally:
        server.close()
    figures = server.final_figures()
    summary = {
        **figures,
        "wall_time_s": state.wall_time_s + time.perf_counter() - t_wall,
        "mode": config.ps.mode,
        "merge": config.ps.merge,
        "resume_policy": "global weights, server counters and epoch history come from the checkpoint; worker "
                         "momentum buffers restart from zero and worker RNGs are reseeded from (seed, rank, "
                         "resumed or not)",
        **run_facts(config, world, schedule, plans, data, dataset_size, sizes, flat),
    }
    rundir.write_json(run_path / rundir.SUMMARY, summary)
    if summary["stalled_workers"]:  # finished without them; they cannot be waited for at MPI_Finalize
        print(f"hdbl train: finished without stalled rank(s) {summary['stalled_workers']} (see summary.json); "
              "ending the job with code 3 because they never returned", file=sys.stderr, flush=True)
        comm.Abort(3)
    print(f"hdbl train: done: final top-1 {summary['final_top1']:.4f}, best {summary['best_top1']:.4f}, train "
          f"{summary['train_time_s']:.1f} s, eval {summary['eval_time_s']:.1f} s, wall {summary['wall_time_s']:.1f} s; "
          f"{summary['commits_total']} commits -> {run_path / rundir.SUMMARY}", flush=True)
    return 0
