"""The server rank: serves commits in arrival order, merges them, counts epochs, evaluates and checkpoints.

The loop probes for any message (a push header or a worker's commit record), handles it, and otherwise
sleeps briefly: it never blocks on one worker, so in ASP a slow worker slows nobody else. Weights arrive in a
pre-allocated receive vector and are merged into the global vector W with one fused pass (``torch.lerp_``);
the reply goes out straight from W. Evaluation runs in a background thread on snapshots of W, off the
workers' critical path, and its time is accounted separately from training time.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from mpi4py import MPI
from torch import nn

from hdbl_mpi.comm.wire import (
    PUSH, REPLY, TAG_PUSH_HEADER, TAG_PUSH_WEIGHTS, TAG_RECORD, TAG_REPLY_HEADER, TAG_REPLY_WEIGHTS,
    Backoff, FlatState, TimeoutWaiting,
)
from hdbl_mpi.comm.world import SMALL, World, role_of
from hdbl_mpi.config import Config
from hdbl_mpi.engine import evaluate
from hdbl_mpi.errors import HdblError, PlanError
from hdbl_mpi.optim import EarlyStopping, scheduled_lr
from hdbl_mpi.plan import Plan, make_plan, round_half_up
from hdbl_mpi.ps.merge import merge_weight
from hdbl_mpi.ps.shards import (
    OP_ACCUMULATE, OP_ACCUMULATE_OWN, OP_AVERAGE, OP_DROP, OP_MERGE, OP_REPLY, Layout, ShardFanout, ShardMath,
)
from hdbl_mpi.run import rundir
from hdbl_mpi.run.faults import maybe_crash
from hdbl_mpi.run.progress import Progress
from hdbl_mpi.run.scalars import Scalars
from hdbl_mpi.run.trace import write_trace
from hdbl_mpi.schedule import Schedule


PROC_FAILED = (MPI.ERR_PROC_FAILED, MPI.ERR_PROC_FAILED_PENDING, MPI.ERR_REVOKED)  # ULFM's error classes


def eval_due(config: Config, epochs: int, epoch: int) -> bool:
    """Evaluate after `epoch` (1-based) every eval.every epochs, and always after the last of `epochs`."""
    every = config.eval.every
    return epoch == epochs or (every > 0 and epoch % every == 0)


class Evaluator:
    """Evaluates snapshots of the global weights in a background thread (no MPI calls in the thread)."""

    def __init__(self, model: nn.Module, source, batch_size: int, device: torch.device) -> None:
        self._model, self._device = model, device
        self._flat = FlatState(model)
        self._source, self._batch = source, batch_size
        self._todo: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="hdbl-eval", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._todo.get()
            if item is None:
                return
            epoch, snapshot, resolution = item
            try:
                start = time.perf_counter()
                self._flat.vector.copy_(snapshot)
                loss, acc = evaluate(self._model, self._source, resolution, self._batch, self._device)
                self._done.put((epoch, loss, acc, time.perf_counter() - start, resolution))
            except BaseException as err:  # surfaced in the main thread by results()
                self._done.put(err)

    def submit(self, epoch: int, snapshot: torch.Tensor, resolution: int) -> None:
        """Evaluate `snapshot` at `resolution`; epoch 0 marks the final evaluation at the top resolution."""
        self._todo.put((epoch, snapshot, resolution))

    def results(self) -> list[tuple[int, float, float, float, int]]:
        out = []
        while True:
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                return out
            if isinstance(item, BaseException):
                raise item
            out.append(item)

    def finish(self, timeout_s: float) -> list[tuple[int, float, float, float, int]]:
        self._todo.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutWaiting(f"evaluation did not finish within {timeout_s:.0f} s")
        return self.results()


@dataclass
class ServerState:
    """Everything a checkpoint needs besides the weights (plain types, so torch.load(weights_only=True) works)."""

    merged: int = 0
    commits_by_worker: dict = field(default_factory=dict)
    samples_by_group: dict = field(default_factory=lambda: {"small": 0, "large": 0})
    epoch_loss_sum: float = 0.0
    epoch_correct: float = 0.0
    epoch_samples: float = 0.0
    history: list = field(default_factory=list)
    best_top1: float | None = None
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    wall_time_s: float = 0.0
    restarts: list = field(default_factory=list)
    batch_small: dict = field(default_factory=dict)  # current B_S per resolution (str), after dual.replan
    final_top1: float | None = None  # at the top resolution
    final_loss: float | None = None
    replans: list = field(default_factory=list)
    early_stopping: dict = field(default_factory=dict)  # EarlyStopping's state, kept across a resume
    early_stopped_at: int | None = None  # the epoch after which the run stops early
    nonfinite_rejected: dict = field(default_factory=dict)  # rank -> pushes rejected for NaN/Inf
    missing_commits: int = 0  # commits a stalled worker never delivered at the end of an ASP run
    lost_workers: list = field(default_factory=list)  # ULFM: {rank, at_commit, error} of each rank that died


class Balance:
    """Watches the groups' measured compute time per commit and re-plans B_S when they drift apart.

    Each commit gives one point of the step-time line: (batch, compute seconds / steps). Large-batch commits
    sit at B_L and small-batch ones at B_S, so a window of recent commits of both groups determines a and b by
    least squares; the plan formula then gives the B_S that balances them again (d_L, d_S and f do not
    depend on a and b, so only B_S changes).
    """

    def __init__(self, plan: Plan, config: Config, window: int = 4) -> None:
        self.plan, self.threshold, self.window = plan, config.dual.replan_threshold, window
        self.samples: dict[str, list[tuple[int, float, float]]] = {"small": [], "large": []}

    def observe(self, group: str, batch: int, compute_s: float, steps: int, batch_small: int) -> dict | None:
        points = self.samples[group]
        points.append((batch, compute_s / max(steps, 1), compute_s))
        del points[: -self.window]
        small = [p for p in self.samples["small"] if p[0] == batch_small]
        large = self.samples["large"]
        if len(small) < 2 or len(large) < 2:
            return None
        t_small = float(np.median([p[2] for p in small]))
        t_large = float(np.median([p[2] for p in large]))
        imbalance = max(t_small, t_large) / min(t_small, t_large)
        if imbalance <= self.threshold:
            return None
        xs = [p[0] for p in small + large]
        ys = [p[1] for p in small + large]
        a, b = (float(v) for v in np.polyfit(xs, ys, 1, w=1.0 / np.asarray(ys)))  # relative errors
        if a <= 0 or b <= 0:
            return None  # the points do not describe a usable line (noise); keep the current plan
        try:
            new = make_plan(self.plan.dataset_size, self.plan.workers, self.plan.small, self.plan.batch_large,
                            a, b, self.plan.extra_time, self.plan.factor_rule)
        except PlanError:
            return None
        if new.batch_small == batch_small:
            return None
        self.samples["small"].clear()
        self.samples["large"].clear()
        return {"a": a, "b": b, "imbalance": imbalance, "compute_small_s": t_small, "compute_large_s": t_large,
                "previous_batch_small": batch_small, "batch_small": new.batch_small}


class Server:
    def __init__(
        self,
        world: World,
        config: Config,
        schedule: Schedule,
        plans: dict[int, Plan],
        weights: torch.Tensor,
        run_dir: Path,
        evaluator: Evaluator,
        state: ServerState,
        timeout_s: float,
        layout: Layout | None = None,
    ) -> None:
        self.world, self.config, self.schedule, self.plans, self.run_dir = world, config, schedule, plans, run_dir
        self.plan = plans[max(plans)]  # d_L, d_S, n_S and f are the same at every resolution
        self.comm = world.comm
        self.W = weights  # the global model, float32 on the CPU, shared with self.W_np
        self.W_np = weights.numpy()
        # With ps.servers > 1 this rank owns (and keeps current) only shard 0 of W; the others are gathered from
        # the shard servers when the whole vector is needed (evaluation, checkpoint).
        self.layout = layout or Layout(((0, 0, weights.numel()),))
        start, end = self.layout.own
        self.own = ShardMath(weights[start:end])
        self.own_np = self.W_np[start:end]
        self.fanout = ShardFanout(self.comm, self.layout, self.W_np)
        self.shard_servers: dict[str, dict] = {}
        self.evaluator, self.state, self.timeout_s = evaluator, state, timeout_s
        self.n = config.dual.workers
        self.total = schedule.epochs * self.n  # lowered by early stopping, always to the end of an epoch
        self.stopper = EarlyStopping(config.train.early_stop_patience, config.train.early_stop_min_delta)
        if state.early_stopping:
            self.stopper.load_state_dict(state.early_stopping)
        self.mode = config.ps.mode
        self.workers = list(range(1, self.n + 1))
        for w in self.workers:
            self.state.commits_by_worker.setdefault(str(w), 0)
        self.weights = {w: merge_weight(config.ps.merge, self._factor(w)) for w in self.workers}
        self.training = set(self.workers)  # ranks computing a commit right now
        self.training_since = {w: time.monotonic() for w in self.workers}
        self.stalled: set[int] = set()  # ASP: ranks given up on after ps.timeout_s without a commit
        self.lost: set[int] = set()  # ULFM: ranks that died; the run goes on without them
        self.ulfm = config.ps.fault_tolerance == "ulfm"
        self.release_due = False
        self.live_plans: dict[int, Plan] = {}  # the survivors' plans after a lost worker (roles keep self.plans)
        if self.ulfm:  # failures come back as exceptions (mpi4py raises on error codes) instead of aborting
            self.comm.Set_errhandler(MPI.ERRORS_RETURN)
        self.pending: dict[int, tuple[int, float]] = {}  # rank -> (global commit id, arrival time)
        self.stopped: set[int] = set()
        self.rejected: set[int] = set()  # ranks whose last push was rejected (told so in the reply)
        self.nonfinite_streak = {w: 0 for w in self.workers}  # consecutive rejected pushes per rank
        self.records_seen = {w: 0 for w in self.workers}
        self.records: list[dict] = []
        for r, p in plans.items():
            self.state.batch_small.setdefault(str(r), p.batch_small)
        self.balances = {r: Balance(p, config) for r, p in plans.items()} if config.dual.replan and self.plan.small \
            else None
        self.bsp_factor = 0.0  # sum of the factors of the BSP round so far
        self.commit_log = rundir.CommitLog(run_dir / rundir.COMMITS, keep_up_to=state.merged)
        self.progress = Progress(self.total, state.merged, self.n, run_dir / rundir.LOG)
        self.scalars = Scalars(run_dir / rundir.TENSORBOARD)
        self.progress.line(f"TensorBoard: {self.scalars.status}")
        self.t_start = time.perf_counter()
        self.t_last_merge = self.t_epoch = self.t_start

    # -- helpers -----------------------------------------------------------------------------------------
    def _factor(self, rank: int) -> float:
        return self.plan.factor_small if role_of(rank, self.plan.small) == SMALL else 1.0

    def _stage(self) -> int:
        """Stage of the commits a reply starts: decided by the global commit count, the same for every worker."""
        return self.schedule.index_at(self.state.merged // self.n)

    def _elapsed_train(self) -> float:
        return self.state.train_time_s + (self.t_last_merge - self.t_start)

    # -- message handlers --------------------------------------------------------------------------------
    def _on_push(self, src: int) -> None:
        header = PUSH.empty()
        self.comm.Recv(header, source=src, tag=TAG_PUSH_HEADER)
        info = PUSH.unpack(header)
        bad = not info["finite"] or not math.isfinite(info["loss_sum"])
        # The decision goes to the shard servers first, so they take their slices while this rank takes its own.
        factor = self._factor(src)
        if self.mode == "bsp":  # a rejected push counts as "no change" in the round's average
            op, value = (OP_ACCUMULATE_OWN if bad else OP_ACCUMULATE), factor
        else:
            op, value = (OP_DROP, 0.0) if bad else (OP_MERGE, self.weights[src])
        self.fanout.tell(op, src, value)
        self.comm.Recv(self.own.recv_np, source=src, tag=TAG_PUSH_WEIGHTS)
        arrived = time.perf_counter()
        self.training.discard(src)
        if src in self.stalled:  # it was only slow: take its commit and count it as a worker again
            self.stalled.discard(src)
            self.progress.line(f"rank {src}, given up on as stalled, committed again; it is back in the run")
        if bad:
            self._reject(src, info)
        else:
            self.nonfinite_streak[src] = 0
        if self.mode == "bsp":
            self.own.accumulate(factor, own=bad)
            self.bsp_factor += factor
        elif not bad:
            self.own.merge(self.weights[src])
        st = self.state
        st.merged += 1  # a rejected commit still counts: its data was used up, its update is dropped
        maybe_crash(self.config.debug, 0, st.merged, "merged commit")
        self.t_last_merge = time.perf_counter()
        st.commits_by_worker[str(src)] += 1
        if not bad:
            st.samples_by_group[role_of(src, self.plan.small)] += int(info["samples"])
            st.epoch_loss_sum += info["loss_sum"]
            st.epoch_correct += info["correct"]
            st.epoch_samples += info["samples"]
        self.progress.commit(st.merged, int(info["samples"]))
        if self.balances is not None:
            self._maybe_replan(role_of(src, self.plan.small), info)
        self.pending[src] = (st.merged, arrived)
        if self.mode == "bsp":
            if len(self.pending) == self.n - len(self.stopped):
                self.fanout.tell(OP_AVERAGE, value=self.bsp_factor)
                self.own.average(self.bsp_factor)
                self.bsp_factor = 0.0
                self._maybe_close_epoch()
                for w in sorted(self.pending):
                    self._reply(w, stop=st.merged >= self.total)
            return
        self._maybe_close_epoch()
        self._release()

    def _reject(self, src: int, info: dict[str, float]) -> None:
        """A push with a non-finite loss or weights is not merged; its worker gets the global weights back and
        resets its momentum. Too many in a row means training diverged: stop with the advice to lower the LR."""
        st = self.state
        st.nonfinite_rejected[str(src)] = st.nonfinite_rejected.get(str(src), 0) + 1
        self.nonfinite_streak[src] += 1
        self.rejected.add(src)
        lr = scheduled_lr(self.config.train, self.schedule, st.merged / self.n)
        self.progress.line(f"rejected a non-finite push from rank {src} (commit {int(info['local_commit'])}, loss "
                           f"{info['loss_sum'] / max(info['samples'], 1):.4g}, lr {lr:.4g}); it restarts from the "
                           f"global weights ({self.nonfinite_streak[src]} in a row)")
        if self.nonfinite_streak[src] >= self.config.ps.max_nonfinite:
            raise HdblError(
                f"{self.nonfinite_streak[src]} pushes in a row from rank {src} had a non-finite loss or weights, "
                "each time after restarting from the global weights: training diverged. Lower train.lr "
                f"(now {lr:.4g}) or add a warm-up (train.warmup_epochs); "
                f"--resume continues from the last checkpoint in {self.run_dir}."
            )

    def _release(self) -> None:
        """Reply to every held worker that may go on (ASP: all; SSP: those within the staleness bound).

        With ULFM, a worker whose stop depends on commits still under way is held instead: if one of those
        workers dies, the held one is sent to make up its commit rather than the run ending short."""
        for w in sorted(self.pending, key=lambda r: self.state.commits_by_worker[str(r)]):
            stop = self.state.merged + len(self.training) >= self.total
            if stop and self.ulfm and self.state.merged < self.total:
                continue
            if self.mode == "ssp" and not stop:
                active = [v for v in self.workers if v not in self.stopped]
                slowest = min(self.state.commits_by_worker[str(v)] for v in active)
                if self.state.commits_by_worker[str(w)] + 1 - slowest > self.config.ps.staleness:
                    continue
            self._reply(w, stop)

    def _reply(self, w: int, stop: bool) -> None:
        global_id, arrived = self.pending.pop(w)
        st = self.state
        index = self._stage()
        stage = self.schedule.stages[index]
        r = stage.resolution
        batch = st.batch_small[str(r)] if role_of(w, self.plan.small) == SMALL else self.plans[r].batch_large
        share = self.live_plans[r].share(role_of(w, self.plan.small))[0] if self.live_plans else 0
        lr = scheduled_lr(self.config.train, self.schedule, st.merged / self.n)  # warm-up and cosine are per commit
        header = REPLY.pack(global_commit=global_id, epoch=st.merged // self.n, lr=lr, stop=float(stop),
                            merged=st.merged, held_s=time.perf_counter() - arrived, batch=batch, stage=index,
                            resolution=r, dropout=stage.dropout, rejected=float(w in self.rejected), share=share)
        self.rejected.discard(w)
        self.comm.Send(header, dest=w, tag=TAG_REPLY_HEADER)
        self.fanout.tell(OP_REPLY, w)
        self.comm.Send(self.own_np, dest=w, tag=TAG_REPLY_WEIGHTS)
        if stop:
            self.stopped.add(w)
        else:
            self.training.add(w)
            self.training_since[w] = time.monotonic()

    def _maybe_replan(self, group: str, info: dict[str, float]) -> None:
        """Feed the commit's timing to the balance monitor; when it asks for a new B_S, small-batch workers get
        it with their next reply (a commit in progress keeps its batch)."""
        r = int(info["resolution"])
        change = self.balances[r].observe(group, int(info["batch"]), info["compute_s"], int(info["steps"]),
                                          self.state.batch_small[str(r)])
        if change is None:
            return
        change["at_commit"] = self.state.merged
        change["resolution"] = r
        self.state.replans.append(change)
        self.state.batch_small[str(r)] = change["batch_small"]
        self.progress.line(
            f"replan at commit {self.state.merged}: compute time small {change['compute_small_s']:.3f} s vs large "
            f"{change['compute_large_s']:.3f} s (imbalance {change['imbalance']:.3f} > "
            f"{self.config.dual.replan_threshold}); refit a={change['a']:.4g} b={change['b']:.4g}; "
            f"B_S at {r} px {change['previous_batch_small']} -> {change['batch_small']}"
        )

    def _on_record(self, src: int) -> None:
        record = self.comm.recv(source=src, tag=TAG_RECORD)
        self.records_seen[src] += 1
        self.records.append(record)
        self.commit_log.write(record)

    # -- epochs, evaluation, checkpoints -------------------------------------------------------------------
    def _maybe_close_epoch(self, force: bool = False) -> None:
        """Close the epoch when its n-th commit is merged; `force` closes a short last epoch (a stalled worker's
        commit will not come)."""
        st = self.state
        if st.merged % self.n and not force:
            return
        epoch = -(-st.merged // self.n)
        stage = self.schedule.at(epoch - 1)
        row = {
            "epoch": epoch,
            "stage": self.schedule.index_at(epoch - 1),
            "resolution": stage.resolution,
            "lr": scheduled_lr(self.config.train, self.schedule, epoch - 1),
            "train_loss": st.epoch_loss_sum / max(st.epoch_samples, 1),
            "train_acc": st.epoch_correct / max(st.epoch_samples, 1),
            "test_loss": None,
            "test_acc": None,
            "wall_s": st.wall_time_s + time.perf_counter() - self.t_start,
            "train_time_s": self._elapsed_train(),
        }
        st.history.append(row)
        now = time.perf_counter()
        self.scalars.add({"train/loss": row["train_loss"], "train/accuracy": row["train_acc"], "lr": row["lr"],
                          "throughput/samples_per_s": st.epoch_samples / max(now - self.t_epoch, 1e-9),
                          "time/train_s": row["train_time_s"]}, epoch)
        self.t_epoch = now
        st.epoch_loss_sum = st.epoch_correct = st.epoch_samples = 0.0
        due_eval = eval_due(self.config, self.total // self.n, epoch)
        every = self.config.run.checkpoint_every
        last = force or epoch == self.total // self.n
        due_ckpt = last or (every > 0 and epoch % every == 0)
        if due_eval or due_ckpt:
            self.fanout.gather()
        snapshot = self.W.clone() if (due_eval or due_ckpt) else None
        if due_eval:
            self.evaluator.submit(epoch, snapshot, stage.resolution)  # at the stage's resolution
        else:
            self.progress.epoch(epoch, row["train_acc"], None, row["wall_s"], row["train_loss"])
        if last:
            self.evaluator.submit(0, snapshot, self.schedule.resolutions[-1])  # the final model at the top one
        if due_ckpt:
            self._checkpoint(snapshot)
        rundir.write_epochs(self.run_dir / rundir.EPOCHS, st.history)

    def _checkpoint(self, snapshot: torch.Tensor) -> None:
        st = asdict(self.state)
        st["train_time_s"] = self._elapsed_train()
        st["wall_time_s"] = self.state.wall_time_s + time.perf_counter() - self.t_start
        st["eval_time_s"] = self.state.eval_time_s
        rundir.save_checkpoint(self.run_dir / rundir.CHECKPOINT, snapshot, st)

    def _collect_evals(self, results: list[tuple[int, float, float, float, int]]) -> None:
        if not results:
            return
        st = self.state
        for epoch, loss, acc, seconds, resolution in results:
            st.eval_time_s += seconds
            if epoch == 0:  # the final model at the top resolution
                st.final_top1, st.final_loss = acc, loss
                st.best_top1 = acc if st.best_top1 is None else max(st.best_top1, acc)
                self.progress.line(f"Final Valid-accuracy={acc:.4f} at {resolution} px")
                continue
            row = next(r for r in st.history if r["epoch"] == epoch)
            row["test_loss"], row["test_acc"] = loss, acc
            st.best_top1 = acc if st.best_top1 is None else max(st.best_top1, acc)
            if self.stopper.update(acc):
                self._stop_early(epoch)
            st.early_stopping = self.stopper.state_dict()
            self.scalars.add({"test/loss": loss, "test/accuracy": acc}, epoch)
            self.progress.epoch(epoch, row["train_acc"], acc, row["wall_s"], row["train_loss"])
        rundir.write_epochs(self.run_dir / rundir.EPOCHS, st.history)

    def _stop_early(self, evaluated_epoch: int) -> None:
        """Early stopping: evaluations finish in the background while training goes on, so the run ends at the
        first epoch boundary that covers every commit already under way; those commits are still merged."""
        st = self.state
        end = -(-(st.merged + len(self.training)) // self.n) * self.n
        if end == st.merged:  # nothing under way and that epoch already closed: finish the next one
            end += self.n
        if end >= self.total:
            return
        self.total = end
        self.progress.total = end
        st.early_stopped_at = end // self.n
        self.progress.line(f"early stop: no better test top-1 than {self.stopper.best:.4f} for "
                           f"{self.stopper.bad_updates} evaluation(s) (last after epoch {evaluated_epoch}); "
                           f"the run ends after epoch {st.early_stopped_at}")

    # -- main loop -----------------------------------------------------------------------------------------
    def _check_stalled(self) -> None:
        """ASP goes on without a worker that has not committed for ps.timeout_s / 2: its commit in progress no longer
        holds back the end of the run (the others make up its share of the commits). BSP and SSP cannot: their
        rounds and bounds wait for every worker, and the overall timeout ends them with a message instead."""
        now = time.monotonic()
        for w in sorted(self.training):
            if now - self.training_since[w] <= self.timeout_s / 2:
                continue
            if not self.stopped:
                continue  # mid-run the others go on regardless; only at the end does its commit hold the run up
            self.training.discard(w)
            self.stalled.add(w)
            self.progress.line(f"rank {w} has not committed for {self.timeout_s / 2:.0f} s (half of ps.timeout_s): "
                               "going on without it")
            self._release()
            if not self.training and self.state.merged < self.total:
                # Everyone else was already told to stop, counting on this commit: end the run one short.
                self.state.missing_commits = self.total - self.state.merged
                self.total = self.state.merged
                self._maybe_close_epoch(force=True)

    def _lose(self, err: MPI.Exception) -> None:
        """ULFM: acknowledge the failure, find the dead ranks and go on without them. In ASP a commit's share of
        the data does not depend on who makes it and an epoch is n commits, so the survivors take over the lost
        workers' commits and every epoch still covers the data set; nothing waits for the dead ranks."""
        self.comm.Ack_failed()
        group = self.comm.Get_failed()
        dead = set(MPI.Group.Translate_ranks(group, list(range(group.Get_size())), self.comm.Get_group()))
        group.Free()
        for w in sorted(dead - self.lost - {0}):
            self.lost.add(w)
            self.training.discard(w)
            self.pending.pop(w, None)
            self.stalled.discard(w)
            self.state.lost_workers.append({"rank": w, "at_commit": self.state.merged,
                                            "error_class": err.Get_error_class()})
            alive = self.n - len(self.lost)
            self.progress.line(f"rank {w} failed ({err.Get_error_string().strip()}): going on with {alive} "
                               f"worker(s); the survivors take over its commits")
        if len(self.lost) == self.n:
            raise HdblError("every worker failed; the run cannot go on. Resume it with --resume.")
        self._replan_survivors()
        self.release_due = True  # workers whose replies a failed send interrupted get theirs next

    def _replan_survivors(self) -> None:
        """Re-plan d_L, d_S, B_S and f for the surviving workers of each group. An epoch stays n commits (the
        counters, stages and LR are defined that way), so the plan is made for D * n'/n samples over the n'
        survivors: their n commits per epoch again cover the data set once, with the groups balanced. A plan
        that is impossible for the survivors (e.g. no small-batch worker left with t) keeps the old shares."""
        alive = [w for w in self.workers if w not in self.lost]
        small = sum(1 for w in alive if role_of(w, self.plan.small) == SMALL)
        try:
            live = {r: make_plan(round_half_up(p.dataset_size * len(alive) / self.n), len(alive), small,
                                 p.batch_large, p.time_a, p.time_b, p.extra_time, p.factor_rule)
                    for r, p in self.plans.items()}
        except PlanError as err:
            self.progress.line(f"keeping the old data shares: no plan for the {len(alive)} survivors ({err})")
            return
        self.live_plans = live
        for r, p in live.items():
            if p.batch_small is not None:
                self.state.batch_small[str(r)] = p.batch_small
        top = live[max(live)]
        for w in alive:
            self.weights[w] = merge_weight(self.config.ps.merge, top.factor_small if role_of(w, self.plan.small)
                                           == SMALL else 1.0)
        if self.balances is not None:
            self.balances = {r: Balance(p, self.config) for r, p in live.items()} if small else None
        change = {"after_commit": self.state.merged, "reason": f"lost rank(s) {sorted(self.lost)}",
                  "workers": len(alive), "small": small, "d_large": top.d_large, "d_small": top.d_small,
                  "batch_small": top.batch_small, "factor_small": top.factor_small}
        self.state.replans.append(change)
        self.progress.line(f"re-planned for {len(alive)} survivors ({small} small-batch): d_L={top.d_large}"
                           + (f" d_S={top.d_small} B_S={top.batch_small} f={top.factor_small:.4f}" if small else ""))

    def _finished(self) -> bool:
        return len(self.stopped | self.stalled | self.lost) == self.n and all(
            self.records_seen[w] == self.state.commits_by_worker[str(w)] - self._records_before[w]
            for w in self.workers if w not in self.lost
        )

    def serve(self) -> None:
        """Serve until every worker has been told to stop and has sent its last commit record."""
        self._records_before = {w: self.state.commits_by_worker[str(w)] for w in self.workers}
        status = MPI.Status()
        # Idle between commits: sleep in short steps (<= 0.25 ms) so a push is noticed quickly while the
        # server, which often shares a host with workers, uses next to no CPU.
        last_heard, backoff = time.monotonic(), Backoff(spin_s=2e-3, cap_s=2.5e-4)
        while not self._finished():
            try:
                if self.release_due:  # after a loss: the replies a failed send interrupted
                    self.release_due = False
                    self._release()
                message = self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
                if message:
                    src, tag = status.Get_source(), status.Get_tag()
                    if tag == TAG_PUSH_HEADER:
                        self._on_push(src)
                    elif tag == TAG_RECORD:
                        self._on_record(src)
                    else:
                        raise RuntimeError(f"server got an unexpected message (tag {tag}) from rank {src}")
            except MPI.Exception as err:
                if not self.ulfm or err.Get_error_class() not in PROC_FAILED:
                    raise
                self._lose(err)
                last_heard = time.monotonic()
                continue
            if message:
                last_heard = time.monotonic()
                backoff.reset()
                continue
            self._collect_evals(self.evaluator.results())
            if self.mode == "asp":
                self._check_stalled()
            if time.monotonic() - last_heard > self.timeout_s:
                silent = sorted(self.training)
                raise TimeoutWaiting(
                    f"no message from any worker for {self.timeout_s:.0f} s; still training: ranks {silent}, "
                    f"held: ranks {sorted(self.pending)}. A worker is stalled or gone; if commits are this slow "
                    "legitimately, raise ps.timeout_s."
                )
            backoff.pause()
        self.t_end_train = self.t_last_merge
        self.shard_servers = self.fanout.finish()
        self.commit_log.close()
        write_trace(self.run_dir / rundir.TRACE, rundir.read_commits(self.run_dir / rundir.COMMITS))
        self._collect_evals(self.evaluator.finish(self.timeout_s))

    def close(self) -> None:
        self.progress.close()
        self.scalars.close()

    # -- summary -------------------------------------------------------------------------------------------
    def group_times(self, resolution: int | None = None) -> dict:
        """Mean per-commit times of each group (at one resolution, or all), from this run segment's records."""
        out = {}
        for group in ("small", "large"):
            recs = [r for r in self.records if r["group"] == group
                    and (resolution is None or r["resolution"] == resolution)]
            if recs:
                out[group] = {
                    key: float(np.mean([r[key] for r in recs]))
                    for key in ("compute_s", "exchange_s", "wait_s", "commit_s")
                }
                out[group]["commits"] = len(recs)
        return out

    def final_figures(self) -> dict:
        st = self.state
        last = st.history[-1] if st.history else {}
        return {
            "final_top1": st.final_top1,  # the final model at the top resolution
            "final_test_loss": st.final_loss,
            "final_top1_stage_resolution": last.get("test_acc"),  # the last epoch's evaluation, at its stage's
            "best_top1": st.best_top1,
            "train_time_s": self._elapsed_train(),
            "eval_time_s": st.eval_time_s,
            "commits_total": st.merged,
            "commits_by_worker": dict(st.commits_by_worker),
            "samples_by_group": dict(st.samples_by_group),
            "epochs_completed": st.merged // self.n,
            "group_commit_times": self.group_times(),
            "restarts": list(st.restarts),
            "balance": [self.balance_report(r) for r in sorted(self.plans)],
            "replans": list(st.replans),
            "early_stopped_at": st.early_stopped_at,
            "nonfinite_rejected": dict(st.nonfinite_rejected),
            "stalled_workers": sorted(self.stalled),
            "missing_commits": st.missing_commits,
            "lost_workers": list(st.lost_workers),
            "batch_small_final": st.batch_small,
            "tensorboard": self.scalars.status,
            "servers": len(self.layout.parts),
            "shards": [{"rank": r, "start": s, "end": e} for r, s, e in self.layout.parts],
            "shard_servers": self.shard_servers,  # each shard server's pushes, replies, gathers and busy seconds
        }

    def balance_report(self, resolution: int) -> dict:
        """Predicted vs measured per-commit time of each group at one resolution, and the imbalance."""
        times = self.group_times(resolution)
        plan = self.plans[resolution]
        predicted = {"large": plan.commit_time_large, "small": plan.commit_time_small}
        report: dict = {"resolution": resolution, "predicted_compute_s": {}, "measured_compute_s": {},
                        "measured_commit_s": {}}
        for group, measured in times.items():
            report["predicted_compute_s"][group] = predicted[group]
            report["measured_compute_s"][group] = measured["compute_s"]
            report["measured_commit_s"][group] = measured["commit_s"]
        for kind in ("compute", "commit"):
            values = list(report[f"measured_{kind}_s"].values())
            report[f"imbalance_{kind}"] = max(values) / min(values) if len(values) == 2 else None
        return report
