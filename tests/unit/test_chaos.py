"""The chaos drill's plan (ps/chaos.py, debug.chaos), without MPI: seeded, inside its window, one order per kill,
each to a worker still training, and a resumed run keeps only the kills still ahead of it."""

from __future__ import annotations

import pytest

from hdbl_mpi.config import load_config
from hdbl_mpi.errors import ConfigError
from hdbl_mpi.ps.chaos import Chaos
from hdbl_mpi.schema import ChaosConfig


def _drill(chaos: Chaos, total: int, workers: list[int]) -> list[tuple[int, int]]:
    orders = []
    for merged in range(1, total + 1):
        chaos.observe(merged, workers)
        for w in workers:
            if chaos.order(w):
                orders.append((merged, w))
    return orders


def test_the_kills_are_seeded_inside_the_window_and_each_ordered_once():
    config = ChaosConfig(kills=3, seed=7, start=0.2, end=0.6)
    first, again = _drill(Chaos(config, 100, 0, []), 100, [1, 2, 3]), _drill(Chaos(config, 100, 0, []), 100, [1, 2, 3])
    assert first == again and len(first) == 3
    assert all(20 <= at <= 60 for at, _ in first) and {w for _, w in first} <= {1, 2, 3}
    other = _drill(Chaos(ChaosConfig(kills=3, seed=8, start=0.2, end=0.6), 100, 0, []), 100, [1, 2, 3])
    assert other != first


def test_a_kill_goes_to_a_worker_still_training_and_a_resume_keeps_the_kills_ahead():
    chaos = Chaos(ChaosConfig(kills=2, seed=0, start=0.5, end=0.6), 10, 0, [])  # due at commits 5 and 6
    assert chaos.observe(4, [4]) is None
    line = chaos.observe(5, [4])
    assert line is not None and line.startswith("debug.chaos: rank 4 is to SIGKILL itself")
    assert chaos.observe(6, [4]) is None  # rank 4 already has its order and nobody else is training: it waits
    assert chaos.order(4) > 0 and chaos.order(4) == 0.0  # given once
    assert chaos.observe(7, [4]) is None  # rank 4 got its order and is dying: it is not drawn again
    assert chaos.observe(7, [2, 4]) is not None and [o["rank"] for o in chaos.log] == [4, 2]
    resumed = Chaos(ChaosConfig(kills=3, seed=1, start=0.1, end=0.9), 100, 60, [])
    assert all(at > 60 for at in resumed.due_at)


def test_chaos_and_spares_need_a_run_that_survives_a_lost_worker():
    with pytest.raises(ConfigError, match="ps.spares=2 needs ps.fault_tolerance=ulfm"):
        load_config(None, ["dual.batch_large=64", "ps.spares=2"])
    with pytest.raises(ConfigError, match="debug.chaos.kills=1 needs ps.fault_tolerance=ulfm"):
        load_config(None, ["dual.batch_large=64", "debug.chaos.kills=1"])
    with pytest.raises(ConfigError, match="debug.chaos.start and end are 0.8 and 0.2"):
        load_config(None, ["dual.batch_large=64", "ps.fault_tolerance=ulfm", "debug.chaos.start=0.8",
                           "debug.chaos.end=0.2"])
