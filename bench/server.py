"""Server throughput against workers, model size and sharded servers, and a projection to a cluster.

Part 1 (measured here): runs ``bench/exchange.py`` under mpirun for every combination of ``--workers``,
``--sizes`` (models, or plain vectors of N values) and ``--servers``, and tabulates what the server side
sustains: commits/s and GB/s (2 x model bytes per commit: the push in and the reply out).

Part 2 (projected): the load a run of the method puts on its server(s) on a cluster. Each worker commits once
per d = D/n samples, so with n workers of r samples/s each the servers receive n^2 * r / D commits/s, while
k servers on links of L Gb/s (full duplex: pushes in and replies out use opposite directions) can take
k * eff * L/8 / S commits/s for a model of S bytes. The table gives the utilisation (demand / capacity) for
ResNet-18 on 25 and 100 Gb/s links, 8..64 workers and k = 1, 2, 4 servers, and the time one commit's
transfer takes relative to the commit interval. r comes from the papers' published runs (see --help), eff
(the fraction of the line rate a large MPI message reaches) defaults to 0.9.

    python bench/server.py --out bench-server.md                    # both parts (about 5 minutes on 2 cores)
    python bench/server.py --project-only                           # part 2 only, no MPI
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdbl_mpi.launch.commands import local_mpirun  # noqa: E402

RESNET18 = {"cifar100": 11_229_732, "imagenet": 11_699_112}  # float32 values of the flat state (params + BN)
# Per-worker training throughput of the papers' all-large-batch baselines (1 server + 4 workers):
# CIFAR-100: 140 epochs x 50,000 samples in 1,541 s on 4 GTX-1080 -> 1,136 samples/s per worker;
# ImageNet: 105 epochs x 1,281,167 samples in 33,975 s on 4 RTX-3090 (AMP) -> 990 samples/s per worker.
PAPER_RATES = {"cifar100": (50_000, 50_000 * 140 / 1541 / 4), "imagenet": (1_281_167, 1_281_167 * 105 / 33975 / 4)}


def measure(workers: int, size: str, servers: int, commits: int, rounds: int) -> dict:
    """One bench/exchange.py job; returns its JSON figures."""
    script = str(Path(__file__).with_name("exchange.py"))
    size_args = ["--values", size] if size.isdigit() else ["--model", size]
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv, env = local_mpirun(workers + servers, [sys.executable, script, "--commits", str(commits), "--rounds",
                                                     str(rounds), "--servers", str(servers), "--json", out.name,
                                                     *size_args])
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            sys.exit(f"bench/exchange.py failed ({' '.join(argv)}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return json.loads(Path(out.name).read_text())


def measured_table(rows: list[dict]) -> list[str]:
    lines = ["| model | values | MB | workers | servers | server commits/s | server GB/s | worker round trip ms "
             "| gain vs 1 server |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        one = next((x for x in rows if x["values"] == r["values"] and x["workers"] == r["workers"]
                    and x["servers"] == 1), None)
        gain = f"{r['server_commits_per_s'] / one['server_commits_per_s']:.2f}x" if one else "—"
        lines.append(f"| {r['model']} | {r['values']:,} | {r['bytes'] / 1e6:.1f} | {r['workers']} | {r['servers']} | "
                     f"{r['server_commits_per_s']:.1f} | {r['server_GBps']:.2f} | {r['commit_round_trip_ms']:.1f} "
                     f"| {gain} |")
    return lines


def projection(efficiency: float, rates: dict[str, tuple[int, float]]) -> list[str]:
    """Utilisation of k servers by n workers of ResNet-18, per data set and link speed."""
    lines = ["| data set | model MB | r (samples/s/worker) | link | workers | commits/s demanded | commit interval s "
             "| transfer / interval | utilisation k=1 | k=2 | k=4 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, (dataset, rate) in rates.items():
        size = 4 * RESNET18[name]
        for gbps in (25, 100):
            per_server = efficiency * gbps * 1e9 / 8 / size  # commits/s one server's link carries each way
            for n in (8, 16, 32, 64):
                demand = n * n * rate / dataset
                interval = dataset / n / rate
                transfer = size / (efficiency * gbps * 1e9 / 8)
                util = [demand / (k * per_server) for k in (1, 2, 4)]
                cells = [f"**{u:.2f}**" if u > 0.5 else f"{u:.2f}" for u in util]
                lines.append(f"| {name} | {size / 1e6:.1f} | {rate:,.0f} | {gbps} Gb/s | {n} | {demand:.1f} | "
                             f"{interval:.2f} | {transfer / interval:.3f} | {' | '.join(cells)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure")
    parser.add_argument("--sizes", default="resnet_small,resnet18,45000000",
                        help="models (resnet_small, resnet18) or vector lengths to measure")
    parser.add_argument("--servers", default="1,2", help="server counts to measure")
    parser.add_argument("--commits", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--efficiency", type=float, default=0.9, help="fraction of the line rate a transfer reaches")
    parser.add_argument("--rate", action="append", default=[], metavar="DATASET=SAMPLES_PER_S",
                        help="per-worker throughput instead of the papers' (cifar100=..., imagenet=...)")
    parser.add_argument("--project-only", action="store_true", help="only the projection (no MPI)")
    parser.add_argument("--out", help="also write the tables (markdown) to this file")
    args = parser.parse_args()
    rates = dict(PAPER_RATES)
    for item in args.rate:
        name, _, value = item.partition("=")
        if name not in rates:
            sys.exit(f"--rate {item}: the data set must be one of {', '.join(rates)}")
        rates[name] = (rates[name][0], float(value))
    lines: list[str] = []
    if not args.project_only:
        rows = []
        for size in args.sizes.split(","):
            for workers in map(int, args.workers.split(",")):
                for servers in map(int, args.servers.split(",")):
                    rows.append(measure(workers, size, servers, args.commits, args.rounds))
                    r = rows[-1]
                    print(f"{r['model']:>22} workers {workers} servers {servers}: {r['server_commits_per_s']:7.1f} "
                          f"commits/s {r['server_GBps']:6.2f} GB/s", flush=True)
        lines += ["## Measured: server throughput", "", *measured_table(rows), ""]
    lines += [f"## Projected: ResNet-18 on a cluster (transfer efficiency {args.efficiency})", "",
              *projection(args.efficiency, rates), "",
              "Utilisation above 0.5 (bold) means commits queue at the server noticeably; above 1 the server cannot "
              "keep up at all and more servers (ps.servers) or faster links are needed."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
