"""PRCL (github.com/Haoyu-Xie/PRCL) against s4kit: the probability head (and the batch its
BatchNorm sees), the mutual likelihood score, the precision-weighted prototypes, the loss
with its gradients and its class-sampling distribution."""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch

from . import harness as H

K, Q, M, D = 21, 64, 128, 128  # the code's Q = 256, M = 512, D = 256 cost minutes per loss on one CPU thread
LOSS = "generalframeworks/loss/loss.py `Prcl_Loss`"
HEAD = "generalframeworks/networks/uncer_head.py `Uncertainty_head`"
COMPONENTS = [
    ("PRCL probability head, train mode + gradients (P1)", HEAD, "`models.probability.ProbabilityHead`"),
    ("PRCL probability head, eval mode", HEAD, "`ProbabilityHead`"),
    ("PRCL head BatchNorm batch: labelled + unlabelled", "prcl.py (head on `cat(raw_l, raw_u)`)",
     "`methods.prcl.PRCL` (`sigma_head_batch`)"),
    ("PRCL MLS (P2)", "loss.py `mutual_likelihood_score`", "`losses.prcl.mls`"),
    ("PRCL precision-weighted prototypes (P4-P5)", LOSS + " (Equation 7, 8)", "`losses.prcl.distribution_prototypes`"),
    ("PRCL loss + gradients (P6-P7)", LOSS + ", `Prcl_Loss_single`", "`losses.prcl.prcl_loss`"),
    ("PRCL loss, a class without hard anchors", LOSS, "`prcl_loss(literal_denominator=...)`"),
    ("PRCL class-sampling distribution", LOSS + " (`Categorical` probs)", "`losses.contrast.class_infonce`"),
]


def copy_head(official, ours) -> None:
    """Official ``Uncertainty_head`` weights into s4kit's ``ProbabilityHead`` (same layout)."""
    with torch.no_grad():
        ours.w1.copy_(official.fc1)
        ours.w2.copy_(official.fc2)
        ours.bn1.load_state_dict(official.bn1.state_dict())
        ours.bn2.load_state_dict(official.bn2.state_dict())
        ours.gamma.copy_(official.gamma[0])
        ours.beta.copy_(official.beta[0])


def head_rows(UH, names) -> list[H.Row]:
    from s4kit.methods.prcl import PRCLOptions
    from s4kit.models.probability import ProbabilityHead

    rows = []
    torch.manual_seed(0)
    ho, hs = UH.Uncertainty_head(304, D), ProbabilityHead(304, D)
    with torch.no_grad():  # non-trivial affine BatchNorm and gamma / beta
        ho.bn1.weight.uniform_(0.5, 1.5)
        ho.bn1.bias.uniform_(-0.2, 0.2)
        ho.gamma.fill_(1.3)
        ho.beta.fill_(-0.4)
    copy_head(ho, hs)
    x = 2 * torch.randn(8, 304, 33, 33) + 0.5
    w = torch.randn(8, D, 33, 33)

    def train_step(head, dtype, own):
        """sigma^2 and the gradients of <sigma^2, w> of a copy of ``head`` in ``dtype``."""
        head = copy.deepcopy(head).to(dtype)
        xi = x.to(dtype).requires_grad_(True)
        out = head(xi)
        (out.to(dtype) * w.to(dtype)).sum().backward()
        names = ("w1", "w2", "gamma", "beta") if own else ("fc1", "fc2", "gamma", "beta")
        grads = [getattr(head, n).grad.reshape(getattr(head, n).shape if own or n.startswith("fc") else ())
                 for n in names]
        return [out, xi.grad, *grads, head.bn1.running_var]

    # compared in float64: in float32, d/dx through the train-mode BatchNorms is rounding noise (the
    # code in float32 against itself in float64 differs by ~1 relative, measured below); s4kit's head
    # computes its last steps in float32 whatever the input (max rel ~1e-7 left)
    got64, want64 = train_step(hs, torch.float64, True), train_step(ho, torch.float64, False)
    got32, want32 = train_step(hs, torch.float32, True), train_step(ho, torch.float32, False)
    f32 = H.diff_pairs(zip(got32, want32))
    code32 = H.diff_pairs(zip(want32, want64))
    rows.append(H.judge(*next(names), list(zip(got64, want64)),
                        note=f"8 x 304 x 33x33 -> {D}, float64; sigma^2, d/dx, d/dW1, d/dW2, d/dgamma, d/dbeta, "
                             f"BN running var; in float32 d/dx is rounding noise (code float32 vs float64: max rel "
                             f"{code32.max_rel:.1e}; s4kit vs code in float32: {f32.max_rel:.1e})"))
    with torch.no_grad():  # one train forward, so the eval test sees updated running statistics
        ho(x)
        hs(x)
    ho.eval()
    hs.eval()
    with torch.no_grad():
        rows.append(H.judge(*next(names), [(hs(x), ho(x))], note="running statistics of one train forward"))
    # the official script runs the head once on cat(l, u): BatchNorm statistics over both streams
    ho.train()
    hs.train()
    copy_head(ho, hs)
    x_l = 2 * torch.randn(4, 304, 33, 33) + 0.5
    x_u = 1.2 * torch.randn(4, 304, 33, 33) - 0.3  # another stream, other statistics
    with torch.no_grad():
        joint_o = ho(torch.cat([x_l, x_u]))
        joint_s = hs(torch.cat([x_l, x_u]))
        per_stream = torch.cat([hs(x_l), hs(x_u)])
    field = {f.name: f for f in dataclasses.fields(PRCLOptions)}.get("sigma_head_batch")
    default = field.default if field is not None else "per_stream"
    gap = H.diff(per_stream, joint_o)
    if default == "joint":
        rows.append(H.judge(*next(names), [(joint_s, joint_o)],
                            note=f"default `sigma_head_batch=joint`; `per_stream` differs by max abs {gap.max_abs:.2f}"))
    else:
        rows.append(H.judge(*next(names), [(per_stream, joint_o)], option="method.sigma_head_batch=joint",
                            option_pairs=[(joint_s, joint_o)],
                            note="s4kit runs the head inside each student forward (per-stream statistics)"
                                 + ("" if field else "; option not in this s4kit, the head on the joint batch "
                                                      "is what it selects")))
    return rows


def loss_run(PL, x, s2, literal: bool, variant: str, seed: int = 2):
    """Replayed official and s4kit losses: pairs, sampling pairs, prototype pairs, values."""
    from s4kit.losses.contrast import flatten_pixels, own_class_scores
    from s4kit.losses.prcl import distribution_prototypes, prcl_loss

    mu, labels, valid, prob = x["rep"], x["labels"], x["valid"], x["prob"]
    mus, lab = flatten_pixels(mu, labels, valid)
    s2s, _ = flatten_pixels(s2, labels, valid)
    draws = H.Draws(lab, own_class_scores(prob, labels, valid) < 0.8, Q, M, seed)
    crit = getattr(PL, variant)(Q, M, temp=100.0, strong_threshold=0.8)
    onehot, mask = H.official_onehot(labels, K), valid.float().unsqueeze(1)
    rec_o, rec_s, mls_calls = [], [], []
    real_mls = PL.mutual_likelihood_score

    def recording_mls(*args):
        mls_calls.append([a.detach().clone() for a in args])
        return real_mls(*args)

    with H.cuda_is_cpu(), H.gather_is_identity(PL), H.official_replay(PL, draws, rec_o), \
            H.patched(PL, "mutual_likelihood_score", recording_mls):
        lo, (gmo, gso) = H.value_and_grads(lambda m, s: crit(m, s, onehot, mask, prob), mu, s2)
    with H.s4kit_replay(draws, rec_s):
        ls, (gms, gss) = H.value_and_grads(
            lambda m, s: prcl_loss(m, s, labels, valid, prob, K, 0.8, 100.0, Q, M, literal_denominator=literal)[0],
            mu, s2)
    # the official prototypes: the first class-relation MLS call, classes rotated to start at the first anchor class
    cls = draws.classes
    first = draws.order[0]
    rot = cls[cls.index(first):] + cls[:cls.index(first)]
    a = mls_calls[0]
    back = [rot.index(c) for c in cls]
    p_mu, p_s2 = torch.cat([a[0], a[1]])[back], torch.cat([a[2], a[3]])[back]
    s_mu, s_s2 = distribution_prototypes(mus, s2s, lab, K)
    return {"loss": [(ls, lo), (gms, gmo), (gss, gso)], "dist": H.sampling_distribution_pairs(draws, rec_s, rec_o),
            "proto": [(s_mu[cls], p_mu), (s_s2[cls], p_s2)], "values": (float(ls), float(lo))}


def run(root: Path) -> list[H.Row]:
    from s4kit.losses.prcl import mls

    with H.official_imports(root):
        import generalframeworks.loss.loss as PL
        import generalframeworks.networks.uncer_head as UH
    names = iter(COMPONENTS)
    rows = head_rows(UH, names)

    g = torch.Generator().manual_seed(1)
    mu_a, mu_k = torch.randn(Q, 1, D, generator=g), torch.randn(Q, M + 1, D, generator=g)
    s_a, s_k = 0.05 + 0.9 * torch.rand(Q, 1, D, generator=g), 0.05 + 0.9 * torch.rand(Q, M + 1, D, generator=g)
    rows.append(H.judge(*next(names), [(mls(mu_a, s_a, mu_k, s_k), PL.mutual_likelihood_score(mu_a, mu_k, s_a, s_k))],
                        note=f"({Q}, 1, {D}) against ({Q}, {M + 1}, {D}), sigma^2 in (0.05, 0.95)"))

    x = H.contrast_inputs(4, 4, 33, 33, D, K, seed=0, per_image=(2, 4))
    g = torch.Generator().manual_seed(4)
    s2_mid = torch.sigmoid(torch.randn(8, D, 33, 33, generator=g))  # ~0.5, early training
    s2_small = torch.sigmoid(torch.randn(8, D, 33, 33, generator=g) - 5.0)  # ~0.01, later
    runs = [loss_run(PL, x, s2_mid, False, "Prcl_Loss"), loss_run(PL, x, s2_small, False, "Prcl_Loss"),
            loss_run(PL, x, s2_mid, False, "Prcl_Loss_single")]
    values = ", ".join(f"{r['values'][1]:.4f}" for r in runs)
    rows.append(H.judge(*next(names), [p for r in runs for p in r["proto"]],
                        note="mu and sigma^2 of every present class, sigma^2 ~ 0.5 and ~ 0.01"))
    rows.append(H.judge(*next(names), [p for r in runs for p in r["loss"]],
                        note=f"4+4 x {D} x 33x33, Q={Q}, M={M}, tau=100; loss, d/dmu, d/dsigma^2; sigma^2 ~ 0.5 "
                             f"and ~ 0.01; losses {values}"))
    x_easy, c = H.make_class_easy(x)
    d_def, d_lit = loss_run(PL, x_easy, s2_mid, False, "Prcl_Loss"), loss_run(PL, x_easy, s2_mid, True, "Prcl_Loss")
    rows.append(H.judge(*next(names), d_def["loss"], option="method.literal_denominator=true",
                        option_pairs=d_lit["loss"],
                        note=f"class {c} all easy; loss {d_def['values'][0]:.4f} vs {d_def['values'][1]:.4f}"))
    rows.append(H.judge(*next(names), [p for r in runs for p in r["dist"]], note="softmax of prototype MLS / tau"))
    return rows
