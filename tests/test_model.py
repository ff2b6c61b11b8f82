"""Networks and the mean teacher: docs/methods/substrate.md §10 checks 1-7."""
import pytest
import torch

from s4kit.models import DeepLabV3Plus, ResNetEncoder, SmallEncoder, WeightsError, load_encoder_weights
from s4kit.models.ema import ema_decay, ema_update, make_teacher


@pytest.mark.parametrize("os_, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_resnet_deeplab_shapes_and_strides(os_, rates):
    enc = ResNetEncoder("resnet18", output_stride=os_)
    net = DeepLabV3Plus(enc, num_classes=21, rep_dim=256, aspp_rates=rates).eval()
    x = torch.randn(1, 3, 64, 64)
    low, high = enc(x)
    assert low.shape[-1] == 64 // 4 and high.shape[-1] == 64 // os_
    out = net(x)
    assert out["feat"].shape[1] == 48 + 256 == 304
    assert out["logits"].shape == (1, 21, 16, 16)
    assert out["rep"].shape == (1, 256, 16, 16)
    assert [b[0].dilation[0] for b in net.aspp.branches[1:]] == list(rates)


def test_resnet50_low_level_channels():
    enc = ResNetEncoder("resnet50", output_stride=16)
    assert (enc.low_channels, enc.high_channels) == (256, 2048)


def test_representation_is_not_normalised():
    net = DeepLabV3Plus(SmallEncoder(8), 5, rep_dim=16, aspp_channels=16, low_channels=8, head_channels=16,
                        aspp_rates=(1, 2, 3))
    norms = net(torch.randn(2, 3, 32, 32))["rep"].norm(dim=1)
    assert norms.std() > 1e-3 and not torch.allclose(norms, torch.ones_like(norms))


def test_strict_weight_loading(tmp_path):
    src = ResNetEncoder("resnet18")
    state = {k: v.clone() for k, v in src.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # allowed extras
    good = tmp_path / "good.pth"
    torch.save(state, good)
    dst = ResNetEncoder("resnet18")
    load_encoder_weights(dst, good)
    assert torch.equal(dst.layer1[0].conv1.weight, src.layer1[0].conv1.weight)

    missing = dict(state)
    missing.pop("layer4.1.bn2.weight")
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"missing.pth.*layer4.1.bn2.weight"):
        load_encoder_weights(ResNetEncoder("resnet18"), tmp_path / "missing.pth")

    extra = dict(state, **{"decoder.head.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match="unexpected keys.*decoder.head.weight"):
        load_encoder_weights(ResNetEncoder("resnet18"), tmp_path / "extra.pth")

    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth"):
        load_encoder_weights(ResNetEncoder("resnet18"), tmp_path / "junk.pth")


def _small():
    torch.manual_seed(0)
    return DeepLabV3Plus(SmallEncoder(8), 3, rep_dim=8, aspp_channels=8, low_channels=4, head_channels=8,
                         aspp_rates=(1, 2, 3))


def test_ema_first_step_copies_and_decay_warms_up():
    student = _small()
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, step=0, alpha=0.99)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters()))
    assert all(ema_decay(k, 0.99) == pytest.approx(k / (k + 1)) for k in range(99))
    assert all(ema_decay(k, 0.99) <= 0.99 for k in range(1000))


def test_ema_rule_and_no_teacher_gradients():
    student = _small()
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.5)
    d = ema_update(teacher, student, step=500, alpha=0.99)
    assert d == 0.99
    for b, t, s in zip(before, teacher.parameters(), student.parameters()):
        assert torch.allclose(t, 0.99 * b + 0.01 * s, atol=1e-6)


def test_ema_buffer_policies():
    student = _small()
    teacher = make_teacher(student)
    student.train()(torch.randn(4, 3, 16, 16))  # moves the student's BN running stats
    own = [b.clone() for b in teacher.buffers()]
    ema_update(teacher, student, step=5, buffers="own")
    assert all(torch.equal(a, b) for a, b in zip(own, teacher.buffers()))
    t_before = [b.clone() for b in teacher.buffers()]
    d = ema_update(teacher, student, step=5, buffers="ema")
    for b0, t, s in zip(t_before, teacher.buffers(), student.buffers()):
        if torch.is_floating_point(t):
            assert torch.allclose(t, d * b0 + (1 - d) * s, atol=1e-6)
    ema_update(teacher, student, step=5, buffers="copy")
    assert all(torch.equal(a, b) for a, b in zip(teacher.buffers(), student.buffers()))
