"""Commits into epochs (rules/epoch_lengths.py) when every resolution has its own k: the epoch boundaries, the
fractional epoch, the next boundary for early stopping, a run longer than its schedule, and the config's forms."""

from __future__ import annotations

import pytest

from hdbl_mpi.config import load_config
from hdbl_mpi.errors import ConfigError
from hdbl_mpi.rules.epoch_lengths import EpochLengths, commits_by_resolution, config_form
from hdbl_mpi.rules.schedule import cyclic

# 2 workers; epochs 0-1 at 12 px (k = 2: 4 commits each), epochs 2-3 at 16 px (k = 4: 8 commits each)
SCHEDULE = cyclic([4], [0.05], [12, 16], [0.0, 0.0])
CONFIG = load_config(None, ["dual.batch_large=64", "dual.workers=2", "dual.commits_per_epoch=[2, 4]"])
LENGTHS = EpochLengths.for_run(CONFIG, SCHEDULE)


def test_epochs_follow_the_k_of_their_resolution():
    assert LENGTHS.sizes == (4, 4, 8, 8) and LENGTHS.total == 24
    assert [LENGTHS.start(e) for e in range(5)] == [0, 4, 8, 16, 24]
    assert [LENGTHS.done(m) for m in (0, 3, 4, 7, 8, 15, 16, 23, 24)] == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert LENGTHS.position(12) == 2.5 and LENGTHS.position(2) == 0.5
    assert [LENGTHS.at_boundary(m) for m in (0, 4, 6, 16, 17)] == [True, True, False, True, False]
    assert [LENGTHS.next_boundary(m) for m in (0, 1, 8, 9, 17)] == [0, 4, 8, 16, 24]


def test_past_the_schedule_epochs_are_as_long_as_its_last():
    assert LENGTHS.done(40) == 6 and LENGTHS.start(6) == 40 and LENGTHS.next_boundary(41) == 48


def test_one_k_for_all_is_the_old_arithmetic():
    one = EpochLengths.for_run(load_config(None, ["dual.batch_large=64", "dual.commits_per_epoch=3"]), SCHEDULE)
    assert one.sizes == (12,) * 4 and all(one.done(m) == m // 12 for m in range(60))
    assert all(one.position(m) == m / 12 for m in range(48))


def test_the_config_forms():
    assert commits_by_resolution(3, [12, 16]) == {12: 3, 16: 3}
    assert commits_by_resolution([2, 4], [12, 16]) == {12: 2, 16: 4}
    assert config_form({12: 4, 16: 4}) == 4 and config_form({16: 8, 12: 2}) == [2, 8]
    with pytest.raises(ConfigError, match="has 3 values but the schedule has 2 resolutions"):
        commits_by_resolution([1, 2, 3], [12, 16])
    with pytest.raises(ConfigError, match="it must be >= 1"):
        load_config(None, ["dual.batch_large=64", "dual.commits_per_epoch=[2, 0]"])
    with pytest.raises(ConfigError, match="ps.mode=allreduce has no commits"):
        load_config(None, ["dual.batch_large=64", "dual.commits_per_epoch=[1, 2]", "ps.mode=allreduce"])
