"""ImageNet weights: required for pascal/cityscapes, strict loading of torchvision, UniMatch deep-stem
and NVlabs MiT files, and the deep-stem ResNet (docs/methods/substrate.md §2.1, §2.7).

Every checkpoint here is a fake built in tmp_path with the real key layout; nothing is downloaded.
"""
from pathlib import Path

import pytest
import torch
import torchvision

from s4kit.config import ConfigError, available_presets, load_config
from s4kit.models import ResNetEncoder, SmallEncoder, WeightsError, build_model, load_encoder_weights
from s4kit.models.segformer import MiTEncoder, load_mit_weights

REPO = Path(__file__).resolve().parents[1]


def one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# ---------------------------------------------------------------- the refusal (config validation)

@pytest.mark.parametrize("preset, extra, says", [
    ("pascal/reco", [], "torchvision's resnet101-63fe2227.pth "
                        "(https://download.pytorch.org/models/resnet101-63fe2227.pth)"),
    ("cityscapes/prcl", [], "resnet101-63fe2227.pth"),
    ("pascal/allspark", [], "mit_b5.pth"),
    ("cityscapes/allspark", [], "mit_b5.pth"),
    ("pascal/css", ["model.backbone=resnet101_deepstem"], "UniMatch's deep-stem resnet101.pth"),
    ("pascal/meanteacher", ["model.backbone=resnet50"], "resnet50-0676ba61.pth"),
    ("pascal/reco", ["model.pretrained=null"], "resnet101-63fe2227.pth"),  # null is "not given", not "none"
])
def test_non_digits_run_without_weights_is_refused(preset, extra, says):
    with pytest.raises(ConfigError) as exc:
        load_config(preset, extra)
    line = one_line(exc)
    assert line.startswith("model.pretrained is not set: ") and says in line, line
    assert "model.pretrained=none" in line and "data/README.md" in line, line


def test_every_pascal_and_cityscapes_preset_needs_weights_but_digits_do_not():
    others = [n for n in available_presets() if not n.startswith("digits/")]
    assert len(others) >= 14
    for name in others:
        if name == "pascal/tiny" or name.startswith("folder/"):  # the small CNN has no ImageNet weights: the
            # preset says none itself
            assert load_config(name).model.pretrained == "none"
            continue
        with pytest.raises(ConfigError, match=r"^model\.pretrained is not set"):
            load_config(name)  # (test_config loads each of them with model.pretrained=none)
    assert load_config("cityscapes/css", ["model.pretrained=/weights/x.pth"]).model.pretrained == "/weights/x.pth"
    assert load_config("pascal/allspark", ["model.pretrained=None"]).model.pretrained == "None"  # none, any case
    for name in [n for n in available_presets() if n.startswith("digits/")]:
        assert load_config(name).model.pretrained is None  # digits: from scratch, unchanged


def test_small_backbone_on_pascal_is_told_there_is_no_checkpoint():
    with pytest.raises(ConfigError) as exc:
        load_config("pascal/reco", ["model.backbone=small", "model.output_stride=8"])
    assert "model.backbone=small has no ImageNet checkpoint" in one_line(exc)


def test_readme_has_the_section_the_error_points_at():
    text = (REPO / "data" / "README.md").read_text()
    assert "## Pretrained backbones" in text
    for name in ("resnet101-63fe2227.pth", "resnet101_deepstem", "mit_b5.pth", "model.pretrained=none"):
        assert name in text, name


def test_refused_train_and_reproduce_write_no_run_folder(tmp_path, capsys):
    from s4kit.cli import main
    from s4kit.engine.reproduce import reproduce

    run = tmp_path / "run"
    code = main(["train", "pascal/reco", f"run.dir={run}", "device=cpu"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "model.pretrained is not set" in lines[0], err
    assert not run.exists()
    with pytest.raises(ConfigError, match="model.pretrained is not set"):
        reproduce("reco", "pascal", "92", out=tmp_path / "rep")
    assert not (tmp_path / "rep").exists()


# ---------------------------------------------------------------- torchvision files
# Building a ResNet-101 costs about a CPU second: the module fixtures build each network once.

def _old_torchvision_file(net: torch.nn.Module) -> dict:
    """A state dict as the official torchvision ImageNet files hold it: with the classifier
    ``fc.*`` and without BatchNorm ``num_batches_tracked`` (the files predate that buffer)."""
    return {k: v.clone() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def torchvision_r101():
    """The key layout of torchvision's resnet101-63fe2227.pth (random values; no download)."""
    torch.manual_seed(0)
    return _old_torchvision_file(torchvision.models.resnet101())


@pytest.fixture(scope="module")
def r101_encoder():
    return ResNetEncoder("resnet101", output_stride=16)


def _check_loads(enc: torch.nn.Module, state: dict, path: Path) -> None:
    torch.save(state, path)
    load_encoder_weights(enc, path)
    own = enc.state_dict()
    assert {k for k in own if not k.endswith("num_batches_tracked")} == {k for k in state if not k.startswith("fc.")}
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k
    assert all(int(v) == 0 for k, v in own.items() if k.endswith("num_batches_tracked"))


def test_torchvision_imagenet_files_load_strictly(torchvision_r101, r101_encoder, tmp_path):
    assert "fc.weight" in torchvision_r101 and "bn1.num_batches_tracked" not in torchvision_r101
    _check_loads(r101_encoder, torchvision_r101, tmp_path / "resnet101-63fe2227.pth")
    r50 = _old_torchvision_file(torchvision.models.resnet50())
    _check_loads(ResNetEncoder("resnet50", output_stride=8), r50, tmp_path / "resnet50-0676ba61.pth")
    # a real BatchNorm buffer is not tolerated when missing (only the num_batches_tracked counters are)
    path = tmp_path / "missing.pth"
    torch.save({k: v for k, v in torchvision_r101.items() if k != "layer3.1.bn2.running_var"}, path)
    with pytest.raises(WeightsError) as exc:
        load_encoder_weights(r101_encoder, path)
    assert one_line(exc) == f"{path}: does not match the encoder: missing keys layer3.1.bn2.running_var"


# ---------------------------------------------------------------- the deep-stem ResNet-101

def unimatch_deep_stem_file(torchvision_state: dict, seed: int = 0) -> dict:
    """UniMatch's ``resnet101.pth`` layout, the stem written out by hand (model/backbone/resnet.py):
    conv1 = Sequential(conv 3->64 s2 [0], BN [1], ReLU, conv 64->64 [3], BN [4], ReLU, conv 64->128 [6]),
    bn1 = BN(128); layer1.0 reads 128 channels; layer2..4 as torchvision's ResNet-101; plus fc."""
    g = torch.Generator().manual_seed(seed)
    replaced = ("layer1.0.conv1.weight", "layer1.0.downsample.0.weight")
    state = {k: v for k, v in torchvision_state.items() if not (k.startswith(("conv1.", "bn1.")) or k in replaced)}

    def bn(prefix: str, c: int) -> dict:
        return {f"{prefix}.weight": torch.rand(c, generator=g) + 0.5, f"{prefix}.bias": torch.randn(c, generator=g),
                f"{prefix}.running_mean": torch.randn(c, generator=g),
                f"{prefix}.running_var": torch.rand(c, generator=g) + 0.5}

    state.update({"conv1.0.weight": torch.randn(64, 3, 3, 3, generator=g), **bn("conv1.1", 64),
                  "conv1.3.weight": torch.randn(64, 64, 3, 3, generator=g), **bn("conv1.4", 64),
                  "conv1.6.weight": torch.randn(128, 64, 3, 3, generator=g), **bn("bn1", 128),
                  "layer1.0.conv1.weight": torch.randn(64, 128, 1, 1, generator=g),
                  "layer1.0.downsample.0.weight": torch.randn(256, 128, 1, 1, generator=g)})
    return state


@pytest.fixture(scope="module")
def deep_stem_file(torchvision_r101, tmp_path_factory):
    state = unimatch_deep_stem_file(torchvision_r101)
    path = tmp_path_factory.mktemp("weights") / "resnet101.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def deep_encoder():
    return ResNetEncoder("resnet101_deepstem", output_stride=16)


def test_deep_stem_loads_the_unimatch_layout_strictly(deep_stem_file, deep_encoder):
    path, state = deep_stem_file
    _check_loads(deep_encoder, state, path)
    # and through the config and build_model: model.backbone=resnet101_deepstem model.pretrained=<file>
    cfg = load_config("pascal/reco", ["model.backbone=resnet101_deepstem", f"model.pretrained={path}"])
    net = build_model(cfg.model, 21)
    assert torch.equal(net.encoder.conv1[0].weight, state["conv1.0.weight"])
    assert torch.equal(net.encoder.layer1[0].downsample[0].weight, state["layer1.0.downsample.0.weight"])


@pytest.mark.parametrize("os_", [16, 8])
def test_deep_stem_shapes_and_strides(os_, deep_encoder):
    enc = (deep_encoder if os_ == 16 else ResNetEncoder("resnet101_deepstem", output_stride=os_)).eval()
    stem = [m for m in enc.conv1 if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in stem] == \
        [(3, 64, (3, 3), (2, 2)), (64, 64, (3, 3), (1, 1)), (64, 128, (3, 3), (1, 1))]
    assert enc.layer1[0].conv1.in_channels == 128 and enc.layer1[0].downsample[0].in_channels == 128
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert enc.bn1(enc.conv1(x)).shape == (1, 128, 32, 32)
        low, high = enc(x)
    assert low.shape == (1, 256, 16, 16) and high.shape == (1, 2048, 64 // os_, 64 // os_)
    assert (enc.low_channels, enc.high_channels) == (256, 2048)
    # OS 16: layer4 stride 1, first block dilation 1, then 2; OS 8: layer3 1 then 2, layer4 2 then 4
    expect = {16: {"layer3": (2, 1, 1), "layer4": (1, 1, 2)}, 8: {"layer3": (1, 1, 2), "layer4": (1, 2, 4)}}[os_]
    for layer, (stride, first, rest) in expect.items():
        blocks = getattr(enc, layer)
        assert blocks[0].conv2.stride == (stride, stride) and blocks[0].conv2.dilation == (first, first), layer
        assert all(b.conv2.dilation == (rest, rest) and b.conv2.stride == (1, 1) for b in blocks[1:]), layer


def test_wrong_key_sets_are_refused_naming_file_and_keys(deep_stem_file, deep_encoder, torchvision_r101,
                                                         r101_encoder, tmp_path):
    path, state = deep_stem_file
    tv = tmp_path / "resnet101-63fe2227.pth"
    torch.save(torchvision_r101, tv)
    with pytest.raises(WeightsError) as exc:
        load_encoder_weights(deep_encoder, tv)
    line = one_line(exc)
    assert line.startswith(f"{tv}: does not match the encoder: missing keys conv1.0.weight, conv1.1.bias") and \
        "unexpected keys conv1.weight" in line, line
    assert line.endswith("the file looks like a torchvision ResNet (7x7 stem): model.backbone=resnet18/34/50/101"), line
    with pytest.raises(WeightsError) as exc:
        load_encoder_weights(r101_encoder, path)
    assert "unexpected keys conv1.0.weight" in one_line(exc) and "deep-stem ResNet (UniMatch" in one_line(exc)

    shifted = {k.replace("conv1.3.", "conv1.2."): v for k, v in state.items()}  # an off-by-one Sequential index
    torch.save(shifted, tmp_path / "shifted.pth")
    with pytest.raises(WeightsError) as exc:
        load_encoder_weights(deep_encoder, tmp_path / "shifted.pth")
    assert one_line(exc) == (f"{tmp_path / 'shifted.pth'}: does not match the encoder: missing keys conv1.3.weight, "
                             "unexpected keys conv1.2.weight")

    narrow = dict(state, **{"conv1.0.weight": torch.zeros(32, 3, 3, 3)})  # a 32-wide first conv under conv1.*
    torch.save(narrow, tmp_path / "narrow.pth")
    with pytest.raises(WeightsError, match=r"narrow\.pth: shape mismatch for conv1\.0\.weight: .*\(32, 3, 3, 3\) "
                                           r"vs model \(64, 3, 3, 3\)"):
        load_encoder_weights(deep_encoder, tmp_path / "narrow.pth")

    mmseg = {"stem.0.weight": torch.zeros(32, 3, 3, 3), "stem.1.weight": torch.ones(32)}
    torch.save(mmseg, tmp_path / "v1c.pth")
    with pytest.raises(WeightsError, match="mmseg/mmcv ResNetV1c"):
        load_encoder_weights(deep_encoder, tmp_path / "v1c.pth")


# ---------------------------------------------------------------- MiT

def test_mit_hugging_face_layout_is_named(tmp_path):
    enc = MiTEncoder("mit_b0")
    hf = {f"segformer.encoder.{k}": v for k, v in list(enc.mit.state_dict().items())[:3]}
    torch.save(hf, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError) as exc:
        load_mit_weights(enc, tmp_path / "pytorch_model.bin")
    assert "Hugging Face transformers SegFormer" in one_line(exc) and "missing keys block1.0." in one_line(exc)


# ---------------------------------------------------------------- a run folder without its ImageNet file

def test_a_run_reopens_after_its_imagenet_file_is_gone(tmp_path):
    from s4kit.config import to_yaml
    from s4kit.engine.runs import load_run_step
    from s4kit.engine.trainer import build_checked

    torch.manual_seed(0)
    src = SmallEncoder(32)
    weights, run = tmp_path / "small.pth", tmp_path / "run"
    torch.save(src.state_dict(), weights)
    cfg = load_config("digits/supervised", [f"model.pretrained={weights}", f"run.dir={run}", "device=cpu"])
    method = build_checked(cfg)  # reads the file
    assert torch.equal(method.student.encoder.stage1[0][0].weight, src.stage1[0][0].weight)
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    torch.save({"step": 3, "method": method.state_dict()}, run / "checkpoints" / "last.pt")
    weights.unlink()
    with pytest.raises(WeightsError, match="small.pth: cannot read"):
        build_checked(cfg)  # training (and a resume) still needs the file
    again, reopened, step = load_run_step(run)  # eval, report, export: the checkpoint replaces every weight
    assert step == 3 and again.model.pretrained == str(weights)
    got = reopened.state_dict()
    assert all(torch.equal(got[k], v) for k, v in method.state_dict().items())


def test_config_backbones_are_the_encoders_and_each_has_a_named_checkpoint():
    from s4kit.config import BACKBONES, ENCODERS, IMAGENET_WEIGHTS
    from s4kit.models.backbones import RESNETS

    assert set(BACKBONES) == {"small"} | set(RESNETS)
    assert set(IMAGENET_WEIGHTS) == set(RESNETS) | set(ENCODERS)
    r50 = ResNetEncoder("resnet50_deepstem").state_dict()
    assert r50["conv1.6.weight"].shape == (128, 64, 3, 3) and r50["layer1.0.conv1.weight"].shape == (64, 128, 1, 1)
    assert "layer3.5.conv1.weight" in r50 and "layer3.6.conv1.weight" not in r50  # ResNet-50: 3-4-6-3 blocks
