"""`hdbl plot`: accuracy and loss against epoch and wall time, and each run's commit timeline.

The timeline draws every commit of every worker as a bar (compute in the group's colour, exchange and wait in
grey), one row per worker: balanced groups show bars of equal length that end together. Stage boundaries
(every epoch at which the learning rate changes) are marked as dashed lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdbl_mpi.errors import HdblError
from hdbl_mpi.report.runs import Run
from hdbl_mpi.run.rundir import COMMITS, read_commits

if TYPE_CHECKING:
    from hdbl_mpi.profiling.store import Profile

GROUP_COLOURS = {"small": "tab:orange", "large": "tab:blue", "peer": "tab:green"}


def _boundaries(run: Run) -> list[int]:
    """Epochs after which the learning rate (and so the stage) changes."""
    lrs = [(r.epoch, r.lr) for r in run.epochs]
    return [e for (e, lr), (_, nxt) in zip(lrs, lrs[1:], strict=False) if nxt != lr]


def _pyplot(what: str) -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display on a cluster node), or what to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HdblError(f"{what} needs matplotlib: pip install matplotlib") from None
    return plt


def plot_runs(runs: list[Run], output: str | Path) -> None:
    plt = _pyplot("hdbl plot")
    fig = plt.figure(figsize=(15, 4.2 + 1.9 * len(runs)), layout="constrained")
    grid = fig.add_gridspec(1 + len(runs), 3, height_ratios=[4.2] + [1.9] * len(runs))
    ax_epoch, ax_wall, ax_loss = (fig.add_subplot(grid[0, i]) for i in range(3))
    for run in runs:
        evaluated = [(r.epoch, r.wall_s, r.test_acc, r.test_loss) for r in run.epochs
                     if r.test_acc is not None and r.test_loss is not None]
        epochs, walls_s, accs, losses = (list(column) for column in zip(*evaluated, strict=True)) if evaluated \
            else ([], [], [], [])
        line, = ax_epoch.plot(epochs, accs, "o-", label=run.name, markersize=3)
        colour = line.get_color()
        ax_wall.plot(walls_s, accs, "o-", color=colour, label=run.name, markersize=3)
        ax_loss.plot(epochs, losses, "o-", color=colour, label=f"{run.name} test", markersize=3)
        ax_loss.plot([r.epoch for r in run.epochs], [r.train_loss for r in run.epochs], "--", color=colour,
                     label=f"{run.name} train", alpha=0.7)
        walls = {r.epoch: r.wall_s for r in run.epochs}
        for epoch in _boundaries(run):
            ax_epoch.axvline(epoch, color=colour, linestyle=":", alpha=0.6)
            ax_loss.axvline(epoch, color=colour, linestyle=":", alpha=0.6)
            ax_wall.axvline(walls[epoch], color=colour, linestyle=":", alpha=0.6)
    ax_epoch.set(title="test accuracy vs epoch", xlabel="epoch", ylabel="top-1")
    ax_wall.set(title="test accuracy vs wall time", xlabel="seconds", ylabel="top-1")
    ax_loss.set(title="loss vs epoch (dashed: train)", xlabel="epoch", ylabel="cross-entropy")
    for ax in (ax_epoch, ax_wall, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for i, run in enumerate(runs):
        _timeline(fig.add_subplot(grid[1 + i, :]), run)
    fig.savefig(output, dpi=110)
    plt.close(fig)


def _timeline(ax, run: Run) -> None:
    path = run.path / COMMITS
    if not path.is_file():
        raise HdblError(f"{run.path} has no {COMMITS}; the commit timeline needs it.")
    records = read_commits(path)
    if not records:
        ax.set_title(f"{run.name}: no commits recorded")
        return
    origin = min(r.start for r in records)
    workers = sorted({r.worker for r in records})
    for record in records:
        row = workers.index(record.worker)
        start = record.start - origin
        ax.broken_barh([(start, record.compute_s)], (row - 0.35, 0.7), color=GROUP_COLOURS[record.group],
                       edgecolor="white", linewidth=0.8)  # the white edge separates consecutive commits
        ax.broken_barh([(start + record.compute_s, record.exchange_s + record.wait_s)], (row - 0.35, 0.7),
                       color="0.6")
    groups = {r.worker: r.group for r in records}
    ax.set_yticks(range(len(workers)), [f"{w} ({groups[w]})" for w in workers], fontsize=7)
    ax.set(title=f"{run.name}: commits per worker (orange small-batch, blue large-batch, green data-parallel "
                 "compute; grey exchange + wait)", xlabel="seconds since the first commit started")
    ax.grid(axis="x", alpha=0.3)


def plot_profile(profile: Profile, path: str | Path) -> None:
    """Median step time against batch size with the fitted line, one subplot per resolution: a look at the
    plot shows at once whether the linear model holds over the range the plan uses."""
    plt = _pyplot("Plotting a profile")
    entries = list(profile.entries.values())
    if not entries:
        raise HdblError("The profile holds no entries to plot.")
    resolutions = sorted({e.resolution for e in entries})
    fig, axes = plt.subplots(1, len(resolutions), figsize=(5 * len(resolutions), 4), squeeze=False)
    for ax, res in zip(axes[0], resolutions, strict=True):
        for entry in (e for e in entries if e.resolution == res):
            xs = list(entry.samples.batch) if entry.samples else []
            ys = list(entry.samples.median_s) if entry.samples else []
            points = ax.scatter(xs, ys, s=14, label=f"{entry.model} {entry.precision} {entry.device} (measured)")
            line_x = [0, max([*xs, entry.b_max])]
            ax.plot(line_x, [entry.a * x + entry.b for x in line_x], color=points.get_facecolor()[0],
                    label=f"a={entry.a:.3g}, b={entry.b:.3g}, R²={entry.r2:.3f}")
        ax.set(title=f"{res} px", xlabel="batch size", ylabel="seconds per step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path))
    plt.close(fig)
