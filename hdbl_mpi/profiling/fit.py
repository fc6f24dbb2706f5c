"""Line fits for the profiler: y = a*x + b with its R², for step times (tau(B) = a*B + b) and for peak memory.

Pure arithmetic (no torch), so the fits are unit-tested on plain numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Fit:
    """y = a*x + b by ordinary least squares, with its coefficient of determination r2.

    r2 is kept next to the coefficients because a poor fit (noisy timings, a device that throttles) makes the
    plan built on a and b unreliable, and the user should be able to see that in the profile.
    """

    a: float
    b: float
    r2: float


def fit_line(x: Sequence[float], y: Sequence[float], relative: bool = False) -> Fit:
    """Least-squares line through (x, y); needs at least two distinct x (one point defines no slope).

    `relative=True` minimises relative errors (each point weighted by 1/y). Step times span two orders of
    magnitude between the small and the large batch, and a plain fit is dominated by the largest batches, where
    a CPU is often super-linear; the plan needs the time of B_S as accurately as that of B_L, so step-time fits
    use relative errors. R² is always that of the unweighted residuals.
    """
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    if len(xs) != len(ys):
        raise ValueError(f"fit_line got {len(xs)} x values but {len(ys)} y values")
    if len(set(xs)) < 2:
        raise ValueError(f"fit_line needs at least 2 distinct x values, got {sorted(set(xs))}")
    if relative and any(v <= 0 for v in ys):
        raise ValueError("a relative fit needs positive y values")
    weights = [1.0 / (v * v) if relative else 1.0 for v in ys]
    total = sum(weights)
    mx = sum(w * u for w, u in zip(weights, xs, strict=True)) / total
    mw = sum(w * v for w, v in zip(weights, ys, strict=True)) / total
    sxx = sum(w * (u - mx) ** 2 for w, u in zip(weights, xs, strict=True))
    sxy = sum(w * (u - mx) * (v - mw) for w, u, v in zip(weights, xs, ys, strict=True))
    a = sxy / sxx
    b = mw - a * mx
    n = len(xs)
    my = sum(ys) / n
    ss_tot = sum((v - my) ** 2 for v in ys)
    ss_res = sum((v - (a * u + b)) ** 2 for u, v in zip(xs, ys, strict=True))
    r2 = 1.0 if ss_tot == 0 else min(1.0, max(0.0, 1.0 - ss_res / ss_tot))
    return Fit(a=a, b=b, r2=r2)
