"""Real launches through `hdbl launch`: on this host, and across two network namespaces (two hosts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hdbl_mpi.launch import netns
from tests.conftest import FAST


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


# --- two hosts: network namespaces joined by a switch (hdbl_mpi.launch.netns) -----------------------------------

@pytest.fixture
def two_hosts(tmp_path):
    """Hosts A and B on a private /24: the only way between them is their links."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    tag = os.getpid() % 10000
    with netns.emulated_hosts([f"hdbl{tag}a", f"hdbl{tag}b"], tmp_path) as cluster:
        yield cluster


def test_ps_run_across_two_hosts_sends_its_commits_over_the_link(tmp_path, two_hosts):
    """Server on host A, both workers on host B: every push and reply crosses the veth link. mpirun runs in A
    and starts B's daemon through the rsh agent, as it would through ssh on a cluster."""
    hostfile = tmp_path / "hosts"
    a, b = two_hosts.hosts
    hostfile.write_text(f"{a} slots=1\n{b} slots=2\n")
    run_dir = tmp_path / "run"
    before = two_hosts.tx_bytes(a)
    argv = two_hosts.run_in(a, [sys.executable, "-m", "hdbl_mpi.cli", "launch", "--hostfile", str(hostfile),
                                "--rsh-agent", two_hosts.nsrsh, "--iface", two_hosts.net, "train", "--run-dir",
                                str(run_dir), *_set_args(FAST + ["dual.workers=2", "train.epochs=2"])])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"btl_tcp_if_include {two_hosts.net}" in out and "--prefix" in out  # venv MPI found remotely
    summary = json.loads((run_dir / "summary.json").read_text())
    hosts = {rank: d["device"].split(":")[0] for rank, d in summary["devices"].items()}
    assert hosts == {"0": a, "1": b, "2": b}
    # 4 commits, each a push to A and a reply from A of the whole model: the replies alone leave A's veth.
    sent = two_hosts.tx_bytes(a) - before
    assert summary["commits_total"] == 4
    print(f"veth A sent {sent} bytes for {summary['commits_total']} commits of {summary['model']['bytes']} bytes")
    assert sent >= 4 * summary["model"]["bytes"], (sent, summary["model"]["bytes"])


def test_doctor_checks_every_host(tmp_path, two_hosts):
    hostfile = tmp_path / "hosts"
    a, b = two_hosts.hosts
    hostfile.write_text(f"{a} slots=1\n{b} slots=1\n")
    argv = two_hosts.run_in(a, [sys.executable, "-m", "hdbl_mpi.cli", "launch", "--hostfile", str(hostfile),
                                "--rsh-agent", two_hosts.nsrsh, "--iface", two_hosts.net, "doctor", "--json",
                                "--data", "synthetic"])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    result = json.loads(proc.stdout)
    assert sorted(result["hosts"]) == sorted([a, b]), proc.stderr
    assert [r["ranks"] for r in result["hosts"].values()] in ([[0], [1]], [[1], [0]])
    assert result["mismatches"] == []  # one machine: the same MPI, torch and Python on both "hosts"
