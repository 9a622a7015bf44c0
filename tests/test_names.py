"""The tables of names: every room that reads them knows every name, and no other."""

import dataclasses

from keras_hyperiqa import cli, names


def _choices(command, option):
    (param,) = [p for p in command.params if p.name == option]
    return tuple(param.type.choices)


def test_cli_choices_are_the_tables():
    assert _choices(cli.fit, "dataset") == tuple(names.DATASETS)
    assert _choices(cli.evaluate, "dataset") == tuple(names.DATASETS)
    assert _choices(cli.fit, "backbone") == names.BACKBONES
    assert _choices(cli.fit, "revert_fix") == tuple(names.REVERT_FIXES)


def test_every_dataset_has_a_reader_and_a_preset():
    from keras_hyperiqa.data import readers
    from keras_hyperiqa.data.presets import PRESETS, preset

    assert set(readers._READERS) == set(names.DATASETS) == set(PRESETS)
    assert preset("koniq")["resize"] == (512, 384) and preset("spaq")["short_side"] == 512
    assert not names.DATASETS["live"].higher_is_better and names.DATASETS["livec"].higher_is_better


def test_every_backbone_has_an_architecture():
    from keras_hyperiqa.model import backbones, swin

    assert set(names.SWINS) == set(swin.SWIN_CONFIGS)
    for name in names.BACKBONES:
        assert backbones.check_backbone_name(name) == name
        if not names.is_swin(name):
            assert backbones.resnet_config(name)["block_type"] in ("basic_block", "bottleneck_block")


def test_every_revert_word_turns_off_one_fix():
    from keras_hyperiqa.training.schedule import Fixes

    fields = {f.name for f in dataclasses.fields(Fixes)}
    assert sorted(names.REVERT_FIXES.values()) == sorted(fields)
    assert Fixes.from_reverted(names.REVERT_FIXES) == Fixes.original()
    for word, field in names.REVERT_FIXES.items():
        assert getattr(Fixes.from_reverted([word]), field) is False
