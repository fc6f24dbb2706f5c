"""The merge rules (method §3): what one push does to the global model W. This file is the one place to read
or change them; ``ps/shards.py`` applies the arithmetic and ``rules/policy.py`` decides when.

The papers' rules interpolate W <- W + w*(W_k - W) towards the pushed weights W_k:

- journal (default): W <- (W + f*W_k) / (1 + f), i.e. w = f / (1 + f);
- conference:        W <- W + (f/2) * (W_k - W),  i.e. w = f / 2.

Expressed as one weight, the server's hot path is a single fused pass over the vector (``torch.lerp_``: read W,
read W_k, write W) whichever is chosen.

Two options beside the rules (defaults off; not from the papers):

- staleness decay (``ps.staleness_decay: a``): a push made on weights that s merges ago were current weighs
  (1 + s)^-a times as much (FedAsync's polynomial staleness function, Xie et al. 2019, who use a = 0.5);
- delayed outer momentum (``ps.outer_delayed`` with the delta rule's ``ps.outer_momentum``): each push's step
  is applied at once without momentum, and the momentum step once per round of n pushes on the round's summed
  steps (the delayed Nesterov of asynchronous local SGD, Liu et al. 2024, arXiv 2401.09135), so momentum acts
  on a round's worth of workers' progress rather than amplifying each single, possibly stale, push.

- delta (not from the papers; an option beside them): the worker pushes its change since it last pulled,
  Delta_k = W_k - W_pulled, and the server takes an outer step W <- W + outer_lr * f * Delta_k (with optional
  Nesterov momentum, ``ps.outer_momentum``), as asynchronous local-SGD methods treat a worker's change as a
  pseudo-gradient. The interpolation rules move W only part of the way towards W_k *and* towards the stale
  W_pulled that W_k grew from, so some of the other workers' progress since that pull is undone at every merge;
  the delta step adds the worker's progress and leaves theirs alone. BatchNorm running statistics are estimates,
  not parameters, and are never stepped: they merge with the journal interpolation.
"""

from __future__ import annotations

from hdbl_mpi.rules.policy import OP_DELTA, OP_MERGE, Update

MERGE_RULES = ("journal", "conference", "delta")


def merge_weight(rule: str, factor: float) -> float:
    """Interpolation weight towards a push with model-update factor `factor` (1 for large-batch workers); for
    the delta rule, the weight of the pushed BatchNorm statistics."""
    if factor <= 0:
        raise ValueError(f"model-update factor must be > 0, got {factor}")
    if rule in ("journal", "delta"):
        return factor / (1.0 + factor)
    if rule == "conference":
        return factor / 2.0
    raise ValueError(f"unknown merge rule {rule!r}; use one of {', '.join(MERGE_RULES)}")


def push_update(rule: str, factor: float, outer_lr: float = 1.0) -> Update:
    """What an accepted asynchronous push with factor `factor` does to W under `rule`."""
    if rule == "delta":
        return Update(OP_DELTA, outer_lr * factor, merge_weight(rule, factor))
    return Update(OP_MERGE, merge_weight(rule, factor))


def pushes_change(rule: str) -> bool:
    """Whether workers push their parameters' change since the last pull (delta) rather than the parameters."""
    return rule == "delta"


def bsp_weights(factors: list[float]) -> list[float]:
    """BSP round: W = sum(f_k W_k) / sum(f_k); returns the coefficient of each W_k."""
    total = float(sum(factors))
    if total <= 0:
        raise ValueError("BSP merge needs at least one push with a positive factor")
    return [f / total for f in factors]


def staleness_scale(staleness: int, decay: float) -> float:
    """The weight multiplier of a push `staleness` merges old: (1 + s)^-decay (1 with decay 0)."""
    if staleness < 0:
        raise ValueError(f"staleness is {staleness}; it counts merges and cannot be negative")
    return 1.0 if decay == 0 else (1.0 + staleness) ** -decay


def scaled(update: Update, multiplier: float) -> Update:
    """The same push weighed `multiplier` times: the interpolation weight (or outer step and buffer weight)."""
    if multiplier == 1.0 or update.op not in (OP_MERGE, OP_DELTA):
        return update
    return Update(update.op, update.value * multiplier, update.value2 * multiplier)
