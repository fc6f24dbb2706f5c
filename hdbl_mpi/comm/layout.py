"""Who owns which slice of the flat vector: one server owns all of it, k sharded servers a contiguous slice each.

A wire fact that the worker, the servers and the shared set-up all need, so it lives with the wire format and
loads neither torch nor MPI. Shard boundaries are multiples of ``ALIGN`` values, so every shard starts on the
same SIMD lane as in the whole vector and the vectorised merge kernels round each element identically (the
arithmetic is in ps/shards.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from hdbl_mpi.errors import ConfigError

ALIGN = 1024  # values (4 KiB): shard starts are multiples of this


def shard_bounds(numel: int, servers: int, align: int = ALIGN) -> list[tuple[int, int]]:
    """[start, end) of each server's shard: equal slices rounded up to `align` values, the last one shorter.

    A model too small to give every server at least one aligned slice is refused: the extra servers would have
    nothing to do."""
    if servers < 1:
        raise ConfigError(f"ps.servers is {servers}; it must be >= 1.")
    chunk = -(-numel // servers)
    chunk = -(-chunk // align) * align
    bounds = [(min(i * chunk, numel), min((i + 1) * chunk, numel)) for i in range(servers)]
    if any(start >= end for start, end in bounds):
        raise ConfigError(
            f"ps.servers={servers} shards of {align} values do not fit a model of {numel:,} values: each server "
            f"needs a slice. Use ps.servers <= {max(1, -(-numel // align))} (sharding pays off for large models)."
        )
    return bounds


def server_ranks(workers: int, servers: int) -> list[int]:
    """The rank owning each shard: rank 0, then the ranks after the n workers."""
    return [0] + [workers + i for i in range(1, servers)]


@dataclass(frozen=True)
class Layout:
    """Who owns which slice: ``parts[i] = (rank, start, end)``; one part (rank 0, whole vector) without sharding."""

    parts: tuple[tuple[int, int, int], ...]
    params: int | None = None  # the vector's first `params` values are parameters, the rest buffers (None: all)

    @classmethod
    def make(cls, numel: int, workers: int, servers: int, params: int | None = None) -> Layout:
        bounds = shard_bounds(numel, servers)
        ranks = server_ranks(workers, servers)
        return cls(tuple((rank, s, e) for rank, (s, e) in zip(ranks, bounds, strict=True)), params)

    def split(self, start: int) -> int | None:
        """Where the buffers begin in the slice that starts at `start` (None: the slice is all parameters)."""
        return None if self.params is None else self.params - start

    @property
    def own(self) -> tuple[int, int]:
        """Rank 0's slice."""
        return self.parts[0][1], self.parts[0][2]

    @property
    def others(self) -> tuple[tuple[int, int, int], ...]:
        return self.parts[1:]
