"""`hdbl doctor`: per-host reports, mismatches between hosts, blocking checks, and the command itself."""

from __future__ import annotations

import json
import subprocess
import sys

from hdbl_mpi.launch.doctor import MISSING, OK, WARN, Check, check_data, combine, format_report


def report(host: str, mpi: str = "Open MPI v5.0.11", torch_status: str = OK) -> dict:
    checks = [Check("python", OK, "3.11", fact="3.11.7"), Check("mpi", OK, mpi, fact=mpi),
              Check("torch", torch_status, "2.14.1", "pip install -e .", fact="2.14.1"),
              Check("horovod", WARN, "not installed", "launchers/install_horovod.sh")]
    return {"host": host, "checks": [c.__dict__ for c in checks]}


def test_one_block_per_host_and_the_ranks_on_it():
    result = combine([report("n1"), report("n1"), report("n2")])
    assert {h: r["ranks"] for h, r in result["hosts"].items()} == {"n1": [0, 1], "n2": [2]}
    assert result["ready"] and result["mismatches"] == []
    text = format_report(result)
    assert "== n1 (ranks 0, 1)" in text and "== n2 (rank 2)" in text
    assert "[warn] horovod" in text and "fix: launchers/install_horovod.sh" in text
    assert text.endswith("ready: yes")


def test_a_different_mpi_on_one_host_is_flagged():
    result = combine([report("n1"), report("n2", mpi="MPICH 4.2.0")])
    assert not result["ready"]
    (mismatch,) = result["mismatches"]
    assert mismatch["name"] == "mpi" and mismatch["by_host"] == {"n1": "Open MPI v5.0.11", "n2": "MPICH 4.2.0"}
    assert "mpi differs between hosts: n1=Open MPI v5.0.11, n2=MPICH 4.2.0" in format_report(result)


def test_missing_torch_blocks_but_missing_horovod_does_not():
    result = combine([report("n1", torch_status=MISSING)])
    assert not result["ready"] and result["blocking"] == ["n1: torch"]
    assert format_report(result).endswith("ready: NO (n1: torch)")


def test_data_a_config_needs_is_blocking(tmp_path):
    (optional,) = check_data(["cifar10"], str(tmp_path), required=False)
    (needed,) = check_data(["cifar10"], str(tmp_path), required=True)
    assert (optional.status, needed.status) == (WARN, MISSING)
    assert "cifar10 data not found" in needed.fix and str(tmp_path) in needed.fix
    assert not combine([{"host": "n1", "checks": [needed.__dict__]}])["ready"]


def test_doctor_command_prints_json_for_scripts():
    proc = subprocess.run([sys.executable, "-m", "hdbl_mpi.cli", "doctor", "--json", "--data", "synthetic"],
                          capture_output=True, text=True, timeout=120)
    result = json.loads(proc.stdout)
    (host,) = result["hosts"].values()
    names = [c["name"] for c in host["checks"]]
    for name in ("python", "memory", "mpi", "mpi4py", "mpirun", "ulfm", "torch", "gpus", "dali", "horovod",
                 "data:synthetic"):
        assert name in names
    assert proc.returncode == (0 if result["ready"] else 1)
    statuses = {c["name"]: c["status"] for c in host["checks"]}
    assert statuses["python"] == statuses["torch"] == statuses["mpi"] == OK  # this test's own interpreter runs


def test_the_compiler_train_compile_needs_is_reported(monkeypatch):
    import shutil

    from hdbl_mpi.launch import doctor

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    missing = doctor.check_compiler()
    assert (missing.status, missing.fix) == ("warn", "apt-get install g++ (or set CXX), needed only for train.compile")
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/bin/{name}")
    assert doctor.check_compiler().detail == "/opt/bin/g++ (train.compile)"


def test_a_horovod_without_gpu_operations_on_a_gpu_host_is_a_warning_with_the_rebuild(monkeypatch):
    import pytest

    from hdbl_mpi.baselines.allreduce import horovod_build
    from hdbl_mpi.launch import doctor

    build = horovod_build()
    if build is None or build.gpu:
        pytest.skip("needs the CPU-only Horovod that launchers/install_horovod.sh builds without a CUDA toolkit")
    assert doctor.check_horovod().status == OK and "GPU operations: none (built without CUDA)" in \
        doctor.check_horovod().detail
    monkeypatch.setattr(doctor, "_cuda_devices", lambda: 2)
    check = doctor.check_horovod()
    assert check.status == WARN and "ps.backend auto uses DDP or mpi4py" in check.fix
    assert "HDBL_HOROVOD_GPU=nccl HDBL_HOROVOD_REBUILD=1 launchers/install_horovod.sh" in check.fix
