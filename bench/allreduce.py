"""Gradient allreduce of the synchronous baseline: is the mpi4py path as fast as the wire, and as Horovod?

Run (2 or more ranks; Horovod rows only where horovod.torch imports):

    mpirun -np 2 python bench/allreduce.py [--model resnet18] [--repeats 20] [--batch 16] [--resolution 32]

On the same ranks and the same gradient bytes (ResNet-18, CIFAR stem, 100 classes: 11.2M float32, 44.7 MB)
it measures:

1. raw: one in-place ``Allreduce`` of the whole vector (mpi4py buffer API), the floor for any averaging;
2. bucketed: ``Mpi4pyAllreduce.finish()`` with no backward running (every bucket starts at once), for several
   bucket sizes: the cost of cutting the vector into buckets;
3. steps: whole training steps (forward, backward, exchange, SGD) without any exchange, with the mpi4py
   exchange (buckets started from backward hooks), and with Horovod's DistributedOptimizer. Step time minus
   the no-exchange step time is the exchange time the step did not hide.

Record results in docs/BENCHMARKS.md with the command line used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdbl_mpi.baselines.allreduce import HorovodAllreduce, Mpi4pyAllreduce, horovod_importable  # noqa: E402
from hdbl_mpi.comm.world import threads_per_rank  # noqa: E402
from hdbl_mpi.models import build_model  # noqa: E402
from hdbl_mpi.optim.optimizers import make_optimizer, param_groups  # noqa: E402


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def timed(fn, repeats: int, comm: MPI.Intracomm) -> list[float]:
    """Per-call seconds, each call started together on every rank (a barrier) and timed to its slowest rank."""
    out = []
    for _ in range(repeats):
        comm.Barrier()
        start = time.perf_counter()
        fn()
        out.append(comm.allreduce(time.perf_counter() - start, op=MPI.MAX))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=32)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    torch.set_num_threads(threads_per_rank(local.size))
    torch.manual_seed(0)
    model = build_model(args.model, args.classes, 3, args.resolution)
    exchange = Mpi4pyAllreduce(model, comm)
    exchange.remove()  # only its sizes are used here
    mb = exchange.nbytes / 2**20
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    say(f"{comm.size} ranks, {args.model}: {exchange.grad.numel() / 1e6:.1f}M gradient values ({mb:.1f} MiB), "
        f"{torch.get_num_threads()} torch threads per rank, {MPI.Get_library_version().splitlines()[0][:40]}")

    vector = torch.randn(exchange.grad.numel())
    host = vector.numpy()
    raw = timed(lambda: comm.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM), args.repeats, comm)
    say(f"raw Allreduce:            {median_ms(raw):7.1f} ms  ({mb / statistics.median(raw):6.0f} MiB/s)")
    for bucket_mb in (1.0, 25.0, 1024.0):
        bucketed = Mpi4pyAllreduce(model, comm, bucket_mb)

        def run(b=bucketed) -> None:
            b.zero_grad()
            b.finish()

        times = timed(run, args.repeats, comm)
        bucketed.remove()
        say(f"bucketed {bucket_mb:6.0f} MB ({bucketed.bucket_count:3d} buckets): {median_ms(times):7.1f} ms  "
            f"(raw / this = {statistics.median(raw) / statistics.median(times):.2f})")

    inputs = torch.randn(args.batch, 3, args.resolution, args.resolution)
    labels = torch.randint(0, args.classes, (args.batch,))

    def steps(optimizer, exchange_=None):
        def one() -> None:
            loss = F.cross_entropy(model(inputs), labels)
            if exchange_ is None:
                optimizer.zero_grad()
            else:
                exchange_.zero_grad()
            loss.backward()
            if exchange_ is not None:
                exchange_.finish()
            optimizer.step()
        one()  # warm-up
        return timed(one, args.repeats, comm)

    sgd = make_optimizer("sgd", param_groups(model, 1e-4), 0.01, 0.9, 1e-4)
    alone = steps(sgd)
    say(f"step B={args.batch} {args.resolution}px, no exchange: {median_ms(alone):7.1f} ms")
    for overlap in (True, False):
        hooked = Mpi4pyAllreduce(model, comm, overlap=overlap)
        mine = steps(sgd, hooked)
        hooked.remove()
        how = "Iallreduce from backward hooks" if overlap else "blocking Allreduce after backward"
        say(f"step with mpi4py, {how}: {median_ms(mine):7.1f} ms  "
            f"(+{median_ms(mine) - median_ms(alone):.1f} ms against raw {median_ms(raw):.1f} ms)")
    if horovod_importable():
        hvd = HorovodAllreduce(comm)
        wrapped = hvd.wrap(model, make_optimizer("sgd", param_groups(model, 1e-4), 0.01, 0.9, 1e-4))
        theirs = steps(wrapped)
        say(f"step with Horovod {hvd.version}:       {median_ms(theirs):7.1f} ms  "
            f"(+{median_ms(theirs) - median_ms(alone):.1f} ms)")
    else:
        say("Horovod: not installed (launchers/install_horovod.sh); no Horovod row")


if __name__ == "__main__":
    main()
