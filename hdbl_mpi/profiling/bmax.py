"""B_max (method §4): predicted from the memory line under the capacity with a safety margin, then confirmed by
one real step at the prediction, backing off geometrically on an out-of-memory error. Not found by trial until
out-of-memory, as in the original work.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from hdbl_mpi.engine import is_out_of_memory
from hdbl_mpi.errors import HdblError
from hdbl_mpi.profiling.fit import Fit


def predict_bmax(memory: Fit, capacity_bytes: float, margin: float = 0.9) -> int:
    """Largest integer B >= 1 with a*B + b <= margin * capacity.

    The margin leaves room for what the fit does not see: allocator fragmentation, the CUDA context, a
    workspace picked by a different kernel at a larger batch.
    """
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1], got {margin}")
    limit = margin * float(capacity_bytes)
    if memory.a <= 0:
        raise ValueError(
            f"the memory fit has slope a = {memory.a:.4g} bytes per sample (must be > 0): memory did not grow "
            "with the batch in the measured range, so B_max cannot be predicted; measure at larger batch sizes."
        )
    if memory.a + memory.b > limit:
        raise ValueError(
            f"even batch 1 needs {memory.a + memory.b:.4g} bytes by the memory fit, more than "
            f"margin x capacity = {margin} x {float(capacity_bytes):.4g} = {limit:.4g} bytes."
        )
    b_max = max(1, int(math.floor((limit - memory.b) / memory.a)))
    while memory.a * (b_max + 1) + memory.b <= limit:  # guard the float division both ways
        b_max += 1
    while b_max > 1 and memory.a * b_max + memory.b > limit:
        b_max -= 1
    return b_max


def confirm_bmax(
    step: Callable[[int], None],
    predicted: int,
    backoff: float = 0.9,
    min_batch: int = 1,
    on_oom: Callable[[], None] | None = None,
) -> tuple[int, list[int]]:
    """Run a real step at `predicted`, backing off on out-of-memory; (confirmed B, batch sizes that failed).

    A prediction from a line fit is not a guarantee (kernels change their workspace with the batch), so the
    largest batch is only trusted once a real step at it has succeeded.
    """
    if not 0 < backoff < 1:
        raise ValueError(f"backoff must be in (0, 1), got {backoff}")
    batch, failed = int(predicted), list[int]()
    while True:
        if batch < min_batch:
            tried = f" (tried {', '.join(map(str, failed))})" if failed else ""
            raise HdblError(
                f"The model does not fit in memory even at batch {min_batch}{tried}; use a smaller model, a "
                "smaller resolution or, on the CPU, a larger --memory-budget."
            )
        oom = False
        try:
            step(batch)
        except Exception as err:  # anything but an out-of-memory error is re-raised
            if not is_out_of_memory(err):
                raise
            oom = True
        if not oom:
            return batch, failed
        # on_oom runs outside the except block: the traceback holds the failed step's tensors until then.
        failed.append(batch)
        if on_oom is not None:
            on_oom()
        batch = min(int(math.floor(batch * backoff)), batch - 1)
