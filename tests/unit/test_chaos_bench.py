"""bench/chaos.py's figures and verdict, on hand-made runs (summary.json and the launch output)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location("chaos_bench", Path(__file__).resolve().parents[2] / "bench" /
                                               "chaos.py")
chaos = importlib.util.module_from_spec(_SPEC)
sys.modules["chaos_bench"] = chaos
_SPEC.loader.exec_module(chaos)


def _run(root: Path, name: str, top1: float, kills: list[tuple[int, float, float, float | None]],
         at_end: int = 4) -> Path:
    """A run: its summary (replacements: lost rank, detected at, first commit after) and the victims' lines."""
    run = root / name
    run.mkdir(parents=True)
    replacements = [{"rank": r, "by": 5 + i, "lost_at": seen, "first_commit_s": first}
                    for i, (r, _, seen, first) in enumerate(kills)]
    (run / "summary.json").write_text(json.dumps({"final_top1": top1, "wall_time_s": 100.0, "plan": {"workers": 4},
                                                  "workers_at_end": at_end, "replacements": replacements}))
    (run / "commits.jsonl").write_text("".join(  # each replacement's first commit: 1 s of training, then merged;
        json.dumps({"worker": 5 + i, "time": seen + 1.0, "commit_s": 1.0}) + "\n"  # each victim's last: 4 s before
        for i, (_, _, seen, first) in enumerate(kills) if first is not None) + "".join(
        json.dumps({"worker": r, "time": t - 4.0, "commit_s": 2.0}) + "\n" for r, t, _, _ in kills))
    (root / f"{name}.out").write_text("".join(
        f"hdbl train: debug.chaos: rank {r} SIGKILLs itself at unix time {t:.3f}\n" for r, t, _, _ in kills))
    return run


def test_time_lost_runs_from_the_kill_to_the_replacements_first_commit(tmp_path):
    run = chaos.read_run(_run(tmp_path, "chaos-0", 0.88, [(2, 1000.0, 1000.5, 2.0), (5, 1100.0, 1100.25, None)]))
    assert run.finished and run.workers == 4 and run.workers_at_end == 4
    assert [(k.rank, k.detected_s, k.down_s, k.first_commit_s, k.thrown_s) for k in run.kills] == [
        (2, 0.5, 0.5, 2.5, 4.0), (5, 0.25, None, None, 4.0)]


def test_the_verdict_needs_every_part_of_the_goal(tmp_path):
    base = [chaos.read_run(_run(tmp_path, f"uninterrupted-{i}", 0.88, [])) for i in range(2)]
    good = [chaos.read_run(_run(tmp_path, f"chaos-{i}", 0.877, [(1, 10.0, 10.5, 3.0)] * 3)) for i in range(2)]
    assert chaos.verdict(good, base, 3).endswith("Goal: **met**.")
    assert "finished: 2 of 2" in chaos.verdict(good, base, 3) and "(-0.30 pp)" in chaos.verdict(good, base, 3)
    worse = [chaos.read_run(_run(tmp_path, "chaos-low", 0.87, [(1, 10.0, 10.5, 3.0)] * 3))]
    assert chaos.verdict(worse, base, 3).endswith("**not met**.")  # 1 pp below
    short = [chaos.read_run(_run(tmp_path, "chaos-short", 0.88, [(1, 10.0, 10.5, 3.0)] * 3, at_end=3))]
    assert "full worker count at the end: 0 of 1" in chaos.verdict(short, base, 3)
    slow = [chaos.read_run(_run(tmp_path, "chaos-slow", 0.88, [(1, 10.0, 20.5, 12.0)] * 3))]
    assert chaos.verdict(slow, base, 3).endswith("**not met**.")  # down 10.5 s
    (tmp_path / "chaos-dead").mkdir()
    dead = chaos.read_run(tmp_path / "chaos-dead")
    assert not dead.finished and "finished: 0 of 1" in chaos.verdict([dead], base, 3)
