"""Server terminal output: bar lines only on a terminal, epoch lines always (and in train.log)."""

from hdbl_mpi.rules.epoch_lengths import EpochLengths
from hdbl_mpi.run.progress import Progress


def test_interactive_prints_bar_lines(capsys, tmp_path):
    progress = Progress(32, 0, EpochLengths.uniform(4, 8), tmp_path / "train.log", interval_s=0.0, interactive=True)
    progress.commit(1, 500)
    progress.epoch(1, 0.5, 0.75, 3.0, 1.2)
    progress.commit(5, 500)
    progress.close()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("epoch 0/8") and "1/32" in out[0] and "img/s" in out[0] and "<" in out[0]
    assert out[1] == "Epoch[1] Train-loss=1.2000 Train-accuracy=0.5000 Valid-accuracy=0.7500 Time=3.00"
    assert out[2].startswith("epoch 1/8") and "test 0.7500" in out[2]
    assert (tmp_path / "train.log").read_text().splitlines() == [out[1]]


def test_logs_get_epoch_lines_only(capsys):
    progress = Progress(8, 0, EpochLengths.uniform(4, 2), None, interval_s=0.0, interactive=False)
    for i in range(1, 5):
        progress.commit(i, 100)
    progress.epoch(1, 0.5, None, 2.0, 1.0)
    assert capsys.readouterr().out.splitlines() == ["Epoch[1] Train-loss=1.0000 Train-accuracy=0.5000 Time=2.00"]


def test_environment_chooses_the_mode(monkeypatch):
    monkeypatch.setenv("HDBL_PROGRESS", "lines")
    assert not Progress(8, 0, EpochLengths.uniform(4, 2), None).interactive
    monkeypatch.setenv("HDBL_PROGRESS", "bar")
    assert Progress(8, 0, EpochLengths.uniform(4, 2), None).interactive
