"""CSS (github.com/WangChangqi98/CSS) against s4kit: both label spaces with the mix and
cross labels, the similarity indicator, the EMA prototypes, the contrastive loss and its
class-sampling distribution, L_u on mix labels, the poly learning rate.

The official ``Model_mix`` / ``Model_cross`` forwards run as shipped, with their two
networks replaced by stubs returning fixed (logits, rep) and the PIL augmentation and
cross-GPU mixing replaced by the identity; the label maps the forward computed are the
first arguments of the augmentation, recorded there.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from . import harness as H

K, Q, M, D = 21, 64, 128, 128  # the code's Q = 256, M = 512, D = 256 cost minutes per loss on one CPU thread
B, HW, h = 4, 129, 33  # 4 labelled + 4 unlabelled crops of 129 x 129, head grid 33 x 33
LOSS = "generalframeworks/loss/loss.py `Contrast_Loss`"
COMPONENTS = [
    ("CSS label spaces + mix labels (C2, C6)", "generalframeworks/networks/ddp_model.py `Model_mix.forward`",
     "`methods.css.label_spaces`"),
    ("CSS cross labels (crs.)", "ddp_model.py `Model_cross.forward`", "`methods.css.label_spaces`"),
    ("CSS similarity indicator (C3)", "ddp_model.py `Model_mix.forward` (`prob_all`)",
     "`losses.css.rep_distribution`"),
    ("CSS prototype EMA (C1), 2 iterations", LOSS + " (prototype update)",
     "`losses.css.class_sums`, `ema_prototypes`"),
    ("CSS contrastive loss + gradient (C7), 2 iterations", LOSS, "`losses.css.css_contrast_loss`"),
    ("CSS contrast, a class without hard anchors", LOSS, "`css_contrast_loss(literal_denominator=...)`"),
    ("CSS class-sampling distribution", LOSS + " (`Categorical` probs)", "`losses.contrast.class_infonce`"),
    ("CSS L_u weighting on mix labels", "loss.py `Attention_Threshold_Loss` (mix_label.py)",
     "`methods.css.CSS._sources`, `losses.css.mix_unsupervised_loss`"),
    ("poly LR, per iteration (S11)", "generalframeworks/scheduler/my_lr_scheduler.py `PolyLR`",
     "`engine.trainer.poly_lr`"),
]


class Stub(nn.Module):
    """Returns fixed outputs: ``out_l`` for the labelled image tensor, ``out_u`` otherwise."""

    def __init__(self, image_l, out_l, out_u):
        super().__init__()
        self.image_l, self.out_l, self.out_u = image_l, out_l, out_u

    def forward(self, x):
        return self.out_l if x is self.image_l else self.out_u


def network_outputs(seed: int, gain: float = 4.0):
    """Labels (2B, h, w), class means (K, D), rep (2B, D, h, w) and logits (2B, K, h, w) that
    favour the labels (labelled rows first)."""
    g = torch.Generator().manual_seed(seed)
    lab = H.block_labels(2 * B, h, h, K, g, ignore_cols=0)
    means = torch.randn(K, D, generator=g)
    rep = means[lab].permute(0, 3, 1, 2) + torch.randn(2 * B, D, h, h, generator=g)
    logits = torch.randn(2 * B, K, h, h, generator=g)
    logits.scatter_add_(1, lab.unsqueeze(1), gain * torch.rand(2 * B, 1, h, h, generator=g))
    return lab, means, rep, logits


class Official:
    """The official CSS modules and a driver of their two forwards."""

    def __init__(self, root: Path):
        with H.official_imports(root):
            import generalframeworks.loss.loss as loss
            import generalframeworks.networks.ddp_model as ddp
            import generalframeworks.scheduler.my_lr_scheduler as lr
        self.loss, self.ddp, self.lr = loss, ddp, lr

    def forward(self, cls_name: str, temperature: float, teacher, student, prototypes, image_l, image_u):
        """Run ``Model_mix`` / ``Model_cross`` forward; returns (outputs, recorded label maps)."""
        cls = getattr(self.ddp, cls_name)
        net = cls.__new__(cls)
        nn.Module.__init__(net)
        net.temp, net.num_classes, net.step, net.alpha = temperature, K, 0, 0.99
        net.config = {"Dataset": {"crop_size": (HW, HW), "scale_size": (1.0, 1.0), "mix_mode": "cutmix"}}
        net.ema_model = Stub(image_l, (teacher[0][:B], teacher[1][:B]), (teacher[0][B:], teacher[1][B:]))
        net.model = Stub(image_l, (student[0][:B], student[1][:B]), (student[0][B:], student[1][B:]))
        n = 4 if cls_name == "Model_mix" else 5  # image + label maps + confidence maps
        recorded = []

        def augment(*args, **kwargs):
            if not recorded:
                recorded.extend(a.clone() for a in args[:n])
            return tuple(args[:n])

        suffix = "_2" if cls_name == "Model_mix" else "_3"
        with H.patched(self.ddp, "batch_transform" + suffix, augment), \
                H.patched(self.ddp, "generate_cut_gather" + suffix, lambda *a, **k: tuple(a[:n])):
            out = net(image_l, image_u, prototypes.clone())
        return out, recorded


def contrast_round(O: Official, x: dict, indicator, proto_o, proto_s, seen_s, literal: bool, seed: int):
    """One iteration's prototype update and contrast on both sides, draws replayed."""
    from s4kit.losses.contrast import flatten_pixels, own_class_scores
    from s4kit.losses.css import class_sums, css_contrast_loss, ema_prototypes

    rep, labels, valid = x["rep"], x["labels"], x["valid"]
    reps, lab = flatten_pixels(rep, labels, valid)
    draws = H.Draws(lab, own_class_scores(indicator, labels, valid) < 0.8, Q, M, seed)
    crit = O.loss.Contrast_Loss(Q, M, temp=0.5, strong_threshold=0.8, alpha=0.99)
    onehot, mask = H.official_onehot(labels, K), valid.float().unsqueeze(1)
    rec_o, rec_s = [], []
    po = proto_o.clone()
    with H.cuda_is_cpu(), H.gather_is_identity(O.loss), H.official_replay(O.loss, draws, rec_o):
        lo, (go,) = H.value_and_grads(lambda r: crit(r, onehot, mask, indicator, po), rep)
    new_s, seen = ema_prototypes(proto_s, seen_s, *class_sums(reps.detach(), lab, K), 0.99)
    with H.s4kit_replay(draws, rec_s):
        ls, (gs,) = H.value_and_grads(lambda r: css_contrast_loss(r, labels, valid, indicator, new_s, 0.8, 0.5, Q, M,
                                                                  literal_denominator=literal), rep)
    return {"loss": [(ls, lo), (gs, go)], "proto": (new_s, po), "dist": H.sampling_distribution_pairs(draws, rec_s, rec_o),
            "values": (float(ls), float(lo)), "state": (po, new_s, seen)}


def run(root: Path) -> list[H.Row]:
    from s4kit.engine.trainer import poly_lr
    from s4kit.losses.css import rep_distribution
    from s4kit.methods.css import CSS, label_spaces
    from s4kit.losses.css import mix_unsupervised_loss

    O = Official(root)
    names = iter(COMPONENTS)
    rows = []
    lab_t, means, rep_t, logit_t = network_outputs(10)  # teacher
    _, _, rep_s, logit_s = network_outputs(11)  # student
    g = torch.Generator().manual_seed(12)
    protos = means + 0.3 * torch.randn(K, D, generator=g)
    protos[[3, 17]] = 0.0  # two classes never observed: zero prototypes (cosine 0)
    image_l, image_u = torch.randn(B, 3, HW, HW), torch.randn(B, 3, HW, HW)

    mix_pairs, cross_pairs, ind_pairs = [], [], []
    for T in (0.25, 0.5):
        out, (_, y_mix, q_lgt, q_rep) = O.forward("Model_mix", T, (logit_t, rep_t), (logit_s, rep_s), protos,
                                                  image_l, image_u)
        s = label_spaces({"logits": logit_t[B:], "rep": rep_t[B:]}, protos, T, (HW, HW))
        mix_pairs += [(s["y_mix"], y_mix.long()), (s["q_logit"], q_lgt), (s["q_rep"], q_rep)]
        ind_pairs.append((rep_distribution(rep_s, protos, T), out[-1]))
        out_c, (_, y_cls, y_rep, q_cls, q_rep_c) = O.forward("Model_cross", T, (logit_t, rep_t), (logit_s, rep_s),
                                                             protos, image_l, image_u)
        cross_pairs += [(s["y_logit"], y_cls.long()), (s["y_rep"], y_rep.long()), (s["q_logit"], q_cls),
                        (s["q_rep"], q_rep_c), (rep_distribution(rep_s, protos, T), out_c[-1])]
    agree = float((s["y_mix"] != 255).float().mean())
    rows.append(H.judge(*next(names), mix_pairs, note=f"T = 0.25 and 0.5; labels, q^lgt, q^rep at {HW}x{HW}; "
                                                       f"the spaces agree on {100 * agree:.0f} % of pixels (T=0.5)"))
    rows.append(H.judge(*next(names), cross_pairs, note="y^lgt, y^rep, q^lgt, q^rep and the indicator, T = 0.25, 0.5"))
    rows.append(H.judge(*next(names), ind_pairs, note="student rep of 4+4 images, zero prototypes included"))

    # prototype EMA and the contrast over two iterations (iteration 1 from zero prototypes)
    x1 = H.contrast_inputs(4, 4, h, h, D, K, seed=20, per_image=(2, 4))
    x2 = H.contrast_inputs(4, 4, h, h, D, K, seed=21, per_image=(2, 4))
    zero = torch.zeros(K, D)
    r1 = contrast_round(O, x1, rep_distribution(x1["rep"], zero, 0.25), zero, zero,
                        torch.zeros(K, dtype=torch.bool), False, 5)
    po, ps, seen = r1["state"]
    indicator2 = rep_distribution(x2["rep"], ps, 0.25)
    r2 = contrast_round(O, x2, indicator2, po, ps, seen, False, 6)
    rows.append(H.judge(*next(names), [r1["proto"], r2["proto"]], note="first observation, then EMA alpha = 0.99"))
    rows.append(H.judge(*next(names), r1["loss"] + r2["loss"],
                        note=f"4+4 x {D} x {h}x{h}, Q={Q}, M={M}; losses {r1['values'][1]:.4f}, {r2['values'][1]:.4f}"))
    # a class whose every pixel is easy (indicator 0.9 for its label)
    c = int(torch.unique(x2["labels"][x2["valid"]])[1])
    easy = indicator2.clone()
    sel = (x2["labels"] == c).unsqueeze(1) & (torch.arange(K).view(1, K, 1, 1) == c)
    easy[sel] = 0.9
    d_def = contrast_round(O, x2, easy, po, ps, seen, False, 6)
    d_lit = contrast_round(O, x2, easy, po, ps, seen, True, 6)
    rows.append(H.judge(*next(names), d_def["loss"], option="method.literal_denominator=true",
                        option_pairs=d_lit["loss"],
                        note=f"class {c} all easy; loss {d_def['values'][0]:.4f} vs {d_def['values'][1]:.4f}"))
    rows.append(H.judge(*next(names), r1["dist"] + r2["dist"], note="iterations 1 and 2"))

    # L_u on mix labels: teacher logits sharpened so that some pixels reach delta_u = 0.97
    out, (_, y_mix, q_lgt, _) = O.forward("Model_mix", 0.25, (4 * logit_t, rep_t), (logit_s, rep_s), protos,
                                          image_l, image_u)
    pred_u = out[1]
    y_mix = y_mix.long()
    with H.cuda_is_cpu():
        lo = O.loss.Attention_Threshold_Loss(0.97)(pred_u, y_mix.masked_fill(y_mix == 255, -1), q_lgt)
    s = label_spaces({"logits": 4 * logit_t[B:], "rep": rep_t[B:]}, protos, 0.25, (HW, HW))
    y, _ = CSS._sources(s)["mix"]
    ls = mix_unsupervised_loss(pred_u, y, s["q_logit"], 0.97, "paper")  # the default: paper Eq. 8
    lc = mix_unsupervised_loss(pred_u, y, s["q_logit"], 0.97, "code")
    agree_n = (y_mix != 255).flatten(1).sum(1)
    w_code = (q_lgt >= 0.97).flatten(1).sum(1) / agree_n
    rows.append(H.judge(*next(names), [(ls, lo)], option="method.mix_weighting=code", option_pairs=[(lc, lo)],
                        note=f"loss: paper Eq. 8 {float(ls):.4f}, code {float(lo):.4f}; the code's per-image weight "
                             f"{[round(float(v), 2) for v in w_code]} counts confident pixels where the spaces "
                             "disagree"))

    total, base = 2000, 6.4e-3
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = O.lr.PolyLR(opt, total, min_lr=1e-4)
    got, want = [], []
    for t in range(total):
        got.append(poly_lr(base, t, total, 0.9, 1e-4))
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    rows.append(H.judge(*next(names), [(torch.tensor(got), torch.tensor(want))], tol=1e-12,
                        note="min_lr 1e-4, stepped every iteration as in mix_label.py"))
    return rows
