"""ReCo (github.com/lorenmt/reco, ``module_list.py``) against s4kit: the ReCo loss and its
gradient, its class-sampling distribution, the unsupervised loss, the EMA teacher and the
poly learning rate."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn

from . import harness as H

K, Q, M, D = 21, 64, 128, 128  # ReCo's Q = 256, M = 512, D = 256 cost minutes per loss on one CPU thread
LOSS = "module_list.py `compute_reco_loss`"
COMPONENTS = [
    ("ReCo loss + gradient (S5-S9)", LOSS, "`losses.contrast.reco_loss`"),
    ("ReCo loss, a class without hard anchors", LOSS, "`reco_loss(literal_denominator=...)`"),
    ("ReCo class-sampling distribution (S7)", LOSS + " (`Categorical` probs)", "`losses.contrast.class_infonce`"),
    ("ReCo unsupervised loss (S4)", "module_list.py `compute_unsupervised_loss`",
     "`losses.ce.unsupervised_weighted_ce`"),
    ("EMA teacher (S1)", "module_list.py `EMA.update`", "`models.ema.ema_update`"),
    ("poly LR (S11)", "module_list.py `PolyLR`", "`engine.trainer.poly_lr`"),
]


def load(root: Path):
    with H.official_imports(root):
        return H.load_file(root / "module_list.py", "official_reco_module_list")


def loss_pairs(ML, x: dict, literal: bool, seed: int = 1):
    """(loss, gradient) pairs and sampling-distribution pairs of one replayed ReCo loss."""
    from s4kit.losses.contrast import flatten_pixels, own_class_scores, reco_loss

    rep, labels, valid, prob = x["rep"], x["labels"], x["valid"], x["prob"]
    _, lab = flatten_pixels(rep, labels, valid)
    draws = H.Draws(lab, own_class_scores(prob, labels, valid) < 0.97, Q, M, seed)
    onehot, mask = H.official_onehot(labels, K), valid.float().unsqueeze(1)
    rec_o, rec_s = [], []
    with H.cuda_is_cpu(), H.official_replay(ML, draws, rec_o):
        lo, (go,) = H.value_and_grads(lambda r: ML.compute_reco_loss(r, onehot, mask, prob, 0.97, 0.5, Q, M), rep)
    with H.s4kit_replay(draws, rec_s):
        ls, (gs,) = H.value_and_grads(
            lambda r: reco_loss(r, labels, valid, prob, 0.97, 0.5, Q, M, literal_denominator=literal), rep)
    return [(ls, lo), (gs, go)], H.sampling_distribution_pairs(draws, rec_s, rec_o), (float(ls), float(lo))


def run(root: Path) -> list[H.Row]:
    ML = load(root)
    (c1, o1, s1), (c2, o2, s2), (c3, o3, s3), (c4, o4, s4), (c5, o5, s5), (c6, o6, s6) = COMPONENTS
    rows = []
    x = H.contrast_inputs(4, 4, 33, 33, D, K, seed=0)
    pairs, dist_pairs, (ls, lo) = loss_pairs(ML, x, literal=False)
    rows.append(H.judge(c1, o1, s1, pairs, note=f"4+4 x {D} x 33x33, K={K}, Q={Q}, M={M}; loss {lo:.4f}"))
    x_easy, c = H.make_class_easy(x)
    default, _, (ld, lo2) = loss_pairs(ML, x_easy, literal=False)
    literal, _, _ = loss_pairs(ML, x_easy, literal=True)
    rows.append(H.judge(c2, o2, s2, default, option="method.literal_denominator=true", option_pairs=literal,
                        note=f"class {c} all easy; loss {ld:.4f} vs {lo2:.4f} (s4kit divides by the classes "
                             "with anchors, the code by all present classes)"))
    rows.append(H.judge(c3, o3, s3, dist_pairs, note="per anchor class, official rotated order re-sorted"))

    from s4kit.losses.ce import unsupervised_weighted_ce

    g = torch.Generator().manual_seed(3)
    logits = 2 * torch.randn(4, K, 65, 65, generator=g)
    pseudo = torch.randint(0, K, (4, 65, 65), generator=g)
    pseudo[:, :, 50:] = 255  # padding / mixed-out region: confidence 0 there, as ReCo's pipeline makes it
    conf = (0.9 + 0.1 * torch.rand(4, 65, 65, generator=g)).masked_fill(pseudo == 255, 0.0)
    lo = ML.compute_unsupervised_loss(logits, pseudo.masked_fill(pseudo == 255, -1), conf, 0.97)
    ls = unsupervised_weighted_ce(logits, pseudo, conf, 0.97)
    rows.append(H.judge(c4, o4, s4, [(ls, lo)], note="per-image weight, 255 / -1 on a padded strip"))

    from s4kit.models.ema import ema_update

    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    official, teacher = ML.EMA(student, 0.99), copy.deepcopy(student)
    pairs = []
    for step in range(150):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.01 * torch.randn_like(p))
            student[1].running_mean.add_(0.1)  # the student's buffers move; neither EMA copies them
        official.update(student)
        ema_update(teacher, student, step, 0.99, "own")
    pairs = [(a, b) for a, b in zip(teacher.state_dict().values(), official.model.state_dict().values())]
    rows.append(H.judge(c5, o5, s5, pairs, tol=1e-6, note="150 updates, parameters and buffers (`buffers=own`)"))

    from s4kit.engine.trainer import poly_lr

    total, base = 2000, 2.5e-3
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = ML.PolyLR(opt, total, power=0.9, min_lr=1e-6)
    got, want = [], []
    for t in range(total):
        got.append(poly_lr(base, t, total, 0.9, 1e-6))
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    rows.append(H.judge(c6, o6, s6, [(torch.tensor(got), torch.tensor(want))], tol=1e-12,
                        note="stepped every iteration, 2000 steps (ReCo's script steps it once per epoch, "
                             "train_semisup.py; s4kit every iteration)"))
    return rows
