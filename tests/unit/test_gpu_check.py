"""bench/gpu_check.py's choices that need no run: what each --data/--decoder puts in the runs' config, and the
refusal to decode with a DALI that is not installed (a GPU machine without DALI is told to pass --decoder)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(gpu_check, monkeypatch, tmp_path, *argv: str):
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--out", str(tmp_path), "--device", "cpu", *argv])
    return gpu_check.parse()


def test_synthetic_data_holds_the_images_in_memory(gpu_check, monkeypatch, tmp_path):
    args = _args(gpu_check, monkeypatch, tmp_path, "--data", "synthetic", "--images", "5000")
    data = json.loads(gpu_check.write_config(args, "hybrid").read_text())["data"]
    assert data == {"name": "synthetic", "synthetic": {"train_size": 5000, "test_size": 500, "channels": 3,
                                                       "size": 32, "classes": 10}}


def test_the_folder_is_decoded_by_the_decoder_asked_for(gpu_check, monkeypatch, tmp_path):
    args = _args(gpu_check, monkeypatch, tmp_path, "--decoder", "torchvision")
    config = json.loads(gpu_check.write_config(args, "allreduce").read_text())
    assert config["data"]["name"] == "folder" and config["data"]["decoder"] == "torchvision"
    assert config["ps"] == {"mode": "allreduce", "backend": "mpi4py"}


def test_dali_asked_for_but_missing_is_refused_with_the_way_out(gpu_check, monkeypatch, tmp_path):
    import hdbl_mpi.data.dali as dali

    monkeypatch.setattr(dali, "dali_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        _args(gpu_check, monkeypatch, tmp_path)
    assert "NVIDIA DALI is not installed here" in str(stop.value) and "--decoder torchvision" in str(stop.value)
    assert _args(gpu_check, monkeypatch, tmp_path, "--data", "synthetic").data == "synthetic"
