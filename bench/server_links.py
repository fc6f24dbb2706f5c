"""Sharded servers where they pay: the server's network link is the bottleneck (an emulated cluster).

On one machine the ranks talk through shared memory, and a second server mostly competes for the same cores
(`bench/server.py`). On a cluster the limit is usually the server's NIC: every commit moves the model in and
out of it. This benchmark builds that situation with network namespaces (``hdbl_mpi.launch.netns``): host
``s0`` for rank 0, host ``s1`` for the second server, host ``w`` for the workers, each linked to a switch; the
two server hosts' links are limited to ``--mbit`` in each direction, the workers' link is not. It then runs
``bench/exchange.py`` across the hosts with 1 server (s0) and with 2 servers (s0 + s1), and prints the
server throughput of each and the gain. Needs root, `ip`, `unshare` and `tc`.

    python bench/server_links.py                         # 1000 Mbit/s server links, 2 workers, a 2.5M-value vector
    python bench/server_links.py --mbit 500 --workers 4 --values 5000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdbl_mpi.launch import netns  # noqa: E402
from hdbl_mpi.launch.commands import Launch, build_command  # noqa: E402
from hdbl_mpi.launch.hosts import parse_hostfile  # noqa: E402


def run(cluster: netns.Cluster, hosts: list[tuple[str, int]], args: argparse.Namespace, workdir: Path,
        servers: int) -> dict:
    """bench/exchange.py over the emulated hosts; `hosts` in rank order (rank 0's host first)."""
    hostfile = workdir / f"hosts{servers}"
    hostfile.write_text("".join(f"{name} slots={slots}\n" for name, slots in hosts))
    out = workdir / f"figures{servers}.json"
    program = [sys.executable, str(Path(__file__).with_name("exchange.py")), "--values", str(args.values),
               "--servers", str(servers), "--commits", str(args.commits), "--rounds", str(args.rounds),
               "--json", str(out)]
    argv, env = build_command(Launch(program=program, np=sum(s for _, s in hosts), hosts=parse_hostfile(hostfile),
                                     iface=cluster.net, rsh_agent=cluster.nsrsh))
    proc = subprocess.run(cluster.run_in(hosts[0][0], argv), capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        sys.exit(f"bench/exchange.py across the hosts failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mbit", type=float, default=1000.0, help="each server host's link rate, each direction")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--values", type=int, default=2_500_000, help="float32 values of the exchanged vector")
    parser.add_argument("--commits", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    reason = netns.unavailable()
    if reason:
        sys.exit(f"bench/server_links.py {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tag = os.getpid() % 10000
        s0, s1, w = f"hl{tag}s0", f"hl{tag}s1", f"hl{tag}w"
        with netns.emulated_hosts([s0, s1, w], workdir, {s0: args.mbit, s1: args.mbit}) as cluster:
            one = run(cluster, [(s0, 1), (w, args.workers)], args, workdir, 1)
            two = run(cluster, [(s0, 1), (w, args.workers), (s1, 1)], args, workdir, 2)
    line_rate = args.mbit * 1e6 / 8 / one["bytes"]  # commits/s one link carries each way
    print(f"vector {args.values:,} float32 ({one['bytes'] / 1e6:.1f} MB), {args.workers} workers on their own host, "
          f"server links {args.mbit:g} Mbit/s each way (at most {line_rate:.2f} commits/s per server link)")
    for figures in (one, two):
        print(f"  {figures['servers']} server(s): {figures['server_commits_per_s']:6.2f} commits/s "
              f"({figures['server_GBps'] * 1e3:7.1f} MB/s in + out), worker round trip "
              f"{figures['commit_round_trip_ms']:8.1f} ms")
    gain = two["server_commits_per_s"] / one["server_commits_per_s"]
    print(f"  gain with 2 servers: {gain:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"mbit": args.mbit, "one": one, "two": two, "gain": gain}, indent=2))


if __name__ == "__main__":
    main()
