import pytest

from pioneer.config import (
    PRESETS,
    ConfigError,
    apply_overrides,
    from_dict,
    preset,
    to_dict,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid_and_round_trip_through_json_form(name):
    config = preset(name)
    assert from_dict(to_dict(config)) == config


def test_overrides_set_nested_and_indexed_keys_with_types():
    config = apply_overrides(
        preset("smoke"),
        [
            "loss.recon_weight=20",
            "schedule.2.margin=0.4",
            "schedule.1.lr=0.005",
            "model.mode=baseline",
            "data.flip=false",
            "model.channels=[8, 8, 4]",
        ],
    )
    assert config.loss.recon_weight == 20.0 and isinstance(config.loss.recon_weight, float)
    assert config.schedule[2].margin == 0.4
    assert config.schedule[1].lr == 0.005
    assert config.model.mode == "baseline"
    assert config.data.flip is False
    assert config.model.channels == (8, 8, 4)
    assert apply_overrides(config, ["schedule.2.margin=null"]).schedule[2].margin is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.recon_wieght=3", "unknown key 'loss.recon_wieght'"),
        ("nope.x=1", "unknown key 'nope.x'"),
        ("schedule.9.lr=1", "index '9' out of range"),
        ("loss.recon_weight=ten", "loss.recon_weight must be a number"),
        ("train.decoder_steps=1.5", "train.decoder_steps must be an integer"),
        ("data.flip=3", "data.flip must be true or false"),
        ("model.mode=fancy", "model.mode must be one of"),
        ("schedule.1.resolution=16", "schedule.1.resolution must be 8"),
        ("schedule.0.batch=0", "batch must be >= 1"),
        ("schedule.2.margin_after_images=999", "schedule.2.margin_after_images must be in"),
        ("model.channels=[8]", "only 1 widths"),
        ("noequals", "not of the form"),
    ],
)
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        apply_overrides(preset("smoke"), [override])


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="smoke"):
        preset("tiny")
