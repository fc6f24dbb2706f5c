"""Cyclic progressive schedules: the papers' presets stage by stage (method §5), the generic form, validation."""

import pytest

from hdbl_mpi.errors import ConfigError
from hdbl_mpi.rules.schedule import Stage, cyclic, format_schedule, preset, validate_stages


def table(schedule):
    return [(s.start, s.end, s.resolution, s.lr, s.dropout) for s in schedule.stages]


def test_cifar_preset_equals_spec():
    assert table(preset("cifar-paper")) == [
        (0, 40, 24, 0.2, 0.1), (40, 80, 32, 0.2, 0.2),
        (80, 100, 24, 0.02, 0.1), (100, 120, 32, 0.02, 0.2),
        (120, 130, 24, 0.002, 0.1), (130, 140, 32, 0.002, 0.2),
    ]


def test_imagenet_preset_equals_spec():
    assert table(preset("imagenet-paper")) == [
        (0, 20, 160, 0.2, 0.1), (20, 40, 224, 0.2, 0.2), (40, 60, 288, 0.2, 0.3),
        (60, 70, 160, 0.02, 0.1), (70, 80, 224, 0.02, 0.2), (80, 90, 288, 0.02, 0.3),
        (90, 95, 160, 0.002, 0.1), (95, 100, 224, 0.002, 0.2), (100, 105, 288, 0.002, 0.3),
    ]
    assert preset("imagenet-paper").epochs == 105


def test_stage_lookup_by_completed_epochs():
    s = preset("cifar-paper")
    assert [s.index_at(e) for e in (0, 39, 40, 79, 80, 139, 140)] == [0, 0, 1, 1, 2, 5, 5]
    assert s.at(100).resolution == 32 and s.at(100).lr == 0.02


def test_generic_form_with_uneven_splits():
    s = cyclic([10, 5], [0.1, 0.01], [16, 24, 32], [0.0, 0.1, 0.2], splits=[0.2, 0.3, 0.5])
    assert table(s) == [(0, 2, 16, 0.1, 0.0), (2, 5, 24, 0.1, 0.1), (5, 10, 32, 0.1, 0.2),
                        (10, 11, 16, 0.01, 0.0), (11, 13, 24, 0.01, 0.1), (13, 15, 32, 0.01, 0.2)]
    assert s.resolutions == [16, 24, 32]


@pytest.mark.parametrize("call,message", [
    (lambda: cyclic([10], [0.1, 0.01], [16], [0.0]), "one learning rate per phase"),
    (lambda: cyclic([10], [0.1], [16, 24], [0.0]), "one dropout each"),
    (lambda: cyclic([10], [0.1], [16, 24], [0.0, 0.1], splits=[0.7, 0.7]), "summing to 1"),
    (lambda: cyclic([1], [0.1], [16, 24], [0.0, 0.1]), "cannot hold 2 resolution stages"),
    (lambda: validate_stages([Stage(0, 5, 32, 0.1, 0.0), Stage(6, 9, 32, 0.1, 0.0)]), "without gaps"),
    (lambda: validate_stages([Stage(0, 5, 4, 0.1, 0.0)]), "resolution >= 8"),
    (lambda: preset("imagenet"), "unknown schedule preset"),
])
def test_bad_schedules_say_what_to_fix(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_table_text():
    text = format_schedule(preset("cifar-paper"))
    assert "  120-130          24     0.002      0.1" in text and text.endswith("140 epochs, resolutions 24, 32")


def test_hdbl_schedule_command(capsys):
    from hdbl_mpi.cli import main

    assert main(["schedule", "imagenet-paper"]) == 0
    out = capsys.readouterr().out
    assert "    8    100-105         288     0.002      0.3" in out
    assert main(["schedule", "nope"]) == 2 and "unknown schedule preset" in capsys.readouterr().err


def test_hdbl_schedule_resolves_a_config(capsys, tmp_path):
    from hdbl_mpi.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("dual:\n  batch_large: 64\ntrain:\n  epochs: 6\n  lr: 0.1\n  lr_milestones: [4]\n")
    assert main(["schedule", str(config)]) == 0
    out = capsys.readouterr().out
    assert "    0        0-4          28       0.1        0" in out and "    1        4-6          28      0.01" in out
    assert main(["schedule", str(config), "--set", "schedule.preset=cifar-paper"]) == 0
    assert "140 epochs, resolutions 24, 32" in capsys.readouterr().out
