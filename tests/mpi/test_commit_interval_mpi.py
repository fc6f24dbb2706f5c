"""dual.commit_interval in a real run: auto measures the exchange between the server and worker 1 at start-up and
picks k; "H steps" picks k from the plan; the run commits n x k times an epoch, summary.json says what was chosen
and the exchange's measured share, and a resumed run keeps its k."""

from __future__ import annotations

from tests.conftest import run_train

STEP_MODEL = ["dual.workers=2", "dual.time_a=1e-4", "dual.time_b=2e-3", "train.epochs=2"]


def test_auto_measures_the_exchange_and_keeps_it_within_its_share(tmp_path):
    run = run_train(3, tmp_path / "auto", [*STEP_MODEL, "dual.commit_interval=auto", "dual.commit_share=0.2"])
    assert run.returncode == 0, run.output[-3000:]
    s = run.summary()
    chosen = s["startup"]["commit_interval"]
    assert chosen["asked"] == "auto" and chosen["exchange_s"] > 0 and chosen["k"] >= 1
    assert chosen["share"] <= 0.2 or chosen["k"] == 1
    assert s["commits_per_epoch"] == chosen["k"] and s["commits_total"] == 2 * 2 * chosen["k"]
    assert 0 <= s["exchange_share"] < 1
    assert "(dual.commit_interval auto: exchange" in run.output


def test_steps_pick_k_from_the_plan_and_a_resume_keeps_it(tmp_path):
    # 1024 samples over 2 workers at B_L 64: 8 steps a worker's epoch; every 2 steps: k = 4
    first = run_train(3, tmp_path / "run", [*STEP_MODEL, "dual.commit_interval=2 steps", "run.checkpoint_every=1",
                                            "debug.raise_on_rank=1", "debug.raise_at_commit=6"])
    assert first.returncode != 0
    resumed = run_train(3, tmp_path / "run", [], resume=True)
    assert resumed.returncode == 0, resumed.output[-3000:]
    s = resumed.summary()
    assert s["commits_per_epoch"] == 4 and s["commits_total"] == 16
    assert s["startup"]["commit_interval"] is None  # resumed: the k of the run's own config, not chosen again
