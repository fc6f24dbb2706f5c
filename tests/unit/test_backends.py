"""ps.backend for the allreduce baseline, chosen from every rank's facts (rules/backends.py): what Horovod was
built with and whether ranks share a GPU decide it before the first GPU tensor would."""

from __future__ import annotations

import pytest

from hdbl_mpi.errors import ConfigError
from hdbl_mpi.rules.backends import BackendChoice, BackendFacts, HorovodBuild, choose_backend

CPU_HOROVOD = HorovodBuild("0.28.1", gpu=False, nccl=False)  # what launchers/install_horovod.sh builds without nvcc
NCCL_HOROVOD = HorovodBuild("0.28.1", gpu=True, nccl=True)


def ranks(n: int = 2, cuda: bool = True, sharing: int = 1, horovod: HorovodBuild | None = CPU_HOROVOD,
          nccl: bool = True) -> list[BackendFacts]:
    return [BackendFacts(cuda, sharing, horovod, nccl and cuda) for _ in range(n)]


def test_on_the_cpu_auto_is_what_it_was():
    assert choose_backend("allreduce", "auto", ranks(cuda=False)).name == "horovod"
    assert choose_backend("allreduce", "auto", ranks(cuda=False, horovod=None)) == BackendChoice(
        "mpi4py", None, "ps.backend auto: Horovod does not import here")
    assert choose_backend("localsgd", "auto", ranks()).name == "none"


def test_on_gpus_auto_passes_over_a_horovod_built_without_gpu_operations():
    """Before, auto picked Horovod whenever it imported, and a CPU-only build failed at the first GPU tensor."""
    choice = choose_backend("allreduce", "auto", ranks())
    assert choice == BackendChoice("ddp", "nccl", "ps.backend auto: DDP over NCCL (Horovod 0.28.1 was built without "
                                                  "GPU operations)")
    assert choose_backend("allreduce", "auto", ranks(horovod=NCCL_HOROVOD)).name == "horovod"
    assert "Horovod does not import here" in choose_backend("allreduce", "auto", ranks(horovod=None)).reason


def test_shared_gpus_never_get_nccl():
    choice = choose_backend("allreduce", "auto", ranks(n=4, sharing=4, horovod=NCCL_HOROVOD))
    assert choice.name == "mpi4py" and "up to 4 ranks share a GPU, and NCCL needs one GPU per rank" in choice.reason
    ddp = choose_backend("allreduce", "ddp", ranks(n=4, sharing=2))
    assert (ddp.name, ddp.process_group) == ("ddp", "gloo") and "share a GPU" in ddp.reason
    assert choose_backend("allreduce", "ddp", ranks()).process_group == "nccl"
    assert choose_backend("allreduce", "ddp", ranks(cuda=False)).process_group == "gloo"
    mixed = [BackendFacts(True, 1, None, True), BackendFacts(False, 1, None, False)]
    assert choose_backend("allreduce", "ddp", mixed).process_group == "gloo"


def test_asking_for_horovod_where_it_cannot_work_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"built without GPU operations \(hvd.cuda_built\(\) is False\), so its "
                                          r"first GPU tensor would fail. Rebuild it with them \(HDBL_HOROVOD_GPU=nccl"):
        choose_backend("allreduce", "horovod", ranks())
    with pytest.raises(ConfigError, match=r"up to 2 ranks share a GPU, and NCCL needs one GPU per rank. Start at most "
                                          r"one rank per GPU"):
        choose_backend("allreduce", "horovod", ranks(sharing=2, horovod=NCCL_HOROVOD))
    with pytest.raises(ConfigError, match="horovod.torch does not import here"):
        choose_backend("allreduce", "horovod", ranks(cuda=False, horovod=None))
    assert choose_backend("allreduce", "horovod", ranks(cuda=False)).name == "horovod"
    assert choose_backend("allreduce", "horovod", ranks(horovod=NCCL_HOROVOD)).name == "horovod"


def test_the_rule_loads_neither_torch_nor_mpi():
    import subprocess
    import sys

    code = ("import sys, hdbl_mpi.rules.backends; "
            "assert 'torch' not in sys.modules and 'mpi4py' not in sys.modules, sorted(sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
