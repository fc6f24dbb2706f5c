"""A rank's own state (run/rankstate.py): capture and restore, its files beside a checkpoint, what a resume refuses;
the server's bookkeeping of the states a checkpoint waits for; the stop signals; --resume auto."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from hdbl_mpi.data.sources import ArraySource
from hdbl_mpi.errors import AlreadyFinished, ConfigError, HdblError
from hdbl_mpi.ps.epochs import WorkerStates
from hdbl_mpi.run import rundir
from hdbl_mpi.run.rankstate import RankState, capture, load_rank_states, prune_rank_states, restore, save_rank_states
from hdbl_mpi.run.signals import EXIT_STOPPED_AT_ONCE
from hdbl_mpi.run_config import read_config


def _trained(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


class _Source:
    def __init__(self) -> None:
        self.generator = torch.Generator().manual_seed(5)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def test_a_restored_state_continues_every_random_stream_and_the_momentum_exactly():
    _, optimizer = _trained(0)
    source = _Source()
    state = RankState.from_bytes(capture(3, 17, optimizer, source).to_bytes())  # through MPI's bytes and back
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=source.generator))
    torch.manual_seed(99), np.random.seed(99), random.seed(99), source.generator.manual_seed(99)
    _, other = _trained(1)  # another momentum
    restore(state, other, source)
    assert (state.rank, state.at) == (3, 17)
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=source.generator))
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    assert torch.equal(got[3], expected[3])
    for a, b in zip(optimizer.state.values(), other.state.values(), strict=True):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def test_a_captured_state_is_a_copy_that_training_does_not_change():
    model, optimizer = _trained(0)
    state = capture(1, 0, optimizer, _Source())
    before = state.optimizer_l1()
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()  # changes the momentum in place
    assert state.optimizer_l1() == before and before > 0


def test_an_array_source_resumes_its_stream(tmp_path):
    from hdbl_mpi.data import load_dataset

    data = load_dataset("synthetic", None, False, synthetic={"train_size": 64, "test_size": 16, "channels": 1,
                                                             "size": 8, "classes": 4})
    source = ArraySource(data, True, True, torch.Generator().manual_seed(1), torch.device("cpu"))
    saved = source.state_dict()
    first = [x for x, _ in source.batches(2, 8, 8)]
    source.load_state_dict(saved)
    again = [x for x, _ in source.batches(2, 8, 8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def _states(at: int, ranks: list[int], seed: int = 0) -> dict[int, RankState]:
    _, optimizer = _trained(seed)
    return {r: capture(r, at, optimizer, _Source()) for r in ranks}


def test_rank_files_load_back_and_a_set_that_does_not_belong_together_is_refused(tmp_path):
    manifest = save_rank_states(tmp_path, 40, _states(40, [1, 2]))
    assert sorted(load_rank_states(tmp_path, manifest, [1, 2], 40)) == [1, 2]
    assert sorted(load_rank_states(tmp_path, manifest, [1, 2, 3], 40)) == [1, 2]  # rank 3 starts fresh
    with pytest.raises(HdblError, match=r"checkpoint.pt covers 48 but its rank files .* cover 40"):
        load_rank_states(tmp_path, manifest, [1, 2], 48)
    with pytest.raises(HdblError, match=r"has the state of ranks \[1, 2\], this job trains on ranks \[1\]"):
        load_rank_states(tmp_path, manifest, [1], 40)
    other = save_rank_states(tmp_path / "other", 40, _states(40, [1, 2], seed=1))
    (tmp_path / manifest["ranks"]["2"]["file"]).write_bytes(
        (tmp_path / "other" / other["ranks"]["2"]["file"]).read_bytes())  # a valid file of another checkpoint
    with pytest.raises(HdblError, match=r"rank-2.pt is not the rank file checkpoint.pt was written with"):
        load_rank_states(tmp_path, manifest, [1, 2], 40)
    (tmp_path / manifest["ranks"]["1"]["file"]).unlink()
    with pytest.raises(HdblError, match=r"rank-1.pt is missing"):
        load_rank_states(tmp_path, manifest, [1, 2], 40)


def test_only_the_rank_files_of_the_last_checkpoint_stay(tmp_path):
    save_rank_states(tmp_path, 8, _states(8, [1]))
    save_rank_states(tmp_path, 16, _states(16, [1]))
    prune_rank_states(tmp_path, 16)
    assert [p.name for p in (tmp_path / "checkpoint-ranks").iterdir()] == ["16"]


def test_a_checkpoint_waits_for_the_state_of_every_worker_as_of_its_commit():
    states = WorkerStates()
    one, two = _states(0, [1, 2]).values()
    states.want(12, [1, 2], final=False)
    assert states.ask(1) == 12 and states.ask(1) == 0  # asked once, in the worker's next reply
    states.received(1, 12, one)
    states.received(2, 8, two)  # an answer to an older request does not count
    assert states.collect(False, [1, 2]) is None
    states.received(2, 12, two)
    assert states.collect(False, [1, 2]) == {1: one, 2: two}
    assert states.collect(False, [1]) == {1: one}  # rank 2 lost: not waited for
    states.received(1, -1, two)  # a stop reply's state
    states.want(20, [1, 2], final=True)  # the final checkpoint takes those, and asks nobody
    assert states.ask(2) == 0 and states.collect(True, [1, 2]) is None
    states.received(2, -1, one)
    assert states.collect(True, [1, 2]) == {1: two, 2: one}


def test_a_second_stop_signal_exits_at_once_with_its_code():
    program = textwrap.dedent("""
        import os, signal, time
        from hdbl_mpi.run.signals import STOP
        STOP.install()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.2)
        assert STOP.requested and STOP.name() == "SIGUSR1"
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    """)
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_STOPPED_AT_ONCE, proc.stderr
    assert "SIGUSR1: finishing the work in flight" in proc.stderr and "second signal (SIGTERM)" in proc.stderr


def test_resume_auto_starts_an_empty_directory_and_continues_one_with_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    got = read_config(None, ["train.epochs=3", "dual.batch_large=64"], "auto", str(run))
    assert got.run_dir == str(run) and got.checkpoint is None and got.tree["train"]["epochs"] == 3
    with pytest.raises(ConfigError, match="--resume auto needs the run directory"):
        read_config(None, ["dual.batch_large=64"], "auto", None)
    assert run.is_dir()  # made and held by the run that started there (run/lock.py)
    (run / rundir.CONFIG).write_text("train:\n  epochs: 7\ndual:\n  batch_large: 32\n")
    (run / rundir.CHECKPOINT).write_bytes(b"x")
    got = read_config(None, [], "auto", str(run))
    assert got.checkpoint == str(run / rundir.CHECKPOINT) and got.tree["train"]["epochs"] == 7  # the run's own
    (run / rundir.SUMMARY).write_text("{}")
    with pytest.raises(AlreadyFinished, match="already finished") as err:
        read_config(None, [], "auto", str(run))
    assert err.value.exit_code == 0


def test_a_run_that_lost_every_worker_is_not_finished_and_resume_auto_continues_it(tmp_path):
    """Its summary.json says what the weights were worth, marked incomplete: --resume auto and sweeps treat it
    as a run to continue, not a finished one (`hdbl report` refusing it: test_faults_mpi.py)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.CONFIG).write_text("train:\n  epochs: 7\ndual:\n  batch_large: 32\n")
    (run / rundir.CHECKPOINT).write_bytes(b"x")
    (run / rundir.EPOCHS).write_text("")
    reason = "every worker was lost at commit 5 of 28; the run was checkpointed there: resume it with --resume run."
    (run / rundir.SUMMARY).write_text(json.dumps({rundir.INCOMPLETE: reason}))
    assert not rundir.finished(run)
    assert read_config(None, [], "auto", str(run)).checkpoint == str(run / rundir.CHECKPOINT)
    (run / rundir.SUMMARY).write_text(json.dumps({"final_top1": 0.5}))
    assert rundir.finished(run)
    (run / rundir.SUMMARY).write_text("{\"final_top1\": 0.")  # being written: not finished
    assert not rundir.finished(run)


def test_hdbl_train_takes_stop_signals_before_parsing_its_arguments():
    """SLURM may send its warning up to a minute early, while the ranks still start: `hdbl train` installs the
    stop handler first thing, so a signal then is a stop request, not the default action (death)."""
    import signal

    from hdbl_mpi.cli import main
    from hdbl_mpi.run.signals import STOP

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    try:
        with pytest.raises(SystemExit):
            main(["train", "--no-such-flag"])
        assert all(signal.getsignal(sig) == STOP._handle for sig in before)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_spares_saved_state_goes_back_to_the_role_it_played():
    """Rank 2 was replaced by spare 5, which was lost and replaced by spare 6; rank 3 by spare 4. On a resume every
    worker starts in its own rank again, so rank 6's and rank 4's saved states go to ranks 2 and 3."""
    from hdbl_mpi.run.prepare import stood_in

    replacements = [{"rank": 2, "by": 5}, {"rank": 3, "by": 4}, {"rank": 5, "by": 6}]
    assert stood_in(replacements) == {5: 2, 4: 3, 6: 2} and stood_in([]) == {}
