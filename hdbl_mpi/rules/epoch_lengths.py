"""Where a count of merged commits falls in the run's epochs: the one place that turns commits into epochs.

An epoch is n*k merged commits at the server (method §5: n workers, k = `dual.commits_per_epoch` commits each).
k is one number for the whole run, or one per resolution (a list, low to high), which `dual.commit_interval` chooses at
start-up so that a commit takes about the same time at every resolution of a cyclic schedule. With one k per
resolution the epochs differ in length, so the server, the assignments, the progress line, the resume and
`hdbl evaluate` all count epochs here instead of dividing by n*k. Pure arithmetic.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate

from hdbl_mpi.errors import ConfigError
from hdbl_mpi.rules.schedule import Schedule
from hdbl_mpi.schema import Config


def commits_by_resolution(value: int | list[int], resolutions: list[int]) -> dict[int, int]:
    """k of each resolution from `dual.commits_per_epoch`: one number for all, or a list with one per resolution
    (low to high, as `dual.batch_large`)."""
    if not isinstance(value, list):
        return {r: int(value) for r in resolutions}
    if len(value) != len(resolutions):
        raise ConfigError(f"dual.commits_per_epoch has {len(value)} values but the schedule has {len(resolutions)} "
                          f"resolutions ({resolutions}); give one per resolution, or one number for all.")
    return dict(zip(resolutions, (int(k) for k in value), strict=True))


def config_form(ks: dict[int, int]) -> int | list[int]:
    """`dual.commits_per_epoch` for these k: one number when every resolution has the same, else the list."""
    values = [ks[r] for r in sorted(ks)]
    return values[0] if len(set(values)) == 1 else values


@dataclass(frozen=True)
class EpochLengths:
    """The commits of each epoch of the schedule; past its end, epochs are as long as its last one (a run
    stopped on a signal and resumed longer keeps counting the same way)."""

    sizes: tuple[int, ...]
    starts: tuple[int, ...] = field(init=False, repr=False, compare=False)  # 0, then each epoch's end

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"epoch lengths {self.sizes} must be at least one commit each")
        object.__setattr__(self, "starts", (0, *accumulate(self.sizes)))

    @classmethod
    def uniform(cls, per_epoch: int, epochs: int) -> EpochLengths:
        return cls((per_epoch,) * max(epochs, 1))

    @classmethod
    def for_run(cls, config: Config, schedule: Schedule) -> EpochLengths:
        """A parameter-server run's epochs: n workers x the k of each epoch's resolution."""
        ks = commits_by_resolution(config.dual.commits_per_epoch, schedule.resolutions)
        return cls(tuple(config.dual.workers * ks[schedule.at(e).resolution] for e in range(schedule.epochs)))

    @property
    def total(self) -> int:
        """Commits of the whole schedule."""
        return self.start(len(self.sizes))

    def size(self, epoch: int) -> int:
        """Commits of epoch `epoch` (0-based)."""
        return self.sizes[min(max(epoch, 0), len(self.sizes) - 1)]

    def start(self, epoch: int) -> int:
        """Commits merged before epoch `epoch` (0-based) begins."""
        starts = self.starts
        if epoch < len(starts):
            return starts[max(epoch, 0)]
        return starts[-1] + (epoch - len(self.sizes)) * self.sizes[-1]

    def done(self, merged: int) -> int:
        """Epochs completed after `merged` commits."""
        starts = self.starts
        if merged >= starts[-1]:
            return len(self.sizes) + (merged - starts[-1]) // self.sizes[-1]
        return bisect_right(starts, merged) - 1

    def position(self, merged: int) -> float:
        """The epoch as a fraction (2.5: half-way through the third), for the LR and the stop message."""
        epoch = self.done(merged)
        size = self.size(epoch)
        return (merged - self.start(epoch) + epoch * size) / size  # one division: with one k, merged / (n*k) exactly

    def at_boundary(self, merged: int) -> bool:
        return self.start(self.done(merged)) == merged

    def next_boundary(self, merged: int) -> int:
        """The first epoch end at or after `merged` commits."""
        epoch = self.done(merged)
        return merged if self.start(epoch) == merged else self.start(epoch + 1)
