"""Gradient averaging for the synchronous data-parallel baseline: over mpi4py, through Horovod, or PyTorch DDP.

Each gives every rank the mean of all ranks' gradients before each optimizer step, which is what a user's
conventional synchronous job (Horovod's DistributedOptimizer, PyTorch DDP) does, so the hybrid method is
compared with the real thing and not with a slower stand-in.

mpi4py path: the gradients are views of one float32 vector (set before backward and accumulated into in place
by autograd), laid out in reverse parameter order, the order backward produces them. The vector is cut into
buckets of about `bucket_mb`; when the last gradient of a bucket is accumulated (a post-accumulate-grad hook)
that bucket's reduction starts while backward goes on. `finish()` waits for the buckets and divides by the
world size.
- On the CPU the bucket is reduced in place by a non-blocking Iallreduce: nothing is copied.
- On a GPU the bucket is copied into one pinned host vector on a side stream as soon as it is ready, reduced
  there by an Iallreduce once its copy is done (a CUDA event, polled at the next hooks, so backward is never
  held up), and the vector is copied back in one transfer after the last bucket. MPI libraries support device
  buffers in blocking collectives only (comm/cuda_aware.py: `gpu_reduction_path`), so device memory goes to MPI
  only when the reductions do not overlap backward and the library is CUDA-aware.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from mpi4py import MPI
from torch import nn

from hdbl_mpi.comm.cuda_aware import CudaAwareness, gpu_reduction_path
from hdbl_mpi.rules.backends import HorovodBuild


class Mpi4pyAllreduce:
    """Bucketed gradient averaging over an mpi4py communicator, overlapped with backward."""

    name = "mpi4py"

    def __init__(self, model: nn.Module, comm: MPI.Intracomm, bucket_mb: float = 25.0, overlap: bool = True,
                 cuda_aware: CudaAwareness | None = None) -> None:
        self.comm, self.size, self.overlap = comm, comm.size, overlap
        params = [p for p in model.parameters() if p.requires_grad]
        device = params[0].device
        self.cuda = device.type == "cuda"
        # On a GPU the hooks run in autograd's device thread: MPI must allow calls from more than one thread.
        threads_ok = not self.cuda or MPI.Query_thread() >= MPI.THREAD_SERIALIZED
        overlapped = overlap and self.size > 1 and threads_ok
        aware = cuda_aware or CudaAwareness(False, "not asked")
        self.path = gpu_reduction_path(aware, overlapped) if self.cuda else None
        self.direct = self.path is not None and self.path.device_memory  # MPI reduces device memory itself
        total = sum(p.numel() for p in params)
        self.grad = torch.zeros(total, dtype=torch.float32, device=device)
        self.host = torch.empty(total, dtype=torch.float32).pin_memory() if self.cuda else self.grad
        self.host_np = self.host.numpy()
        self.copy_stream = torch.cuda.Stream(device) if self.cuda and overlapped else None
        self.nbytes = self.grad.numel() * 4
        self.views, self.buckets, self.bucket_of = _bucketed(params, self.grad, bucket_mb)
        self.members = [0] * len(self.buckets)
        for p, _ in self.views:
            self.members[self.bucket_of[id(p)]] += 1
        self.pending: list[int] = []
        self.requests: list[MPI.Request] = []
        self.started: set[int] = set()
        self.in_flight: list[tuple[int, Any]] = []  # GPU: (bucket, CUDA event) whose data is not ready yet
        self.wait_s = 0.0  # time spent in finish(): the part of the exchange that backward did not hide
        self.hooks = []
        if overlapped:
            self.hooks = [p.register_post_accumulate_grad_hook(self._ready) for p, _ in self.views]

    @property
    def bucket_count(self) -> int:
        return len(self.buckets)

    def zero_grad(self) -> None:
        """Zero the vector and point every .grad at its view (autograd then accumulates in place)."""
        self.grad.zero_()
        for p, view in self.views:
            p.grad = view
        self.pending = list(self.members)
        self.requests, self.started, self.in_flight = [], set(), []

    def remove(self) -> None:
        """Unhook from the model (another exchange, or none, can then drive its backward)."""
        for handle in self.hooks:
            handle.remove()
        self.hooks = []

    def _ready(self, param: torch.Tensor) -> None:
        if not self.pending:  # a backward outside a step of this exchange (zero_grad not called): nothing to send
            return
        bucket = self.bucket_of[id(param)]
        self.pending[bucket] -= 1
        if self.pending[bucket] == 0:
            self._start(bucket)
        self._poll()

    def _reduce(self, bucket: int) -> None:
        """A non-blocking reduction of the bucket in host memory (the CPU's own, or the GPU's pinned copy)."""
        start, end = self.buckets[bucket]
        self.requests.append(self.comm.Iallreduce(MPI.IN_PLACE, self.host_np[start:end], op=MPI.SUM))

    def _start(self, bucket: int) -> None:
        """Reduce a bucket whose gradients are complete: at once on the CPU; on a GPU once its copy to pinned
        host memory, started here on the side stream, is done."""
        self.started.add(bucket)
        if self.copy_stream is None:
            self._reduce(bucket)
            return
        event = torch.cuda.Event()
        start, end = self.buckets[bucket]
        self.copy_stream.wait_stream(torch.cuda.current_stream(self.grad.device))
        with torch.cuda.stream(self.copy_stream):
            self.host[start:end].copy_(self.grad[start:end], non_blocking=True)
            event.record(self.copy_stream)
        self.in_flight.append((bucket, event))

    def _poll(self, wait: bool = False) -> None:
        """Start the reductions of GPU buckets whose data is ready, in order (all of them when `wait`)."""
        while self.in_flight and (wait or self.in_flight[0][1].query()):
            bucket, event = self.in_flight.pop(0)
            event.synchronize()
            self._reduce(bucket)

    def finish(self) -> float:
        """Wait for every bucket; leave the mean gradient in each parameter's .grad. Returns the seconds waited."""
        start = time.perf_counter()
        self._finish()
        waited = time.perf_counter() - start
        self.wait_s += waited
        return waited

    def _finish(self) -> None:
        for p, view in self.views:
            if p.grad is not view and p.grad is not None:  # autograd replaced the view (unusual): copy back
                view.copy_(p.grad)
                p.grad = view
        if self.size == 1:
            return
        if not self.hooks:  # blocking collectives, after backward (overlap off, or no threads for the hooks)
            if self.cuda and not self.direct:
                self.host.copy_(self.grad)
            buffer = self.grad if self.direct else self.host_np
            if self.direct:
                torch.cuda.current_stream(self.grad.device).synchronize()
            for start, end in self.buckets:
                self.comm.Allreduce(MPI.IN_PLACE, buffer[start:end], op=MPI.SUM)
        else:
            for bucket in range(len(self.buckets)):  # parameters unused in this forward never fire their hook
                if bucket not in self.started:
                    self._start(bucket)
            self._poll(wait=True)
            MPI.Request.Waitall(self.requests)
        if self.cuda and not self.direct:
            self.grad.copy_(self.host, non_blocking=True)  # ordered before the optimizer's kernels
        self.grad.div_(self.size)
        self.pending = []


def _bucketed(params: list[nn.Parameter], grad: torch.Tensor, bucket_mb: float
              ) -> tuple[list[tuple[nn.Parameter, torch.Tensor]], list[tuple[int, int]], dict[int, int]]:
    """Each parameter's view of `grad` in reverse order (the last layers' gradients come first out of backward,
    so their bucket goes first), in the parameter's own memory format (channels-last too, so autograd
    accumulates into it without a layout change), the [start, end) of each bucket of about `bucket_mb`, and
    each parameter's bucket (by id)."""
    views: list[tuple[nn.Parameter, torch.Tensor]] = []
    limit = max(1, int(bucket_mb * (1 << 20) / 4))
    buckets: list[tuple[int, int]] = []
    bucket_of: dict[int, int] = {}
    offset, start = 0, 0
    for p in reversed(params):
        n = p.numel()
        dense = p.is_contiguous() or p.is_contiguous(memory_format=torch.channels_last)
        view = grad.as_strided(p.shape, p.stride(), offset) if dense else grad[offset : offset + n].view(p.shape)
        views.append((p, view))
        bucket_of[id(p)] = len(buckets)
        offset += n
        if offset - start >= limit:
            buckets.append((start, offset))
            start = offset
    if offset > start:
        buckets.append((start, offset))
    return views, buckets, bucket_of


class HorovodAllreduce:
    """Horovod's DistributedOptimizer does the averaging itself (its own hooks, fusion buffer and, on GPUs,
    NCCL); this object only initialises Horovod on the job's communicator and wraps the optimizer."""

    name = "horovod"

    def __init__(self, comm: MPI.Intracomm) -> None:
        import horovod
        import horovod.torch as hvd

        hvd.init(comm=comm)
        if hvd.size() != comm.size:
            raise RuntimeError(f"Horovod sees {hvd.size()} ranks but the job has {comm.size}")
        self.hvd, self.version = hvd, horovod.__version__

    def wrap(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        hvd = self.hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        return hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(), op=hvd.Average)

    def exchange(self, optimizer: Any) -> HorovodExchange:
        """The step's side of the wrapped optimizer: completes its reductions and says how long that waited."""
        return HorovodExchange(optimizer)

    def controllers(self) -> dict:
        return {"mpi": bool(self.hvd.mpi_built()), "gloo": bool(self.hvd.gloo_built()),
                "nccl": bool(self.hvd.nccl_built())}


class HorovodExchange:
    """Horovod's DistributedOptimizer reduces asynchronously from its backward hooks and waits in synchronize():
    calling it here (the step then runs under skip_synchronize) times the wait for the other ranks."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def finish(self) -> float:
        start = time.perf_counter()
        self.optimizer.synchronize()
        return time.perf_counter() - start


def horovod_build() -> HorovodBuild | None:
    """What the installed Horovod was built with; None when horovod.torch does not import (not installed, or
    built against another torch: a broken build counts as absent)."""
    try:
        import horovod
        import horovod.torch as hvd
    except Exception:
        return None
    return HorovodBuild(horovod.__version__, bool(hvd.cuda_built() or hvd.rocm_built()), bool(hvd.nccl_built()))


def horovod_importable() -> bool:
    """Whether horovod.torch imports here (tests and benchmarks skip the Horovod backend where it does not)."""
    return horovod_build() is not None


def average_vector(comm: MPI.Intracomm, vector: np.ndarray) -> None:
    """In-place mean of a float32 array over the communicator (model averaging, BatchNorm statistics)."""
    if comm.size > 1:
        comm.Allreduce(MPI.IN_PLACE, vector, op=MPI.SUM)
        vector /= comm.size


class TorchDDP:
    """PyTorch's DistributedDataParallel, initialised from the MPI world the launcher started (mpirun,
    horovodrun or srun): rank and size from mpi4py, and the rendezvous address and port chosen by rank 0 and
    broadcast over MPI, so no other launcher (torchrun) or environment is needed.

    Buffers (BatchNorm statistics) are not broadcast every step (``broadcast_buffers=False``): like the mpi4py
    and Horovod backends, the run averages them at the end of each epoch, so the three backends train the same
    model. The process group is NCCL on GPUs of their own, gloo on the CPU and where ranks share a GPU (NCCL
    refuses that; gloo reduces CUDA tensors too, through host memory; rules/backends.py). MASTER_ADDR and
    MASTER_PORT, when set, win over the automatic choice (e.g. on hosts with several networks, where
    GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME pick the interface too)."""

    name = "ddp"

    def __init__(self, comm: MPI.Intracomm, device: torch.device, bucket_mb: float = 25.0,
                 timeout_s: float = 600.0, process_group: str | None = None) -> None:
        from datetime import timedelta

        import torch.distributed as dist

        self.dist, self.device, self.bucket_mb = dist, device, bucket_mb
        self.backend = process_group or ("nccl" if device.type == "cuda" else "gloo")
        addr, port = rendezvous(comm)
        dist.init_process_group(self.backend, init_method=f"tcp://{addr}:{port}", rank=comm.rank,
                                world_size=comm.size, timeout=timedelta(seconds=timeout_s))
        self.address = f"{addr}:{port}"

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around `model`, with a communication hook that notes when each bucket's gradients are ready (then
        reduces it as DDP's own allreduce hook does), so `exchange()` can tell this rank's backward from its wait
        for the others."""
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index if self.device.index is not None else 0] if self.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model, device_ids=ids, bucket_cap_mb=self.bucket_mb,
                                          broadcast_buffers=False)

        def noted(state: Any, bucket: Any) -> Any:
            self.last_ready = time.perf_counter()
            return allreduce_hook(state, bucket)

        # DDP checks the hook's annotations against the real classes (postponed ones are strings here)
        noted.__annotations__ = {"state": object, "bucket": self.dist.GradBucket,
                                "return": torch.futures.Future[torch.Tensor]}
        self.last_ready = 0.0
        wrapped.register_comm_hook(None, noted)
        return wrapped

    def exchange(self, optimizer: torch.optim.Optimizer) -> DDPExchange:
        return DDPExchange(self, optimizer)

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


class DDPExchange:
    """DDP reduces inside backward and waits there for the last bucket: the time from that bucket's gradients
    being ready (its hook) to backward's end is this step's wait for the other ranks. Host clocks: on a GPU the
    hook runs when the bucket's kernels are queued, so there the figure leaves out part of the wait."""

    def __init__(self, ddp: TorchDDP, optimizer: torch.optim.Optimizer) -> None:
        self.ddp, self.optimizer = ddp, optimizer

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()
        self.ddp.last_ready = 0.0

    def finish(self) -> float:
        ready = self.ddp.last_ready
        return max(0.0, time.perf_counter() - ready) if ready else 0.0


def rendezvous(comm: MPI.Intracomm) -> tuple[str, int]:
    """The address and a free port of rank 0 for torch.distributed, agreed over MPI: the loopback address when
    every rank runs on rank 0's host, else rank 0's address on the network that routes to the others."""
    import os
    import socket

    hosts = comm.allgather(socket.gethostname())
    choice = None
    if comm.rank == 0:
        addr = os.environ.get("MASTER_ADDR") or ("127.0.0.1" if len(set(hosts)) == 1 else _routable_address())
        port = int(os.environ.get("MASTER_PORT", "0")) or _free_port()
        choice = (addr, port)
    return comm.bcast(choice, root=0)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _routable_address() -> str:
    """This host's address on its default route (a UDP 'connect' sends nothing), else its resolved name."""
    import socket

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return str(s.getsockname()[0])
    except OSError:
        return socket.gethostbyname(socket.gethostname())
