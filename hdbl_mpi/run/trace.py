"""A Chrome-trace / Perfetto timeline of every commit, in the spirit of Horovod's timeline.

Open `trace.json` from a run directory in https://ui.perfetto.dev or chrome://tracing: one row per worker
(grouped by small/large batch), one slice per commit phase. Built from the commit records, so it costs the
training nothing.

A record gives the wall-clock time at which the worker had the merged weights back (``time``) and the
durations of its phases; the phases are laid out backwards from that moment in the order they happen:
compute (the training steps), then exchange (push and reply transfers, and any queueing at the server), then
wait (the time the server held the push: the merge, and BSP/SSP barriers). Exchange and wait overlap in
reality (the reply transfer follows the wait); drawing them one after the other keeps each duration exact.
"""

from __future__ import annotations

import json
from pathlib import Path

from hdbl_mpi.run.records import CommitRecord
from hdbl_mpi.run.rundir import atomic_write_text

PHASES = ("compute", "exchange", "wait")
_GROUP_PID = {"small": 1, "large": 2}


def trace_events(records: list[CommitRecord]) -> list[dict]:
    """Trace events (microseconds, relative to the first commit's start) for the given commit records."""
    if not records:
        return []
    origin = min(r.start for r in records)
    events: list[dict] = []
    for group, pid in _GROUP_PID.items():
        events.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": f"{group}-batch workers"}})
    for worker in sorted({r.worker for r in records}):
        group = next(r.group for r in records if r.worker == worker)
        events.append({"name": "thread_name", "ph": "M", "pid": _GROUP_PID[group], "tid": worker,
                       "args": {"name": f"worker {worker}"}})
    for record in records:
        t = (record.start - origin) * 1e6
        for phase in PHASES:
            duration = getattr(record, f"{phase}_s") * 1e6
            events.append({
                "name": phase, "cat": record.group, "ph": "X", "ts": round(t, 1), "dur": round(duration, 1),
                "pid": _GROUP_PID[record.group], "tid": record.worker,
                "args": {"global_commit": record.global_commit, "local_commit": record.local_commit,
                         "epoch": record.epoch, "batch": record.batch, "steps": record.steps,
                         "resolution": record.resolution},
            })
            t += duration
    return events


def write_trace(path: Path, records: list[CommitRecord]) -> None:
    atomic_write_text(path, json.dumps({"traceEvents": trace_events(records), "displayTimeUnit": "ms"}) + "\n")
