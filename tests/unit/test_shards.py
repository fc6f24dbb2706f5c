"""Sharded servers: shard boundaries, rank layout, and the shard arithmetic against one whole vector."""

from __future__ import annotations

import pytest
import torch

from hdbl_mpi.comm.layout import ALIGN, Layout, server_ranks, shard_bounds
from hdbl_mpi.comm.world import check_world_size
from hdbl_mpi.config import load_config
from hdbl_mpi.errors import ConfigError, WorldSizeError
from hdbl_mpi.ps.shards import ShardMath
from hdbl_mpi.schema import required_ranks


def test_bounds_cover_the_vector_in_aligned_contiguous_slices():
    numel = 11_229_732  # ResNet-18 (CIFAR stem, 100 classes)
    for k in (1, 2, 3, 4, 7):
        bounds = shard_bounds(numel, k)
        assert bounds[0][0] == 0 and bounds[-1][1] == numel
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))  # contiguous, no gap, no overlap
        assert all(start % ALIGN == 0 for start, _ in bounds)
        sizes = [e - s for s, e in bounds]
        assert max(sizes) - min(sizes) < k * ALIGN  # balanced up to the alignment
    assert shard_bounds(5000, 2) == [(0, 3072), (3072, 5000)]


def test_a_model_too_small_for_the_servers_is_refused_with_the_limit():
    with pytest.raises(ConfigError, match=r"ps.servers <= 2"):
        shard_bounds(1500, 3)


def test_shard_servers_come_after_the_workers():
    assert server_ranks(4, 1) == [0]
    assert server_ranks(4, 3) == [0, 5, 6]
    layout = Layout.make(100_000, 4, 2)
    assert layout.parts == ((0, 0, 50_176), (5, 50_176, 100_000))
    assert layout.own == (0, 50_176) and layout.others == ((5, 50_176, 100_000),)


def _run(math_parts: list[tuple[ShardMath, slice]], pushes, script) -> None:
    """Apply the same merge script to every part, each reading its slice of the pushed vectors."""
    for op, who, value in script:
        for math_, part in math_parts:
            if op in ("merge", "accumulate"):
                math_.recv.copy_(pushes[who][part])
            if op == "merge":
                math_.merge(value)
            elif op == "accumulate":
                math_.accumulate(value, own=False)
            elif op == "accumulate_own":
                math_.accumulate(value, own=True)
            else:
                math_.average(value)


@pytest.mark.parametrize("k", [2, 3])
def test_shards_reproduce_one_server_bit_for_bit(k):
    """BSP rounds with factors != 1 and rejected pushes, then ASP merges: the shards of the k-server vector equal
    the one-server vector exactly (an odd length, so the last shard has a ragged SIMD tail)."""
    g = torch.Generator().manual_seed(0)
    numel = 3 * ALIGN * k + 77
    start = torch.randn(numel, generator=g)
    pushes = [torch.randn(numel, generator=g) for _ in range(4)]
    script = [("accumulate", 0, 1.0), ("accumulate", 2, 0.371), ("accumulate_own", 1, 0.829),
              ("accumulate", 3, 1.0), ("average", None, 1.0 + 0.371 + 0.829 + 1.0),
              ("merge", 1, 0.5), ("merge", 3, 0.4472), ("accumulate", 1, 1.0), ("accumulate", 0, 0.3),
              ("accumulate", 2, 1.0), ("average", None, 2.3)]
    whole = start.clone()
    _run([(ShardMath(whole), slice(None))], pushes, script)
    sharded = start.clone()
    parts = [(ShardMath(sharded[s:e]), slice(s, e)) for s, e in shard_bounds(numel, k)]
    _run(parts, pushes, script)
    assert torch.equal(whole, sharded)
    assert not torch.equal(whole, start)


def test_config_servers_counts_ranks_and_refuses_what_cannot_work():
    assert required_ranks(load_config(None, ["ps.servers=2", "dual.workers=4", "dual.batch_large=8"])) == 6
    with pytest.raises(ConfigError, match="has no server"):
        load_config(None, ["ps.servers=2", "ps.mode=allreduce", "dual.batch_large=8"])
    with pytest.raises(ConfigError, match="ulfm is not supported"):
        load_config(None, ["ps.servers=2", "ps.fault_tolerance=ulfm", "dual.batch_large=8"])
    with pytest.raises(ConfigError, match="ps.servers is 0"):
        load_config(None, ["ps.servers=0", "dual.batch_large=8"])


def test_a_wrong_rank_count_for_sharded_servers_names_the_fix():
    check_world_size(5, 3, 1, 2)  # 3 workers + 2 servers
    with pytest.raises(WorldSizeError, match=r"ps.servers=2 servers \+ dual.workers=3 workers .* `mpirun -np 5"):
        check_world_size(4, 3, 1, 2)


@pytest.mark.parametrize("k", [2, 3])
def test_delta_steps_on_shards_reproduce_one_server(k):
    """The delta rule with momentum on k shards (the parameter/buffer split inside one of them) equals one server."""
    from hdbl_mpi.rules.merge import push_update

    g = torch.Generator().manual_seed(1)
    numel = 3 * ALIGN * k + 77
    params = numel - 500  # the last 500 values are buffers (BatchNorm statistics)
    start = torch.randn(numel, generator=g)
    pushes = [torch.randn(numel, generator=g) for _ in range(3)]
    updates = [push_update("delta", f, 0.7) for f in (1.0, 0.6, 1.0)]
    whole = start.clone()
    one = ShardMath(whole, split=params, momentum=0.9)
    layout = Layout.make(numel, 4, k, params)
    sharded = start.clone()
    parts = [(ShardMath(sharded[s:e], layout.split(s), 0.9), slice(s, e)) for _, s, e in layout.parts]
    for push, update in zip(pushes * 2, updates * 2, strict=True):
        one.recv.copy_(push)
        one.apply(update)
        for math_, part in parts:
            math_.recv.copy_(push[part])
            math_.apply(update)
    assert torch.equal(whole, sharded)
