"""bench/server.py's projection: commits demanded by n workers against what k servers' links carry."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "server.py"
_SPEC = importlib.util.spec_from_file_location("bench_server", _PATH)
server = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_server"] = server
_SPEC.loader.exec_module(server)


def test_projection_utilisation_follows_the_formula():
    rates = {"cifar100": (50_000, 1000.0)}
    rows = [line.split(" | ") for line in server.projection(0.9, rates)[2:]]
    row = next(r for r in rows if r[3] == "25 Gb/s" and r[4] == "64")
    demand = 64 * 64 * 1000.0 / 50_000  # n^2 r / D commits/s
    capacity = 0.9 * 25e9 / 8 / (4 * server.RESNET18["cifar100"])  # commits/s one 25 Gb/s link carries each way
    assert float(row[5]) == pytest.approx(demand, abs=0.05)
    assert float(row[8].strip("*")) == pytest.approx(demand / capacity, abs=0.005)
    assert float(row[9].strip("*")) == pytest.approx(demand / capacity / 2, abs=0.005)
    assert row[8].startswith("**")  # above 0.5: flagged


def test_paper_rates_come_from_the_published_runs():
    dataset, rate = server.PAPER_RATES["cifar100"]
    assert dataset == 50_000 and rate == pytest.approx(50_000 * 140 / 1541 / 4)
