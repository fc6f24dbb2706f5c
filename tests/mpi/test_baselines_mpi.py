"""The data-parallel baselines under a real mpirun: allreduce (mpi4py and Horovod), LocalSGD, SlowMo, early
stopping, and the same run-directory outputs as the parameter-server modes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hdbl_mpi.baselines.allreduce import horovod_importable
from hdbl_mpi.run import rundir
from tests.conftest import run_train

PEERS = ["dual.workers=2", "train.epochs=2", "eval.every=1"]


def weights(run_dir) -> torch.Tensor:
    vector, _ = rundir.load_checkpoint(run_dir / rundir.CHECKPOINT)
    return vector


def test_allreduce_mode_writes_the_same_outputs_as_the_ps_modes(tmp_path):
    run = run_train(2, tmp_path / "ar", ["ps.mode=allreduce", "ps.backend=mpi4py", "ps.bucket_mb=0.01", *PEERS])
    assert run.returncode == 0, run.output
    s = run.summary()
    assert (s["mode"], s["backend"], s["world_size"], s["epochs_completed"]) == ("allreduce", "mpi4py", 2, 2)
    # 1024 samples / 2 workers / B 64 = 8 steps per epoch, one gradient allreduce each.
    assert s["syncs"] == 16 and s["plan"]["small"] == 0
    for key in ("final_top1", "best_top1", "train_time_s", "eval_time_s", "wall_time_s"):
        assert s[key] is not None
    assert s["final_top1"] > 0.4  # 4 classes: chance is 0.25
    for name in (rundir.CONFIG, rundir.PLAN, rundir.EPOCHS, rundir.CHECKPOINT, rundir.COMMITS, rundir.LOG):
        assert (run.run_dir / name).is_file(), name
    epochs = rundir.read_epochs(run.run_dir / rundir.EPOCHS)
    assert [r.epoch for r in epochs] == [1, 2] and all(r.test_acc is not None for r in epochs)
    assert sorted((r["worker"], r["epoch"]) for r in run.commits()) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert "Epoch[2] Train-loss=" in run.output and "no server" in run.output
    report = subprocess.run([sys.executable, "-m", "hdbl_mpi.cli", "report", str(run.run_dir)], capture_output=True,
                            text=True, timeout=60)
    assert report.returncode == 0 and "allreduce" in report.stdout
    # `hdbl evaluate` tests the final checkpoint in one process and gets the run's own final top-1.
    evaluated = subprocess.run([sys.executable, "-m", "hdbl_mpi.cli", "evaluate", str(run.run_dir), "--json",
                                "--device", "cpu"],
                               capture_output=True, text=True, timeout=120)
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout)
    assert (result["epoch"], result["mode"]) == (2, "allreduce")
    assert result["top1"] == pytest.approx(s["final_top1"])
    wrong = subprocess.run([sys.executable, "-m", "hdbl_mpi.cli", "evaluate", str(run.run_dir), "--set",
                            "model.width=16"], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "use the run's own config to evaluate it" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_a_resumed_allreduce_run_keeps_one_commit_record_per_rank_and_epoch(tmp_path):
    run_dir = tmp_path / "ar"
    common = ["ps.mode=allreduce", "ps.backend=mpi4py", "dual.workers=2", "train.epochs=4", "run.checkpoint_every=2"]
    crashed = run_train(2, run_dir, [*common, "debug.raise_on_rank=1", "debug.raise_at_commit=4"])  # epoch 4
    assert crashed.returncode != 0 and "injected failure (debug.raise_on_rank=1) at epoch 4" in crashed.output
    assert rundir.load_checkpoint(run_dir / rundir.CHECKPOINT)[1]["epoch"] == 2  # epoch 3 is trained again
    resumed = run_train(2, run_dir, ["debug.raise_on_rank=-1"], resume=True)
    assert resumed.returncode == 0, resumed.output
    assert sorted((r["worker"], r["epoch"]) for r in resumed.commits()) == \
        [(w, e) for w in (0, 1) for e in (1, 2, 3, 4)]


def test_localsgd_with_h1_matches_synchronous_sgd(tmp_path):
    """Averaging the models after every step equals averaging the gradients: an SGD step with weight decay is
    linear in the gradient, and so are BatchNorm's running statistics. The two paths round differently, and
    early training amplifies rounding fast (the same allreduce run with 1 and 2 threads per rank differs by
    2.7e-4 after 16 steps), so the exact comparison is one epoch (8 steps) of plain SGD: 4e-7 apart here, where
    momentum 0.9 gave 1.3e-4."""
    plain_sgd = ["train.momentum=0", "dual.workers=2", "train.epochs=1"]
    sync = run_train(2, tmp_path / "sync", ["ps.mode=allreduce", "ps.backend=mpi4py", *plain_sgd])
    local = run_train(2, tmp_path / "local", ["ps.mode=localsgd", "local.h=1", "local.h_min=1", *plain_sgd])
    assert sync.returncode == 0 and local.returncode == 0, sync.output + local.output
    a, b = weights(sync.run_dir), weights(local.run_dir)
    assert torch.allclose(a, b, rtol=0, atol=1e-5), (a - b).abs().max()
    assert local.summary()["syncs"] == sync.summary()["syncs"] == 8
    # ... and H = 4 does not: the models drift apart between averagings.
    drift = run_train(2, tmp_path / "h4", ["ps.mode=localsgd", "local.h=4", *plain_sgd])
    assert drift.returncode == 0, drift.output
    assert drift.summary()["syncs"] == 2 and (a - weights(drift.run_dir)).abs().max() > 1e-3


def test_slowmo_with_beta0_alpha1_matches_localsgd(tmp_path):
    base = ["ps.mode=localsgd", "local.h=2", "train.momentum=0", "dual.workers=2", "train.epochs=1"]
    plain = run_train(2, tmp_path / "plain", base)
    slow = run_train(2, tmp_path / "slow", [*base, "local.slowmo=true", "local.slowmo_beta=0", "local.slowmo_alpha=1"])
    moved = run_train(2, tmp_path / "moved", [*base, "local.slowmo=true", "local.slowmo_beta=0.5"])
    for run in (plain, slow, moved):
        assert run.returncode == 0, run.output
    # SlowMo's (x_prev - x_avg) / lr * lr rounds differently from the plain average: 1.4e-5 apart after the 4
    # rounds here, against 0.30 with beta 0.5.
    assert torch.allclose(weights(plain.run_dir), weights(slow.run_dir), rtol=0, atol=1e-4)
    assert (weights(plain.run_dir) - weights(moved.run_dir)).abs().max() > 1e-2
    assert slow.summary()["local_steps"]["slowmo"] is True


def test_dynamic_local_steps_are_recorded(tmp_path):
    run = run_train(2, tmp_path / "dyn", ["ps.mode=localsgd", "local.strategy=pow2_increase", "local.h_min=1",
                                          "local.h_max=4", "local.options={every: 1}", *PEERS])
    assert run.returncode == 0, run.output
    local = run.summary()["local_steps"]
    # every=1 epoch: H = 1 in epoch 0, 2 from epoch 1 on (4 would come at epoch 2, after this 2-epoch run).
    assert local["strategy"] == "pow2_increase" and [h for _, h in local["h_changes"]] == [1, 2]
    assert run.summary()["syncs"] == 8 + 4  # 8 steps at H=1, then 8 steps at H=2


def test_early_stopping_ends_the_run_and_is_reported(tmp_path):
    # min_delta 1.0: no evaluation can improve on the first, so patience 1 stops after the second epoch.
    run = run_train(2, tmp_path / "es", ["ps.mode=allreduce", "dual.workers=2", "train.epochs=6",
                                         "train.early_stop_patience=1", "train.early_stop_min_delta=1.0"])
    assert run.returncode == 0, run.output
    s = run.summary()
    assert (s["early_stopped_at"], s["epochs_completed"]) == (2, 2)
    assert "early stop after epoch 2" in run.output and s["final_top1"] is not None


def test_early_stopping_in_the_parameter_server(tmp_path):
    """Evaluations finish in the server's background thread, so the stop comes at the end of the epoch in
    progress when the verdict arrives: after epoch 2 at the earliest, always at an epoch boundary."""
    run = run_train(3, tmp_path / "ps-es", ["dual.workers=2", "train.epochs=8", "train.early_stop_patience=1",
                                            "train.early_stop_min_delta=1.0"])
    assert run.returncode == 0, run.output
    s = run.summary()
    assert s["early_stopped_at"] is not None and 2 <= s["early_stopped_at"] < 8
    assert s["epochs_completed"] == s["early_stopped_at"] and s["commits_total"] == 2 * s["early_stopped_at"]
    assert s["final_top1"] is not None and "early stop: no better test top-1" in run.output
    resumed = run_train(3, tmp_path / "ps-es", [], resume=True)
    assert resumed.returncode == 2 and "stopped early after epoch" in resumed.output


def test_kvstore_names_and_optimizers_in_the_ps_modes(tmp_path):
    """dist_sync is the BSP parameter server; LAMB, warm-up and cosine run through the PS workers too."""
    run = run_train(3, tmp_path / "ps", ["ps.mode=dist_sync", "dual.workers=2", "train.epochs=3",
                                          "train.optimizer=lamb", "train.lr=0.01", "train.lr_schedule=cosine",
                                          "train.warmup_epochs=1", "train.min_lr=0.001"])
    assert run.returncode == 0, run.output
    assert run.summary()["mode"] == "bsp"
    lrs = [r.lr for r in rundir.read_epochs(run.run_dir / rundir.EPOCHS)]
    assert lrs[0] == pytest.approx(0.0) and lrs[1] == pytest.approx(0.01)  # warm-up from 0, then cosine
    assert lrs[2] == pytest.approx(0.001 + 0.009 * 0.5)  # half-way through the cosine: (1 + cos(pi/2)) / 2


@pytest.mark.skipif(not horovod_importable(), reason="Horovod is not installed (launchers/install_horovod.sh)")
def test_horovod_and_mpi4py_allreduce_give_the_same_weights(tmp_path):
    common = ["ps.mode=allreduce", *PEERS]
    mine = run_train(2, tmp_path / "mpi4py", [*common, "ps.backend=mpi4py"])
    hvd = run_train(2, tmp_path / "horovod", [*common, "ps.backend=horovod"])
    assert mine.returncode == 0 and hvd.returncode == 0, mine.output + hvd.output
    assert hvd.summary()["backend"] == "horovod" and hvd.summary()["horovod"]["mpi"] is True
    assert torch.allclose(weights(mine.run_dir), weights(hvd.run_dir), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not horovod_importable() or not shutil.which("horovodrun", path=str(Path(sys.executable).parent)),
                    reason="Horovod / horovodrun is not installed")
def test_horovodrun_launches_the_allreduce_mode(tmp_path):
    from tests.conftest import FAST

    run_dir = tmp_path / "hvdrun"
    args = [sys.executable, "-m", "hdbl_mpi.cli", "launch", "--launcher", "horovodrun", "train", "--run-dir",
            str(run_dir)]
    for item in [*FAST, "ps.mode=allreduce", "ps.backend=horovod", *PEERS]:
        args += ["--set", item]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["backend"] == "horovod" and summary["world_size"] == 2
