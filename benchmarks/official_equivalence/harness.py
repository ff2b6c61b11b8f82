"""The machinery of the equivalence harness: comparisons, verdicts, the results table, the
official checkouts, and the run-time patches that let official code run unmodified on one
CPU process with the same random draws as s4kit.

Nothing here contains official code; the official files are imported from the checkouts
named by the ``S4KIT_OFFICIAL_*`` environment variables (``official_dir``).
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

# ---------------------------------------------------------------------------------------
# the official checkouts
# ---------------------------------------------------------------------------------------
#: group -> (environment variable, GitHub repository, commit the results were measured at)
OFFICIAL = {
    "reco": ("S4KIT_OFFICIAL_RECO", "lorenmt/reco", "71c1b73"),
    "css": ("S4KIT_OFFICIAL_CSS", "WangChangqi98/CSS", "8aec4a8"),
    "prcl": ("S4KIT_OFFICIAL_PRCL", "Haoyu-Xie/PRCL", "d8829da"),
    "allspark": ("S4KIT_OFFICIAL_ALLSPARK", "xmed-lab/AllSpark", "9da63e2"),
}


def official_dir(group: str, env: dict | None = None) -> tuple[Path | None, str]:
    """The checkout of ``group``'s official repository: ``(path, "")``, or ``(None, reason)``
    when its environment variable is unset or does not name a folder."""
    var, repo, _ = OFFICIAL[group]
    value = (os.environ if env is None else env).get(var, "")
    if not value:
        return None, f"{var} is not set (a checkout of github.com/{repo})"
    path = Path(value)
    if not path.is_dir():
        return None, f"{var}={value} is not a folder"
    return path, ""


# ---------------------------------------------------------------------------------------
# differences and verdicts
# ---------------------------------------------------------------------------------------
TOL = 1e-5  # default tolerance on the relative difference (float32 arithmetic in another order)
EQUAL, FAIL, SKIPPED = "EQUAL", "FAIL", "SKIPPED"


def deliberate(option: str) -> str:
    """The verdict of a component that differs on purpose, ``option`` reproducing the code."""
    return f"DIFFERS (deliberate; `{option}` reproduces the code)"


@dataclass
class Diff:
    """Largest differences over one or more pairs (s4kit, official).

    Floating tensors: ``max_abs`` = max |a - b|, ``max_rel`` = max |a - b| / max |b| (relative
    to the largest official magnitude, so near-zero entries do not blow it up). Integer and
    bool tensors: ``max_abs`` = the number of differing entries, ``max_rel`` = their share.
    A shape mismatch, or a NaN/inf on one side only, gives ``inf``.
    """

    max_abs: float = 0.0
    max_rel: float = 0.0

    def within(self, tol: float = TOL) -> bool:
        return self.max_rel <= tol

    def __or__(self, other: "Diff") -> "Diff":
        return Diff(max(self.max_abs, other.max_abs), max(self.max_rel, other.max_rel))


def diff(a, b) -> Diff:
    """``Diff`` of one pair (tensors, arrays or numbers); see ``Diff`` for the definitions."""
    a, b = torch.as_tensor(a).detach().cpu(), torch.as_tensor(b).detach().cpu()
    if a.shape != b.shape:
        return Diff(math.inf, math.inf)
    if a.numel() == 0:
        return Diff()
    if not (a.is_floating_point() or b.is_floating_point()):
        n = int((a != b).sum())
        return Diff(float(n), n / a.numel())
    a, b = a.double(), b.double()
    same_nonfinite = ~torch.isfinite(a) & ((a == b) | (torch.isnan(a) & torch.isnan(b)))
    finite = torch.isfinite(a) & torch.isfinite(b)
    if bool((~finite & ~same_nonfinite).any()):
        return Diff(math.inf, math.inf)
    if not bool(finite.any()):
        return Diff()
    d = (a - b).abs()[finite].max()
    scale = b.abs()[finite].max()
    rel = float(d / scale) if scale > 0 else (0.0 if d == 0 else math.inf)
    return Diff(float(d), rel)


def diff_pairs(pairs: Iterable[tuple]) -> Diff:
    """The largest ``Diff`` over ``pairs`` of (s4kit, official)."""
    out = Diff()
    for a, b in pairs:
        out = out | diff(a, b)
    return out


@dataclass
class Row:
    """One line of the results table."""

    component: str
    official: str  # official file and function
    s4kit: str  # s4kit function(s)
    verdict: str
    max_abs: float | None = None
    max_rel: float | None = None
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict == FAIL


def judge(component: str, official: str, s4kit: str, pairs: Sequence[tuple], tol: float = TOL,
          option: str | None = None, option_pairs: Sequence[tuple] | None = None, note: str = "") -> Row:
    """The verdict of one component from (s4kit, official) output pairs.

    Without ``option``: EQUAL if every pair agrees within ``tol`` (relative), else FAIL.
    With ``option`` (a deliberate difference, s4kit's default vs the code): the default's
    differences are reported; ``option_pairs`` (s4kit run with ``option``, vs the code), if
    given, must agree within ``tol`` or the row FAILs. The verdict is then DIFFERS
    (deliberate) when the default differs, EQUAL when this input does not make it differ.
    """
    d = diff_pairs(pairs)
    notes = [note] if note else []
    if option is None:
        return Row(component, official, s4kit, EQUAL if d.within(tol) else FAIL, d.max_abs, d.max_rel,
                   "; ".join(notes))
    if option_pairs is not None:
        od = diff_pairs(option_pairs)
        if not od.within(tol):
            notes.append(f"`{option}` does not reproduce the code: max rel {od.max_rel:.2e}")
            return Row(component, official, s4kit, FAIL, d.max_abs, d.max_rel, "; ".join(notes))
        notes.append(f"with `{option}`: max abs {od.max_abs:.1e}, max rel {od.max_rel:.1e}")
    else:
        notes.append(f"`{option}` not checked here")
    verdict = deliberate(option) if not d.within(tol) else EQUAL
    return Row(component, official, s4kit, verdict, d.max_abs, d.max_rel, "; ".join(notes))


def failed_row(component: str, official: str, s4kit: str, error: BaseException) -> Row:
    """A FAIL row for a comparison that raised (the error's first line is the note)."""
    first = (str(error).strip().splitlines() or [""])[0][:160]
    return Row(component, official, s4kit, FAIL, note=f"{type(error).__name__}: {first}")


def skipped_rows(components: Sequence[tuple[str, str, str]], reason: str) -> list[Row]:
    """SKIPPED rows, one per (component, official, s4kit), all with ``reason``."""
    return [Row(c, o, s, SKIPPED, note=reason) for c, o, s in components]


def exit_code(rows: Sequence[Row]) -> int:
    """0 if no row FAILED (EQUAL, DIFFERS and SKIPPED rows pass), else 1."""
    return int(any(r.failed for r in rows))


# ---------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------
def _num(x: float | None) -> str:
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if math.isinf(x):
        return "inf"
    return f"{x:.1e}"


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (``|`` in cells escaped)."""
    head = ["component", "official file / function", "s4kit", "verdict", "max abs diff", "max rel diff", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.component, r.official, r.s4kit, r.verdict, _num(r.max_abs), _num(r.max_rel), r.note]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def summary(rows: Sequence[Row]) -> str:
    """``"n EQUAL, n DIFFERS (deliberate), n FAIL, n SKIPPED"``."""
    counts = {EQUAL: 0, "DIFFERS": 0, FAIL: 0, SKIPPED: 0}
    for r in rows:
        counts["DIFFERS" if r.verdict.startswith("DIFFERS") else r.verdict] += 1
    return (f"{counts[EQUAL]} EQUAL, {counts['DIFFERS']} DIFFERS (deliberate), {counts[FAIL]} FAIL, "
            f"{counts[SKIPPED]} SKIPPED")


def write_results(rows: Sequence[Row], path: Path, header: str = "") -> Path:
    """Write ``header``, the summary and the table as Markdown to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (header.rstrip() + "\n\n" if header else "") + summary(rows) + ".\n\n" + markdown_table(rows) + "\n"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------
# running official code: imports, CPU, one process
# ---------------------------------------------------------------------------------------
#: top-level package names the official repositories share (dropped from ``sys.modules``)
SHARED_NAMES = ("generalframeworks", "model", "util", "network", "module_list", "build_data", "dataset")


@contextlib.contextmanager
def official_imports(root: Path, stubs: Sequence[str] = ()):
    """Import from the checkout ``root``: it goes first on ``sys.path``; cached modules of
    the shared top-level names are dropped on entry and exit (two checkouts may both ship
    ``generalframeworks``); ``stubs`` are dotted module names inserted as empty modules if
    they cannot be imported (third-party packages the tested parts never use)."""
    def purge():
        for k in list(sys.modules):
            if k.split(".")[0] in SHARED_NAMES:
                del sys.modules[k]

    added = []
    for name in stubs:
        try:
            importlib.import_module(name)
        except ImportError:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                n = ".".join(parts[:i])
                if n not in sys.modules:
                    sys.modules[n] = types.ModuleType(n)
                    added.append(n)
                if i > 1:
                    setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], sys.modules[n])
    purge()
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))


def load_file(path: Path, name: str) -> types.ModuleType:
    """Import one official source file as a module called ``name``."""
    spec = importlib.util.spec_from_file_location(name, str(path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def patched(obj, name: str, value):
    """Set ``obj.name = value`` for the duration of the block."""
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def cuda_is_cpu():
    """``Tensor.cuda()`` and ``Module.cuda()`` return their receiver (official losses call
    ``.cuda()`` on the CE targets)."""
    with patched(torch.Tensor, "cuda", lambda self, *a, **k: self), \
            patched(torch.nn.Module, "cuda", lambda self, *a, **k: self):
        yield


def gather_is_identity(module) -> contextlib.AbstractContextManager:
    """One process: the module's ``concat_all_gather`` returns its (detached) input, what an
    all-gather over a world of one returns."""
    return patched(module, "concat_all_gather", lambda t: t.detach())


def value_and_grads(fn, *tensors):
    """``(value, grads)`` of a scalar ``fn`` of fresh leaf copies of ``tensors`` (a zero
    gradient for an input the value does not depend on)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    value = fn(*leaves)
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    return value.detach(), [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves)]


# ---------------------------------------------------------------------------------------
# realistic inputs of a pixel contrast
# ---------------------------------------------------------------------------------------
def block_labels(b: int, h: int, w: int, k: int, gen: torch.Generator, per_image=(3, 6),
                 ignore_cols: int = 2) -> torch.Tensor:
    """int64 (b, h, w) label maps: a background class with a few rectangles of other
    classes, the last ``ignore_cols`` columns ignore (255)."""
    out = torch.empty(b, h, w, dtype=torch.long)
    for i in range(b):
        n = int(torch.randint(per_image[0], per_image[1] + 1, (1,), generator=gen))
        cls = torch.randperm(k, generator=gen)[:n]
        out[i] = cls[0]
        for c in cls[1:].tolist():
            y, x = (int(v) for v in torch.randint(0, h - 3, (2,), generator=gen))
            dy, dx = (int(v) for v in torch.randint(3, max(4, h // 2), (2,), generator=gen))
            out[i, y:y + dy, x:x + dx] = c
        if ignore_cols:
            out[i, :, w - ignore_cols:] = 255
    return out


def contrast_inputs(b_l: int = 4, b_u: int = 4, h: int = 33, w: int = 33, d: int = 256, k: int = 21,
                    seed: int = 0, per_image=(3, 6)) -> dict[str, torch.Tensor]:
    """Inputs of ReCo / CSS / PRCL contrasts on the head grid (B = b_l + b_u images).

    ``rep`` float (B, d, h, w): the class mean plus noise; ``labels`` int64 (B, h, w), 255 =
    ignore; ``prob`` float (B, k, h, w): softmax of logits that favour the label by a random
    margin (some pixels hard, some easy); ``conf`` float (b_u, h, w) in [0.4, 1);
    ``valid`` bool (B, h, w): labelled pixels, and unlabelled ones with conf >= 0.7.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = block_labels(b_l + b_u, h, w, k, gen, per_image)
    lab = labels.clamp(max=k - 1)
    means = torch.randn(k, d, generator=gen)
    rep = means[lab].permute(0, 3, 1, 2) + 1.5 * torch.randn(b_l + b_u, d, h, w, generator=gen)
    logits = torch.randn(b_l + b_u, k, h, w, generator=gen)
    logits.scatter_add_(1, lab.unsqueeze(1), 5.0 * torch.rand(b_l + b_u, 1, h, w, generator=gen))
    conf = 0.4 + 0.6 * torch.rand(b_u, h, w, generator=gen)
    valid = labels != 255
    valid[b_l:] &= conf >= 0.7
    return {"rep": rep, "labels": labels, "prob": logits.softmax(1), "conf": conf, "valid": valid}


def make_class_easy(x: dict, rank: int = 1) -> tuple[dict, int]:
    """A copy of ``contrast_inputs`` where every pixel of the ``rank``-th present class has
    probability 0.99 for its label: that class has no hard anchor (ReCo, PRCL)."""
    y = {k: v.clone() for k, v in x.items()}
    c = int(torch.unique(y["labels"][y["valid"]])[rank])
    p = y["prob"].permute(0, 2, 3, 1)
    sel = y["labels"] == c
    p[sel] = 0.01 / (p.shape[-1] - 1)
    p[sel, c] = 0.99
    y["prob"] = p.permute(0, 3, 1, 2).contiguous()
    return y, c


def official_onehot(labels: torch.Tensor, k: int) -> torch.Tensor:
    """The one-hot float (B, k, h, w) the official losses take; ignore pixels go to class 0
    (their ``label_onehot``) and are removed by the validity mask."""
    lab = labels.masked_fill(labels == 255, 0)
    return torch.zeros(lab.shape[0], k, *lab.shape[1:]).scatter_(1, lab.unsqueeze(1), 1.0)


# ---------------------------------------------------------------------------------------
# the same random draws on both sides
# ---------------------------------------------------------------------------------------
class Draws:
    """Anchors and negative keys fixed by pixel identity, for a hard-anchor contrast.

    A pixel is its index in the row-major (b, h, w) list of the valid, non-ignored pixels:
    the order of s4kit's ``flatten_pixels`` and of the official boolean-mask indexing,
    within every class too. For each present class c (ascending) with hard pixels:
    ``anchors[c]`` int64 (Q,) positions in c's hard list, ``negatives[c]`` int64 (Q, M)
    pixel ids of other present classes (class uniform, pixel uniform within the class).
    ``order`` lists those classes in the order both loops visit them.
    """

    def __init__(self, labels: torch.Tensor, hard: torch.Tensor, num_queries: int, num_negatives: int,
                 seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.classes = torch.unique(labels).tolist()
        self.members = {c: torch.nonzero(labels == c).squeeze(1) for c in self.classes}
        self.n_hard = {c: int(((labels == c) & hard).sum()) for c in self.classes}
        self.anchors, self.negatives = {}, {}
        for c in self.classes:
            if self.n_hard[c] == 0:
                continue
            self.anchors[c] = torch.randint(self.n_hard[c], (num_queries,), generator=g)
            others = torch.tensor([o for o in self.classes if o != c])
            drawn = others[torch.randint(len(others), (num_queries, num_negatives), generator=g)]
            ids = torch.empty_like(drawn)
            for o in others.tolist():
                sel = drawn == o
                pool = self.members[o]
                ids[sel] = pool[torch.randint(pool.numel(), (int(sel.sum()),), generator=g)]
            self.negatives[c] = ids
        self.order = [c for c in self.classes if c in self.anchors]

    def rotated(self, c: int) -> list[int]:
        """The other present classes in the official order: c+1, ..., last, first, ..., c-1."""
        i = self.classes.index(c)
        return self.classes[i + 1:] + self.classes[:i]

    def others(self, c: int) -> list[int]:
        """The other present classes in s4kit's order (ascending)."""
        return [o for o in self.classes if o != c]


@contextlib.contextmanager
def official_replay(module, draws: Draws, recorded: list):
    """Make an official hard-anchor loss (ReCo ``compute_reco_loss``, CSS ``Contrast_Loss``,
    PRCL ``Prcl_Loss``) use ``draws``; the class-sampling probabilities it builds are
    appended to ``recorded`` (in its rotated class order).

    Patched: ``torch.randint`` (the anchor positions; checks the hard-list length),
    ``torch.distributions.categorical.Categorical`` (records ``probs``) and the module's
    ``negative_index_sampler`` (returns the fixed negatives as indices into the
    concatenation of the other classes' pixel lists in rotated order).
    """
    state = {"k": 0}
    real_categorical = torch.distributions.categorical.Categorical

    def randint(high, size=None, *args, **kwargs):
        c = draws.order[state["k"]]
        if int(high) != draws.n_hard[c]:
            raise AssertionError(f"official hard list of class {c} has {int(high)} pixels, expected {draws.n_hard[c]}")
        return draws.anchors[c].clone()

    class Recording(real_categorical):
        def __init__(self, probs=None, **kwargs):
            recorded.append(probs.detach().clone())
            super().__init__(probs=probs, **kwargs)

    def sampler(samp_num, seg_num_list):
        c = draws.order[state["k"]]
        ids, out, start = draws.negatives[c], None, 0
        out = torch.empty_like(ids)
        for o in draws.rotated(c):
            pool = draws.members[o]
            sel = torch.isin(ids, pool)
            out[sel] = start + torch.searchsorted(pool, ids[sel])
            start += pool.numel()
        state["k"] += 1
        return out.reshape(-1).tolist()

    with patched(torch, "randint", randint), \
            patched(torch.distributions.categorical, "Categorical", Recording), \
            patched(module, "negative_index_sampler", sampler):
        yield


@contextlib.contextmanager
def s4kit_replay(draws: Draws, recorded: list):
    """Make s4kit's ``hard_anchor_contrast`` use ``draws``; the class-sampling probabilities
    (over the other classes, ascending) are appended to ``recorded``.

    Patched: ``torch.randint`` (anchors), ``torch.multinomial`` (records the probabilities
    and returns the fixed negatives' classes as indices into the other classes) and
    ``s4kit.losses.contrast.sample_keys_by_class``, which runs the real sampler with the
    uniform numbers that make it pick the fixed pixels and checks that it did.
    """
    import s4kit.losses.contrast as contrast

    state = {"k": 0}
    real_sampler = contrast.sample_keys_by_class

    def randint(high, size=None, *args, **kwargs):
        c = draws.order[state["k"]]
        if int(high) != draws.n_hard[c]:
            raise AssertionError(f"s4kit hard list of class {c} has {int(high)} pixels, expected {draws.n_hard[c]}")
        return draws.anchors[c].clone()

    def multinomial(probs, n, replacement=False, *args, **kwargs):
        c = draws.order[state["k"]]
        recorded.append(probs.detach().clone())
        ids, out = draws.negatives[c], None
        out = torch.empty_like(ids)
        for j, o in enumerate(draws.others(c)):
            out[torch.isin(ids, draws.members[o])] = j
        return out.reshape(-1)

    def sampler(reps, labels, classes, drawn):
        c = draws.order[state["k"]]
        ids = draws.negatives[c]
        order = torch.argsort(labels)  # the real sampler's grouping, recomputed identically
        position = torch.empty_like(order)
        position[order] = torch.arange(order.numel())
        counts = torch.stack([(labels == cc).sum() for cc in classes])
        offsets = torch.cumsum(counts, 0) - counts
        within = position[ids] - offsets[drawn]
        u = ((within.double() + 0.5) / counts[drawn].double()).float()
        with patched(torch, "rand", lambda shape, *a, **k: u.reshape(shape)):
            keys = real_sampler(reps, labels, classes, drawn)
        if not torch.equal(keys, reps[ids]):
            raise AssertionError("s4kit's key sampler did not pick the replayed pixels")
        state["k"] += 1
        return keys

    with patched(torch, "randint", randint), patched(torch, "multinomial", multinomial), \
            patched(contrast, "sample_keys_by_class", sampler):
        yield


def sampling_distribution_pairs(draws: Draws, s4kit_probs: list, official_probs: list) -> list[tuple]:
    """(s4kit, official) class-sampling distributions per anchor class, the official one
    re-ordered from its rotated class order to s4kit's ascending order."""
    if len(s4kit_probs) != len(draws.order) or len(official_probs) != len(draws.order):
        raise AssertionError(f"{len(s4kit_probs)} s4kit / {len(official_probs)} official sampling distributions "
                             f"for {len(draws.order)} anchor classes")
    pairs = []
    for c, ps, po in zip(draws.order, s4kit_probs, official_probs):
        rot = draws.rotated(c)
        pairs.append((ps, po[[rot.index(o) for o in draws.others(c)]]))
    return pairs
