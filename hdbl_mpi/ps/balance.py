"""The groups' balance: measured against the plan, and re-planned when the groups drift apart (dual.replan).

The plan (method §4) promises that a small-batch and a large-batch commit take the same time. The server sees
every commit's compute time, so it can check that promise (:func:`balance_report`, in summary.json) and, with
``dual.replan``, refit a and b from the commits and give the small-batch group a new B_S (:class:`Balance`).
"""

from __future__ import annotations

import numpy as np

from hdbl_mpi.errors import PlanError
from hdbl_mpi.rules.plan import Plan, make_plan
from hdbl_mpi.run.records import CommitRecord


class Balance:
    """Watches the groups' measured compute time per commit and re-plans B_S when they drift apart.

    Each commit gives one point of the step-time line: (batch, compute seconds / steps). Large-batch commits
    sit at B_L and small-batch ones at B_S, so a window of recent commits of both groups determines a and b by
    least squares; the plan formula then gives the B_S that balances them again (d_L, d_S and f do not
    depend on a and b, so only B_S changes).
    """

    def __init__(self, plan: Plan, threshold: float, window: int = 4) -> None:
        self.plan, self.threshold, self.window = plan, threshold, window
        self.samples: dict[str, list[tuple[int, float, float]]] = {"small": [], "large": []}

    def observe(self, group: str, batch: int, compute_s: float, steps: int, batch_small: int) -> dict | None:
        points = self.samples[group]
        points.append((batch, compute_s / max(steps, 1), compute_s))
        del points[: -self.window]
        small = [p for p in self.samples["small"] if p[0] == batch_small]
        large = self.samples["large"]
        if len(small) < 2 or len(large) < 2:
            return None
        t_small = float(np.median([p[2] for p in small]))
        t_large = float(np.median([p[2] for p in large]))
        imbalance = max(t_small, t_large) / min(t_small, t_large)
        if imbalance <= self.threshold:
            return None
        xs = [p[0] for p in small + large]
        ys = [p[1] for p in small + large]
        a, b = (float(v) for v in np.polyfit(xs, ys, 1, w=1.0 / np.asarray(ys)))  # relative errors
        if a <= 0 or b <= 0:
            return None  # the points do not describe a usable line (noise); keep the current plan
        try:
            new = make_plan(self.plan.dataset_size, self.plan.workers, self.plan.small, self.plan.batch_large,
                            a, b, self.plan.extra_time, self.plan.factor_rule)
        except PlanError:
            return None
        if new.batch_small == batch_small:
            return None
        self.samples["small"].clear()
        self.samples["large"].clear()
        return {"a": a, "b": b, "imbalance": imbalance, "compute_small_s": t_small, "compute_large_s": t_large,
                "previous_batch_small": batch_small, "batch_small": new.batch_small}


class SpeedBalance:
    """dual.per_worker with dual.replan: watches how fast each worker runs against its line and, when the slowest
    and the fastest drift apart, says how much slower or faster than its line each one now runs.

    A worker trains one batch size, so its commits cannot refit its line's shape; they do measure its speed:
    rho = measured / predicted compute time of a commit (predicted from the line and the samples it trained).
    Under the current plan every commit is planned to take the same time, so worker i's would take rho_i times
    that: the imbalance is max rho / min rho, and scaling each line by its rho and planning again
    (rules/worker_plan.py: rescaled) gives a worker that slowed down (or recovered) a share it finishes in the
    others' time. A commit trained on an older share is judged against the line it is predicted with now, so
    commits in flight during a re-plan do not count as an imbalance. Each worker's first commit carries one-time
    costs (allocator, autotuning, caches) and is left out.
    """

    def __init__(self, threshold: float, window: int = 4) -> None:
        self.threshold, self.window = threshold, window
        self.samples: dict[int, list[tuple[float, float]]] = {}
        self.seen: set[int] = set()

    def observe(self, rank: int, measured_s: float, predicted_s: float, ranks: list[int]) -> dict | None:
        """A commit's measured and predicted compute seconds; the re-plan's figures once `ranks` (the workers now
        planned) have each given 2 commits (after their first) and their speeds differ by more than the
        threshold."""
        if rank not in self.seen:
            self.seen.add(rank)
            return None
        points = self.samples.setdefault(rank, [])
        points.append((measured_s, predicted_s))
        del points[: -self.window]
        if any(len(self.samples.get(w, ())) < 2 for w in ranks):
            return None
        scales = {w: float(np.median([m / p for m, p in self.samples[w]])) for w in ranks}
        imbalance = max(scales.values()) / min(scales.values())
        if imbalance <= self.threshold:
            return None
        times = {w: float(np.median([m for m, _ in self.samples[w]])) for w in ranks}
        self.samples.clear()
        return {"kind": "speeds", "imbalance": imbalance, "compute_s": {str(w): t for w, t in times.items()},
                "scales": {str(w): f for w, f in scales.items()}}


def describe_replan(change: dict, threshold: float) -> str:
    """The server's log line for a re-plan record of either kind."""
    if change.get("kind") == "speeds":
        shares = ", ".join(f"rank {w}: d={d} B={change['batches'][w]}" for w, d in change["samples"].items())
        return (f"replan at commit {change['at_commit']}: the workers ran at x "
                + ", ".join(f"{f:.3f}" for f in change["scales"].values()) + f" their lines' time (imbalance "
                f"{change['imbalance']:.3f} > {threshold}); shares per epoch {shares}")
    return (f"replan at commit {change['at_commit']}: compute time small {change['compute_small_s']:.3f} s vs large "
            f"{change['compute_large_s']:.3f} s (imbalance {change['imbalance']:.3f} > {threshold}); refit "
            f"a={change['a']:.4g} b={change['b']:.4g}; B_S at {change['resolution']} px "
            f"{change['previous_batch_small']} -> {change['batch_small']}")


def group_times(records: list[CommitRecord], resolution: int | None = None) -> dict[str, dict[str, float]]:
    """Mean per-commit times of each group (at one resolution, or all) over `records`."""
    out: dict[str, dict[str, float]] = {}
    for group in ("small", "large"):
        recs = [r for r in records if r.group == group and (resolution is None or r.resolution == resolution)]
        if recs:
            out[group] = {key: float(np.mean([getattr(r, key) for r in recs]))
                          for key in ("compute_s", "exchange_s", "wait_s", "commit_s")}
            out[group]["commits"] = len(recs)
    return out


def balance_report(plan: Plan, records: list[CommitRecord], resolution: int, k: int = 1) -> dict:
    """Predicted vs measured per-commit time of each group at one resolution (k commits per worker and epoch),
    and the imbalance."""
    times = group_times(records, resolution)
    predicted = {group: None if t is None else t / k
                 for group, t in (("large", plan.commit_time_large), ("small", plan.commit_time_small))}
    report: dict = {"resolution": resolution, "predicted_compute_s": {}, "measured_compute_s": {},
                    "measured_commit_s": {}}
    for group, measured in times.items():
        report["predicted_compute_s"][group] = predicted[group]
        report["measured_compute_s"][group] = measured["compute_s"]
        report["measured_commit_s"][group] = measured["commit_s"]
    for kind in ("compute", "commit"):
        values = list(report[f"measured_{kind}_s"].values())
        report[f"imbalance_{kind}"] = max(values) / min(values) if len(values) == 2 else None
    return report
