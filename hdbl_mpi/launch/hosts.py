"""Where ranks may run: host lists from `-H`, hostfiles in the three common formats, and SLURM allocations.

Pure parsing (no MPI, no torch), so the launcher can check a job against its slots before anything starts and
every format error names the file, the line and the forms that are accepted.

Accepted hostfile lines (blank lines and `#` comments are ignored):

- Open MPI:        ``node01 slots=4``  (also ``max_slots=N``; a bare ``node01`` is 1 slot)
- MPICH / Hydra:   ``node01:4``
- Horovod:         ``node01 slots=4``  (the same as Open MPI's; `horovodrun -H` uses ``node01:4``)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from hdbl_mpi.errors import HdblError

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
FORMS = "'host slots=N' (Open MPI, Horovod), 'host:N' (MPICH) or a bare 'host' (1 slot)"

_MPICH = re.compile(r"^(?P<host>[A-Za-z0-9_.\-]+):(?P<slots>\S+)$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


class HostError(HdblError):
    """A host list or hostfile that cannot be used as written."""


@dataclass(frozen=True)
class Host:
    name: str
    slots: int

    def is_local(self) -> bool:
        return self.name in LOCAL_NAMES or self.name == _short_hostname()


@dataclass(frozen=True)
class Hosts:
    """Hosts in launch order (rank 0, the server, goes on the first) and the format they were written in."""

    hosts: tuple[Host, ...]
    form: str  # openmpi | mpich | hosts-arg | slurm
    source: str  # "-H", a file path or "SLURM_JOB_NODELIST"

    @property
    def slots(self) -> int:
        return sum(h.slots for h in self.hosts)

    def all_local(self) -> bool:
        return all(h.is_local() for h in self.hosts)

    def as_arg(self) -> str:
        """`h1:2,h2:3`: the -H form that Open MPI, Horovod and (as -hosts) Hydra all accept."""
        return ",".join(f"{h.name}:{h.slots}" for h in self.hosts)


def _short_hostname() -> str:
    return os.uname().nodename.split(".")[0]


def _digits(text: str) -> bool:
    """Only 0-9: str.isdigit() also takes superscripts and other scripts' digits, which int() refuses."""
    return text.isascii() and text.isdigit()


def _slots(text: str, where: str, line: str) -> int:
    if not _digits(text) or int(text) < 1:
        raise HostError(f"{where}: slot count {text!r} in {line!r} is not a positive integer; use {FORMS}.")
    return int(text)


def _merge(hosts: list[Host]) -> tuple[Host, ...]:
    """Join repeated names, keeping first-seen order: MPI launchers also add the slots of repeated lines."""
    order: dict[str, int] = {}
    for h in hosts:
        order[h.name] = order.get(h.name, 0) + h.slots
    return tuple(Host(name, slots) for name, slots in order.items())


def parse_host_line(line: str, where: str) -> tuple[Host, str]:
    """One hostfile line -> (Host, form), form being openmpi, mpich or bare (a host name alone, valid in
    every format). `where` (file:line) prefixes every error."""
    text = line.split("#", 1)[0].strip()
    match = _MPICH.match(text)
    if match:
        return Host(match["host"], _slots(match["slots"], where, line.strip())), "mpich"
    fields = text.split()
    if not fields or not _HOSTNAME.match(fields[0]):
        raise HostError(f"{where}: cannot read {line.strip()!r} as a host; use {FORMS}.")
    slots = 1
    for item in fields[1:]:
        key, sep, value = item.partition("=")
        if not sep or key not in ("slots", "max_slots", "max-slots"):
            raise HostError(f"{where}: unknown field {item!r} in {line.strip()!r}; use {FORMS}.")
        if key == "slots":
            slots = _slots(value, where, line.strip())
        else:
            _slots(value, where, line.strip())  # validated; the launcher enforces max_slots itself
    return Host(fields[0], slots), "openmpi" if len(fields) > 1 else "bare"


def parse_hostfile(path: str | Path) -> Hosts:
    """Read an Open MPI, Horovod or MPICH hostfile; a file that mixes the two syntaxes is refused."""
    p = Path(path)
    if not p.is_file():
        raise HostError(f"hostfile {str(p)!r} does not exist; pass a file with one host per line ({FORMS}).")
    hosts: list[Host] = []
    forms: set[str] = set()
    for number, line in enumerate(p.read_text().splitlines(), start=1):
        if not line.split("#", 1)[0].strip():
            continue
        host, form = parse_host_line(line, f"{p}:{number}")
        hosts.append(host)
        forms.add(form)
    if not hosts:
        raise HostError(f"hostfile {str(p)!r} lists no hosts; add one line per host ({FORMS}).")
    forms.discard("bare")
    if len(forms) > 1:
        raise HostError(f"hostfile {str(p)!r} mixes 'host slots=N' and 'host:N' lines; use one form throughout.")
    return Hosts(_merge(hosts), forms.pop() if forms else "openmpi", str(p))


def parse_hosts_arg(text: str) -> Hosts:
    """`-H h1:2,h2:3` (Horovod and Open MPI form); a host without `:N` has one slot."""
    hosts = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise HostError(f"-H {text!r} has an empty entry; write host:slots,host:slots (e.g. node01:4,node02:4).")
        name, _, slots = item.partition(":")
        if not _HOSTNAME.match(name):
            raise HostError(f"-H entry {item!r} is not a host name; write host:slots (e.g. node01:4).")
        hosts.append(Host(name, _slots(slots, "-H", item) if slots else 1))
    return Hosts(_merge(hosts), "hosts-arg", "-H")


def expand_nodelist(text: str) -> list[str]:
    """SLURM's compressed node list: `gpu[01-03,07],login1` -> gpu01 gpu02 gpu03 gpu07 login1. Zero padding
    of a range is kept, as SLURM writes it."""
    names: list[str] = []
    depth, start = 0, 0
    parts = []
    for i, ch in enumerate(text):  # split on commas outside brackets
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    for part in (p.strip() for p in parts):
        if not part:
            continue
        match = re.fullmatch(r"([^\[\]]*)\[([^\[\]]+)\]([^\[\]]*)", part)
        if not match:
            if "[" in part or "]" in part:
                raise HostError(f"cannot expand SLURM node list {text!r} at {part!r}.")
            names.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            low, _, high = item.partition("-")
            if not _digits(low) or (high and not _digits(high)):
                raise HostError(f"cannot expand SLURM node list {text!r}: bad range {item!r}.")
            if high and int(high) < int(low):
                raise HostError(f"cannot expand SLURM node list {text!r}: the range {item!r} runs backwards; "
                                f"write it low to high ({high}-{low}).")
            width = len(low)
            for number in range(int(low), int(high or low) + 1):
                names.append(f"{prefix}{number:0{width}d}{suffix}")
    return names


def expand_tasks_per_node(text: str) -> list[int]:
    """SLURM_TASKS_PER_NODE's `2(x3),1` -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not match:
            raise HostError(f"cannot read SLURM_TASKS_PER_NODE={text!r}; expected a form like 2(x3),1.")
        counts += [int(match[1])] * int(match[2] or 1)
    return counts


def hosts_from_slurm(env: dict[str, str] | None = None) -> Hosts:
    """The allocation of the SLURM job this runs in: its nodes and the tasks SLURM gives each."""
    env = dict(os.environ if env is None else env)
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise HostError("no SLURM allocation: SLURM_JOB_NODELIST is not set. Run inside `sbatch`/`salloc`, or pass "
                        "-H host:slots or --hostfile FILE.")
    nodes = expand_nodelist(nodelist)
    tasks = env.get("SLURM_TASKS_PER_NODE")
    if tasks:
        counts = expand_tasks_per_node(tasks)
        if len(counts) != len(nodes):
            raise HostError(f"SLURM_TASKS_PER_NODE={tasks!r} gives {len(counts)} counts for {len(nodes)} nodes "
                            f"({nodelist}).")
    elif env.get("SLURM_NTASKS_PER_NODE"):
        counts = [int(env["SLURM_NTASKS_PER_NODE"])] * len(nodes)
    elif env.get("SLURM_NTASKS"):
        total = int(env["SLURM_NTASKS"])
        counts = [total // len(nodes) + (1 if i < total % len(nodes) else 0) for i in range(len(nodes))]
    else:
        counts = [1] * len(nodes)
    return Hosts(tuple(Host(n, c) for n, c in zip(nodes, counts, strict=True) if c > 0), "slurm", "SLURM_JOB_NODELIST")
