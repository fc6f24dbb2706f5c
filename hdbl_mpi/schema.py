"""The configuration's schema: one dataclass per section, its keys, types and defaults. No torch, no MPI, no
loading: the cheapest layer, which every part of the tool can import for a type.

Each section is named after the part that owns it (the data loaders read `data`, the model zoo `model`, the
trainers `train`, the plan `dual`, the parameter server `ps`, LocalSGD `local`, ...). What a value may be is
asked of that part where it lives (its choice list) by the loader and validator, hdbl_mpi/config.py, which
reads YAML and `--set` overrides into these dataclasses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from hdbl_mpi.rules.policy import PS_MODES


@dataclass
class DataConfig:
    name: str = "fashion-mnist"  # fashion-mnist | mnist | cifar10 | cifar100 | synthetic | folder
    dir: str | None = None  # where to look for local files first; None: the loaders' default places
    download: bool = False  # only when asked, and only when online
    resolution: int | None = None  # training/eval resolution; None: the data set's native size
    augment: bool = True  # random crop with padding + horizontal flip
    synthetic: dict = field(default_factory=dict)  # options of the synthetic set (train_size, classes, ...)
    decoder: str = "auto"  # folder: auto (DALI when installed, else torchvision) | dali | torchvision
    threads: int = 2  # folder: decoding threads per rank


@dataclass
class ModelConfig:
    name: str = "resnet_small"  # resnet18 | resnet_small | lenet5 | mlp | torchvision:<name> | package.module:function
    stem: str = "auto"  # resnets: cifar | imagenet | auto (cifar stem up to 64 px)
    dropout: float = 0.0
    width: int = 16  # resnet_small only: channels of the first stage
    options: dict = field(default_factory=dict)  # keyword arguments of a torchvision model or of your factory


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4  # applied once, by the optimizer (not also as an L2 term in the loss)
    lr_milestones: list[int] = field(default_factory=list)  # epochs at which LR is multiplied by lr_gamma
    lr_gamma: float = 0.1
    lr_scaling: str = "none"  # per-group LR = lr * (B / B_L)^k: none (k=0, as the papers), sqrt (k=1/2), linear (k=1)
    seed: int = 0
    threads: int = 0  # torch threads per rank; 0: this host's cores / ranks on this host
    device: str = "auto"  # auto | cpu | cuda | cuda:N (workers); the server merges on the CPU
    optimizer: str = "sgd"  # sgd (with momentum) | adamw | lars | lamb; BN and bias parameters get no weight decay
    precision: str = "fp32"  # fp32 | amp (float16 autocast + gradient scaler, CUDA) | bf16 (bfloat16, CUDA or CPU)
    channels_last: bool = False  # train in the channels-last (NHWC) memory format (hdbl_mpi/throughput.py)
    compile: bool = False  # torch.compile the model, one graph per input shape, compiled before it is timed
    cudnn_benchmark: bool = True  # CUDA: let cuDNN time its convolution algorithms per input shape
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw, lamb
    trust_coefficient: float = 0.001  # lars
    lr_schedule: str = "multistep"  # multistep (lr_milestones, or the schedule's stages) | cosine (lr -> min_lr)
    min_lr: float = 0.0  # cosine: the LR at the last epoch
    warmup_epochs: float = 0.0  # linear warm-up from warmup_start * LR over this many (fractional) epochs
    warmup_start: float = 0.0
    early_stop_patience: int = 0  # stop after this many evaluations without a better test top-1 (0: never)
    early_stop_min_delta: float = 0.0  # ... better by more than this
    init_from: str | None = None  # a state dict or an hdbl checkpoint (or run directory) to start from (not a resume)
    init_skip: list[str] = field(default_factory=list)  # names (prefixes) not to load, e.g. [fc] for a new head


@dataclass
class ScheduleConfig:
    """Cyclic progressive schedule. Unset: one stage per LR interval of train.lr_milestones, at one resolution.
    Set (a preset, or phases for the generic form): it defines the epochs, LRs, resolutions and dropout, and
    train.epochs / train.lr / train.lr_milestones / model.dropout / data.resolution are not used."""

    preset: str | None = None  # cifar-paper | imagenet-paper | demo
    phases: list[int] = field(default_factory=list)  # generic form: epochs of each LR phase ...
    lrs: list[float] = field(default_factory=list)  # ... its learning rate ...
    resolutions: list[int] = field(default_factory=list)  # ... and the low-to-high resolution cycle in each
    dropouts: list[float] = field(default_factory=list)  # dropout per resolution
    splits: list[float] = field(default_factory=list)  # fraction of each phase per resolution (default equal)


@dataclass
class DualConfig:
    workers: int = 4  # n; the job needs 1 + n MPI ranks
    small: int = 0  # n_S small-batch workers (ranks 1..n_S)
    batch_large: int | list[int] | None = None  # B_L (one, or one per resolution); None: the profile's B_max
    extra_time: float = 1.05  # t
    time_a: float | list[float] | None = None  # tau(B) = a*B + b: seconds per sample (one, or one per resolution)
    time_b: float | list[float] | None = None  # seconds per step; None: the profile's
    factor: str = "ratio"  # model-update factor of small pushes: ratio (d_S/d_L) | sqrt | none
    profile: str | None = None  # a `hdbl profile` file, or "auto": every worker profiles its device at start-up
    profile_device: str | None = None  # device name to pick from a profile file that holds several
    profile_steps: int = 20  # auto: timed steps per batch size (as hdbl profile; fewer make B_S noisy)
    profile_max_batch: int = 1024  # auto: largest batch size tried
    memory_budget: str | None = None  # auto on a CPU: memory a worker may use (e.g. 4GiB); None: RAM / ranks per host
    per_worker: bool = False  # a share (and, small group, a batch) per worker from its own line (rules/worker_plan.py)
    replan: bool = False  # re-balance from the commits: refit a, b and B_S (groups); per_worker: each one's speed
    replan_threshold: float = 1.05  # ... when slowest / fastest group (per_worker: worker) compute time exceeds this
    commits_per_epoch: int | list[int] = 1  # k: each worker commits k times per epoch (d/k samples each); 1 as in
    # the papers; or one per resolution (as batch_large), which dual.commit_interval writes when they differ
    commit_interval: str | None = None  # instead of k: "auto", "H steps" or "T s", turned into k at start-up
    commit_share: float = 0.05  # commit_interval auto: the exchange's largest share of a commit


@dataclass
class PSConfig:
    mode: str = "asp"  # asp | bsp | ssp (parameter server) | allreduce | localsgd (no server); kvstore names too
    backend: str = "auto"  # allreduce: auto (Horovod when it imports, else mpi4py) | horovod | mpi4py | ddp
    bucket_mb: float = 25.0  # allreduce over mpi4py: gradient bucket size
    staleness: int = 2  # SSP bound s
    fault_tolerance: str = "abort"  # abort (a lost rank ends the job; --resume) | ulfm (ASP goes on without it)
    ft_detector_timeout_s: float = 10.0  # ulfm: a rank silent this long is declared dead (heartbeat detector)
    max_nonfinite: int = 3  # stop after this many non-finite pushes in a row from one worker (each is rejected)
    merge: str = "journal"  # journal | conference (the papers' rules) | delta (an outer step on each worker's change)
    outer_lr: float = 0.0  # merge delta: W += outer_lr * f * (W_k - W_pulled) (0: 1/dual.workers); BN stats as journal
    outer_momentum: float = 0.0  # merge delta: Nesterov momentum of the outer step (0: none)
    outer_delayed: bool = False  # merge delta: the momentum step once per round of n pushes (delayed Nesterov)
    staleness_decay: float = 0.0  # asp/ssp: a push s merges old weighs (1 + s)^-decay (0: off; FedAsync: 0.5)
    speed_weighted: bool = False  # allreduce: per-rank batches by measured speed, sample-weighted gradient mean
    rebalance_steps: int = 0  # speed_weighted: re-measure and re-split every this many steps (0: each epoch)
    speed_batch_max: int = 0  # speed_weighted: the largest batch a rank may get (0: 2 x B_L; memory)
    timeout_s: float = 0.0  # longest wait for any message; 0: 600 s + 20 planned commit times
    device: str = "cpu"  # the server's evaluation device (cpu | auto | cuda | cuda:N); it merges on the host
    servers: int = 1  # k server ranks, each owning a contiguous shard of the weights (ranks 0 and n+1..n+k-1)
    spares: int = 0  # ulfm: idle worker ranks started with the job (the last ranks); each takes a lost worker's role


@dataclass
class LocalConfig:
    """LocalSGD (ps.mode: localsgd): H local steps per worker, then the models are averaged (SlowMo optional)."""

    h: int = 8  # local steps per round (the start value of the loss-driven strategies)
    strategy: str = "constant"  # see hdbl_mpi.rules.local_steps.STRATEGIES
    h_min: int = 1
    h_max: int = 64
    options: dict = field(default_factory=dict)  # the strategy's own knobs: window, threshold, step, every, steepness
    slowmo: bool = False  # apply SlowMo to the averaged model (with beta 0 and alpha 1 it equals plain averaging)
    slowmo_beta: float = 0.0  # SlowMo slow momentum
    slowmo_alpha: float = 1.0  # SlowMo slow learning rate


@dataclass
class EvalConfig:
    every: int = 1  # evaluate the global model every this many epochs (0: only at the end)
    batch_size: int = 1000


@dataclass
class RunConfig:
    dir: str | None = None  # run directory; None: runs/<date>-<time>
    checkpoint_every: int = 5  # epochs between checkpoints (the final one is always written)
    checkpoint_minutes: float = 0.0  # also checkpoint at least this often, between epochs (0: off)


@dataclass
class SlowChanging:
    """Stragglers that come and go: every period_s, each worker slowed by factor with probability p."""

    factor: float = 1.0
    p: float = 0.0
    period_s: float = 0.0  # 0: off
    seed: int = 0


@dataclass
class SlowConfig:
    """Emulated slow ranks, the same in every mode (run/slow.py; emulation, and summary.json says so)."""

    ranks: dict = field(default_factory=dict)  # {RANK: FACTOR}: each of that rank's steps takes FACTOR x its time
    from_s: float = 0.0  # the `ranks` factors apply from this many seconds after the run's start (a mid-run slowdown)
    changing: SlowChanging = field(default_factory=SlowChanging)
    pace: float = 0.0  # > 0: every step padded to pace x tau(B) x the rank's factor (tau from the plan's a, b)
    delay_s: dict = field(default_factory=dict)  # {RANK: SECONDS}: a sleep before each push or epoch's sync


@dataclass
class ChaosConfig:
    """The chaos drill (ps/chaos.py): the server has `kills` workers, chosen at random, SIGKILL themselves at
    random commits of the run, all drawn from `seed`."""

    kills: int = 0  # workers killed per run (0: off)
    seed: int = 0
    start: float = 0.15  # the kills fall between this fraction of the run's commits ...
    end: float = 0.75  # ... and this one


@dataclass
class DebugConfig:
    """Fault and delay injection, for tests and for seeing what the tool does when a rank misbehaves."""

    raise_on_rank: int = -1  # this rank raises RuntimeError ...
    raise_at_commit: int = 0  # ... when it is about to make this local commit (the server: after this many
    # merges; allreduce and LocalSGD: when it is about to train this epoch, from 1)
    crash: str = "raise"  # how: raise (an exception), exit (code 3, no MPI_Finalize), kill (SIGKILL itself)
    crash_on_resume: bool = True  # false: only in a start that did not resume from a checkpoint (a transient fault)
    slow: SlowConfig = field(default_factory=SlowConfig)
    nan_rank: int = -1  # this worker rank pushes NaN weights and loss ...
    nan_at_commit: int = 1  # ... from this local commit on ...
    nan_commits: int = 1  # ... for this many commits (a diverging worker)
    chaos: ChaosConfig = field(default_factory=ChaosConfig)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    dual: DualConfig = field(default_factory=DualConfig)
    ps: PSConfig = field(default_factory=PSConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def has_server(config: Config) -> bool:
    """A parameter-server mode (rank 0 serves), as against the data-parallel modes, where every rank trains."""
    return config.ps.mode in PS_MODES


def required_ranks(config: Config) -> int:
    """The MPI ranks a config needs: ps.servers servers plus dual.workers workers plus ps.spares spares, or
    dual.workers peers without a server. Launchers check their slots against this before starting anything."""
    return config.dual.workers + (config.ps.servers + config.ps.spares if has_server(config) else 0)
