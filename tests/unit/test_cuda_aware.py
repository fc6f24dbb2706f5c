"""comm/cuda_aware.py asks the loaded MPI library whether it takes device buffers."""

from __future__ import annotations

from pathlib import Path

import pytest
from mpi4py import MPI  # loads libmpi, which the query looks for

from hdbl_mpi.comm import cuda_aware
from hdbl_mpi.comm.cuda_aware import CudaAwareness, cuda_aware_mpi


def test_the_loaded_open_mpi_answers_its_own_query(monkeypatch):
    if not MPI.Get_library_version().startswith("Open MPI"):
        pytest.skip("the query asserted here is Open MPI's")
    monkeypatch.delenv(cuda_aware.OVERRIDE_ENV, raising=False)
    cuda_aware_mpi.cache_clear()
    answer = cuda_aware_mpi()
    assert answer.how.startswith("MPIX_Query_cuda_support() in "), answer
    assert answer.how.split(" in ")[1] in cuda_aware._loaded_mpi_libraries()
    # A library built without CUDA support (PyPI's Open MPI wheel) must say no; one built with it may say yes
    # (at run time, where a GPU is present), so only the first is a fact this test can hold it to.
    if not _built_with_cuda():
        assert answer.supported is False, answer


def _built_with_cuda() -> bool:
    """What Open MPI's own ompi_info says of the library (the documented check), beside the mpirun in use."""
    import subprocess

    from hdbl_mpi.launch.commands import find_mpirun

    info = Path(find_mpirun()).with_name("ompi_info")
    out = subprocess.run([str(info) if info.exists() else "ompi_info", "--parsable", "--all"], capture_output=True,
                         text=True, timeout=60).stdout
    return "built_with_cuda_support:value:true" in out


def test_the_environment_can_turn_the_direct_path_off(monkeypatch):
    monkeypatch.setenv(cuda_aware.OVERRIDE_ENV, "0")
    cuda_aware_mpi.cache_clear()
    try:
        assert cuda_aware_mpi() == CudaAwareness(False, "HDBL_CUDA_AWARE_MPI=0")
    finally:
        cuda_aware_mpi.cache_clear()


def test_without_a_query_the_answer_says_so(monkeypatch, tmp_path):
    monkeypatch.delenv(cuda_aware.OVERRIDE_ENV, raising=False)
    monkeypatch.setattr(cuda_aware, "_loaded_mpi_libraries", lambda: [str(tmp_path / "libmpi.so.0")])
    cuda_aware_mpi.cache_clear()
    try:
        answer = cuda_aware_mpi()
    finally:
        cuda_aware_mpi.cache_clear()
    assert not answer.supported and "offers no CUDA-support query" in answer.how


@pytest.mark.parametrize("aware, overlap, device_memory", [
    (True, True, False),  # the default on a CUDA-aware MPI: Iallreduce never gets device memory (it did before)
    (True, False, True),  # blocking reductions after backward may use device memory directly
    (False, True, False),
    (False, False, False),
])
def test_gpu_gradients_reach_mpi_only_as_the_library_documents(aware, overlap, device_memory):
    path = cuda_aware.gpu_reduction_path(CudaAwareness(aware, "mocked query"), overlap)
    assert (path.device_memory, path.overlapped) == (device_memory, overlap)
    if overlap:
        assert "non-blocking reductions overlapped with backward" in path.why and "pinned host memory" in path.why


def test_doctor_says_which_path_the_gradients_take(monkeypatch):
    from hdbl_mpi.launch import doctor

    monkeypatch.setattr(cuda_aware, "cuda_aware_mpi", lambda: CudaAwareness(True, "mocked query"))
    checks = {c.name: c for c in doctor.check_mpi()}
    text = checks["allreduce on gpus"].detail
    assert text.startswith("mpi4py backend: pinned host memory, non-blocking reductions overlapped with backward "
                           "(MPI documents device buffers for blocking collectives only); without overlap: device "
                           "memory, blocking reductions after backward (CUDA-aware MPI)"), text
    assert checks["cuda-aware mpi"].detail == "yes (mocked query)"
