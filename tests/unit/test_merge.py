"""Merge rules (method §3) as applied by the server: one torch.lerp_ with the rule's weight."""

import numpy as np
import pytest
import torch

from hdbl_mpi.ps.merge import bsp_weights, merge_weight


@pytest.mark.parametrize("f", [1.0, 0.8095, 0.25])
def test_journal_rule(f):
    rng = np.random.default_rng(0)
    W, Wk = rng.normal(size=1000).astype(np.float32), rng.normal(size=1000).astype(np.float32)
    expected = (W + f * Wk) / (1 + f)
    merged = torch.from_numpy(W.copy()).lerp_(torch.from_numpy(Wk), merge_weight("journal", f))
    np.testing.assert_allclose(merged.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("f", [1.0, 0.8095, 0.25])
def test_conference_rule(f):
    rng = np.random.default_rng(1)
    W, Wk = rng.normal(size=1000).astype(np.float32), rng.normal(size=1000).astype(np.float32)
    expected = W + (f / 2) * (Wk - W)
    merged = torch.from_numpy(W.copy()).lerp_(torch.from_numpy(Wk), merge_weight("conference", f))
    np.testing.assert_allclose(merged.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_rules_agree_only_for_large_batch_pushes():
    assert merge_weight("journal", 1.0) == merge_weight("conference", 1.0) == 0.5
    assert merge_weight("journal", 0.5) == pytest.approx(1 / 3)
    assert merge_weight("conference", 0.5) == pytest.approx(0.25)


def test_bsp_weights_are_normalised_factors():
    assert bsp_weights([1.0, 1.0, 0.5]) == pytest.approx([0.4, 0.4, 0.2])
    with pytest.raises(ValueError):
        bsp_weights([])


def test_bad_rule_and_factor():
    with pytest.raises(ValueError, match="unknown merge rule"):
        merge_weight("average", 1.0)
    with pytest.raises(ValueError):
        merge_weight("journal", 0.0)
