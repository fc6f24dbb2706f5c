"""The synchronisation policies (rules/policy.py) on plain numbers: what a push does, when a round ends, who may go."""

from __future__ import annotations

import pytest

from hdbl_mpi.rules.policy import (
    OP_ACCUMULATE,
    OP_ACCUMULATE_OWN,
    OP_AVERAGE,
    OP_DROP,
    OP_MERGE,
    Asp,
    Bsp,
    Ssp,
    Update,
    make_policy,
)

MERGE = Update(OP_MERGE, 0.5)


def test_asp_merges_every_push_and_lets_everyone_go():
    asp = make_policy("asp", 2)
    assert isinstance(asp, Asp) and asp.goes_on_without_stalled
    assert asp.on_push(False, 1.0, MERGE) == MERGE
    assert asp.on_push(True, 1.0, MERGE) == Update(OP_DROP)  # a non-finite push is dropped
    assert asp.round_end(held=1, active=4) is None
    assert asp.may_reply(commits=10, slowest=0, stop=False)


def test_ssp_holds_a_worker_more_than_s_commits_ahead():
    ssp = make_policy("ssp", 2)
    assert isinstance(ssp, Ssp) and not ssp.goes_on_without_stalled
    assert ssp.may_reply(commits=2, slowest=1, stop=False)  # its next commit is 2 ahead: within the bound
    assert not ssp.may_reply(commits=3, slowest=1, stop=False)
    assert ssp.may_reply(commits=9, slowest=1, stop=True)  # a stop is never held


def test_bsp_accumulates_by_factor_and_averages_when_every_active_worker_pushed():
    bsp = make_policy("bsp", 2)
    assert isinstance(bsp, Bsp)
    assert bsp.on_push(False, 1.0, MERGE) == Update(OP_ACCUMULATE, 1.0)
    assert bsp.round_end(held=1, active=3) is None and not bsp.may_reply(1, 1, False)
    assert bsp.on_push(True, 0.5, MERGE) == Update(OP_ACCUMULATE_OWN, 0.5)  # a rejected push weighs as W itself
    assert bsp.on_push(False, 1.0, MERGE) == Update(OP_ACCUMULATE, 1.0)
    assert bsp.round_end(held=3, active=3) == Update(OP_AVERAGE, pytest.approx(2.5))
    assert bsp.may_reply(1, 1, False)  # the round closed: everyone held gets the average
    bsp.on_push(False, 1.0, MERGE)
    assert not bsp.may_reply(2, 2, False)  # the next round is open again


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="use one of asp, bsp, ssp"):
        make_policy("hogwild", 1)
