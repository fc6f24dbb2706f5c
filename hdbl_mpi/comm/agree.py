"""Agreement at set-up: every rank learns whether any rank failed, and the same error ends every rank.

A rank that fails alone while the others wait in a collective would hang the job; gathering each rank's
(error, value) in one allgather lets all of them raise the same SetupError and exit with code 2 together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hdbl_mpi.errors import HdblError, SetupError

if TYPE_CHECKING:
    from mpi4py import MPI


def agree(comm: MPI.Intracomm, error: BaseException | None, value: Any) -> list:
    """Allgather each rank's (error, value); raise the same SetupError on every rank if any rank failed."""
    message = None
    if error is not None:
        message = str(error) if isinstance(error, HdblError) else f"{type(error).__name__}: {error}"
    gathered = comm.allgather((message, value))
    failures = [(rank, msg) for rank, (msg, _) in enumerate(gathered) if msg is not None]
    if failures:
        by_message: dict[str, list[int]] = {}
        for rank, msg in failures:
            by_message.setdefault(msg, []).append(rank)
        everyone = len(by_message) == 1 and len(failures) == comm.size
        lines = [msg if everyone else f"(rank {', '.join(map(str, ranks))}) {msg}" for msg, ranks in by_message.items()]
        raise SetupError("\n".join(lines))
    return [v for _, v in gathered]
