"""bench/exchange.py prints its efficiency figures with labels that say which time is divided by which (docs
quote them), and the figures are those ratios of its own measurements."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hdbl_mpi.launch.commands import local_mpirun

ROOT = Path(__file__).resolve().parents[2]


def test_the_exchange_benchmark_labels_its_efficiency_unambiguously(tmp_path):
    out = tmp_path / "figures.json"
    argv, env = local_mpirun(2, [sys.executable, str(ROOT / "bench" / "exchange.py"), "--values", "200000",
                                 "--commits", "3", "--rounds", "1", "--json", str(out)])
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    f = json.loads(out.read_text())
    raw, merge, commit = f["raw_round_trip_ms"], f["merge_ms"], f["commit_round_trip_ms"]
    assert f["efficiency_vs_raw"] == pytest.approx(raw / commit)
    assert f["efficiency_vs_raw_plus_merge"] == pytest.approx((raw + merge) / commit)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("efficiency"))
    assert line.startswith(f"efficiency = raw time / commit time: {f['efficiency_vs_raw']:.3f}   efficiency = (raw "
                           f"+ merge time) / commit time: {f['efficiency_vs_raw_plus_merge']:.3f}"), line
    assert "commit / raw" not in proc.stdout
