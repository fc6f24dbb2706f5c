"""train.precision under mpirun: bf16 on the CPU in the parameter server and in allreduce (fp32 weights on the
wire and in the checkpoint), and amp refused at start-up where there is no CUDA device."""

from __future__ import annotations

import pytest
import torch

from hdbl_mpi.run import rundir
from tests.conftest import run_train


@pytest.mark.parametrize("np_, overrides", [
    (3, ["dual.workers=2", "ps.mode=asp"]),  # 1 server + 2 workers
    (2, ["dual.workers=2", "ps.mode=allreduce", "ps.backend=mpi4py"]),
])
def test_a_bf16_run_trains_and_keeps_fp32_weights(tmp_path, np_, overrides):
    run = run_train(np_, tmp_path / "run", [*overrides, "train.precision=bf16", "train.epochs=3"], timeout=150)
    assert run.returncode == 0, run.output[-3000:]
    s = run.summary()
    assert s["model"]["precision"] == "bf16"
    vector, _ = rundir.load_checkpoint(tmp_path / "run" / rundir.CHECKPOINT)
    assert vector.dtype == torch.float32 and bool(torch.isfinite(vector).all())  # what was pushed and merged
    rows = rundir.read_epochs(tmp_path / "run" / rundir.EPOCHS)
    assert rows[-1].train_loss < rows[0].train_loss, [r.train_loss for r in rows]  # it learns in bf16
    if "ps.mode=allreduce" in overrides:  # deterministic: the same run in fp32 ends elsewhere, so bf16 was used
        fp32 = run_train(np_, tmp_path / "fp32", [*overrides, "train.precision=fp32", "train.epochs=3"], timeout=150)
        assert fp32.returncode == 0, fp32.output[-3000:]
        other, _ = rundir.load_checkpoint(tmp_path / "fp32" / rundir.CHECKPOINT)
        assert not torch.equal(vector, other)
        again = run_train(np_, tmp_path / "again", [*overrides, "train.precision=bf16", "train.epochs=3"],
                          timeout=150)
        assert again.returncode == 0 and torch.equal(vector, rundir.load_checkpoint(
            tmp_path / "again" / rundir.CHECKPOINT)[0])  # and bf16 itself is repeatable


@pytest.mark.skipif(torch.cuda.is_available(), reason="amp is allowed where CUDA is")
def test_amp_without_cuda_is_refused_at_start_up_on_every_rank(tmp_path):
    run = run_train(3, tmp_path / "run", ["dual.workers=2", "train.precision=amp"], timeout=90)
    assert run.returncode == 2, run.output[-3000:]
    assert "train.precision=amp (float16 with a gradient scaler) needs a CUDA device" in run.output
    assert "use train.precision=bf16" in run.output and "Traceback" not in run.output
