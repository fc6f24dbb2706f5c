"""comm/cuda_aware.py asks the loaded MPI library whether it takes device buffers."""

from __future__ import annotations

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
    # The PyPI Open MPI wheel is built without CUDA: it is asked, and says no.
    assert answer.supported is False and answer.how.startswith("MPIX_Query_cuda_support() in "), answer
    assert answer.how.split(" in ")[1] in cuda_aware._loaded_mpi_libraries()


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
