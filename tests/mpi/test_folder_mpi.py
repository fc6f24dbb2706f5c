"""Training on an image folder under mpirun, through DALI's CPU backend and through the torchvision fallback."""

from __future__ import annotations

import pytest

from tests.conftest import run_train


def _make_folder(root):
    from PIL import Image

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    for split, count in (("train", 12), ("val", 4)):
        for c, colour in enumerate(colours):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                shade = tuple(max(0, v - 4 * i) for v in colour)
                Image.new("RGB", (40 + i, 36), shade).save(folder / f"{i}.jpg", quality=90)
    (root / "train" / "class0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


FOLDER = ["data.name=folder", "data.resolution=24", "data.threads=1", "model.name=resnet_small", "model.width=4",
          "dual.workers=2", "train.epochs=2", "dual.batch_large=8", "eval.batch_size=16", "train.lr=0.05",
          "train.threads=1", "ps.timeout_s=120", "train.device=cpu"]


@pytest.mark.parametrize("decoder", ["torchvision", "dali"])
def test_folder_training(tmp_path, decoder):
    if decoder == "dali":
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install .[dali])")
    root = _make_folder(tmp_path / "images")
    run = run_train(3, tmp_path / "run", [f"data.dir={root}", f"data.decoder={decoder}", *FOLDER], fast=False,
                    timeout=240)
    assert run.returncode == 0, run.output
    summary = run.summary()
    expected = "dali-cpu" if decoder == "dali" else "torchvision"
    assert summary["decoding"]["1"] == summary["decoding"]["2"] == expected
    assert summary["dataset"] == {"name": "folder", "train_size": 36, "test_size": 12, "source": str(root.resolve()),
                                  "classes": 3}
    assert any("broken.jpg" in f for f in summary["skipped_files"])  # reported and skipped, not fatal
    assert summary["commits_total"] == 4 and summary["final_top1"] is not None
    assert {r["resolution"] for r in run.commits()} == {24}
