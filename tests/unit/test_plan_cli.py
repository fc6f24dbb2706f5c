"""`hdbl plan`: the stable command line for scripts, against the method §4 formula."""

import json
import subprocess
import sys

import pytest

from hdbl_mpi.cli import main
from hdbl_mpi.profiling.entry import ProfileEntry
from hdbl_mpi.profiling.store import save_profile
from hdbl_mpi.rules.plan import round_half_up


def spec(D, n, n_s, B_L, a, b, t):
    """method §4 written out independently of hdbl_mpi.rules.plan."""
    n_l = n - n_s
    T0 = (a + b / B_L) * D / n
    if n_s == 0:
        return round_half_up(D / n), None, None
    d_l = round_half_up(t * D / n)
    d_s = round_half_up((D - n_l * d_l) / n_s)
    return d_l, d_s, round_half_up(b / (t * T0 / d_s - a))


def run_plan(capsys, *args):
    code = main(["plan", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


CASES = [
    # D, n, n_S, t, resolutions, B_L, a, b
    (50_000, 4, 1, 1.05, [32], [500], [5.6607e-4], [0.014041]),  # method §4's worked example
    (50_000, 4, 3, 1.05, [32], [500], [5.6607e-4], [0.014041]),
    (50_000, 4, 3, 1.1, [24, 32], [600, 560], [4.1e-4, 5.6607e-4], [0.012, 0.014041]),
    (1_281_167, 4, 4, 1.05, [160, 224, 288], [2330, 1110, 740], [2.1e-4, 4.0e-4, 6.6e-4], [0.05, 0.06, 0.07]),
    (60_000, 8, 2, 1.2, [28], [64], [1.3e-3], [2.0e-3]),
]


@pytest.mark.parametrize("D,n,n_s,t,res,B_L,a,b", CASES)
def test_json_equals_the_spec_formula(capsys, D, n, n_s, t, res, B_L, a, b):
    join = lambda xs: ",".join(map(str, xs))  # noqa: E731
    code, out, _ = run_plan(capsys, "--dataset-size", str(D), "--workers", str(n), "--small", str(n_s),
                            "--extra-time", str(t), "--resolutions", join(res), "--batch-large", join(B_L),
                            "--time-a", join(a), "--time-b", join(b), "--json")
    assert code == 0
    got = json.loads(out)
    assert got["resolutions"] == res and got["batch_large"] == B_L
    for i in range(len(res)):
        d_l, d_s, b_s = spec(D, n, n_s, B_L[i], a[i], b[i], t)
        assert (got["d_large"][i], got["d_small"][i], got["batch_small"][i]) == (d_l, d_s, b_s)
    assert got["factor"] == pytest.approx(got["d_small"][0] / got["d_large"][0])
    assert got["factor_rule"] == "ratio"


def test_worked_example_numbers(capsys):
    code, out, _ = run_plan(capsys, "--dataset-size", "50000", "--workers", "4", "--small", "2", "--resolutions", "32",
                            "--batch-large", "500", "--time-a", "5.6607e-4", "--time-b", "0.014041", "--json")
    got = json.loads(out)
    assert (got["d_large"], got["d_small"], got["batch_small"]) == ([13125], [11875], [155])
    assert got["epoch_time"][0] == pytest.approx(1.05 * got["baseline_epoch_time"][0], rel=1e-3)


def test_table_and_factor_rule(capsys):
    code, out, _ = run_plan(capsys, "--dataset-size", "50000", "--workers", "4", "--small", "1", "--resolutions",
                            "32", "--batch-large", "500", "--time-a", "5.6607e-4", "--time-b", "0.014041",
                            "--factor", "sqrt")
    assert code == 0
    assert "factor sqrt (f=0.8997)" in out and "13125" in out and "10625" in out and "   84" in out


@pytest.mark.parametrize("args,message", [
    (["--small", "1", "--extra-time", "1.4"], "already cover the epoch"),
    (["--small", "2", "--time-b", "0"], "rounds below 1"),
    (["--small", "2", "--extra-time", "1.0"], "must be > 1"),
    (["--small", "5"], "dual.small is 5"),
    (["--small", "1", "--resolutions", "24,32"], "one value per resolution"),
])
def test_impossible_plans_name_the_cause(capsys, args, message):
    base = {"--small": "1", "--extra-time": "1.05", "--resolutions": "32", "--time-b": "0.014041"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = ["--dataset-size", "50000", "--workers", "4", "--batch-large", "500", "--time-a", "5.6607e-4"]
    for flag, value in base.items():
        argv += [flag, value]
    code, out, err = run_plan(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err


def test_infeasible_message_gives_ranges(capsys):
    code, _, err = run_plan(capsys, "--dataset-size", "50000", "--workers", "4", "--small", "1", "--extra-time", "1.4",
                            "--resolutions", "32", "--batch-large", "500", "--time-a", "5.6607e-4",
                            "--time-b", "0.014041")
    assert code == 2
    assert "with dual.small=1, dual.extra_time between 1.005 and 1.32 works" in err
    assert "with dual.extra_time=1.4, dual.small in [2, 3, 4] works" in err


def test_plan_from_a_profile(capsys, tmp_path):
    entry = {"device": "GPU X", "torch": "2.14.1", "model": "resnet18", "resolution": 32, "precision": "fp32",
             "a": 5.6607e-4, "b": 0.014041, "r2": 0.99, "b_max": 500}
    path = tmp_path / "profile.json"
    save_profile(path, [ProfileEntry.from_dict(entry),
                        ProfileEntry.from_dict({**entry, "resolution": 24, "b_max": 600, "a": 4e-4})])
    code, out, _ = run_plan(capsys, "--dataset-size", "50000", "--workers", "4", "--small", "3", "--resolutions",
                            "24,32", "--profile", str(path), "--json")
    assert code == 0
    got = json.loads(out)
    assert got["batch_large"] == [600, 500] and got["batch_small"][1] == 205
    code, _, err = run_plan(capsys, "--dataset-size", "50000", "--workers", "4", "--small", "3", "--resolutions",
                            "48", "--profile", str(path))
    assert code == 2 and "no entry for resnet18 at 48 px" in err


@pytest.mark.parametrize("change, message", [
    ({"b_max": None}, "has no 'b_max' (the largest batch that fits)"),
    ({"a": "fast"}, "has a='fast'; it must be a finite number (seconds per sample of the step-time line)"),
    ({"b": float("nan")}, "has b=nan; it must be a finite number"),
    ({"b_max": 0}, "has b_max=0; it must be a positive whole number"),
    ({"model": None}, "has no 'model' name"),
])
def test_a_profile_entry_that_cannot_be_planned_from_is_named(capsys, tmp_path, change, message):
    """A KeyError (missing b_max) or TypeError (a text a) inside the plan before; the file, the entry and the
    key now, exit 2."""
    entry = {"device": "GPU X", "torch": "2.14.1", "model": "resnet18", "resolution": 32, "precision": "fp32",
             "a": 5.6607e-4, "b": 0.014041, "r2": 0.99, "b_max": 500}
    entry = {k: v for k, v in {**entry, **change}.items() if v is not None}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"format": 1, "entries": {"GPU X|2.14.1|resnet18|32|fp32": entry}}))
    code, _, err = run_plan(capsys, "--dataset-size", "50000", "--workers", "4", "--small", "3", "--resolutions",
                            "32", "--profile", str(path))
    assert code == 2 and f"Profile file {path}: entry 'GPU X|2.14.1|resnet18|32|fp32' {message}" in err, err


def test_plan_is_cheap_no_torch_no_mpi():
    code = ("import sys, hdbl_mpi.cli as c; c.main(['plan','--dataset-size','100','--workers','2','--small','0',"
            "'--resolutions','32','--batch-large','10','--json']); "
            "assert 'torch' not in sys.modules and 'mpi4py' not in sys.modules, sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_per_worker_table_from_a_profile_with_each_workers_line(capsys, tmp_path):
    entry = {"device": "GPU X", "torch": "2.14.1", "model": "resnet18", "resolution": 32, "precision": "fp32",
             "a": 1.5e-4, "b": 0.003, "r2": 0.99, "b_max": 64,
             "per_rank": [{"device": "GPU X", "a": a, "b": b, "b_max": 64}
                          for a, b in ((1e-4, 2e-3), (1e-4, 2e-3), (1e-4, 2e-3), (3e-4, 6e-3))]}
    path = tmp_path / "profile.json"
    save_profile(path, [ProfileEntry.from_dict(entry)])
    args = ["--dataset-size", "60000", "--workers", "4", "--small", "2", "--resolutions", "32", "--profile",
            str(path), "--per-worker"]
    code, out, _ = run_plan(capsys, *args, "--json")
    assert code == 0
    (per,) = json.loads(out)["per_worker"]
    shares = {w["rank"]: w for w in per["workers"]}
    assert shares[4]["a"] == 3e-4 and shares[4]["samples"] == pytest.approx(shares[3]["samples"] / 3, abs=1)
    times = [w["commit_time"] for w in per["workers"]]
    assert max(times) / min(times) < 1.03
    code, out, _ = run_plan(capsys, *args)
    assert code == 0 and "each worker's own line from the profile" in out and "rank 4 large a=0.3 ms/sample" in out


def test_what_if_a_worker_were_slower(capsys):
    args = ["--dataset-size", "60000", "--workers", "4", "--small", "2", "--resolutions", "28", "--batch-large",
            "64", "--time-a", "1.6e-4", "--time-b", "3e-3"]
    code, out, _ = run_plan(capsys, *args, "--per-worker", "--json")
    (same,) = json.loads(out)["per_worker"]
    group = json.loads(out)
    assert [w["samples"] for w in same["workers"]] == [group["d_small"][0]] * 2 + [group["d_large"][0]] * 2
    code, out, _ = run_plan(capsys, *args, "--slower", "4=2", "--json")
    (slow,) = json.loads(out)["per_worker"]
    assert slow["workers"][3]["samples"] == slow["workers"][2]["samples"] // 2
    code, _, err = run_plan(capsys, *args, "--slower", "4:2")
    assert code == 2 and "--slower takes RANK=FACTOR" in err
