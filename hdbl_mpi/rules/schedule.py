"""Cyclic progressive learning schedules (method §5) as data: stages of (epochs, resolution, LR, dropout).

Pure Python: the server derives the stage from the global commit count, and `hdbl schedule` prints a stage
table on a login node. In each learning-rate phase the resolution cycles from low to high; dropout follows
the resolution. The papers' presets are built by the same generic function any user schedule uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from hdbl_mpi.errors import ConfigError
from hdbl_mpi.rules.plan import round_half_up


@dataclass(frozen=True)
class Stage:
    start: int  # first epoch of the stage (0-based, inclusive)
    end: int  # epoch after the last one (exclusive)
    resolution: int
    lr: float
    dropout: float


@dataclass(frozen=True)
class Schedule:
    stages: tuple[Stage, ...]

    @property
    def epochs(self) -> int:
        return self.stages[-1].end

    @property
    def resolutions(self) -> list[int]:
        return sorted({s.resolution for s in self.stages})

    def index_at(self, epoch: int) -> int:
        """Stage of the commits made after `epoch` completed epochs (the last stage once training is over)."""
        for i, stage in enumerate(self.stages):
            if stage.start <= epoch < stage.end:
                return i
        if epoch >= self.epochs:
            return len(self.stages) - 1
        raise ValueError(f"epoch {epoch} is before the schedule starts")

    def at(self, epoch: int) -> Stage:
        return self.stages[self.index_at(epoch)]


def validate_stages(stages: list[Stage]) -> Schedule:
    """Stages must tile 0..E without gaps or overlaps, with positive resolutions and LRs and dropout in [0, 1)."""
    if not stages:
        raise ConfigError("a schedule needs at least one stage.")
    expected = 0
    for i, s in enumerate(stages):
        if s.start != expected or s.end <= s.start:
            raise ConfigError(
                f"schedule stage {i} covers epochs {s.start}-{s.end}; stages must follow each other without gaps "
                f"or overlaps, starting at 0 (this one should start at {expected} and end after it)."
            )
        if s.resolution < 8 or s.lr <= 0 or not 0 <= s.dropout < 1:
            raise ConfigError(
                f"schedule stage {i} has resolution {s.resolution}, lr {s.lr}, dropout {s.dropout}; use a "
                "resolution >= 8, an lr > 0 and a dropout in [0, 1)."
            )
        expected = s.end
    return Schedule(tuple(stages))


def cyclic(phases: list[int], lrs: list[float], resolutions: list[int], dropouts: list[float],
           splits: list[float] | None = None) -> Schedule:
    """LR phases x a low-to-high resolution cycle: phase p (phases[p] epochs at lrs[p]) is split into one part
    per resolution by `splits` (fractions summing to 1; equal parts by default). Part boundaries are rounded
    half-up from the cumulative fractions, so the parts of a phase always add up to the phase."""
    if len(phases) != len(lrs):
        raise ConfigError(f"schedule phases {phases} and lrs {lrs} need one learning rate per phase.")
    if len(resolutions) != len(dropouts):
        raise ConfigError(f"schedule resolutions {resolutions} and dropouts {dropouts} need one dropout each.")
    splits = splits or [1.0 / len(resolutions)] * len(resolutions)
    if len(splits) != len(resolutions) or abs(sum(splits) - 1.0) > 1e-6 or min(splits) <= 0:
        raise ConfigError(f"schedule splits {splits} must be positive fractions, one per resolution, summing to 1.")
    stages, start = [], 0
    for length, lr in zip(phases, lrs, strict=True):
        if length < len(resolutions):
            raise ConfigError(f"a phase of {length} epochs cannot hold {len(resolutions)} resolution stages.")
        cumulative, edge = 0.0, start
        for resolution, dropout, fraction in zip(resolutions, dropouts, splits, strict=True):
            cumulative += fraction
            end = start + round_half_up(cumulative * length)
            stages.append(Stage(edge, end, resolution, lr, dropout))
            edge = end
        start += length
    return validate_stages(stages)


PRESETS = {
    # CIFAR (140 epochs): 0-40 @24, 40-80 @32 (LR 0.2); 80-100 @24, 100-120 @32 (0.02); 120-130 @24, 130-140 @32.
    "cifar-paper": lambda: cyclic([80, 40, 20], [0.2, 0.02, 0.002], [24, 32], [0.1, 0.2]),
    # ImageNet (105 epochs): each LR phase (0-60, 60-90, 90-105) in three equal parts at 160, 224, 288 px.
    "imagenet-paper": lambda: cyclic([60, 30, 15], [0.2, 0.02, 0.002], [160, 224, 288], [0.1, 0.2, 0.3]),
    # A short cycle for the Fashion-MNIST demo (28 px native): 20 then 28 px in each of two LR phases.
    "demo": lambda: cyclic([6, 2], [0.05, 0.005], [20, 28], [0.0, 0.1]),
}


def preset(name: str) -> Schedule:
    if name not in PRESETS:
        raise ConfigError(f"unknown schedule preset {name!r} (and no such config file); use a YAML config or one "
                          f"of {', '.join(PRESETS)}.")
    return PRESETS[name]()


def format_schedule(schedule: Schedule) -> str:
    """The stage table: stage, epochs, resolution, learning rate, dropout."""
    lines = [f"{'stage':>5}  {'epochs':>9}  {'resolution':>10}  {'lr':>8}  {'dropout':>7}"]
    for i, s in enumerate(schedule.stages):
        lines.append(f"{i:>5}  {f'{s.start}-{s.end}':>9}  {s.resolution:>10}  {s.lr:>8g}  {s.dropout:>7g}")
    lines.append(f"{schedule.epochs} epochs, resolutions {', '.join(map(str, schedule.resolutions))}")
    return "\n".join(lines)


def single_resolution(epochs: int, lr: float, milestones: list[int], gamma: float, resolution: int,
                      dropout: float) -> Schedule:
    """The schedule of a run without cyclic progressive learning: one stage per LR interval (multistep)."""
    edges = [0] + [m for m in milestones if 0 < m < epochs] + [epochs]
    return validate_stages([Stage(start, end, resolution, lr * gamma**i, dropout)
                            for i, (start, end) in enumerate(zip(edges, edges[1:], strict=False))])


def from_config(config, native_resolution: int | None) -> Schedule:
    """The run's schedule: `schedule.preset`, the generic form (`schedule.phases` ...), or else one resolution
    (data.resolution or the data set's native one) with train.lr_milestones."""
    s = config.schedule
    if s.preset is not None:
        if s.phases:
            raise ConfigError("set either schedule.preset or schedule.phases (the generic form), not both.")
        return preset(s.preset)
    if s.phases:
        return cyclic(s.phases, s.lrs, s.resolutions, s.dropouts, s.splits or None)
    t = config.train
    if config.data.resolution is None and native_resolution is None:
        raise ConfigError("image folders have no native resolution: set data.resolution (e.g. 224) or a schedule.")
    resolution = config.data.resolution or native_resolution
    assert resolution is not None
    return single_resolution(t.epochs, t.lr, t.lr_milestones, t.lr_gamma, resolution, config.model.dropout)
