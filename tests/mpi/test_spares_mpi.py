"""Lost workers replaced (ps.spares, under ULFM) and the chaos drill (debug.chaos): the run ends with as many
workers as it started, each epoch still n commits of the planned sizes, the replacement's commits under its own
rank in the lost worker's group."""

from __future__ import annotations

import re

from tests.conftest import run_train

ULFM = ["ps.fault_tolerance=ulfm", "ps.ft_detector_timeout_s=10"]


def test_a_spare_takes_over_a_killed_small_batch_worker_and_the_plan_stands(tmp_path):
    """Rank 1, the only small-batch worker of a dual-batch run, SIGKILLed at its second commit: spare rank 4
    takes its role (small batch, its share and steps), nothing is re-planned, the run merges its 12 commits
    and ends with 3 workers; the idle count at the end is 0."""
    run = run_train(5, tmp_path / "spare", [
        "dual.workers=3", "dual.small=1", "dual.time_a=0.0012", "dual.time_b=0.004", "dual.extra_time=1.1",
        "train.epochs=4", *ULFM, "ps.spares=1", "debug.raise_on_rank=1", "debug.raise_at_commit=2",
        "debug.crash=kill"], timeout=180, launch=True)
    assert run.returncode == 0 and (tmp_path / "spare" / "summary.json").is_file(), run.output[-3000:]
    s = run.summary()
    assert [w["rank"] for w in s["lost_workers"]] == [1]
    (taken,) = s["replacements"]
    assert (taken["rank"], taken["by"]) == (1, 4) and taken["first_commit_s"] is not None
    assert s["workers_at_end"] == 3 and s["spares"] == {"started": 1, "idle_at_end": 0}
    assert not [c for c in s["replans"] if "lost" in str(c.get("reason"))]
    assert s["commits_total"] == 12 and s["epochs_completed"] == 4 and s["final_top1"] is not None
    assert "spare rank 4 takes over its role" in run.output
    commits = run.commits()
    assert sorted(r["global_commit"] for r in commits) == list(range(1, 13))
    lost = [r for r in commits if r["worker"] == 1]
    spare = [r for r in commits if r["worker"] == 4]
    assert lost and spare and all(r["group"] == "small" and r["replaces"] == 1 for r in spare)
    assert {(r["batch"], r["steps"], r["samples"]) for r in spare} == {(lost[0]["batch"], lost[0]["steps"],
                                                                       lost[0]["samples"])}


def test_the_chaos_drill_with_two_kills_ends_with_every_worker_and_dismisses_the_idle_spare(tmp_path):
    run = run_train(7, tmp_path / "chaos", [
        "dual.workers=3", "dual.commits_per_epoch=2", "train.epochs=6", *ULFM, "ps.spares=3", "debug.chaos.kills=2",
        "debug.chaos.seed=1"], timeout=180, launch=True)
    assert run.returncode == 0 and (tmp_path / "chaos" / "summary.json").is_file(), run.output[-3000:]
    s = run.summary()
    killed = [o["rank"] for o in s["chaos"]]
    assert len(killed) == 2 and run.output.count("SIGKILLs itself at unix time") == 2, run.output[-3000:]
    assert [w["rank"] for w in s["lost_workers"]] == killed
    assert [(r["rank"], r["by"]) for r in s["replacements"]] == list(zip(killed, [4, 5], strict=True))
    assert all(r["first_commit_s"] is not None for r in s["replacements"])
    assert s["workers_at_end"] == 3 and s["spares"] == {"started": 3, "idle_at_end": 1}
    assert s["commits_total"] == 36 and s["epochs_completed"] == 6


def test_a_killed_server_is_restarted_with_the_replacement_on_record(tmp_path):
    """The issue's second goal with a spare in play: worker rank 2 is SIGKILLed early (spare 4 takes its role), then
    the server SIGKILLs itself at its 16th merge; the job ends, `hdbl launch --max-restarts 1` starts it again from
    the last checkpoint on disk and the run finishes its 18 commits, the kill and the replacement still on record."""
    run = run_train(5, tmp_path / "restart", [
        "dual.workers=3", "train.epochs=6", "run.checkpoint_every=1", *ULFM, "ps.spares=1",
        "debug.chaos.kills=1", "debug.chaos.seed=0", "debug.chaos.start=0.1", "debug.chaos.end=0.2",
        "debug.raise_on_rank=0", "debug.raise_at_commit=16", "debug.crash=kill", "debug.crash_on_resume=false"],
        timeout=300, launch=True, extra=["--max-restarts", "1", "--restart-backoff", "1"])
    assert run.returncode == 0, run.output[-4000:]
    s = run.summary()
    assert "injected failure (debug.raise_on_rank=0) at merged commit 16" in run.output
    assert len(s["restarts"]) == 1 and s["commits_total"] == 18 and s["epochs_completed"] == 6
    (killed,) = [o["rank"] for o in s["chaos"]]  # ordered in the first start, kept in the checkpointed state
    assert [(r["rank"], r["by"]) for r in s["replacements"]] == [(killed, 4)]
    assert s["workers_at_end"] == 3 and s["spares"] == {"started": 1, "idle_at_end": 1}


def test_a_resumed_run_gives_the_spares_saved_state_back_to_the_role_it_played(tmp_path):
    """A run whose rank 2 was replaced by spare 4 ends (its last checkpoint holds rank 4's state, not rank 2's);
    resumed to train longer, every worker starts in its own rank again and rank 2 takes the state spare 4 saved
    (a resume refused such a checkpoint before: rank 4 is not a worker rank)."""
    job = ["dual.workers=3", "train.epochs=4", *ULFM, "ps.spares=1", "debug.raise_on_rank=2",
           "debug.raise_at_commit=2", "debug.crash=kill"]
    first = run_train(5, tmp_path / "run", job, timeout=180, launch=True)
    assert first.returncode == 0 and [(r["rank"], r["by"]) for r in first.summary()["replacements"]] == [(2, 4)]
    resumed = run_train(5, tmp_path / "run", ["train.epochs=6", "debug.raise_on_rank=-1"], resume=True,
                        timeout=180, launch=True)
    assert resumed.returncode == 0, resumed.output[-4000:]
    assert re.search(r"rank 2: own state from commit \d+ \(saved by spare rank 4, which held its role\)",
                     resumed.output), resumed.output[-4000:]
    s = resumed.summary()
    assert s["commits_total"] == 18 and s["epochs_completed"] == 6 and s["workers_at_end"] == 3
    assert s["spares"] == {"started": 1, "idle_at_end": 1}
