"""Method options and network fields are checked by ``load_config`` (``config.resolve``), before
anything is written: choices (``Literal``), ranges (``opt``), options a method does not read,
model fields a network does not read, and what a method needs of other sections."""
import dataclasses
import math

import pytest

from s4kit.config import ConfigError, available_presets, from_yaml, load_config, to_yaml
from s4kit.methods import method_options, registered
from s4kit.methods.base import check_options, in_interval, option_choices, option_interval


def _preset(method: str) -> str:
    return f"digits/{method}"


def _options(kind: str) -> list[tuple[str, str, object]]:
    """(method, key, choices or interval) of every option of every registered method with a
    ``Literal`` (kind="choice") or an ``opt`` interval (kind="range")."""
    out = []
    for name in registered():
        cls = method_options(name)
        for f in dataclasses.fields(cls):
            spec = option_choices(cls, f.name) if kind == "choice" else option_interval(cls, f.name)
            if spec is not None:
                out.append((name, f.name, spec))
    return out


def _outside(interval: str, integer: bool) -> list:
    """Values just outside each finite end of ``interval`` (the end itself where it is open)."""
    left, right = interval.strip()[0], interval.strip()[-1]
    lo, hi = (float(x) for x in interval.strip()[1:-1].split(","))
    step = 1 if integer else 0.5
    vals = []
    if math.isfinite(lo):
        vals.append(lo if left == "(" else lo - step)
    if math.isfinite(hi):
        vals.append(hi if right == ")" else hi + step)
    return [int(v) if integer else v for v in vals]


def test_every_method_declares_choices_and_ranges_and_its_defaults_pass():
    choices, ranges = _options("choice"), _options("range")
    assert {m for m, _, _ in choices} >= {"supervised", "meanteacher", "css", "prcl", "rc2l", "allspark"}
    assert ("css", "strategy", ("mix", "cross")) in choices
    assert ("prcl", "sigma_lr", "(0, inf)") in ranges and ("css", "strong_threshold", "[0, 1]") in ranges  # inherited
    for name in registered():
        cls = method_options(name)
        check_options(cls, dataclasses.asdict(cls()))  # no ConfigError
        assert set(cls.unread) <= {f.name for f in dataclasses.fields(cls)}, name
    assert method_options("rc2l").unread == ("sup_loss", "ohem_thresh", "ohem_min_kept", "unsup_loss")


@pytest.mark.parametrize("method, key, allowed", _options("choice"), ids=lambda x: str(x))
def test_a_choice_outside_its_literal_names_key_value_and_choices(method, key, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(_preset(method), [f"method.{key}=nosuch"])
    assert str(err.value) == f"method.{key}='nosuch': expected one of {allowed}"
    cls = method_options(method)
    accepted = (getattr(cls(), key),) if key in cls.unread else allowed  # an unread option keeps its default
    for value in accepted:  # every declared choice is accepted where the method is otherwise valid
        extra = {("allspark", "framework", "allspark"): ["augment.mix=none"],
                 ("css", "unsup_loss", "masked"): ["method.mix_weighting=agree"]}.get((method, key, value), [])
        assert load_config(_preset(method), [f"method.{key}={value}", *extra]).method[key] == value


@pytest.mark.parametrize("method, key, interval", _options("range"), ids=lambda x: str(x))
def test_a_value_outside_its_range_names_key_value_and_range(method, key, interval):
    integer = isinstance(getattr(method_options(method)(), key), int)
    bad = _outside(interval, integer)
    assert bad, interval
    for value in bad:
        with pytest.raises(ConfigError) as err:
            load_config(_preset(method), [f"method.{key}={value}"])
        assert str(err.value) == f"method.{key}={value!r}: expected a number in {interval}"
    if not integer:  # NaN lies in no interval
        with pytest.raises(ConfigError) as err:
            load_config(_preset(method), [f"method.{key}=nan"])
        assert str(err.value) == f"method.{key}=nan: expected a number in {interval}"


@pytest.mark.parametrize("interval, inside, outside", [
    ("[0, 1]", [0, 0.5, 1], [-0.1, 1.1, float("nan")]),
    ("[0, 1)", [0, 0.99], [1, -1e-9]),
    ("(0, inf)", [1e-9, 1e9], [0, -1, float("inf")]),
    ("(-inf, 0]", [-5, 0], [1e-9]),
    ("[1, inf)", [1, 2], [0]),
])
def test_interval_ends(interval, inside, outside):
    assert all(in_interval(v, interval) for v in inside)
    assert not any(in_interval(v, interval) for v in outside)


def test_a_closed_end_is_accepted():
    cfg = load_config("digits/css", ["method.proto_momentum=1", "method.cross_warmup=0", "method.weak_threshold=0"])
    assert (cfg.method.proto_momentum, cfg.method.cross_warmup, cfg.method.weak_threshold) == (1, 0, 0)


# -- options a method does not read ----------------------------------------------------------

@pytest.mark.parametrize("preset, override, message", [
    ("digits/rc2l", "method.sup_loss=ohem", "method.sup_loss='ohem': rc2l does not read this option"),
    ("digits/rc2l", "method.unsup_loss=masked", "method.unsup_loss='masked': rc2l does not read this option"),
    ("digits/rc2l", "method.ohem_min_kept=5", "method.ohem_min_kept=5: rc2l does not read this option"),
    ("digits/rc2l", "augment.mix=classmix", "augment.mix='classmix': rc2l does not read this option"),
    ("digits/rc2l", "augment.mix=cutmix", "augment.mix='cutmix': rc2l does not read this option"),
    ("digits/supervised_maskformer", "method.sup_loss=ohem",
     "method.sup_loss='ohem': supervised_maskformer does not read this option"),
    ("digits/allspark", "method.framework=allspark", "augment.mix='cutmix': framework=allspark does not read"),
])
def test_an_option_the_method_does_not_read_is_rejected(preset, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(preset, [override])
    assert str(err.value).startswith(message), str(err.value)


def test_an_unread_option_at_its_default_is_accepted():
    cfg = load_config("digits/rc2l", ["method.sup_loss=ce", "method.unsup_loss=weighted", "augment.mix=none"])
    assert cfg.method.sup_loss == "ce"


@pytest.mark.parametrize("preset, override, message", [
    ("digits/supervised_segformer", "model.backbone=resnet101",
     "model.backbone='resnet101': model.name=segformer does not read this field"),
    ("digits/supervised_segformer", "model.dec_layers=99", "model.dec_layers=99: model.name=segformer does not read"),
    ("digits/allspark", "model.aspp_rates=[6,12,18]", "model.aspp_rates=[6, 12, 18]: model.name=segformer"),
    ("digits/supervised", "model.encoder=mit_b2", "model.encoder='mit_b2': model.name=deeplabv3plus does not read"),
    ("digits/supervised", "model.drop_path=0.3", "model.drop_path=0.3: model.name=deeplabv3plus does not read"),
    ("digits/supervised", "model.num_queries=7", "model.num_queries=7: model.name=deeplabv3plus does not read"),
    ("digits/rc2l", "model.input_scale=2.0", "model.input_scale=2.0: model.name=maskformer does not read"),
])
def test_a_model_field_the_network_does_not_read_is_rejected(preset, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(preset, [override])
    assert str(err.value).startswith(message), str(err.value)
    assert "expected its default" in str(err.value)


def test_width_belongs_to_the_small_encoder():
    assert load_config("digits/supervised", ["model.width=8"]).model.width == 8
    with pytest.raises(ConfigError, match="model.width=8: model.name=deeplabv3plus with model.backbone=resnet18"):
        load_config("digits/supervised", ["model.backbone=resnet18", "model.width=8"])


@pytest.mark.parametrize("preset, override, message", [
    ("digits/rc2l", "model.name=deeplabv3plus", "model.name='deeplabv3plus': rc2l needs a mask-classification network "
                                                "(expected maskformer)"),
    ("digits/supervised_maskformer", "model.name=deeplabv3plus", "model.name='deeplabv3plus': supervised_maskformer"),
    ("digits/allspark", "model.name=deeplabv3plus", "model.name='deeplabv3plus': allspark needs the SegFormer network "
                                                    "(expected segformer)"),
])
def test_a_method_names_the_network_it_needs(preset, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(preset, [override])
    assert str(err.value).startswith(message), str(err.value)


def test_a_run_config_with_an_unread_option_is_rejected_on_reading(tmp_path):
    text = to_yaml(load_config("digits/rc2l")).replace("sup_loss: ce", "sup_loss: ohem")
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match="method.sup_loss='ohem': rc2l does not read"):
        from_yaml(tmp_path / "config.yaml")


def test_every_preset_loads_and_keeps_unread_model_fields_at_their_defaults():
    from s4kit.config import ModelConfig
    from s4kit.models import network_fields

    defaults = ModelConfig()
    for name in available_presets():
        m = load_config(name, [] if name.startswith("digits/") else ["model.pretrained=none"]).model
        for key in set(m) - set(network_fields(m.name)):
            assert m[key] == getattr(defaults, key), (name, key)


# -- the command line: one line, exit 2, no run folder ------------------------------------------

@pytest.mark.parametrize("args, says", [
    (["digits/css", "method.strategy=both"], "method.strategy='both': expected one of ('mix', 'cross')"),
    (["digits/rc2l", "model.name=deeplabv3plus"], "rc2l needs a mask-classification network"),
    (["digits/rc2l", "method.sup_loss=ohem"], "rc2l does not read this option"),
    (["digits/supervised_segformer", "model.dec_layers=99"], "model.name=segformer does not read this field"),
    (["digits/prcl", "method.sigma_lr=0"], "method.sigma_lr=0: expected a number in (0, inf)"),
])
def test_a_rejected_train_command_writes_nothing(args, says, tmp_path, capsys):
    from s4kit.cli import main

    run = tmp_path / "run"
    code = main(["train", *args, f"run.dir={run}", "device=cpu"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in err, err
    assert not run.exists()
