"""``make mutants``: apply named mutations of s4kit one at a time and report which the fast tests kill.

Each mutation is (name, file, exact source snippet, replacement, tests). The snippet must occur
exactly once in the file, otherwise the mutation is reported as ``snippet not found`` (or
``snippet not unique``) and counts as neither killed nor survived: after a refactor, re-target
it. For every mutation the script copies the repository's ``s4kit/``, ``tests/`` and
``pyproject.toml`` into a temporary folder (the real files are never modified), applies the
mutation there, runs ``pytest -x -q -m "not slow"`` on the mutation's test files (``-k`` its
expression) with ``PYTHONPATH`` pointing at the copy and a per-mutation timeout, records
killed / survived, and restores the file. The result is a Markdown table and the kill rate.

Usage:
    python benchmarks/mutants.py                       # the repository's tests
    python benchmarks/mutants.py --tests /tmp/old/tests  # another tests folder (e.g. a past commit's)
    python benchmarks/mutants.py --only "PRCL positive" --jobs 2 --timeout 300
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    snippet: str  # exact source text, must occur exactly once
    replacement: str
    tests: tuple[str, ...]  # test files (relative to tests/)
    k: str | None = None  # pytest -k expression, or None for the whole files


STEPS, RECO, PRCL_M, CSS_M = "s4kit/methods/steps.py", "s4kit/methods/reco.py", "s4kit/methods/prcl.py", "s4kit/methods/css.py"
CONTRAST, PRCL_L = "s4kit/losses/contrast.py", "s4kit/losses/prcl.py"
W = "test_wiring.py"

MUTATIONS = [
    # -- the four of issue 13 ---------------------------------------------------------------------
    Mutation("PRCL positive key from the wrong class", PRCL_L,
             "torch.cat([proto_mu, proto_s2], 1)", "torch.cat([proto_mu.roll(1, 0), proto_s2.roll(1, 0)], 1)",
             (W, "test_prcl.py"), "prcl or loss"),
    Mutation("student fed the weak view instead of the strong mixed one", STEPS,
             "out_u = method.student(u_strong)", "out_u = method.student(u)",
             (W, "test_methods.py"), "sees or one_training_step or padding"),
    Mutation("ReCo contrast ignores delta_w", STEPS,
             "valid_u = (nearest(confidence_u, size) >= weak_threshold) & (y_u != IGNORE_INDEX)",
             "valid_u = (y_u != IGNORE_INDEX)",
             (W, "test_methods.py", "test_losses.py"), "delta_w or reco or one_training_step"),
    Mutation("lambda_u ignored in the mean teacher", STEPS,
             '"loss_unsup": o.unsup_weight * loss_u', '"loss_unsup": loss_u',
             (W, "test_methods.py"), "lambda_u or unsup or one_training_step"),
    # -- views and pseudo-labels -------------------------------------------------------------------
    Mutation("strong view of the unmixed image (mix dropped)", STEPS,
             "return (method.strong(u_mix), *mixed)", "return (method.strong(u), *mixed)",
             (W, "test_methods.py", "test_mixing_transforms.py"), "sees or one_training_step or mix"),
    Mutation("pseudo-labels from the student instead of the teacher", STEPS,
             "out = method.teacher_forward(u)", "out = method.student(u)",
             (W, "test_methods.py"), "sees or one_training_step or padding"),
    Mutation("CSS lambda_u ignored", CSS_M,
             '"loss_unsup": o.unsup_weight * loss_u}', '"loss_unsup": loss_u}',
             (W, "test_css.py"), "lambda_u or css or mix or cross"),
    Mutation("RC2L lambda_u ignored", "s4kit/methods/rc2l.py",
             "lam = o.unsup_weight * linear_rampup(", "lam = 1.0 * linear_rampup(", (W, "test_rc2l.py"), "lambda_u or rc2l"),
    Mutation("AllSpark lambda_u ignored", "s4kit/methods/allspark.py",
             "(o.unsup_weight if unsup_on else 0.0) * loss_u", "(1.0 if unsup_on else 0.0) * loss_u",
             (W, "test_allspark.py"), "lambda_u or allspark"),
    Mutation("ReCo contrast weight lambda_c ignored", RECO,
             "lam_c = o.contrast_weight * linear_rampup(", "lam_c = linear_rampup(",
             (W, "test_methods.py"), "contrast or reco or one_training_step"),
    Mutation("ReCo delta_w replaced by delta_u", RECO,
             "o.weak_threshold)", "o.confidence_threshold)",
             (W, "test_methods.py"), "delta_w or reco or one_training_step"),
    # -- the mean teacher --------------------------------------------------------------------------
    Mutation("EMA: alpha ignored (d_k = k/(k+1) for ever)", "s4kit/models/ema.py",
             "return min(1.0 - 1.0 / (step + 1), alpha)", "return 1.0 - 1.0 / (step + 1)",
             ("test_model.py", "test_methods.py"), "ema or one_training_step"),
    Mutation("EMA: teacher and student weights swapped in the update", "s4kit/models/ema.py",
             "pt.mul_(d).add_(ps.detach(), alpha=1.0 - d)", "pt.mul_(1.0 - d).add_(ps.detach(), alpha=d)",
             ("test_model.py", "test_methods.py"), "ema or one_training_step"),
    # -- the contrast losses -------------------------------------------------------------------------
    Mutation("ReCo positive key from the wrong class", CONTRAST,
             "prototypes[i], proto_sim[i]", "prototypes[(i + 1) % len(classes)], proto_sim[i]",
             (W, "test_losses.py", "test_css.py"), "reco or contrast or anchor"),
    Mutation("ReCo temperature ignored", CONTRAST,
             "logits = similarity(anchors.unsqueeze(1), keys) / temperature",
             "logits = similarity(anchors.unsqueeze(1), keys)",
             (W, "test_losses.py", "test_css.py"), "reco or contrast or anchor"),
    Mutation("hard anchors taken from the easy pixels", CONTRAST,
             "(labels == c) & (own_score < strong_threshold)", "(labels == c) & (own_score >= strong_threshold)",
             (W, "test_losses.py", "test_css.py"), "reco or contrast or anchor"),
    Mutation("valid mask (delta_w, padding) ignored when flattening pixels", CONTRAST,
             "keep = valid & (labels != IGNORE_INDEX)\n    flat =", "keep = labels != IGNORE_INDEX\n    flat =",
             (W, "test_losses.py", "test_css.py"), "reco or contrast or anchor or delta_w"),
    Mutation("negative keys may come from the anchor's own class", CONTRAST,
             "others = torch.cat([torch.arange(i), torch.arange(i + 1, len(classes))]).to(reps.device)",
             "others = torch.arange(len(classes)).to(reps.device)",
             (W, "test_losses.py", "test_css.py"), "reco or contrast or anchor"),
    Mutation("PRCL temperature ignored", PRCL_L,
             "strong_threshold, temperature, num_queries, num_negatives, literal_denominator,\n",
             "strong_threshold, 1.0, num_queries, num_negatives, literal_denominator,\n",
             (W, "test_prcl.py"), "prcl or loss"),
    # -- the batched sampler (method.sampling=batched) ------------------------------------------------
    Mutation("batched sampler: anchors drawn from every pixel, not the hard ones", CONTRAST,
             "hard_idx = torch.nonzero(hard).squeeze(1)", "hard_idx = torch.nonzero(torch.ones_like(hard)).squeeze(1)",
             ("test_sampling.py",), None),
    Mutation("batched sampler: negatives may come from the anchor's own class", CONTRAST,
             '.masked_fill(own, float("-inf")).softmax(1)', ".softmax(1)", ("test_sampling.py",), None),
    Mutation("batched sampler: positive key from the wrong class", CONTRAST,
             "prototypes.detach().float()[draws.rows]", "prototypes.detach().float()[draws.rows.roll(1)]",
             ("test_sampling.py",), None),
    # -- the unsupervised CE ---------------------------------------------------------------------------
    Mutation("masked L_u ignores the confidence threshold delta_u", "s4kit/losses/ce.py",
             "keep = (confidence >= threshold) & valid", "keep = valid",
             ("test_losses.py",), None),
]


def prepare(workdir: Path, tests: Path) -> Path:
    """A copy of s4kit/, the tests, pyproject.toml and benchmarks/official_equivalence (whose
    replay helpers tests/test_sampling.py uses) under ``workdir``; returns its root."""
    root = workdir / "repo"
    shutil.copytree(ROOT / "s4kit", root / "s4kit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "benchmarks" / "official_equivalence", root / "benchmarks" / "official_equivalence",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(tests, root / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def check(m: Mutation) -> str | None:
    """None if the snippet occurs exactly once in the real file, else the problem."""
    path = ROOT / m.file
    if not path.exists():
        return f"snippet not found ({m.file} missing)"
    n = path.read_text().count(m.snippet)
    return None if n == 1 else ("snippet not found" if n == 0 else f"snippet not unique ({n} occurrences)")


def run_one(m: Mutation, root: Path, timeout: float) -> tuple[str, float, str]:
    """Apply ``m`` in the copy at ``root``, run its tests, restore. Returns (status, seconds, detail)."""
    problem = check(m)
    if problem:
        return problem, 0.0, ""
    files = [f"tests/{t}" for t in m.tests if (root / "tests" / t).exists()]
    if not files:
        return "survived", 0.0, "no test file"
    target = root / m.file
    original = target.read_text()
    target.write_text(original.replace(m.snippet, m.replacement, 1))
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow and not gpu", "-p", "no:cacheprovider",
           "--no-header", *files] + (["-k", m.k] if m.k else [])
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        rc, out = -1, ""
    finally:
        target.write_text(original)
    secs = time.time() - start
    lines = [ln for ln in out.splitlines() if ln.startswith("FAILED") or ln.startswith("ERROR")]
    detail = lines[0].split(" - ")[0].replace("FAILED ", "") if lines else ""
    if rc == 0:
        return "survived", secs, ""
    if rc == 5:
        return "survived", secs, "no test selected"
    if rc == -1:
        return "killed", secs, f"timeout after {timeout:.0f} s"
    if rc == 1:
        return "killed", secs, detail
    return "killed", secs, f"pytest exit {rc} {detail}".strip()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tests", type=Path, default=ROOT / "tests", help="the tests folder to run (default: tests/)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per mutation")
    ap.add_argument("--jobs", type=int, default=1, help="mutations run in parallel, each in its own copy")
    ap.add_argument("--only", default=None, help="run only mutations whose name contains this text")
    args = ap.parse_args(argv)
    todo = [m for m in MUTATIONS if args.only is None or args.only.lower() in m.name.lower()]
    for m in todo:
        problem = check(m)
        if problem:
            print(f"!!! {m.name}: {problem} in {m.file}: {m.snippet!r}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="s4kit-mutants-") as tmp:
        roots = [prepare(Path(tmp) / f"w{j}", args.tests.resolve()) for j in range(max(1, args.jobs))]
        free = list(roots)

        def work(m):
            root = free.pop()
            try:
                res = run_one(m, root, args.timeout)
            finally:
                free.append(root)
            print(f"  {res[0]:>9}  {res[1]:6.1f} s  {m.name}", file=sys.stderr, flush=True)
            return res

        with ThreadPoolExecutor(max_workers=len(roots)) as pool:
            results = list(pool.map(work, todo))
    print(f"Tests: {args.tests}\n")
    print("| mutation | file | result | first failing test |")
    print("|---|---|---|---|")
    for m, (status, secs, detail) in zip(todo, results):
        print(f"| {m.name} | `{m.file.replace('s4kit/', '')}` | {status} | {detail} |")
    killed = sum(s == "killed" for s, _, _ in results)
    counted = sum(s in ("killed", "survived") for s, _, _ in results)
    broken = len(results) - counted
    print(f"\nKill rate: {killed}/{counted} = {100 * killed / max(counted, 1):.0f} %"
          + (f" ({broken} mutation(s) not applied: snippet not found)" if broken else ""))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
