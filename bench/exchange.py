"""Commit exchange vs raw MPI: is the parameter server's hot path as fast as the wire allows?

Run (2 ranks: server + 1 worker; more ranks add workers that commit concurrently):

    mpirun -np 2 python bench/exchange.py [--commits 40] [--model resnet18]
    mpirun -np 4 python bench/exchange.py --servers 2          # 2 sharded servers (ranks 0 and 3), 2 workers
    mpirun -np 3 python bench/exchange.py --values 50000000    # a 50M-value (200 MB) vector instead of a model

In one run it measures, on the same ranks and the same bytes (the model's flat float32 vector: ResNet-18 with
the CIFAR stem is 11,229,732 values, 44.9 MB):

1. raw: worker Send -> server Recv -> server Send -> worker Recv of the vector (mpi4py buffer API);
2. merge: the server's merge pass alone (torch.lerp_ over the vector);
3. commit: the real protocol and server: ``push_and_pull`` on the worker against ``Server.serve`` (headers,
   bounded waits, merge, bookkeeping, reply, commit records).

It prints round-trip times, throughput, and the efficiency (raw + merge time) / commit time: about 1.0 when a
commit costs the raw transfer plus the merge and nothing more, lower the more the protocol adds. With --servers k
the last k-1 ranks are shard servers: raw stays the rank 0 <-> rank 1 transfer of the whole vector, merge is
rank 0's pass over its own shard, and the server throughput is that of the k servers together.
`bench/server.py` sweeps workers, model size and servers with this script. Record results in
docs/BENCHMARKS.md with the command line used.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdbl_mpi.comm.wire import PUSH, REPLY, TAG_RECORD, FlatState  # noqa: E402
from hdbl_mpi.comm.world import SHARD, make_world  # noqa: E402
from hdbl_mpi.config import load_config  # noqa: E402
from hdbl_mpi.models import build_model  # noqa: E402
from hdbl_mpi.ps.server import Server  # noqa: E402
from hdbl_mpi.ps.shards import Layout, serve_shard  # noqa: E402
from hdbl_mpi.ps.state import ServerState  # noqa: E402
from hdbl_mpi.ps.worker import push_and_pull  # noqa: E402
from hdbl_mpi.rules.plan import make_plan  # noqa: E402
from hdbl_mpi.rules.schedule import single_resolution  # noqa: E402
from hdbl_mpi.run.records import CommitRecord  # noqa: E402


class NoEvaluation:
    """The benchmark measures the exchange; the server's evaluator is replaced by one that evaluates nothing."""

    def submit(self, epoch, snapshot, resolution):
        pass

    def results(self):
        return []

    def finish(self, timeout_s):
        return []


def raw_round_trips(comm, vector, repeats: int) -> list[float]:
    """Worker-measured raw round trips (rank 1 <-> rank 0) of the same buffer."""
    times = []
    for _ in range(repeats):
        comm.Barrier()
        if comm.rank == 0:
            comm.Recv(vector, source=1, tag=1)
            comm.Send(vector, dest=1, tag=2)
        elif comm.rank == 1:
            start = time.perf_counter()
            comm.Send(vector, dest=0, tag=1)
            comm.Recv(vector, source=0, tag=2)
            times.append(time.perf_counter() - start)
    return times


def serve_commits(world, config, plan, flat, layout) -> float:
    """Run the real server for config.train.epochs * workers commits; returns the seconds it served."""
    with tempfile.TemporaryDirectory() as run_dir:
        schedule = single_resolution(config.train.epochs, config.train.lr, [], 0.1, 32, 0.0)
        server = Server(world, config, schedule, {32: plan}, flat.vector.clone(), Path(run_dir), NoEvaluation(),
                        ServerState(), config.ps.timeout_s, layout)
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the per-epoch lines are noise here
            server.serve()
        seconds = time.perf_counter() - start
        server.close()
    return seconds


def push_commits(comm, flat, layout) -> list[float]:
    """The worker side: the real push_and_pull until the server says stop, with a record per commit."""
    header_in, times = REPLY.empty(), []
    local = 0
    while True:
        local += 1
        header_out = PUSH.pack(local_commit=local, samples=100, steps=1, finite=1.0)
        times.append(push_and_pull(comm, flat.to_host(), header_out, header_in, 120.0, "bench reply", layout))
        flat.from_host()
        reply = REPLY.unpack(header_in)
        comm.send(CommitRecord(worker=comm.rank, group="large", host="bench", global_commit=int(reply["global_commit"]),
                               local_commit=local, epoch=int(reply["epoch"]), stage=0, resolution=32, batch=100,
                               steps=1, samples=100, lr=0.0, train_loss=0.0, train_acc=0.0, compute_s=0.0,
                               exchange_s=times[-1], wait_s=reply["held_s"], commit_s=times[-1], time=time.time()),
                  dest=0, tag=TAG_RECORD)
        if reply["stop"]:
            return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=10, help="commits per worker and round (and raw round trips)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (raw, merge, commit) measurements")
    parser.add_argument("--model", default="resnet18", choices=["resnet18", "resnet_small"])
    parser.add_argument("--values", type=int, default=0, help="a flat vector of this many values instead of --model")
    parser.add_argument("--servers", type=int, default=1, help="sharded servers (the last servers-1 ranks)")
    parser.add_argument("--json", help="also write the figures to this JSON file (rank 0)")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    workers = comm.size - args.servers
    if workers < 1:
        sys.exit(f"run with at least {args.servers + 1} ranks: mpirun -np {args.servers + 1} python bench/exchange.py")
    torch.set_num_threads(1)
    if args.values:
        model = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(args.values))])
        args.model = f"vector of {args.values:,}"
    else:
        model = build_model(args.model, 100, 3, 32, stem="cifar")
    flat = FlatState(model)
    world = make_world(workers, 0, comm, args.servers)
    layout = Layout.make(flat.numel, workers, args.servers)
    own = slice(*layout.own)
    plan = make_plan(workers * 1000, workers, 0, 100, None, None, 1.0)
    config = load_config(None, ["dual.batch_large=100", f"dual.workers={workers}", f"train.epochs={args.commits}",
                                "ps.timeout_s=120", "eval.every=0", "run.checkpoint_every=0"])
    other = flat.vector[own].clone()
    raw: list[float] = []
    merge_times: list[float] = []
    commit_times: list[float] = []
    serve_s = 0.0
    # Interleave the three measurements in rounds so that a noisy neighbour affects them alike.
    for _ in range(args.rounds):
        raw += raw_round_trips(comm, flat.host, args.commits)
        if comm.rank == 0:
            for _ in range(args.commits):
                start = time.perf_counter()
                flat.vector[own].lerp_(other, 0.5)
                merge_times.append(time.perf_counter() - start)
        comm.Barrier()
        if world.is_server:
            serve_s += serve_commits(world, config, plan, flat, layout)
        elif world.role == SHARD:
            serve_shard(comm, flat.host, *next(p[1:] for p in layout.parts if p[0] == comm.rank), 120.0)
        else:
            commit_times += push_commits(comm, flat, layout)
        comm.Barrier()
    raw_all = comm.gather(raw, root=0)
    commits_all = comm.gather(commit_times, root=0)
    if comm.rank != 0:
        return
    commits_all = commits_all[1:workers + 1]
    nbytes = flat.nbytes
    raw_s = statistics.median(raw_all[1])
    merge_s = statistics.median(merge_times)
    commit_s = statistics.median([t for per_worker in commits_all for t in per_worker])
    commits_per_s = workers * args.commits * args.rounds / serve_s
    figures = {
        "model": args.model, "values": flat.numel, "bytes": nbytes, "workers": workers, "servers": args.servers,
        "commits": args.commits,
        "rounds": args.rounds, "mpi_library": MPI.Get_library_version().splitlines()[0].strip(" \x00"),
        "raw_round_trip_ms": 1e3 * raw_s, "raw_GBps": 2 * nbytes / raw_s / 1e9,
        "merge_ms": 1e3 * merge_s,
        "commit_round_trip_ms": 1e3 * commit_s, "commit_GBps": 2 * nbytes / commit_s / 1e9,
        "server_commits_per_s": commits_per_s, "server_GBps": 2 * nbytes * commits_per_s / 1e9,
        "efficiency_vs_raw": raw_s / commit_s, "efficiency_vs_raw_plus_merge": (raw_s + merge_s) / commit_s,
    }
    print(f"vector: {flat.numel:,} float32 ({nbytes / 1e6:.1f} MB), {workers} worker(s), {args.servers} server(s), "
          f"{args.rounds} x {args.commits} commits each; {figures['mpi_library']}")
    print(f"raw Send/Recv round trip  {figures['raw_round_trip_ms']:8.2f} ms  ({figures['raw_GBps']:.2f} GB/s)")
    shard_note = " (rank 0's shard)" if args.servers > 1 else ""
    print(f"server merge (lerp_)      {figures['merge_ms']:8.2f} ms{shard_note}")
    print(f"commit round trip         {figures['commit_round_trip_ms']:8.2f} ms  ({figures['commit_GBps']:.2f} GB/s "
          f"per worker); server {commits_per_s:.1f} commits/s = {figures['server_GBps']:.2f} GB/s")
    print(f"efficiency = raw time / commit time: {figures['efficiency_vs_raw']:.3f}   "
          f"efficiency = (raw + merge time) / commit time: {figures['efficiency_vs_raw_plus_merge']:.3f}  "
          "(target >= 0.90)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
