"""A cluster inside one machine: hosts as Linux network namespaces joined by a switch, links optionally limited.

What a multi-host test or benchmark needs and one machine does not have: several hosts with their own
hostnames and their own network links. Each host here is a network namespace with one veth link to a bridge
(the switch, in a namespace of its own); ``inns`` runs a command inside a host under its own hostname
(``unshare --uts``), and ``nsrsh`` is an ssh stand-in that mpirun uses to start its daemon on a host. Open MPI
then sees different hostnames, so ranks on different hosts talk over TCP through the links, as on a cluster.
A link can be limited to a rate in both directions (``tc`` token bucket), to emulate a slower network than the
machine's memory: the only way to see a network-bound server here. Needs root, `ip` and `unshare`
(see ../shared/notes/ulfm_and_netns.md for what was measured).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

INNS = """#!/bin/bash
# Run a command in network namespace $1 with its own hostname (= the namespace name).
ns=$1; shift
exec ip netns exec "$ns" unshare --uts /bin/bash -c 'hostname "$0"; exec "$@"' "$ns" "$@"
"""

NSRSH = """#!/bin/bash
# ssh stand-in for mpirun: start the remote daemon inside the namespace named like the host (or its address).
host=$1; shift
case "$host" in
{cases}
  *) echo "nsrsh: unknown host $host" >&2; exit 255;;
esac
exec ip netns exec "$ns" unshare --uts /bin/bash -c "hostname $ns; $*"
"""


def unavailable() -> str | None:
    """Why namespaces cannot be made here (for a skip message), or None when they can."""
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
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")


@dataclass
class Cluster:
    """The emulated hosts: name -> address and link device, the subnet, and the two helper scripts."""

    addresses: dict[str, str]
    devices: dict[str, str]  # each host's end of its link, inside the host's namespace
    net: str  # the hosts' subnet (CIDR): what MPI should use (btl_tcp_if_include)
    inns: str
    nsrsh: str

    @property
    def hosts(self) -> list[str]:
        return list(self.addresses)

    def run_in(self, host: str, argv: list[str]) -> list[str]:
        """The argv that runs `argv` on `host`."""
        return [self.inns, host, *argv]

    def tx_bytes(self, host: str) -> int:
        """Bytes the host has sent over its link so far."""
        out = subprocess.run(["ip", "netns", "exec", host, "cat", f"/sys/class/net/{self.devices[host]}/statistics/"
                              "tx_bytes"], capture_output=True, text=True, check=True)
        return int(out.stdout)


def _limit(namespace: str, device: str, mbit: float) -> None:
    """Token bucket on a device's egress: `mbit` Mbit/s, with a burst of a few packets' worth of 10 ms."""
    burst = max(32_000, int(mbit * 1e6 / 8 / 100))
    _sh("ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate",
        f"{mbit}mbit", "burst", str(burst), "latency", "100ms")


@contextmanager
def emulated_hosts(names: list[str], workdir: Path, limits_mbit: dict[str, float] | None = None) -> Iterator[Cluster]:
    """Make one namespace per name (a short, unique suffix is the caller's business: names are global), link
    each to a switch, limit the links of `limits_mbit`'s hosts in both directions, and remove it all on exit."""
    tag = os.getpid() % 10000
    switch = f"hdbl{tag}sw"
    net = f"10.232.{tag % 250}"
    addresses = {name: f"{net}.{i + 1}" for i, name in enumerate(names)}
    devices = {name: f"hv{tag}h{i}" for i, name in enumerate(names)}
    made: list[str] = []
    try:
        for ns in (switch, *names):
            _sh("ip", "netns", "add", ns)
            made.append(ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", switch, "link", "set", "br0", "up")
        for i, name in enumerate(names):
            host_end, switch_end = devices[name], f"hv{tag}s{i}"
            _sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", switch_end)
            _sh("ip", "link", "set", host_end, "netns", name)
            _sh("ip", "link", "set", switch_end, "netns", switch)
            _sh("ip", "-n", switch, "link", "set", switch_end, "master", "br0")
            _sh("ip", "-n", switch, "link", "set", switch_end, "up")
            _sh("ip", "-n", name, "addr", "add", f"{addresses[name]}/24", "dev", host_end)
            _sh("ip", "-n", name, "link", "set", host_end, "up")
            if limits_mbit and name in limits_mbit:
                _limit(name, host_end, limits_mbit[name])  # what the host sends
                _limit(switch, switch_end, limits_mbit[name])  # what it receives
        inns, nsrsh = workdir / "inns", workdir / "nsrsh"
        inns.write_text(INNS)
        cases = "\n".join(f"  {name}|{addr}) ns={name};;" for name, addr in addresses.items())
        nsrsh.write_text(NSRSH.format(cases=cases))
        inns.chmod(0o755)
        nsrsh.chmod(0o755)
        yield Cluster(addresses, devices, f"{net}.0/24", str(inns), str(nsrsh))
    finally:
        for ns in made:  # deleting a namespace also deletes the veth ends inside it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
