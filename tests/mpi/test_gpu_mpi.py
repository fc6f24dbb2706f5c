"""Real jobs on CUDA (skipped without a GPU): the parameter server with amp and DALI's GPU decoding, the mpi4py
allreduce's staged gradients, DDP's process group and Horovod's build checked before the first GPU tensor, and
B_max planned for a GPU's share. Every other MPI test pins the CPU; these ask for CUDA themselves."""

from __future__ import annotations

import json
import subprocess

import pytest

from hdbl_mpi.baselines.allreduce import horovod_build
from hdbl_mpi.run import rundir
from tests.conftest import run_train

pytestmark = pytest.mark.gpu

GPU = ["train.device=cuda", "train.threads=1"]
ALLREDUCE = [*GPU, "dual.workers=2", "dual.small=0", "ps.mode=allreduce", "train.epochs=2"]


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _sharing(slot: int, takers: int) -> int:
    """How many of `takers` GPU takers on this host share the GPU of the one in turn `slot` (placement deals the
    GPUs out in turn)."""
    return sum(1 for other in range(takers) if other % _gpus() == slot % _gpus())


def test_the_hybrid_trains_on_gpus_in_amp_with_cudnn_autotuning(tmp_path):
    run = run_train(3, tmp_path / "run", [*GPU, "dual.workers=2", "dual.small=1", "dual.time_a=1e-5",
                                          "dual.time_b=2e-3", "train.epochs=2", "train.precision=amp",
                                          "train.channels_last=true", "ps.device=cuda"], timeout=240)
    assert run.returncode == 0, run.output[-4000:]
    s = run.summary()
    assert all(":cuda" in d["device"] for d in s["devices"].values()), s["devices"]
    assert [s["devices"][str(r)]["gpu_sharing"] for r in range(3)] == [_sharing(r, 3) for r in range(3)]
    assert s["model"]["throughput"] == {"cudnn_benchmark": True, "channels_last": True, "compile": False}
    rows = rundir.read_epochs(tmp_path / "run" / rundir.EPOCHS)
    assert rows[-1].test_acc > 0.3, [r.test_acc for r in rows]  # 4 classes: chance is 0.25


def test_the_mpi4py_allreduce_stages_gpu_gradients_through_pinned_memory(tmp_path):
    run = run_train(2, tmp_path / "run", [*ALLREDUCE, "ps.backend=mpi4py"], timeout=180)
    assert run.returncode == 0, run.output[-4000:]
    s = run.summary()
    assert s["backend"] == "mpi4py"
    assert s["gradient_path"]["overlapped"] is True and s["gradient_path"]["device_memory"] is False
    rows = rundir.read_epochs(tmp_path / "run" / rundir.EPOCHS)
    assert rows[-1].train_loss < rows[0].train_loss


def test_ddp_uses_nccl_on_gpus_of_their_own_and_gloo_on_a_shared_one(tmp_path):
    run = run_train(2, tmp_path / "run", [*ALLREDUCE, "ps.backend=ddp"], timeout=180)
    assert run.returncode == 0, run.output[-4000:]
    expected = "nccl" if _gpus() >= 2 else "gloo"
    assert run.summary()["ddp"]["process_group"] == expected, run.summary()["backend_reason"]


def test_auto_never_hands_gpu_tensors_to_a_horovod_built_without_them(tmp_path):
    build = horovod_build()
    if build is None or build.gpu:
        pytest.skip("needs a Horovod built without GPU operations")
    auto = run_train(2, tmp_path / "auto", [*ALLREDUCE, "ps.backend=auto"], timeout=180)
    assert auto.returncode == 0, auto.output[-4000:]
    assert auto.summary()["backend"] in ("ddp", "mpi4py") and "built without GPU operations" in \
        auto.summary()["backend_reason"]
    asked = run_train(2, tmp_path / "asked", [*ALLREDUCE, "ps.backend=horovod"], timeout=120)
    assert asked.returncode == 2 and "was built without GPU operations (hvd.cuda_built() is False)" in asked.output


def test_dali_decodes_on_the_gpu_for_gpu_workers(tmp_path):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install .[dali])")
    from tests.mpi.test_folder_mpi import FOLDER, _make_folder

    root = _make_folder(tmp_path / "images")
    run = run_train(3, tmp_path / "run", [f"data.dir={root}", "data.decoder=dali", *FOLDER, "train.device=cuda"],
                    fast=False, timeout=240)
    assert run.returncode == 0, run.output[-4000:]
    assert run.summary()["decoding"]["1"] == run.summary()["decoding"]["2"] == "dali-gpu"


def test_ranks_sharing_a_gpu_plan_b_max_for_their_share(tmp_path):
    from hdbl_mpi.launch.commands import hdbl_program, local_mpirun

    out = tmp_path / "profile.json"
    argv, env = local_mpirun(2, hdbl_program() + [
        "profile", "--model", "resnet_small", "--resolutions", "16", "--classes", "10", "--channels", "1",
        "--device", "cuda", "--max-batch", "64", "--steps", "3", "--warmup", "1", "--output", str(out)])
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    (entry,) = json.loads(out.read_text())["entries"].values()
    import torch

    total = torch.cuda.mem_get_info(0)[1]
    assert entry["memory"]["capacity"] == min(total // _sharing(r, 2) for r in range(2))
