"""The data-parallel baselines without a server: synchronous allreduce SGD and LocalSGD (with SlowMo).

Every rank is a worker with the large batch B_L. An epoch is the same amount of data as in the
parameter-server modes (each worker trains its share d_L of the training set, round(d_L / B_L) steps), on the
same model, data, schedule, optimizer and LR rules, and the run directory has the same files, so
`hdbl report` compares a baseline with the hybrid method one to one.

- allreduce: gradients are averaged every step, over mpi4py (bucketed, overlapped with backward) or through
  Horovod's DistributedOptimizer (`ps.backend`).
- localsgd: each worker takes H local steps, then the models (parameters and BatchNorm statistics) are averaged;
  H follows `local.strategy`, and SlowMo (`local.slowmo_beta`, `local.slowmo_alpha`) can act on the average. A
  round also ends at the end of an epoch, so every epoch ends with one model to evaluate.

Rank 0 owns the run directory and evaluates; the other ranks wait for its verdict (the evaluation time is
counted apart from training time, as in the parameter-server modes).
"""

from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI

from hdbl_mpi.baselines.allreduce import HorovodAllreduce, Mpi4pyAllreduce, average_vector, horovod_importable
from hdbl_mpi.comm.wire import FlatState
from hdbl_mpi.comm.world import World, make_peer_world, threads_per_rank
from hdbl_mpi.config import Config, dump_config
from hdbl_mpi.engine import evaluate, train_steps
from hdbl_mpi.errors import HdblError, SetupError
from hdbl_mpi.local_steps import LocalSteps, make_local_steps, slowmo_update
from hdbl_mpi.models import build_model, set_dropout
from hdbl_mpi.optim import EarlyStopping, optimizer_for, scheduled_lr
from hdbl_mpi.plan import Plan, plan_summary, round_half_up
from hdbl_mpi.run import rundir
from hdbl_mpi.run.progress import Progress
from hdbl_mpi.run.scalars import Scalars
from hdbl_mpi.schedule import Schedule
from hdbl_mpi.schedule import from_config as schedule_from_config


@dataclass
class PeerState:
    """What a checkpoint keeps besides the weights (plain types and tensors: torch.load(weights_only=True))."""

    epoch: int = 0
    history: list = field(default_factory=list)
    best_top1: float | None = None
    final_top1: float | None = None
    final_loss: float | None = None
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    wall_time_s: float = 0.0
    syncs: int = 0  # gradient allreduces (allreduce) or model averagings (localsgd)
    restarts: list = field(default_factory=list)
    local_steps: dict = field(default_factory=dict)  # the H strategy's state
    h_history: list = field(default_factory=list)  # (epoch, H) each time H changed
    early_stopping: dict = field(default_factory=dict)
    early_stopped_at: int | None = None
    optimizer: dict = field(default_factory=dict)  # rank 0's optimizer state (equal on all ranks in allreduce)


def _backend(config: Config) -> str:
    """allreduce: Horovod when asked, or on auto when horovod.torch imports; mpi4py otherwise. localsgd needs
    no gradient exchange."""
    if config.ps.mode != "allreduce":
        return "none"
    if config.ps.backend == "horovod" and not horovod_importable():
        raise HdblError("ps.backend is horovod but horovod.torch does not import here; build it with "
                        "launchers/install_horovod.sh, or set ps.backend=mpi4py (or auto).")
    if config.ps.backend == "auto":
        return "horovod" if horovod_importable() else "mpi4py"
    return config.ps.backend


class PeerTrainer:
    """One rank of a data-parallel run; every rank runs the same loop and meets the others in collectives."""

    def __init__(self, world: World, config: Config, schedule: Schedule, plans: dict[int, Plan], model, flat,
                 source, test_source, device: torch.device, state: PeerState, run_dir: Path, backend: str) -> None:
        self.world, self.comm, self.config, self.schedule, self.plans = world, world.comm, config, schedule, plans
        self.model, self.flat, self.source, self.test_source, self.device = model, flat, source, test_source, device
        self.state, self.run_dir, self.backend = state, run_dir, backend
        self.is_root = world.rank == 0
        t = config.train
        self.optimizer = optimizer_for(model, t)
        if state.optimizer:
            self.optimizer.load_state_dict(state.optimizer)
        self.exchange = None
        self.horovod: HorovodAllreduce | None = None
        if backend == "mpi4py":
            self.exchange = Mpi4pyAllreduce(model, self.comm, config.ps.bucket_mb)
        elif backend == "horovod":
            self.horovod = HorovodAllreduce(self.comm)
            self.optimizer = self.horovod.wrap(model, self.optimizer)
        self.strategy: LocalSteps | None = None
        if config.ps.mode == "localsgd":
            c = config.local
            self.strategy = make_local_steps(c.strategy, c.h, c.h_min, c.h_max, schedule.epochs, **c.options)
            if state.local_steps:
                self.strategy.load_state_dict(state.local_steps)
            self.h = state.h_history[-1][1] if state.h_history else self.strategy.next_h(0, state.epoch, None)
            if not state.h_history:
                state.h_history.append([state.epoch, self.h])
            self.round_start = flat.to_host().copy()  # x_prev of SlowMo: the model every worker started from
            self.slow_buffer = torch.zeros(flat.numel)
        self.stopper = EarlyStopping(t.early_stop_patience, t.early_stop_min_delta)
        if state.early_stopping:
            self.stopper.load_state_dict(state.early_stopping)
        self.records: list[dict] = []
        self.host = socket.gethostname()
        self.t_start = time.perf_counter()
        n = world.size
        self.progress = Progress(schedule.epochs * n, state.epoch * n, n,
                                 run_dir / rundir.LOG if self.is_root else None, interactive=False)
        self.scalars = Scalars(run_dir / rundir.TENSORBOARD) if self.is_root else None
        self.commit_log = rundir.CommitLog(run_dir / rundir.COMMITS) if self.is_root else None

    # -- LocalSGD rounds ---------------------------------------------------------------------------------------
    def _average_models(self, epoch_f: float, round_loss: float, round_samples: int, lr: float) -> None:
        """End a LocalSGD round: average the models (SlowMo on top when configured) and pick the next H (not
        after the run's last round, so the recorded H values are the ones that ran)."""
        st, c = self.state, self.config.local
        host = self.flat.to_host()
        totals = np.array([round_loss, round_samples], dtype=np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, totals, op=MPI.SUM)
        average_vector(self.comm, host)
        if c.slowmo:
            x = torch.from_numpy(self.round_start)
            slowmo_update(x, torch.from_numpy(host), self.slow_buffer, c.slowmo_beta, c.slowmo_alpha, lr)
            host[:] = self.round_start
        else:
            self.round_start[:] = host
        self.flat.from_host()
        st.syncs += 1
        assert self.strategy is not None
        if epoch_f >= self.schedule.epochs:
            return
        h = self.strategy.next_h(st.syncs, epoch_f, float(totals[0] / max(totals[1], 1.0)))
        if h != self.h:
            st.h_history.append([round(epoch_f, 4), h])
        self.h = h

    # -- one epoch ---------------------------------------------------------------------------------------------
    def _epoch(self, epoch: int) -> dict:
        st, t = self.state, self.config.train
        stage = self.schedule.at(epoch)
        index = self.schedule.index_at(epoch)
        plan = self.plans[stage.resolution]
        batch = plan.batch_large
        steps = max(1, round_half_up(plan.share("large")[0] / batch))
        set_dropout(self.model, stage.dropout)
        exchange_s = 0.0
        round_state = {"steps": 0, "loss": torch.zeros((), device=self.device), "samples": 0}

        def lr_of_step(i: int) -> float:
            return scheduled_lr(t, self.schedule, epoch + i / steps)

        def after_step(done: int, loss: torch.Tensor, samples: int) -> None:
            nonlocal exchange_s
            round_state["steps"] += 1
            round_state["loss"] += loss * samples
            round_state["samples"] += samples
            if round_state["steps"] >= self.h or done == steps:
                start = time.perf_counter()
                self._average_models(epoch + done / steps, float(round_state["loss"]), round_state["samples"],
                                     lr_of_step(done - 1))
                exchange_s += time.perf_counter() - start
                round_state.update(steps=0, loss=torch.zeros((), device=self.device), samples=0)

        wait_before = getattr(self.exchange, "wait_s", 0.0)
        stats = train_steps(self.model, self.optimizer, self.source, steps, batch, stage.resolution, self.device,
                            exchange=self.exchange, lr_of_step=lr_of_step,
                            after_step=after_step if self.strategy is not None else None)
        inside = exchange_s  # LocalSGD's averaging happens between steps, inside stats.seconds
        outside = 0.0
        if self.config.ps.mode == "allreduce":
            st.syncs += steps
            inside = getattr(self.exchange, "wait_s", 0.0) - wait_before  # waiting for gradient buckets
            start = time.perf_counter()
            average_vector(self.comm, self.flat.to_host())  # the BatchNorm statistics (weights are equal already)
            self.flat.from_host()
            outside = time.perf_counter() - start
        totals = np.array([stats.loss_sum, stats.correct, stats.samples], dtype=np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, totals, op=MPI.SUM)
        record = {"worker": self.world.rank, "group": "peer", "host": self.host, "epoch": epoch + 1,
                  "stage": index, "resolution": stage.resolution, "batch": batch, "steps": stats.steps,
                  "samples": stats.samples, "lr": lr_of_step(0), "train_loss": stats.loss_sum / stats.samples,
                  "train_acc": stats.correct / stats.samples, "compute_s": stats.seconds - inside,
                  "exchange_s": inside + outside, "wait_s": 0.0, "commit_s": stats.seconds + outside,
                  "time": time.time(),
                  "local_commit": epoch + 1, "global_commit": (epoch + 1) * self.world.size}
        gathered = self.comm.gather(record, root=0)
        if self.is_root:
            for r in gathered:
                self.commit_log.write(r)
        return {"epoch": epoch + 1, "stage": index, "resolution": stage.resolution, "lr": lr_of_step(0),
                "train_loss": float(totals[0] / totals[2]), "train_acc": float(totals[1] / totals[2]),
                "test_loss": None, "test_acc": None, "samples": float(totals[2]), "seconds": stats.seconds}

    def _evaluate(self, resolution: int) -> tuple[float, float, float]:
        """Rank 0 evaluates the (identical) model; everyone gets (loss, acc, seconds)."""
        result = None
        if self.is_root:
            start = time.perf_counter()
            loss, acc = evaluate(self.model, self.test_source, resolution, self.config.eval.batch_size, self.device)
            result = (loss, acc, time.perf_counter() - start)
        return self.comm.bcast(result, root=0)

    def run(self) -> None:
        st, schedule = self.state, self.schedule
        from hdbl_mpi.ps.server import eval_due

        for epoch in range(st.epoch, schedule.epochs):
            t0 = time.perf_counter()
            row = self._epoch(epoch)
            st.train_time_s += time.perf_counter() - t0
            st.epoch = epoch + 1
            row["wall_s"] = st.wall_time_s + time.perf_counter() - self.t_start
            row["train_time_s"] = st.train_time_s
            stop = False
            if eval_due(self.config, schedule.epochs, epoch + 1):
                loss, acc, seconds = self._evaluate(row["resolution"])
                st.eval_time_s += seconds
                row["test_loss"], row["test_acc"] = loss, acc
                st.best_top1 = acc if st.best_top1 is None else max(st.best_top1, acc)
                stop = self.stopper.update(acc) and epoch + 1 < schedule.epochs
            st.history.append({k: v for k, v in row.items() if k not in ("samples", "seconds")})
            if self.is_root:
                self.progress.epoch(epoch + 1, row["train_acc"], row["test_acc"], row["wall_s"], row["train_loss"])
                self.scalars.add({"train/loss": row["train_loss"], "train/accuracy": row["train_acc"],
                                  "test/accuracy": row["test_acc"], "test/loss": row["test_loss"], "lr": row["lr"],
                                  "throughput/samples_per_s": row["samples"] / max(row["seconds"], 1e-9)}, epoch + 1)
                rundir.write_epochs(self.run_dir / rundir.EPOCHS, st.history)
            if stop:
                st.early_stopped_at = epoch + 1
                if self.is_root:
                    self.progress.line(f"early stop after epoch {epoch + 1}: no better test top-1 than "
                                       f"{self.stopper.best:.4f} for {self.stopper.bad_updates} evaluations")
            every = self.config.run.checkpoint_every
            if stop or epoch + 1 == schedule.epochs or (every > 0 and (epoch + 1) % every == 0):
                self._checkpoint()
            if stop:
                break
        loss, acc, seconds = self._evaluate(schedule.resolutions[-1])
        st.eval_time_s += seconds
        st.final_top1, st.final_loss = acc, loss
        st.best_top1 = acc if st.best_top1 is None else max(st.best_top1, acc)
        if self.is_root:
            self.progress.line(f"Final Valid-accuracy={acc:.4f} at {schedule.resolutions[-1]} px")

    def _checkpoint(self) -> None:
        st = self.state
        if self.strategy is not None:
            st.local_steps = self.strategy.state_dict()
        st.early_stopping = self.stopper.state_dict()
        if not self.is_root:
            return
        st.optimizer = self.optimizer.state_dict()
        saved = asdict(st)
        saved["wall_time_s"] = st.wall_time_s + time.perf_counter() - self.t_start
        rundir.save_checkpoint(self.run_dir / rundir.CHECKPOINT, self.flat.vector.detach().cpu().clone(), saved)

    def close(self) -> None:
        if self.is_root:
            self.progress.close()
            self.scalars.close()
            self.commit_log.close()


def train_peers(comm: MPI.Intracomm, config: Config, chosen_dir: str, checkpoint: str | None, resume: bool,
                t_wall: float) -> int:
    """Set up every rank (agreeing that set-up worked, as train.train does), then run the data-parallel loop."""
    from hdbl_mpi.train import _agree, _load_data, _make_plan, _place, run_facts

    world = None
    data = source = test_source = None
    device = torch.device("cpu")
    local_source, backend = "", "none"
    failure: BaseException | None = None
    try:
        world = make_peer_world(config.dual.workers, comm)
        torch.set_num_threads(threads_per_rank(world.local_size, config.train.threads))
        torch.manual_seed(config.train.seed)
        device, local_source = _place(world, config)
        seed = config.train.seed * 1_000_003 + comm.rank * 7919 + (1 if resume else 0) * 104_729
        data, source = _load_data(world, config, device, seed)
        if comm.rank == 0:
            from hdbl_mpi.data.sources import open_source

            _, test_source = open_source(config, train=False, device=device, seed=seed)
        backend = _backend(config)
    except Exception as err:
        failure = err
    mine = None if data is None else (data.train_size, data.native_resolution, f"{socket.gethostname()}:{device}",
                                      torch.get_num_threads(), data.decoder, data.skipped, local_source)
    infos = _agree(comm, failure, mine)
    if len({i[0] for i in infos}) != 1:
        raise SetupError(f"the workers see training sets of different sizes {sorted({i[0] for i in infos})}; "
                         "point data.dir at the same files on every host.")
    assert world is not None and data is not None
    dataset_size = infos[0][0]
    try:
        schedule = schedule_from_config(config, infos[0][1])
    except HdblError as err:
        raise SetupError(str(err)) from None
    resolutions, top = schedule.resolutions, schedule.resolutions[-1]

    state, failure = PeerState(), None
    plans: dict[int, Plan] = {}
    model = flat = None
    run_path = Path(chosen_dir)
    try:
        plans = {r: _make_plan(config, dataset_size, None, i, len(resolutions)) for i, r in enumerate(resolutions)}
        model = build_model(config.model.name, data.num_classes, data.channels, top, config.model.stem,
                            config.model.dropout, config.model.width).to(device)
        flat = FlatState(model)
        if comm.rank == 0:
            run_path.mkdir(parents=True, exist_ok=True)
            if checkpoint:
                state = PeerState(**rundir.restore_checkpoint(Path(checkpoint), flat.vector))
                if state.epoch >= schedule.epochs or state.early_stopped_at:
                    raise HdblError(f"{run_path} already finished ({state.epoch} epochs); to train longer, resume "
                                    f"with --set train.epochs=N (N > {schedule.epochs}).")
                state.restarts.append({"epoch": state.epoch,
                                       "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            rundir.atomic_write_text(run_path / rundir.CONFIG, dump_config(config))
            rundir.write_json(run_path / rundir.PLAN, plan_summary([plans[r] for r in resolutions], resolutions))
    except Exception as err:
        failure = err
    _agree(comm, failure, None)
    assert model is not None and flat is not None
    comm.Bcast(flat.to_host(), root=0)  # everyone starts from rank 0's weights (the checkpoint's when resuming)
    flat.from_host()
    state = comm.bcast(state if comm.rank == 0 else None, root=0)

    trainer = PeerTrainer(world, config, schedule, plans, model, flat, source, test_source, device, state, run_path,
                          backend)
    plan = plans[top]
    if comm.rank == 0:
        how = {"allreduce": f"gradients averaged every step over {backend}",
               "localsgd": f"models averaged every H local steps (local.strategy={config.local.strategy})"}
        trainer.progress.line(
            f"hdbl train: {world.size} ranks, mode {config.ps.mode} ({how[config.ps.mode]}), no server, "
            f"D={dataset_size}, d={plan.d_large} B={plan.batch_large} per worker, {schedule.epochs} epochs at "
            f"{'/'.join(map(str, resolutions))} px, optimizer {config.train.optimizer}, run dir {run_path}")
    try:
        trainer.run()
    finally:
        trainer.close()
    if comm.rank != 0:
        return 0
    st = trainer.state
    summary = {
        "final_top1": st.final_top1,
        "final_test_loss": st.final_loss,
        "final_top1_stage_resolution": st.history[-1]["test_acc"] if st.history else None,
        "best_top1": st.best_top1,
        "train_time_s": st.train_time_s,
        "eval_time_s": st.eval_time_s,
        "wall_time_s": st.wall_time_s + time.perf_counter() - t_wall,
        "epochs_completed": st.epoch,
        "early_stopped_at": st.early_stopped_at,
        "mode": config.ps.mode,
        "backend": backend,
        "horovod": None if trainer.horovod is None else {"version": trainer.horovod.version,
                                                         **trainer.horovod.controllers()},
        "syncs": st.syncs,
        "bytes_per_sync": flat.nbytes if config.ps.mode == "localsgd" else
        (trainer.exchange.nbytes if trainer.exchange is not None else flat.nbytes),
        "local_steps": None if config.ps.mode != "localsgd" else {
            "strategy": config.local.strategy, "h_changes": st.h_history, "slowmo": config.local.slowmo,
            "slowmo_beta": config.local.slowmo_beta, "slowmo_alpha": config.local.slowmo_alpha},
        "optimizer": config.train.optimizer,
        "restarts": st.restarts,
        "resume_policy": "weights, epoch history, optimizer state (rank 0's) and the H strategy come from the "
                         "checkpoint; data RNGs are reseeded from (seed, rank, resumed or not)",
        **run_facts(config, world, schedule, plans, data, dataset_size, infos, flat),
        "tensorboard": trainer.scalars.status,
    }
    rundir.write_json(run_path / rundir.SUMMARY, summary)
    print(f"hdbl train: done: final top-1 {summary['final_top1']:.4f}, best {summary['best_top1']:.4f}, train "
          f"{summary['train_time_s']:.1f} s, eval {summary['eval_time_s']:.1f} s, {st.syncs} synchronisations "
          f"-> {run_path / rundir.SUMMARY}", flush=True)
    return 0
