"""YAML + --set overrides, typed validation, and the resolved dump a run directory keeps."""

from pathlib import Path

import pytest
import yaml

from hdbl_mpi.config import config_from_dict, dump_config, load_config
from hdbl_mpi.errors import ConfigError


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 1e-3\ndual:\n  workers: 3\n  batch_large: 128\n")
    config = load_config(path, ["train.epochs=9", "dual.small=0", "train.lr_milestones=[3, 6]", "data.dir=/x"])
    assert config.train.epochs == 9  # the command line wins over the file
    assert config.train.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string; floats accept it
    assert config.dual.workers == 3 and config.train.lr_milestones == [3, 6] and config.data.dir == "/x"
    assert config.model.name == "resnet_small"  # untouched defaults stay


def test_resolved_config_round_trips():
    config = load_config(None, ["dual.batch_large=256", "train.epochs=4", "dual.small=1", "dual.time_a=0.001",
                                "dual.time_b=0.01"])
    again = config_from_dict(yaml.safe_load(dump_config(config)))
    assert again == config


def test_unknown_key_names_the_closest_one():
    with pytest.raises(ConfigError, match="unknown config key 'train.epoch'. Did you mean 'epochs'"):
        load_config(None, ["dual.batch_large=256", "train.epoch=3"])
    with pytest.raises(ConfigError, match="unknown config key 'trian'"):
        load_config(None, ["dual.batch_large=256", "trian.epochs=3"])


@pytest.mark.parametrize("assignment,message", [
    ("train.epochs=ten", "train.epochs must be an integer"),
    ("train.lr=fast", "train.lr must be a number"),
    ("data.augment=maybe", "data.augment must be true or false"),
    ("train.epochs=0", "train.epochs is 0"),
    ("ps.mode=async", "ps.mode is 'async'"),
    ("ps.merge=mean", "ps.merge is 'mean'"),
    ("dual.factor=half", "dual.factor is 'half'"),
    ("dual.small=5", "dual.small is 5"),
    ("train.lr_milestones=[5, 3]", "train.lr_milestones is [5, 3]"),
    ("train.lr_milestones=[0]", "train.lr_milestones is [0]"),
    ("train.device=tpu", "train.device is 'tpu'"),
    ("ps.staleness=0", "ps.staleness is 0"),
    ("schedule.lrs=[.nan]", "schedule.lrs[0] is nan; it must be a finite number."),
    ("train.lr=.inf", "train.lr is inf; it must be a finite number."),
    ("dual.time_a=-.inf", "dual.time_a is -inf; it must be a finite number."),
    ("train.device=cuda:²", "train.device is 'cuda:²'; use auto, cpu, cuda or cuda:N."),
])
def test_bad_values_say_what_to_do(assignment, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, ["dual.batch_large=256", assignment])


def test_large_batch_comes_from_a_value_or_a_profile():
    with pytest.raises(ConfigError, match="dual.batch_large is not set"):
        load_config(None, ["dual.small=0"])
    assert load_config(None, ["dual.profile=auto", "dual.small=2"]).dual.batch_large is None


def test_small_workers_need_the_time_model():
    with pytest.raises(ConfigError, match="dual.time_a and dual.time_b"):
        load_config(None, ["dual.batch_large=256", "dual.small=2"])


def test_a_plan_per_worker_needs_the_time_model_and_a_server():
    with pytest.raises(ConfigError, match="dual.per_worker needs the step-time model"):
        load_config(None, ["dual.batch_large=256", "dual.per_worker=true"])
    with pytest.raises(ConfigError, match="dual.per_worker needs a server to hand out the shares; ps.mode=allreduce"):
        load_config(None, ["dual.batch_large=256", "dual.per_worker=true", "dual.time_a=1e-4", "dual.time_b=1e-3",
                           "ps.mode=allreduce"])
    assert load_config(None, ["dual.profile=auto", "dual.per_worker=true"]).dual.per_worker is True


def test_the_staleness_options_say_what_they_need():
    with pytest.raises(ConfigError, match="ps.outer_delayed delays the delta rule's momentum"):
        load_config(None, ["dual.batch_large=256", "ps.merge=delta", "ps.outer_delayed=true"])
    with pytest.raises(ConfigError, match="ps.staleness_decay is -1"):
        load_config(None, ["dual.batch_large=256", "ps.staleness_decay=-1"])
    with pytest.raises(ConfigError, match="ps.staleness_decay needs ps.mode=asp or ssp"):
        load_config(None, ["dual.batch_large=256", "ps.staleness_decay=0.5", "ps.mode=bsp"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="--set expects key.sub=value"):
        load_config(None, ["dual.batch_large=256", "train.epochs"])


def test_demo_config_is_valid():
    config = load_config("configs/demo.yaml")
    assert config.data.name == "fashion-mnist" and config.dual.workers == 4 and config.dual.small == 2


def test_every_shipped_config_loads_and_the_paper_recipes_say_what_the_papers_ran():
    root = Path(__file__).resolve().parents[2] / "configs"
    configs = {p.stem: load_config(p) for p in sorted(root.glob("*.yaml"))}
    assert {"demo", "demo-hybrid", "cifar100-paper", "imagenet-paper"} <= set(configs)
    cifar, imagenet = configs["cifar100-paper"], configs["imagenet-paper"]
    assert (cifar.schedule.preset, cifar.dual.workers, cifar.dual.small, cifar.dual.extra_time) == (
        "cifar-paper", 4, 3, 1.05)
    assert (imagenet.schedule.preset, imagenet.dual.small, imagenet.data.name, imagenet.model.stem) == (
        "imagenet-paper", 4, "folder", "imagenet")
    assert cifar.train.lr_scaling == imagenet.train.lr_scaling == "none"  # one LR for both batch sizes


def test_a_resume_refuses_a_change_its_checkpoint_cannot_continue_from(tmp_path):
    """The checkpoint holds SGD's momentum buffers (and the mode's own counters): AdamW, or another mode, would
    fail at the first step with a KeyError; the config says so before anything starts."""
    from hdbl_mpi.run_config import load_run_config

    (tmp_path / "config.yaml").write_text(dump_config(load_config(None, ["dual.batch_large=64"])))
    assert load_run_config(None, ["train.epochs=9"], str(tmp_path)).train.epochs == 9
    for change, before in (("train.optimizer=adamw", "train.optimizer=sgd"), ("ps.mode=allreduce", "ps.mode=asp")):
        with pytest.raises(ConfigError, match=f"--resume {tmp_path} with {change}: the run trained with {before} .* "
                                              f"start a new run from its weights: --set train.init_from="):
            load_run_config(None, [change, "dual.small=0"], str(tmp_path))
