"""One live writer per directory: a training run holds its run directory, a sweep its --out, while they live.

Two `hdbl train` into one run directory would interleave their records, overwrite each other's checkpoint and
summary, and end with files that belong to neither run; two `hdbl sweep` into one --out also delete each
other's runs (a sweep starts an interrupted run again by removing its directory). Nothing said so before: the
second is now refused at start-up, naming the first (what it is, its pid and host, since when).

The lock is a POSIX record lock (`fcntl.lockf`) on DIR/.hdbl.lock, taken without waiting. The kernel drops it
when the holding process ends, however it ends (SIGKILL, the OOM killer, a node's job epilogue), so a crash
never leaves a stale lock to remove by hand, and a resume or a requeued job finds the directory free. Record
locks are not inherited by forked children (data-loader workers), so none of them can outlive the run holding
its lock. On NFS they are the server's locks (NFSv4, or NFSv3 with lockd); a mount with `nolock` keeps them on
one host. The file stays behind (removing a lock file while another process opens it would let two processes
lock two different files); it holds the last holder's description, for the message.

Where the file system has no record locks, the run goes on unlocked and says so on stderr.

A process that holds a directory keeps it until it exits or calls :func:`release`, and holding it again is a
no-op: record locks never conflict within one process, so this module keeps its own table of what it holds.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from hdbl_mpi.errors import HdblError

LOCK = ".hdbl.lock"

_held: dict[Path, int] = {}  # resolved directory -> the open descriptor whose record lock this process holds


class DirectoryInUse(HdblError):
    """Another live process writes the directory (a run, or a sweep)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a directory, as the holder wrote it into the lock file."""

    what: str  # "hdbl train", "hdbl sweep"
    pid: int
    host: str
    since: str  # UTC, ISO 8601
    slurm_job: str | None = None

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job}" if self.slurm_job else ""
        return f"{self.what} (pid {self.pid} on {self.host}{job}, since {self.since})"


def hold(directory: Path, what: str, advice: str) -> None:
    """Create `directory` if needed and hold it for this process, or raise DirectoryInUse naming the live holder,
    followed by `advice` (what to do instead)."""
    key = Path(directory).resolve()
    if key in _held:
        return
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(key / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        free = _try_lock(fd)
    except OSError as err:  # a file system without record locks (some FUSE and object-store mounts)
        os.close(fd)
        print(f"{what}: warning: {directory} cannot be locked on its file system ({err.strerror}); nothing will "
              "refuse a second run into it while this one lives", file=sys.stderr, flush=True)
        return
    if not free:
        holder = _read(fd)
        os.close(fd)
        raise DirectoryInUse(f"{directory} is in use by {holder.describe() if holder else 'another process'}: two "
                             "runs writing one directory would mix their records and remove each other's files. "
                             f"{advice}")
    me = Holder(what, os.getpid(), socket.gethostname(), datetime.now(timezone.utc).isoformat(timespec="seconds"),
                os.environ.get("SLURM_JOB_ID"))
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(asdict(me)) + "\n").encode(), 0)
    _held[key] = fd


def holder(directory: Path) -> Holder | None:
    """The live process that holds `directory` (this one included), or None when none does."""
    key = Path(directory).resolve()
    if key in _held:
        return _read(_held[key])
    if not (key / LOCK).is_file():
        return None
    fd = os.open(key / LOCK, os.O_RDWR)
    try:  # free: take it and let go at once (closing the descriptor drops the lock)
        return None if _try_lock(fd) else _read(fd)
    except OSError:  # no record locks on this file system: no holder can be known
        return None
    finally:
        os.close(fd)


def release(directory: Path) -> None:
    """Let go of `directory` before this process ends (a sweep that finished; tests)."""
    fd = _held.pop(Path(directory).resolve(), None)
    if fd is not None:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    """Take the lock without waiting: True, or False when another process holds it; OSError when the file
    system has no record locks."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def _read(fd: int) -> Holder | None:
    """The holder the lock file describes; None while it is being written or if it is not ours."""
    try:
        return Holder(**json.loads(os.pread(fd, 4096, 0).decode()))
    except (ValueError, TypeError):
        return None
