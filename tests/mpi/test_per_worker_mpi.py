"""dual.per_worker under mpirun: a worker slowed 2x (debug.slow), from the start or mid-run, is re-planned from
its measured commits to a smaller share, so its commits then take the others' time; the re-plan, the lines and the
shares are in the records and in summary.json. (Unpaced on two shared cores the slowed rank also loses the core
race, so it runs more than 2x slower than the others and its share ends below half of theirs: the first test
asserts the balance, not the 2; the paced one asserts both.)"""

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


def test_a_worker_that_slows_mid_run_is_replanned_until_the_commit_times_agree(tmp_path):
    """The issue's drill: worker 3 runs at the others' pace, is slowed 2x from 11 s on (debug.slow.from_s), and
    the re-plan brings every worker's commit time back within 10 % of the others'. Paced (every step padded to
    tau(B) = a*B + b, well above its real cost), so the shared cores do not decide who is fast."""
    a, b = 1e-4, 0.04
    run = run_train(4, tmp_path / "run", [
        "dual.workers=3", "dual.small=0", "dual.per_worker=true", "dual.replan=true", "dual.replan_threshold=1.08",
        f"dual.time_a={a}", f"dual.time_b={b}", "dual.commits_per_epoch=1", "train.epochs=22",
        "data.synthetic={train_size: 4096, test_size: 256, channels: 1, size: 16, classes: 4}",
        "debug.slow.pace=1.0", "debug.slow.ranks={3: 2}", "debug.slow.from_s=11"], timeout=240)
    assert run.returncode == 0, run.output[-4000:]
    records = [r for r in run.commits() if r["local_commit"] > 1]
    step = {id(r): r["compute_s"] / r["steps"] / (a * r["batch"] + b) for r in records}  # x tau(B)
    own = [r for r in records if r["worker"] == 3]
    assert step[id(own[0])] < 1.3, own[0]  # at the others' pace before from_s ...
    onset = next(r for r in own if step[id(r)] > 1.7)  # ... and twice as slow after it
    replans = [c["at_commit"] for c in run.summary()["replans"] if c.get("kind") == "speeds" and "kept" not in c]
    # re-planned after the slowdown, and done within a few rounds of 3 commits (a re-plan can see a commit that
    # was slowed only part-way and correct the rest at the next)
    assert replans and replans[0] >= onset["global_commit"] and replans[-1] <= onset["global_commit"] + 18, replans
    late = [r for r in records if r["global_commit"] > replans[-1] + 3]
    times = {w: statistics.median(r["compute_s"] for r in late if r["worker"] == w) for w in (1, 2, 3)}
    assert max(times.values()) <= 1.10 * min(times.values()), times
    samples = {w: statistics.median(r["samples"] for r in late if r["worker"] == w) for w in (1, 2, 3)}
    assert 0.4 < samples[3] / statistics.mean([samples[1], samples[2]]) < 0.6, samples
