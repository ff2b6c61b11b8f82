"""Config loading: presets, overrides, method options, errors that name the key."""
import pytest

from s4kit.config import ConfigError, available_presets, from_yaml, load_config, to_yaml


def test_every_preset_resolves_with_method_options():
    names = available_presets()
    assert {f"{d}/{m}" for d in ("digits", "pascal", "cityscapes") for m in ("supervised", "meanteacher", "reco")} \
        <= set(names)
    from s4kit.methods import registered

    for name in names:
        cfg = load_config(name, [] if name.startswith("digits/") else ["model.pretrained=none"])
        assert cfg.method.name in registered()
        if name.split("/")[1] in registered():
            assert cfg.method.name == name.split("/")[1]


def test_split_names_stay_strings():
    assert load_config("digits/reco").data.split == "1_16"
    assert load_config("digits/reco", ["data.split=1_32"]).data.split == "1_32"
    assert load_config("digits/reco", ["data.split=full"]).data.split == "full"


def test_method_defaults_are_filled_and_overridable():
    cfg = load_config("digits/reco", ["method.temperature=0.2"])
    assert cfg.method.temperature == 0.2
    assert cfg.method.num_negatives > 0 and cfg.method.ema_alpha == 0.99


def test_splits_default_to_root(tmp_path):
    cfg = load_config("digits/supervised", [f"data.root={tmp_path}"])
    assert cfg.data.splits == str(tmp_path / "splits")


@pytest.mark.parametrize("override, message", [
    ("train.itres=5", "itres"),
    ("method.temprature=0.1", "temprature"),
    ("method.name=nosuch", "nosuch"),
    ("data.dataset=mnist", "data.dataset"),
    ("train.iters=abc", "train.iters"),
    ("noequals", "key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("digits/reco", [override])


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="digits/reco"):
        load_config("digits/nosuch")


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config("digits/reco", ["train.iters=7", "data.split=1_8"])
    path = tmp_path / "config.yaml"
    path.write_text(to_yaml(cfg))
    again = from_yaml(path)
    assert again == cfg and again.data.split == "1_8"
