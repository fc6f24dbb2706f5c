"""ps.speed_weighted: the synchronous allreduce with each rank's batch in proportion to its measured speed and
the gradient averaged by samples (rules/speed_split.py has the split).

A step's samples stay n x B_L, so the LR, the steps per epoch and an epoch's data are the plain allreduce's; a
rank's loss is scaled by n * B_i / (n * B_L) before backward, so the backends' plain mean of the ranks'
gradients becomes the mean over the step's samples. The speeds come from each rank's own time for its steps
(the wait for the others' gradients left out, as each exchange accounts it), allgathered every
ps.rebalance_steps steps (0: at each epoch's end); the first split is from the start-up profile's per-rank
lines when `dual.profile: auto` measured them, else even.
"""

from __future__ import annotations

from mpi4py import MPI

from hdbl_mpi.rules.speed_split import speed_batches
from hdbl_mpi.rules.worker_plan import StepLine


class SpeedWeights:
    """Every rank's batch for the next steps, agreed by all (each computes the same split from the allgather)."""

    def __init__(self, comm: MPI.Intracomm, batch_large: int, cap: int, lines: list[StepLine] | None,
                 batches: list[int] | None = None) -> None:
        self.comm, self.rank, self.n = comm, comm.rank, comm.size
        self.total, self.cap = self.n * batch_large, cap or 2 * batch_large
        if batches:  # resumed: the split the checkpoint was taken with
            self.batches = list(batches)
        elif lines and len(lines) == self.n:
            self.batches = speed_batches([line.per_sample(batch_large) for line in lines], self.total, self.cap)
        else:
            self.batches = [batch_large] * self.n
        self.history: list[dict] = [{"at_epoch": 0.0, "batches": list(self.batches),
                                     "from": "profile" if lines and not batches else "even"}]

    @property
    def mine(self) -> int:
        return self.batches[self.rank]

    @property
    def loss_scale(self) -> float:
        """n * B_i / (step's samples): the backends' mean of the ranks' gradients becomes the sample mean."""
        return self.n * self.mine / self.total

    def rebalance(self, own_s: float, samples: int, at_epoch: float) -> None:
        """Split the next steps by the speeds of the steps just run (this rank's own seconds for its samples)."""
        per_sample = self.comm.allgather(own_s / max(samples, 1))
        new = speed_batches(per_sample, self.total, self.cap)
        if new != self.batches:
            self.batches = new
            self.history.append({"at_epoch": round(at_epoch, 4), "batches": list(new),
                                 "per_sample_ms": [round(1e3 * c, 4) for c in per_sample]})

    def summary(self) -> dict:
        return {"batches": list(self.batches), "cap": self.cap, "changes": len(self.history) - 1,
                "history": self.history[-20:]}
