"""Real launches through `hdbl launch`: on this host, and across two network namespaces (two hosts)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import FAST

pytestmark = pytest.mark.mpi


def _set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


@pytest.mark.parametrize("mode, ranks, why", [
    ("asp", 3, "1 server + dual.workers=2 workers"),
    ("allreduce", 2, "dual.workers=2 allreduce workers, no server"),
])
def test_hdbl_launch_on_localhost_trains(tmp_path, mode, ranks, why):
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "hdbl_mpi.cli", "launch", "-H", f"localhost:{ranks}", "train", "--run-dir",
            str(run_dir), *_set_args(FAST + ["dual.workers=2", "train.epochs=1", f"ps.mode={mode}"])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"hdbl launch: {ranks} ranks ({why}) on 1 host(s) with {ranks} slots from -H" in out
    assert f" -np {ranks} -H localhost:{ranks} " in out  # the command it ran is shown
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == ranks and summary["mode"] == mode and summary["epochs_completed"] == 1
    # mpirun sets Open MPI's local-rank variable; without one the MPI shared-memory split is used.
    assert {d["local_rank_from"] for d in summary["devices"].values()} <= {
        "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MPI shared-memory split"}


# --- two hosts: network namespaces joined by a veth pair ------------------------------------------------------

INNS = """#!/bin/bash
# Run a command in network namespace $1 with its own hostname (= the namespace name).
ns=$1; shift
exec ip netns exec "$ns" unshare --uts /bin/bash -c 'hostname "$0"; exec "$@"' "$ns" "$@"
"""

NSRSH = """#!/bin/bash
# ssh stand-in for mpirun: start the remote daemon inside the namespace named like the host.
host=$1; shift
case "$host" in {a}|{ip_a}) ns={a};; {b}|{ip_b}) ns={b};; *) echo "nsrsh: unknown host $host" >&2; exit 255;; esac
exec ip netns exec "$ns" unshare --uts /bin/bash -c "hostname $ns; $*"
"""


def _netns_unavailable() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "unshare"):
        if not shutil.which(tool):
            return f"needs the {tool!r} command (iproute2 / util-linux)"
    probe = f"hdblprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@pytest.fixture
def two_hosts(tmp_path):
    """Namespaces A and B with one veth pair on a private /24: the only way between them is that link."""
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    tag = os.getpid() % 10000
    a, b = f"hdbl{tag}a", f"hdbl{tag}b"
    veth_a, veth_b = f"hv{tag}a", f"hv{tag}b"
    net = f"10.231.{tag % 250}"
    ip_a, ip_b = f"{net}.1", f"{net}.2"
    try:
        _sh("ip", "netns", "add", a)
        _sh("ip", "netns", "add", b)
        _sh("ip", "link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        _sh("ip", "link", "set", veth_a, "netns", a)
        _sh("ip", "link", "set", veth_b, "netns", b)
        for ns, dev, addr in ((a, veth_a, ip_a), (b, veth_b, ip_b)):
            _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "-n", ns, "link", "set", dev, "up")
        inns, nsrsh = tmp_path / "inns", tmp_path / "nsrsh"
        inns.write_text(INNS)
        nsrsh.write_text(NSRSH.format(a=a, b=b, ip_a=ip_a, ip_b=ip_b))
        inns.chmod(0o755)
        nsrsh.chmod(0o755)
        yield {"a": a, "b": b, "veth_a": veth_a, "net": f"{net}.0/24", "inns": str(inns), "nsrsh": str(nsrsh)}
    finally:
        for ns in (a, b):  # deleting a namespace also deletes its end of the veth pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _tx_bytes(ns: str, dev: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/tx_bytes"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_ps_run_across_two_hosts_sends_its_commits_over_the_link(tmp_path, two_hosts):
    """Server on host A, both workers on host B: every push and reply crosses the veth link. mpirun runs in A
    and starts B's daemon through the rsh agent, as it would through ssh on a cluster."""
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"{two_hosts['a']} slots=1\n{two_hosts['b']} slots=2\n")
    run_dir = tmp_path / "run"
    before = _tx_bytes(two_hosts["a"], two_hosts["veth_a"])
    argv = [two_hosts["inns"], two_hosts["a"], sys.executable, "-m", "hdbl_mpi.cli", "launch",
            "--hostfile", str(hostfile), "--rsh-agent", two_hosts["nsrsh"], "--iface", two_hosts["net"],
            "train", "--run-dir", str(run_dir), *_set_args(FAST + ["dual.workers=2", "train.epochs=2"])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"btl_tcp_if_include {two_hosts['net']}" in out and "--prefix" in out  # venv MPI found remotely
    summary = json.loads((run_dir / "summary.json").read_text())
    hosts = {rank: d["device"].split(":")[0] for rank, d in summary["devices"].items()}
    assert hosts == {"0": two_hosts["a"], "1": two_hosts["b"], "2": two_hosts["b"]}
    # 4 commits, each a push to A and a reply from A of the whole model: the replies alone leave A's veth.
    sent = _tx_bytes(two_hosts["a"], two_hosts["veth_a"]) - before
    assert summary["commits_total"] == 4
    print(f"veth A sent {sent} bytes for {summary['commits_total']} commits of {summary['model']['bytes']} bytes")
    assert sent >= 4 * summary["model"]["bytes"], (sent, summary["model"]["bytes"])


def test_doctor_checks_every_host(tmp_path, two_hosts):
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"{two_hosts['a']} slots=1\n{two_hosts['b']} slots=1\n")
    argv = [two_hosts["inns"], two_hosts["a"], sys.executable, "-m", "hdbl_mpi.cli", "launch", "--hostfile",
            str(hostfile), "--rsh-agent", two_hosts["nsrsh"], "--iface", two_hosts["net"], "doctor", "--json",
            "--data", "synthetic"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    result = json.loads(proc.stdout)
    assert sorted(result["hosts"]) == sorted([two_hosts["a"], two_hosts["b"]]), proc.stderr
    assert [r["ranks"] for r in result["hosts"].values()] in ([[0], [1]], [[1], [0]])
    assert result["mismatches"] == []  # one machine: the same MPI, torch and Python on both "hosts"
