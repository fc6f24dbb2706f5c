"""Any model in real jobs: a torchvision classifier in the parameter server and in allreduce, a user's factory
trained and evaluated, and a run started from saved weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from hdbl_mpi.run import rundir
from tests.conftest import run_train

IMAGES_32 = "data.synthetic={train_size: 512, test_size: 128, channels: 1, size: 32, classes: 4}"


def test_a_torchvision_model_trains_in_the_parameter_server_and_in_allreduce(tmp_path):
    common = [IMAGES_32, "model.name=torchvision:mobilenet_v3_small", "dual.workers=2", "train.epochs=1",
              "dual.batch_large=32"]
    ps = run_train(3, tmp_path / "ps", common, timeout=240)
    assert ps.returncode == 0, ps.output
    ar = run_train(2, tmp_path / "ar", [*common, "ps.mode=allreduce", "ps.backend=mpi4py"], timeout=240)
    assert ar.returncode == 0, ar.output
    for run in (ps, ar):
        s = run.summary()
        assert s["model"]["name"] == "torchvision:mobilenet_v3_small" and s["final_top1"] is not None
        assert s["model"]["parameters_and_buffers"] > 900_000  # MobileNetV3-small: about 0.93 M values


def test_a_user_factory_trains_one_commit_and_evaluates(tmp_path, monkeypatch):
    (tmp_path / "user_models.py").write_text(
        "import torch.nn as nn\n"
        "def convnet(num_classes, in_channels, width=8):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))\n")
    # Every rank imports it: the ranks of a local mpirun inherit its environment.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    run = run_train(2, tmp_path / "run", ["model.name=user_models:convnet", "model.options={width: 6}",
                                          "dual.workers=1", "train.epochs=1"])
    assert run.returncode == 0, run.output
    assert run.summary()["commits_total"] == 1
    assert "the model has no dropout layer: the schedule's dropout applies to the input of its classifier head (5)" \
        in run.output
    proc = subprocess.run([sys.executable, "-m", "hdbl_mpi.cli", "evaluate", str(run.run_dir), "--json",
                           "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 0.0 <= json.loads(proc.stdout)["top1"] <= 1.0


def test_a_run_starts_from_another_runs_weights(tmp_path):
    first = run_train(3, tmp_path / "first", ["dual.workers=2", "train.epochs=1"])
    assert first.returncode == 0, first.output
    second = run_train(3, tmp_path / "second", ["dual.workers=2", "train.epochs=1", "eval.every=0",
                                                f"train.init_from={first.run_dir}",
                                                "data.synthetic={train_size: 1024, test_size: 256, channels: 1, "
                                                "size: 16, classes: 3}", "train.init_skip=[fc]"])
    assert second.returncode == 0, second.output
    assert f"init_from {first.run_dir}: " in second.output and "2 skipped by train.init_skip" in second.output
    s = second.summary()
    assert s["commits_total"] == 2 and not s["restarts"]  # a new run, not a resume
    w_first, _ = rundir.load_checkpoint(first.run_dir / rundir.CHECKPOINT)
    assert w_first.numel() != torch.numel(rundir.load_checkpoint(second.run_dir / rundir.CHECKPOINT)[0])
