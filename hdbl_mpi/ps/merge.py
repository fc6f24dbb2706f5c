"""Merge rules of method §3 as interpolation weights.

Both published rules are a linear interpolation W <- W + w*(W_k - W) towards the pushed weights W_k:

- journal (default): W <- (W + f*W_k) / (1 + f), i.e. w = f / (1 + f);
- conference:        W <- W + (f/2) * (W_k - W),  i.e. w = f / 2.

Expressing them as one weight keeps the server's hot path a single fused pass over the vector
(``torch.lerp_``: read W, read W_k, write W) whichever rule is chosen, and keeps the rule itself here, in one
place, free of torch and MPI.
"""

from __future__ import annotations

MERGE_RULES = ("journal", "conference")


def merge_weight(rule: str, factor: float) -> float:
    """Interpolation weight towards a push with model-update factor `factor` (1 for large-batch workers)."""
    if factor <= 0:
        raise ValueError(f"model-update factor must be > 0, got {factor}")
    if rule == "journal":
        return factor / (1.0 + factor)
    if rule == "conference":
        return factor / 2.0
    raise ValueError(f"unknown merge rule {rule!r}; use one of {', '.join(MERGE_RULES)}")


def bsp_weights(factors: list[float]) -> list[float]:
    """BSP round: W = sum(f_k W_k) / sum(f_k); returns the coefficient of each W_k."""
    total = float(sum(factors))
    if total <= 0:
        raise ValueError("BSP merge needs at least one push with a positive factor")
    return [f / total for f in factors]
