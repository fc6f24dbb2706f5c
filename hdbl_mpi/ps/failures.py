"""What the server does when a worker misbehaves: non-finite pushes, stalled workers (ASP), lost workers (ULFM).

Kept apart from the message loop because these are the riskiest edits in the server: each rule is one method
with its reason in the docstring, and docs/reliability.md names the test behind each.

- A push with a non-finite loss or weights is not merged; the worker gets W back and resets its momentum. Too
  many in a row from one worker means training diverged: the run stops with the advice to lower the LR.
- ASP goes on without a worker that has not committed for ps.timeout_s / 2 once the others are done.
- With ``ps.fault_tolerance: ulfm`` a worker that dies is dropped; an idle spare (ps.spares) takes its role, or,
  with none left, the survivors take over its commits.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hdbl_mpi.errors import HdblError

if TYPE_CHECKING:
    from mpi4py import MPI

    from hdbl_mpi.ps.state import Roster, ServerState
    from hdbl_mpi.rules.epoch_lengths import EpochLengths


class EveryWorkerLost(HdblError):
    """ULFM: the last worker died. The server has checkpointed; it evaluates the weights and writes a summary
    marked incomplete (run/rundir.py: INCOMPLETE), then ends the job with code 1."""


class _RunLength(Protocol):
    total: int  # commits the run will merge

    def close(self, force: bool = False) -> None: ...


class _Planner(Protocol):
    def lr(self) -> float: ...

    def survivors(self, alive: list[int], reason: str) -> dict | str: ...

    def hand_over(self, lost: int, spare: int) -> None: ...

    def next(self, rank: int) -> Any: ...


class ServerView(Protocol):
    """What failure handling uses of the server (ps/server.py)."""

    state: ServerState
    roster: Roster
    lengths: EpochLengths
    own_np: Any  # W as sent to the workers
    timeout_s: float
    run_dir: Path
    comm: Any
    release_due: bool

    @property
    def assign(self) -> _Planner: ...

    @property
    def epochs(self) -> _RunLength: ...

    def line(self, text: str) -> None: ...

    def served(self, rank: int) -> bool: ...

    def release(self) -> None: ...

    def save_now(self) -> None: ...

    def join(self, rank: int) -> None: ...



def is_process_failure(err: MPI.Exception) -> bool:
    """ULFM's error classes: a peer died, or a communicator was revoked because one did."""
    from mpi4py import MPI

    return err.Get_error_class() in (MPI.ERR_PROC_FAILED, MPI.ERR_PROC_FAILED_PENDING, MPI.ERR_REVOKED)


class Failures:
    """The server's failure handling; it acts on the server's roster, counters and epochs."""

    def __init__(self, server: ServerView, max_nonfinite: int, ulfm: bool, spares: list[int] | None = None) -> None:
        self.server, self.max_nonfinite, self.ulfm = server, max_nonfinite, ulfm
        self.spares = list(spares or [])  # idle spare ranks (ps.spares), first come first taken
        self.dismissed: list[int] = []  # spares told at the end that they were not needed
        self.first_due: set[int] = set()  # replacements whose first commit is still to come
        self.streak = {w: 0 for w in server.roster.workers}  # consecutive rejected pushes per rank
        self.rejected: set[int] = set()  # ranks whose last push was rejected (told so in the reply)

    # -- non-finite pushes ---------------------------------------------------------------------------------------
    def check_push(self, src: int, info: dict[str, float]) -> bool:
        """True when the push is to be rejected (non-finite loss or weights, as the worker flagged it)."""
        bad = not info["finite"] or not math.isfinite(info["loss_sum"])
        if not bad:
            self.streak[src] = 0
            return False
        s = self.server
        st = s.state
        st.nonfinite_rejected[str(src)] = st.nonfinite_rejected.get(str(src), 0) + 1
        self.streak[src] += 1
        self.rejected.add(src)
        lr = s.assign.lr()
        s.line(f"rejected a non-finite push from rank {src} (commit {int(info['local_commit'])}, loss "
               f"{info['loss_sum'] / max(info['samples'], 1):.4g}, lr {lr:.4g}); it restarts from the global "
               f"weights ({self.streak[src]} in a row)")
        if self.streak[src] >= self.max_nonfinite:
            raise HdblError(
                f"{self.streak[src]} pushes in a row from rank {src} had a non-finite loss or weights, each time "
                f"after restarting from the global weights: training diverged. Lower train.lr (now {lr:.4g}) or "
                f"add a warm-up (train.warmup_epochs); --resume continues from the last checkpoint in {s.run_dir}."
            )
        return True

    def was_rejected(self, rank: int) -> bool:
        """Whether `rank`'s last push was rejected; asked once, for its reply."""
        if rank in self.rejected:
            self.rejected.discard(rank)
            return True
        return False

    # -- stalled workers (ASP) -----------------------------------------------------------------------------------
    def check_stalled(self) -> None:
        """ASP goes on without a worker that has not committed for ps.timeout_s / 2: its commit in progress no
        longer holds back the end of the run (the others make up its share of the commits). Mid-run the others
        go on regardless; only at the end, when the rest were told to stop, does its commit hold the run up.
        BSP and SSP cannot: their rounds and bounds wait for every worker, and the overall timeout ends them with
        a message instead."""
        s = self.server
        roster, limit, now = s.roster, s.timeout_s / 2, time.monotonic()
        if not roster.stopped:
            return
        for w in sorted(roster.training):
            if now - roster.training_since[w] <= limit:
                continue
            roster.training.discard(w)
            roster.stalled.add(w)
            s.line(f"rank {w} has not committed for {limit:.0f} s (half of ps.timeout_s): going on without it")
            s.release()
            if not roster.training and s.state.merged < s.epochs.total:
                # Everyone else was already told to stop, counting on this commit: end the run one short.
                s.state.missing_commits = s.epochs.total - s.state.merged
                s.epochs.total = s.state.merged
                s.epochs.close(force=True)

    def came_back(self, rank: int) -> None:
        """A worker given up on as stalled committed after all: it was only slow."""
        if rank in self.server.roster.stalled:
            self.server.roster.stalled.discard(rank)
            self.server.line(f"rank {rank}, given up on as stalled, committed again; it is back in the run")

    # -- lost workers (ULFM) -------------------------------------------------------------------------------------
    def holds(self, stop: bool) -> bool:
        """With ULFM, a worker whose stop depends on commits still under way is held instead of stopped: if one
        of those workers dies, the held one is sent to make up its commit rather than the run ending short."""
        return stop and self.ulfm and self.server.state.merged < self.server.epochs.total

    def lose(self, err: MPI.Exception) -> None:
        """ULFM: acknowledge the failure, find the dead ranks and go on without them. In ASP a commit's share of
        the data does not depend on who makes it and an epoch is n commits, so the survivors take over the lost
        workers' commits and every epoch still covers the data set; nothing waits for the dead ranks."""
        from mpi4py import MPI

        s = self.server
        s.comm.Ack_failed()
        group = s.comm.Get_failed()
        dead = set(MPI.Group.Translate_ranks(group, list(range(group.Get_size())), s.comm.Get_group()))
        group.Free()
        self.drop(dead, err.Get_error_class(), err.Get_error_string().strip())

    def drop(self, dead: set[int], error_class: int, error: str) -> None:
        """Go on without the dead workers. A worker that was told to stop and whose last record is in has left
        the run, not failed it: under ULFM a rank leaves without MPI_Finalize, so its exit reaches the server
        as a process failure while other workers are still finishing; it is not lost, and nothing re-plans."""
        s = self.server
        roster = s.roster
        for idle in sorted(dead & set(self.spares)):
            self.spares.remove(idle)
            s.line(f"idle spare rank {idle} failed ({error}); {len(self.spares)} spare(s) left")
        failed = {w for w in dead & set(roster.workers) - roster.lost if not s.served(w)}
        if not failed:
            return
        replaced = 0
        for w in sorted(failed):
            roster.lost.add(w)
            roster.training.discard(w)
            roster.pending.pop(w, None)
            roster.stalled.discard(w)
            s.state.lost_workers.append({"rank": w, "at_commit": s.state.merged, "error_class": error_class,
                                         "time": time.time()})
            spare = self.replace(w)
            replaced += spare is not None
            left = len(roster.alive())
            s.line(f"rank {w} failed ({error}): " + (
                f"spare rank {spare} takes over its role ({len(self.spares)} spare(s) left)" if spare is not None
                else f"going on with {left} worker(s); the survivors take over its commits" if left
                else "no worker left"))
        s.release_due = True  # workers whose replies a failed send interrupted get theirs next
        if replaced == len(failed):  # as many workers as before, each in the same role: the plan stands
            return
        if not roster.alive():  # keep what was merged: a checkpoint at this commit, then a summary and stop
            s.save_now()
            raise EveryWorkerLost(f"every worker was lost at commit {s.state.merged} of {s.epochs.total}; the run "
                                  f"was checkpointed there: resume it with --resume {s.run_dir}.")
        change = s.assign.survivors(roster.alive(), f"lost rank(s) {sorted(roster.lost)}")
        if isinstance(change, str):
            s.line(change)
        else:
            s.line(f"re-planned for {change['workers']} survivors ({change['small']} small-batch): "
                   f"d_L={change['d_large']}" + (f" d_S={change['d_small']} B_S={change['batch_small']} "
                                                 f"f={change['factor_small']:.4f}" if change["small"] else ""))

    def replace(self, lost: int) -> int | None:
        """An idle spare takes the lost worker's role (ps/spare.py): the same group, plan share and merge weight;
        it starts from W as it is now. The spare that got it, or None with no spare left (a spare found dead
        on the way is dropped and the next one tried)."""
        from mpi4py import MPI

        s = self.server
        while self.spares:
            spare = self.spares.pop(0)
            try:
                self._send_takeover(spare, lost)
            except MPI.Exception as err:
                if not is_process_failure(err):
                    raise
                s.comm.Ack_failed()
                s.line(f"spare rank {spare} failed before it could take over rank {lost}'s role")
                continue
            s.join(spare)
            self.first_due.add(spare)
            s.state.replacements.append({"rank": lost, "by": spare, "at_commit": s.state.merged,
                                         "lost_at": s.state.lost_workers[-1]["time"], "first_commit_s": None})
            return spare
        return None

    def _send_takeover(self, spare: int, lost: int) -> None:
        """Hand `spare` the lost worker's role: its first assignment, then W as it is now (blocking: the spare
        is waiting for it, and W must not change under the send). If the spare is gone too, the role goes back
        to the lost rank's name for the next spare, and the failure is raised."""
        from mpi4py import MPI

        from hdbl_mpi.comm.wire import TAG_START, TAG_TAKEOVER

        s = self.server
        s.assign.hand_over(lost, spare)
        header = s.assign.next(spare).header(epoch=s.lengths.done(s.state.merged), merged=s.state.merged,
                                             replaces=float(lost))
        try:
            s.comm.Send(header, dest=spare, tag=TAG_START)
            s.comm.Send(s.own_np, dest=spare, tag=TAG_TAKEOVER)
        except MPI.Exception:
            s.assign.hand_over(spare, lost)
            raise

    def first_commit(self, rank: int) -> None:
        """A replacement's first merged commit: the seconds from the loss to it are the time the loss cost."""
        if rank not in self.first_due:
            return
        self.first_due.discard(rank)
        for r in self.server.state.replacements:
            if r["by"] == rank and r["first_commit_s"] is None:
                r["first_commit_s"] = round(time.time() - r["lost_at"], 3)
                self.server.line(f"spare rank {rank} made its first commit in rank {r['rank']}'s role "
                                 f"{r['first_commit_s']:.1f} s after the loss")

    def dismiss_spares(self) -> None:
        """At the end: every idle spare is told it was not needed, and leaves (one that died meanwhile is
        skipped)."""
        from mpi4py import MPI

        from hdbl_mpi.comm.wire import REPLY, TAG_START

        for spare in self.spares:
            try:
                self.server.comm.Send(REPLY.pack(stop=1.0), dest=spare, tag=TAG_START)
                self.dismissed.append(spare)
            except MPI.Exception as err:
                if not is_process_failure(err):
                    raise
        self.spares = []
