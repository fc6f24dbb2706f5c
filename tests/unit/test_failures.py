"""The server's handling of dead workers under ULFM (ps/failures.py), without MPI: which dead ranks are lost."""

from __future__ import annotations

import pytest

from hdbl_mpi.ps.failures import EveryWorkerLost, Failures
from hdbl_mpi.ps.state import Roster, ServerState
from hdbl_mpi.rules.epoch_lengths import EpochLengths


class FakeServer:
    def __init__(self, workers: list[int], served: set[int]) -> None:
        self.state, self.roster, self.done = ServerState(merged=11), Roster(workers), served
        self.timeout_s, self.run_dir, self.comm, self.release_due = 60.0, "run", self, False
        self.lengths, self.own_np = EpochLengths.uniform(3, 4), "W"
        self.lines: list[str] = []
        self.replans: list[list[int]] = []
        self.saved = False
        self.sent: list[tuple[int, int]] = []

    @property
    def assign(self):
        return self

    @property
    def epochs(self):
        return self

    total = 12

    def survivors(self, alive: list[int], reason: str) -> str:
        self.replans.append(alive)
        return f"no re-plan ({reason})"

    def line(self, text: str) -> None:
        self.lines.append(text)

    def Send(self, message, dest: int, tag: int) -> None:  # noqa: N802 (mpi4py's name)
        pass

    def served(self, rank: int) -> bool:
        return rank in self.done

    def release(self) -> None: ...

    def save_now(self) -> None:
        self.saved = True

    def hand_over(self, lost: int, spare: int) -> None:
        self.sent.append((spare, lost))

    def next(self, rank: int):
        return self

    def header(self, **control: float) -> str:
        return "header"

    def join(self, rank: int) -> None:
        self.roster.workers.append(rank)
        self.roster.start(rank)


def test_a_worker_that_finished_and_left_is_not_lost():
    # Workers 3 and 4 were told to stop and sent their last records; they left (no MPI_Finalize under ULFM)
    # while worker 1 still finished its commit. Their exits arrive as a process failure: not a loss.
    server = FakeServer([1, 3, 4], served={3, 4})
    Failures(server, 3, ulfm=True).drop({3, 4}, 75, "MPI_ERR_PROC_FAILED: Process Failure")
    assert server.state.lost_workers == [] and server.roster.lost == set()
    assert server.lines == [] and server.replans == [] and not server.release_due


def test_a_dead_worker_that_had_not_finished_is_lost_and_the_rest_go_on():
    server = FakeServer([1, 3, 4], served={4})
    Failures(server, 3, ulfm=True).drop({3, 4}, 75, "MPI_ERR_PROC_FAILED: Process Failure")
    assert server.roster.lost == {3}
    assert [{k: v for k, v in w.items() if k != "time"} for w in server.state.lost_workers] == [
        {"rank": 3, "at_commit": 11, "error_class": 75}]
    assert server.lines[0] == ("rank 3 failed (MPI_ERR_PROC_FAILED: Process Failure): going on with 2 worker(s); "
                               "the survivors take over its commits")
    assert server.replans == [[1, 4]] and server.release_due


def test_losing_the_last_worker_checkpoints_and_says_how_to_resume():
    server = FakeServer([1], served=set())
    with pytest.raises(EveryWorkerLost, match="lost at commit 11 of 12; .* resume it with --resume run"):
        Failures(server, 3, ulfm=True).drop({1}, 75, "MPI_ERR_PROC_FAILED")
    assert server.saved


def test_a_spare_takes_the_lost_workers_role_and_nothing_is_replanned():
    server = FakeServer([1, 2, 3], served=set())
    failures = Failures(server, 3, ulfm=True, spares=[4, 5])
    failures.drop({2}, 75, "MPI_ERR_PROC_FAILED")
    assert server.sent == [(4, 2)] and failures.spares == [5]
    assert server.roster.alive() == [1, 3, 4] and 4 in server.roster.training
    assert server.replans == [] and server.release_due  # same count, same roles: the plan stands
    (taken,) = server.state.replacements
    assert (taken["rank"], taken["by"], taken["at_commit"], taken["first_commit_s"]) == (2, 4, 11, None)
    assert server.lines == ["rank 2 failed (MPI_ERR_PROC_FAILED): spare rank 4 takes over its role (1 spare(s) left)"]
    failures.first_commit(4)
    assert taken["first_commit_s"] is not None and taken["first_commit_s"] >= 0
    assert "spare rank 4 made its first commit in rank 2's role" in server.lines[-1]


def test_with_the_spares_used_up_the_survivors_take_over_and_a_dead_idle_spare_is_not_a_lost_worker():
    server = FakeServer([1, 2, 3], served=set())
    failures = Failures(server, 3, ulfm=True, spares=[4, 5])
    failures.drop({5}, 75, "MPI_ERR_PROC_FAILED")  # an idle spare died: one fewer on call, nobody lost
    assert failures.spares == [4] and server.roster.lost == set() and server.state.lost_workers == []
    assert server.lines == ["idle spare rank 5 failed (MPI_ERR_PROC_FAILED); 1 spare(s) left"]
    failures.drop({1, 3}, 75, "MPI_ERR_PROC_FAILED")  # two at once, one spare: one replaced, one re-planned for
    assert server.sent == [(4, 1)] and server.roster.alive() == [2, 4]
    assert server.replans == [[2, 4]]
