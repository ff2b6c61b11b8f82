"""One training step of every registered method on CPU: losses, gradients, teacher update."""
import pytest
import torch

from s4kit.config import load_config
from s4kit.data.loaders import build_train_streams
from s4kit.methods import build_method, registered

from conftest import tiny_overrides


def _batches(cfg, method):
    labeled, unlabeled = build_train_streams(cfg, 0, need_unlabeled=method.uses_unlabeled)
    return next(labeled), (next(unlabeled) if unlabeled is not None else None)


@pytest.mark.parametrize("name", ["supervised", "meanteacher", "reco", "css", "prcl", "rc2l", "supervised_maskformer", "allspark"])
def test_one_training_step(name, digits_root, tmp_path):
    assert name in registered()
    cfg = load_config(f"digits/{name}", tiny_overrides(digits_root, tmp_path))
    torch.manual_seed(0)
    method = build_method(cfg)
    labeled, unlabeled = _batches(cfg, method)
    out = method.train_step(labeled, unlabeled)
    losses = {k: v for k, v in out.items() if k.startswith("loss")}
    assert "loss_sup" in losses and all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    if method.uses_unlabeled:
        assert "loss_unsup" in losses or {"loss_rcc", "loss_rmc", "loss_rfc", "loss_smc"} <= set(losses)
        assert 0 <= out["pl_coverage"] <= 100  # digits carry hidden ground truth
    if name in ("reco", "css", "prcl"):
        assert "loss_contrast" in losses
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in method.student.named_parameters()}
    trained = {n: g for n, g in grads.items() if method.uses_representation or not n.startswith("representation.")}
    assert all(g is not None for g in trained.values()) and any(g.abs().sum() > 0 for g in trained.values())
    if not method.uses_representation:
        assert all(g is None for n, g in grads.items() if n.startswith("representation."))
    if method.teacher is not None:
        assert all(p.grad is None for p in method.teacher.parameters())
        with torch.no_grad():
            for p in method.student.parameters():
                p.add_(1.0)
        method.after_step(0)  # first EMA step: teacher <- student
        assert all(torch.equal(t, s) for t, s in zip(method.teacher.parameters(), method.student.parameters()))


def test_predict_returns_logits_at_input_resolution(digits_root, tmp_path):
    cfg = load_config("digits/meanteacher", tiny_overrides(digits_root, tmp_path))
    method = build_method(cfg)
    x = torch.randn(2, 3, 32, 32)
    logits = method.predict(x)
    assert logits.shape == (2, cfg.data.num_classes, 32, 32)
    labels, conf = method.pseudo_labels(x)
    assert labels.shape == (2, 32, 32) and ((conf > 0) & (conf <= 1)).all()
    assert method.eval_model() is method.teacher


def test_unlabeled_padding_carries_no_pseudo_label(digits_root, tmp_path, monkeypatch):
    cfg = load_config("digits/meanteacher", tiny_overrides(digits_root, tmp_path) + ["augment.mix=none"])
    method = build_method(cfg)
    from s4kit.methods import steps

    captured = {}
    real = steps.unsupervised_ce

    def spy(kind, logits_u, pseudo, confidence, threshold):
        captured.update(pseudo=pseudo, confidence=confidence)
        return real(kind, logits_u, pseudo, confidence, threshold)

    monkeypatch.setattr("s4kit.methods.steps.unsupervised_ce", spy)
    labeled, unlabeled = _batches(cfg, method)
    unlabeled["valid"][:, :4] = False  # pretend the top rows were padding
    method.train_step(labeled, unlabeled)
    assert (captured["pseudo"][:, :4] == 255).all() and (captured["confidence"][:, :4] == 0).all()
    assert (captured["pseudo"][:, 4:] != 255).any() and (captured["confidence"][:, 4:] > 0).all()
