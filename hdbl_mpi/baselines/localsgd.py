"""LocalSGD's rounds (ps.mode: localsgd; method §7): H local steps, then the models are averaged, with SlowMo
on top when configured, and the strategy of `local.strategy` picks the next H. The trainer around them is
baselines/peer.py."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mpi4py import MPI

from hdbl_mpi.baselines.allreduce import average_vector
from hdbl_mpi.comm.wire import FlatState
from hdbl_mpi.rules.local_steps import make_local_steps
from hdbl_mpi.rules.slowmo import slowmo_update
from hdbl_mpi.schema import Config

if TYPE_CHECKING:
    from hdbl_mpi.baselines.peer import PeerState


class LocalRounds:
    """LocalSGD's rounds: H local steps, then the models are averaged (with SlowMo on top when configured), and
    the strategy picks the next H."""

    def __init__(self, config: Config, epochs: int, state: PeerState, host: np.ndarray, comm: MPI.Intracomm) -> None:
        c = config.local
        self.config, self.epochs, self.state, self.comm = c, epochs, state, comm
        self.strategy = make_local_steps(c.strategy, c.h, c.h_min, c.h_max, epochs, **c.options)
        if state.local_steps:
            self.strategy.load_state_dict(state.local_steps)
        self.h = state.h_history[-1][1] if state.h_history else self.strategy.next_h(0, state.epoch, None)
        if not state.h_history:
            state.h_history.append([state.epoch, self.h])
        self.round_start = host.copy()  # x_prev of SlowMo: the model every worker started the round from
        self.slow_buffer = torch.zeros(host.size)

    def average(self, host: np.ndarray, epoch_f: float, round_loss: float, round_samples: int, lr: float) -> None:
        """End a round: average `host` (the flat model) in place and pick the next H (not after the run's last
        round, so the recorded H values are the ones that ran)."""
        st, c = self.state, self.config
        totals = np.array([round_loss, round_samples], dtype=np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, totals, op=MPI.SUM)
        average_vector(self.comm, host)
        if c.slowmo:
            x = torch.from_numpy(self.round_start)
            slowmo_update(x, torch.from_numpy(host), self.slow_buffer, c.slowmo_beta, c.slowmo_alpha, lr)
            host[:] = self.round_start
        else:
            self.round_start[:] = host
        st.syncs += 1
        if epoch_f >= self.epochs:
            return
        h = self.strategy.next_h(st.syncs, epoch_f, float(totals[0] / max(totals[1], 1.0)))
        if h != self.h:
            st.h_history.append([round(epoch_f, 4), h])
        self.h = h


@dataclass
class _Round:
    """A LocalSGD round in progress: its steps, summed loss (on the device) and samples."""

    loss: torch.Tensor
    steps: int = 0
    samples: int = 0


def round_hook(rounds: LocalRounds | None, flat: FlatState, device: torch.device, epoch: int, steps: int,
               lr_of_step: Any) -> tuple[Any, list[float]]:
    """LocalSGD: a hook run after every step that ends a round every H steps (and at the epoch's end), and the
    seconds spent averaging (a one-element list it adds to). None for allreduce."""
    seconds = [0.0]
    if rounds is None:
        return None, seconds
    now = _Round(torch.zeros((), device=device))

    def after_step(done: int, loss: torch.Tensor, samples: int) -> None:
        now.steps += 1
        now.loss += loss * samples
        now.samples += samples
        if now.steps >= rounds.h or done == steps:
            start = time.perf_counter()
            rounds.average(flat.to_host(), epoch + done / steps, float(now.loss), now.samples, lr_of_step(done - 1))
            flat.from_host()
            seconds[0] += time.perf_counter() - start
            now.steps, now.loss, now.samples = 0, torch.zeros((), device=device), 0

    return after_step, seconds
