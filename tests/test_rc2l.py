"""RC²L: the mask-classification head, MaskFormer matching and set loss, the four region losses."""
import math

import pytest
import torch
import torch.nn.functional as F

from s4kit.config import ConfigError, load_config
from s4kit.data.loaders import build_train_streams
from s4kit.losses import region as R
from s4kit.methods import build_method
from s4kit.models.maskformer import DecoderLayer, MaskFormerHead, masked_attention_mask, semantic_inference, sine_positions

from conftest import tiny_overrides


def _blocks(h=6, w=6):
    """Three binary masks partitioning an h x w grid into column blocks, flattened (3, h*w)."""
    lab = torch.zeros(h, w, dtype=torch.long)
    lab[:, 2:4] = 1
    lab[:, 4:] = 2
    return lab, F.one_hot(lab.reshape(-1), 3).T.float()


# -- building blocks ---------------------------------------------------------------------
def test_hungarian_matching_recovers_a_permutation():
    torch.manual_seed(0)
    _, masks = _blocks()
    classes = torch.tensor([3, 5, 7])
    perm = torch.tensor([4, 0, 2])  # query perm[j] predicts segment j
    n, k = 6, 9
    mask_logits = torch.full((n, masks.shape[1]), -8.0)
    class_logits = torch.zeros(n, k + 1)
    class_logits[:, k] = 5.0  # the other queries say "no object"
    for j, q in enumerate(perm):
        mask_logits[q] = masks[j] * 16 - 8
        class_logits[q, classes[j]] = 10.0
    rows, cols = R.hungarian_match(R.matching_cost(class_logits, mask_logits, classes, masks))
    assert cols.tolist() == [0, 1, 2] and rows.tolist() == perm.tolist()
    # permuting the queries permutes the matching the same way
    shuffle = torch.randperm(n)
    rows2, _ = R.hungarian_match(R.matching_cost(class_logits[shuffle], mask_logits[shuffle], classes, masks))
    assert shuffle[rows2].tolist() == perm.tolist()


def test_hungarian_rejects_nan():
    with pytest.raises(ValueError):
        R.hungarian_match(torch.tensor([[0.0, float("nan")]]))


def test_pairwise_costs_match_per_mask_losses():
    torch.manual_seed(1)
    x, t = torch.randn(4, 20), (torch.rand(3, 20) > 0.5).float()
    focal, dice = R.pairwise_focal_cost(x, t), R.pairwise_dice_cost(x, t)
    for i in range(4):
        for j in range(3):
            assert torch.isclose(focal[i, j], R.sigmoid_focal_loss(x[i:i + 1], t[j:j + 1])[0], atol=1e-6)
            assert torch.isclose(dice[i, j], R.dice_loss(x[i:i + 1], t[j:j + 1])[0], atol=1e-6)
    # hand-computed dice: s = 0.5 everywhere, t with 10 ones of 20 -> 1 - (10 + 1) / (10 + 10 + 1)
    assert torch.isclose(R.dice_loss(torch.zeros(1, 20), torch.cat([torch.ones(10), torch.zeros(10)])[None]),
                         torch.tensor([1 - 11 / 21]))


def test_semantic_inference_of_one_hot_masks_reproduces_the_label_map():
    lab, masks = _blocks()
    k = 4
    classes = torch.tensor([2, 0, 3])  # segment j has class classes[j]
    cls = torch.full((1, 5, k + 1), -20.0)
    ml = torch.full((1, 5, 6, 6), -20.0)
    for j in range(3):
        cls[0, j, classes[j]] = 20.0
        ml[0, j] = (masks[j].reshape(6, 6) * 40 - 20)
    cls[0, 3:, k] = 20.0  # no-object queries with full masks must not leak into S
    ml[0, 3:] = 20.0
    sem = semantic_inference(cls, ml)
    assert sem.shape == (1, k, 6, 6)
    assert torch.equal(sem.argmax(1)[0], classes[lab])
    assert sem.max() <= 1.0 + 1e-4 and sem[0, 1].max() < 1e-3  # class 1 is absent


def test_masked_attention_mask_by_hand():
    # 2 queries on a 2x2 grid: query 0 covers the left column, query 1 no pixel at all
    logits = torch.tensor([[[[3.0, -3.0], [1.0, -1.0]], [[-2.0, -2.0], [-2.0, -2.0]]]])
    m = masked_attention_mask(logits, (2, 2), heads=3)
    assert m.shape == (3, 2, 4) and m.dtype == torch.bool
    assert m[0, 0].tolist() == [False, True, False, True]  # blocked where sigmoid < 0.5
    assert m[:, 1].any().item() is False  # an empty mask attends everywhere (Mask2Former)
    assert torch.equal(m[0], m[2])  # the same mask for every head


def test_masked_cross_attention_ignores_blocked_memory():
    torch.manual_seed(0)
    layer = DecoderLayer(8, 2, 16, 0.0).eval()
    q, qpos = torch.randn(1, 2, 8), torch.randn(1, 2, 8)
    mem, mpos = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    mem2 = mem.clone()
    mem2[:, 2:] += 5 * torch.randn(1, 2, 8)  # change memory tokens 2 and 3 only
    blocked = torch.tensor([[[False, False, True, True]] * 2]).repeat_interleave(2, 0)  # no query sees 2, 3
    assert torch.allclose(layer(q, qpos, mem2, mpos, blocked), layer(q, qpos, mem, mpos, blocked), atol=1e-6)
    assert (layer(q, qpos, mem2, mpos) - layer(q, qpos, mem, mpos)).abs().max() > 1e-2  # unmasked: they matter


@pytest.mark.parametrize("memory", ["aspp", "pixel"])
def test_maskformer_head_options_shapes(memory):
    from s4kit.models.backbones import SmallEncoder

    torch.manual_seed(0)
    head = MaskFormerHead(SmallEncoder(8, 8), 5, mask_dim=16, num_queries=6, dec_layers=2, dec_heads=2, dec_ffn=32,
                          dropout=0.0, aspp_channels=16, low_channels=8, head_channels=16, aspp_rates=(1, 2, 3),
                          memory=memory, masked_attention=True).eval()
    out = head(torch.randn(2, 3, 32, 32))
    assert out["pred_logits"].shape == (2, 6, 6) and out["pred_masks"].shape == (2, 6, 8, 8)
    assert len(out["aux"]) == 2  # the prediction from q_0 and the first layer's (deep supervision)
    with pytest.raises(ValueError, match="dec_memory"):
        MaskFormerHead(SmallEncoder(8, 8), 5, mask_dim=16, memory="fpn")


def test_mask_average_pool():
    feat = torch.randn(5, 12)
    one = torch.zeros(1, 12)
    one[0, 7] = 1
    assert torch.allclose(R.mask_average_pool(feat, one)[0], feat[:, 7], atol=1e-5)
    assert torch.allclose(R.mask_average_pool(feat, torch.ones(1, 12))[0], feat.mean(1), atol=1e-5)
    assert torch.isfinite(R.mask_average_pool(feat, torch.zeros(1, 12))).all()


def test_sine_positions_distinct():
    p = sine_positions(3, 4, 8, "cpu")
    assert p.shape == (12, 8) and torch.unique(p, dim=0).shape[0] == 12
    with pytest.raises(ValueError):
        sine_positions(3, 4, 6, "cpu")


def test_set_loss_is_small_for_a_perfect_prediction_and_large_for_a_wrong_one():
    lab, masks = _blocks()
    k, n = 3, 5
    cls = torch.full((1, n, k + 1), -10.0)
    cls[0, :, k] = 10.0
    ml = torch.full((1, n, 6, 6), -10.0)
    for j in range(3):
        cls[0, j + 1, j], cls[0, j + 1, k] = 10.0, -10.0
        ml[0, j + 1] = masks[j].reshape(6, 6) * 20 - 10
    good = R.set_loss(cls, ml, lab[None])
    assert all(v < 0.01 for v in good.values())
    bad = R.set_loss(cls, ml.roll(1, dims=1), lab[None])  # masks now belong to the wrong queries
    assert sum(bad.values()) > 1.0
    # ignore pixels are left out: ignoring everything but segment 0 keeps the good loss small
    lab_ign = lab.clone()
    lab_ign[lab_ign > 0] = 255
    assert R.set_loss(cls, ml, lab_ign[None])["dice"] < 0.01


# -- the four RC²L losses ------------------------------------------------------------------
def test_rcc_zero_on_agreement_and_no_object_weight():
    logits = torch.full((1, 4, 4), -30.0)
    targets = torch.tensor([[0, 2, 3, 3]])
    logits[0, torch.arange(4), targets[0]] = 30.0
    assert R.rcc_loss(logits, targets) < 1e-6
    # uniform logits, all targets ∅: the weighted mean of -log(1/4) equals log 4 whatever w_∅
    assert math.isclose(R.rcc_loss(torch.zeros(1, 4, 4), torch.full((1, 4), 3)).item(), math.log(4), rel_tol=1e-5)
    # one real target and three ∅: (1*log4*... ) weights 1 and 0.1 -> still log 4 for uniform logits,
    # but a wrong-class logit on the real target weighs 10x a wrong ∅
    wrong_real = torch.zeros(1, 2, 4)
    wrong_real[0, 0, 1] = 5.0
    wrong_empty = torch.zeros(1, 2, 4)
    wrong_empty[0, 1, 1] = 5.0
    t = torch.tensor([[0, 3]])
    base = R.rcc_loss(torch.zeros(1, 2, 4), t)
    assert math.isclose((R.rcc_loss(wrong_real, t) - base).item() / (R.rcc_loss(wrong_empty, t) - base).item(), 10.0,
                        rel_tol=1e-4)


def test_rmc_minimal_on_identical_masks_and_grows_when_swapped_or_blurred():
    _, masks = _blocks()
    same = R.rmc_loss([masks], [masks], 0.1)
    # anchor j: positive D = 1, negatives D = 0 -> -log(e^10 / (e^10 + 2)) = log(1 + 2 e^-10)
    assert math.isclose(same.item(), math.log(1 + 2 * math.exp(-10)), rel_tol=1e-2)
    swapped = R.rmc_loss([masks[[1, 0, 2]]], [masks], 0.1)
    blurred = R.rmc_loss([0.5 * masks + 0.5 / 3], [masks], 0.1)
    # blurred: D(positive) = 2/3, D(negative) = 1/6 -> gap 0.5 / tau = 5 -> log(1 + 2 e^-5)
    assert swapped > 1.0 and math.isclose(blurred.item(), math.log(1 + 2 * math.exp(-5)), rel_tol=1e-2)
    assert blurred > 100 * same
    assert R.rmc_loss([masks[:1]], [masks[:1]], 0.1) == 0  # N^t < 2: skipped


def test_rfc_minimal_on_identical_regions_and_equal_similarities():
    torch.manual_seed(0)
    feats = torch.eye(4) * 3
    classes = torch.tensor([0, 1, 1, 2])
    same = R.rfc_loss(feats, feats, classes, 0.1)
    assert same < 1e-3
    swapped = R.rfc_loss(feats[[3, 1, 2, 0]], feats, classes, 0.1)
    assert swapped > 5.0
    # equal similarities: loss = mean_j ln(1 + #negatives_j); anchors 1 and 2 share a class (2 negatives)
    flat = torch.ones(4, 3)
    expect = (math.log(4) + math.log(3) + math.log(3) + math.log(4)) / 4
    assert math.isclose(R.rfc_loss(flat, flat, classes, 0.1).item(), expect, rel_tol=1e-5)
    assert R.rfc_loss(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 0


def test_smc_zero_on_identical_hard_masks_and_only_confident_classes():
    lab, masks = _blocks()
    sem = masks.reshape(1, 3, 6, 6)
    valid = torch.ones(1, 6, 6, dtype=torch.bool)
    assert R.smc_loss(sem, sem, valid, 0.7) < 1e-6
    assert R.smc_loss(sem[:, [1, 0, 2]], sem, valid, 0.7) > 0.6  # swapped classes
    blurred = 0.6 * sem + 0.4 / 3
    assert R.smc_loss(blurred, sem, valid, 0.7) > 0.1
    # teacher unsure about class 2 (conf 0.5 < 0.7): only classes 0, 1 count
    t = sem.clone()
    t[0, 2] = masks[2].reshape(6, 6) * 0.5
    t[0, 0] += masks[2].reshape(6, 6) * 0.5 - 1e-3
    student = sem.clone()
    student[0, 2] = 0.0  # wrong on class 2 only
    assert R.smc_loss(student, t, valid, 0.7) < 1e-6
    assert R.smc_loss(student, t, valid, 0.4) > 0.3


def test_teacher_regions_threshold():
    n, k = 4, 3
    cls = torch.zeros(n, k + 1)
    cls[0, 1] = 10.0  # confident class 1
    cls[1, k] = 10.0  # no object
    cls[2, 2] = 0.5  # unsure
    cls[3, 0] = 10.0  # confident but empty mask
    ml = torch.full((n, 9), 5.0)
    ml[3] = -5.0
    idx, c, hard, soft = R.teacher_regions(cls, ml, torch.ones(9, dtype=torch.bool), 0.7)
    assert idx.tolist() == [0] and c.tolist() == [1] and hard.sum() == 9


# -- the methods -----------------------------------------------------------------------------
def _method(name, digits_root, tmp_path, extra=()):
    cfg = load_config(f"digits/{name}", tiny_overrides(digits_root, tmp_path) + list(extra))
    torch.manual_seed(0)
    method = build_method(cfg)
    labeled, unlabeled = build_train_streams(cfg, 0, need_unlabeled=method.uses_unlabeled)
    return cfg, method, next(labeled), (next(unlabeled) if unlabeled is not None else None)


@pytest.mark.parametrize("matching", ["hungarian", "index"])
def test_rc2l_training_step(matching, digits_root, tmp_path):
    cfg, method, labeled, unlabeled = _method("rc2l", digits_root, tmp_path,
                                              [f"method.matching={matching}", "method.region_threshold=0.0",
                                               "method.smc_threshold=0.0"])
    out = method.train_step(labeled, unlabeled)
    for key in ("loss_sup", "loss_rcc", "loss_rmc", "loss_rfc", "loss_smc"):
        assert out[key].dim() == 0 and torch.isfinite(out[key])
    assert out["regions"] > 0  # threshold 0: the random teacher yields regions
    sum(v for k, v in out.items() if k.startswith("loss")).backward()
    assert all(p.grad is not None for p in method.student.parameters())
    assert all(p.grad is None for p in method.teacher.parameters())
    logits = method.predict(labeled["image"])
    assert logits.shape == (4, cfg.data.num_classes, 32, 32)
    assert torch.allclose(logits.softmax(1).sum(1), torch.ones(1))


def test_rc2l_zero_unsup_weight_reduces_to_supervised_maskformer(digits_root, tmp_path):
    _, sup, labeled, _ = _method("supervised_maskformer", digits_root, tmp_path / "a")
    _, rc, _, unlabeled = _method("rc2l", digits_root, tmp_path / "b", ["method.unsup_weight=0"])
    rc.student.load_state_dict(sup.student.state_dict())
    torch.manual_seed(1)
    a = sup.train_step(labeled)["loss_sup"]
    out = rc.train_step(labeled, unlabeled)
    assert torch.isclose(a, out["loss_sup"], rtol=1e-5)
    assert all(out[k] == 0 for k in ("loss_rcc", "loss_rmc", "loss_rfc", "loss_smc"))


def test_rc2l_rejects_a_per_pixel_model(digits_root, tmp_path):
    with pytest.raises(ConfigError, match="maskformer"):
        load_config("digits/rc2l", tiny_overrides(digits_root, tmp_path) + ["model.name=deeplabv3plus"])
    with pytest.raises(ConfigError, match="matching"):
        load_config("digits/rc2l", tiny_overrides(digits_root, tmp_path) + ["method.matching=x"])


def test_mask_resolution_head_and_input_agree_on_a_perfect_prediction(digits_root, tmp_path):
    """Masks that are exact at the head grid give a small set loss at both resolutions; a bad
    option value is rejected."""
    from s4kit.methods.rc2l import maskformer_supervised_loss
    from omegaconf import OmegaConf

    lab = torch.zeros(1, 32, 32, dtype=torch.long)
    lab[:, :, 16:] = 3
    k, n = 4, 3
    cls = torch.full((1, n, k + 1), -10.0)
    cls[0, :, k] = 10.0
    ml = torch.full((1, n, 8, 8), -10.0)
    for q, c in enumerate([0, 3]):
        cls[0, q, c], cls[0, q, k] = 10.0, -10.0
        ml[0, q, :, 4 * (c > 0):4 + 4 * (c > 0)] = 10.0
    out = {"pred_logits": cls, "pred_masks": ml, "aux": []}
    base = dict(deep_supervision=True, no_object_weight=0.1, class_weight=1.0, focal_weight=20.0, dice_weight=1.0)
    head = maskformer_supervised_loss(out, lab, OmegaConf.create(dict(base, mask_resolution="head")))
    inp = maskformer_supervised_loss(out, lab, OmegaConf.create(dict(base, mask_resolution="input")))
    assert head < 0.01 and inp < 0.5  # bilinear upsampling blurs the 2 border columns only
    wrong = maskformer_supervised_loss(dict(out, pred_masks=ml.flip(-1)), lab,
                                       OmegaConf.create(dict(base, mask_resolution="input")))
    assert wrong > 5 * inp
    with pytest.raises(ValueError, match="mask_resolution"):
        maskformer_supervised_loss(out, lab, OmegaConf.create(dict(base, mask_resolution="x")))


def test_region_losses_vanish_when_student_equals_teacher(digits_root, tmp_path):
    """Identity sanity (reference §15.9): teacher outputs fed as the student's give minimal losses."""
    _, method, _, unlabeled = _method("rc2l", digits_root, tmp_path, ["method.matching=index"])
    k = 11
    n = 16
    cls = torch.full((2, n, k + 1), -20.0)
    cls[:, :, k] = 20.0
    ml = torch.full((2, n, 8, 8), -20.0)
    lab = torch.zeros(8, 8, dtype=torch.long)
    lab[:, 3:] = 4
    lab[5:, :] = 7
    for q, c in enumerate([0, 4, 7]):
        cls[:, q, c], cls[:, q, k] = 20.0, -20.0
        ml[:, q] = (lab == c).float() * 40 - 20
    pix = torch.randn(2, 8, 8, 8)
    out = {"pred_logits": cls, "pred_masks": ml, "rep": pix, "sem": semantic_inference(cls, ml)}
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    same = method.region_losses(out, out, valid)
    assert same["regions"] == 3
    assert same["rcc"] < 1e-4 and same["smc"] < 1e-4 and same["rmc"] < 1e-3 and same["rfc"] < 0.05
    swapped = dict(out, pred_masks=ml[:, [1, 2, 0] + list(range(3, n))])
    swapped["sem"] = semantic_inference(cls, swapped["pred_masks"])
    worse = method.region_losses(swapped, out, valid)
    assert worse["rmc"] > 1.0 and worse["smc"] > 0.5
    _, hung, _, _ = _method("rc2l", digits_root, tmp_path / "h", ["method.matching=hungarian"])
    assert hung.region_losses(out, out, valid)["rcc"] < 1e-4


def test_rcc_ignores_queries_with_target_minus_one():
    logits = torch.randn(1, 4, 4)
    t = torch.tensor([[1, 3, -1, -1]])  # queries 2 and 3 are left out
    kept = R.rcc_loss(logits[:, :2], t[:, :2])
    assert torch.allclose(R.rcc_loss(logits, t), kept)
    assert R.rcc_loss(logits, torch.full((1, 4), -1)).item() == 0.0  # nothing kept: 0, not NaN


def test_merge_same_class_keeps_one_region_per_class():
    index, classes = torch.tensor([3, 5, 7]), torch.tensor([2, 1, 2])
    hard = torch.eye(3)
    conf = torch.tensor([0.7, 0.9, 0.8])
    i, c, h, s = R.merge_same_class(index, classes, hard, 0.5 * hard, conf)
    assert c.tolist() == [1, 2] and i.tolist() == [5, 7]  # class 2: query 7 is the more confident
    assert h.tolist() == [[0, 1, 0], [1, 0, 1]]  # the union of queries 3 and 7
    assert torch.equal(s, 0.5 * h)
    # distinct classes: nothing merges, rows sorted by class
    i, c, h, _ = R.merge_same_class(index, torch.tensor([4, 1, 2]), hard, hard, conf)
    assert c.tolist() == [1, 2, 4] and i.tolist() == [5, 7, 3] and torch.equal(h, hard[[1, 2, 0]])


def test_rcc_unmatched_modes(digits_root, tmp_path):
    # teacher: query 0 a confident region of class 3, query 1 confidently ∅, the others unsure;
    # student: query 0 says 3, query 1 ∅, the others (wrongly confident) class 5
    k = 11
    for mode, supervised in (("noobject", "all"), ("ignore", [0]), ("teacher", [0, 1])):
        _, method, _, _ = _method("rc2l", digits_root, tmp_path / mode, [f"method.rcc_unmatched={mode}",
                                                                          "method.matching=index"])
        n = method.cfg.model.num_queries
        cls_t = torch.zeros(1, n, k + 1)
        cls_t[0, 0, 3], cls_t[0, 1, k] = 10.0, 10.0
        masks = torch.full((1, n, 8, 8), -10.0)
        masks[0, 0, :4] = 10.0
        out_t = {"pred_logits": cls_t, "pred_masks": masks, "rep": torch.randn(1, 16, 8, 8), "sem": torch.rand(1, k, 8, 8)}
        cls_s = torch.zeros(1, n, k + 1)
        cls_s[0, 0, 3], cls_s[0, 1, k], cls_s[0, 2:, 5] = 4.0, 4.0, 4.0
        got = method.region_losses({**out_t, "pred_logits": cls_s}, out_t, torch.ones(1, 8, 8, dtype=torch.bool))["rcc"]
        rows = list(range(n)) if supervised == "all" else supervised
        target = torch.tensor([3 if q == 0 else k for q in rows])
        weight = torch.ones(k + 1)
        weight[k] = 0.1
        torch.testing.assert_close(got, F.cross_entropy(cls_s[0, rows], target, weight=weight))
