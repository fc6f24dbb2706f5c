"""dual.per_worker under mpirun: a worker slowed 2x (debug.slow) is re-planned from its measured commits to a
smaller share, so its commits then take the others' time; the re-plan, the lines and the shares are in the records
and in summary.json. (On two shared cores the slowed rank also loses the core race, so it runs more than 2x
slower than the others, and its share ends below half of theirs: the test asserts the balance, not the 2.)"""

from __future__ import annotations

import statistics

from tests.conftest import run_train


def test_a_worker_slowed_twice_is_given_half_the_share_after_a_replan(tmp_path):
    run = run_train(4, tmp_path / "run", [
        "dual.workers=3", "dual.small=0", "dual.per_worker=true", "dual.replan=true", "dual.replan_threshold=1.3",
        "dual.time_a=1e-4", "dual.time_b=2e-3", "dual.commits_per_epoch=2", "train.epochs=6",
        "data.synthetic={train_size: 4096, test_size: 256, channels: 1, size: 16, classes: 4}",
        "debug.slow.ranks={3: 2}"], timeout=240)
    assert run.returncode == 0, run.output[-4000:]
    s = run.summary()
    (first, *_) = [c for c in s["replans"] if c.get("kind") == "speeds" and "kept" not in c]
    slowest = first["scales"]["3"] / max(first["scales"]["1"], first["scales"]["2"])
    assert slowest > 1.5, first
    assert "replan at commit" in run.output and "shares per worker and epoch" in run.output
    records = run.commits()
    before = [r for r in records if r["global_commit"] <= first["at_commit"] and r["local_commit"] > 1]
    late = [r for r in records if r["global_commit"] > first["at_commit"] + 3]
    samples = {w: statistics.median(r["samples"] for r in late if r["worker"] == w) for w in (1, 2, 3)}
    assert samples[3] < 0.7 * min(samples[1], samples[2]), samples
    # The balance, relative: how far the slowed worker's commits lag is at least halved by the re-plan (measured:
    # 3.6x -> 1.6x in a CI run, 4.1x -> 1.06x alone; an absolute 1.4 failed that CI run on two shared cores).
    assert _spread(before) > 1.5 and _spread(late) < 0.6 * _spread(before), (_spread(before), _spread(late))
    plan = s["worker_plan"]["16"]
    assert [w["rank"] for w in plan["workers"]] == [1, 2, 3]
    assert plan["workers"][2]["samples"] < plan["workers"][0]["samples"]


def _spread(records: list[dict]) -> float:
    """Slowest over fastest worker's median compute time per commit."""
    times = [statistics.median(r["compute_s"] for r in records if r["worker"] == w) for w in (1, 2, 3)]
    return max(times) / min(times)
