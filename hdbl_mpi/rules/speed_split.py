"""Per-rank batch sizes for a speed-weighted synchronous step (ps.speed_weighted; what LB-BSP and hand-rolled
per-GPU DDP samplers do): every rank's share of a step's samples in proportion to its speed, so that all ranks
finish their forward and backward together and nobody waits at the reduction. Pure arithmetic."""

from __future__ import annotations

import math


def speed_batches(per_sample_s: list[float], total: int, cap: int) -> list[int]:
    """Batch sizes summing to `total`, each in proportion to 1/per_sample_s (its speed), at least 1 and at most
    `cap` (memory): ranks that would exceed `cap` get `cap` and the others share the rest by speed; whole
    numbers by largest remainders, so the sum is exact."""
    n = len(per_sample_s)
    if n == 0 or total < n:
        raise ValueError(f"{total} samples cannot give each of {n} ranks at least one")
    if any(not (math.isfinite(c) and c > 0) for c in per_sample_s):
        raise ValueError(f"per-sample times must be finite and > 0, got {per_sample_s}")
    cap = max(cap, -(-total // n))  # a cap below the even split could not hold the step's samples
    speed = [1.0 / c for c in per_sample_s]
    share = [0.0] * n
    free, left = set(range(n)), float(total)
    while free:  # water-filling: hand out by speed, pin whoever passes the cap, repeat with the rest
        pool = sum(speed[i] for i in free)
        trial = {i: left * speed[i] / pool for i in free}
        over = {i for i, x in trial.items() if x > cap}
        if not over:
            for i, x in trial.items():
                share[i] = x
            break
        for i in over:
            share[i] = float(cap)
            left -= cap
        free -= over
    return _whole(share, total)


def _whole(share: list[float], total: int) -> list[int]:
    """Round `share` (summing to `total`) to whole numbers >= 1 with the same sum: floors, then the largest
    remainders get the missing units."""
    floors = [max(1, math.floor(x)) for x in share]
    missing = total - sum(floors)
    order = sorted(range(len(share)), key=lambda i: share[i] - math.floor(share[i]), reverse=True)
    for i in order[:max(0, missing)]:
        floors[i] += 1
    while sum(floors) > total:  # a share floored up to 1: take the unit back from the largest
        floors[floors.index(max(floors))] -= 1
    return floors
