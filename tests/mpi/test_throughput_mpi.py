"""train.channels_last and train.compile under mpirun: the parameter server and allreduce train with them, the
wire and the checkpoint keep the plain order (a channels-last run ends where the plain one does), and
summary.json says what took effect."""

from __future__ import annotations

from hdbl_mpi.run import rundir
from tests.conftest import run_train

ALLREDUCE = ["dual.workers=2", "ps.mode=allreduce", "ps.backend=mpi4py", "train.epochs=2"]


def test_a_channels_last_allreduce_run_ends_where_the_plain_one_does(tmp_path):
    cl = run_train(2, tmp_path / "cl", [*ALLREDUCE, "train.channels_last=true"], timeout=150)
    assert cl.returncode == 0, cl.output[-3000:]
    assert cl.summary()["model"]["throughput"] == {"cudnn_benchmark": False, "channels_last": True,
                                                   "compile": False}
    plain = run_train(2, tmp_path / "plain", ALLREDUCE, timeout=150)
    assert plain.returncode == 0, plain.output[-3000:]
    a, _ = rundir.load_checkpoint(tmp_path / "cl" / rundir.CHECKPOINT)
    b, _ = rundir.load_checkpoint(tmp_path / "plain" / rundir.CHECKPOINT)
    # The same order and arithmetic; only the kernels' rounding differs and grows over the steps. A wrong order
    # would leave nothing of the resemblance.
    assert float((a - b).norm() / b.norm()) < 0.01, float((a - b).norm() / b.norm())


def test_a_compiled_channels_last_parameter_server_run_trains(tmp_path):
    run = run_train(3, tmp_path / "run", ["dual.workers=2", "ps.mode=asp", "train.epochs=2",
                                          "train.channels_last=true", "train.compile=true"], timeout=280)
    assert run.returncode == 0, run.output[-3000:]
    s = run.summary()
    assert s["model"]["throughput"] == {"cudnn_benchmark": False, "channels_last": True, "compile": True}
    rows = rundir.read_epochs(tmp_path / "run" / rundir.EPOCHS)
    assert rows[-1].test_acc > 0.3, [r.test_acc for r in rows]  # 10 classes: chance is 0.1
