"""benchmarks/gpu_check.py in its reduced mode (``--cpu-smoke``: toy sizes, one timed step, CPU):
every pascal method preset appears in every precision and memory format with a consistent row.
The numbers themselves are not tested (they belong to the machine and its load)."""
import importlib.util
import math
import sys
from pathlib import Path

import pytest

from s4kit.config import load_config
from s4kit.methods import method_class

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # dataclasses look their module up while the file runs
    spec.loader.exec_module(gpu_check)
    out = tmp_path_factory.mktemp("gpu_check") / "smoke.md"
    # peaks of 2 and 4 TFLOP/s given, so the MFU column is computed on CPU too
    args = gpu_check.parse_args(["--cpu-smoke", "--out", str(out), "--peak-bf16", "4", "--peak-fp32", "2"])
    rows, text = gpu_check.run(args)
    assert gpu_check.main(["--cpu-smoke", "--only", "supervised", "--out", str(out)]) == 0  # the command line
    return gpu_check, rows, text, out.read_text()


def test_every_method_and_variant_has_a_consistent_row(smoke):
    gpu_check, rows, text, _ = smoke
    names = {p.stem for p in (Path(gpu_check.__file__).parents[1] / "s4kit" / "configs" / "pascal").glob("*.yaml")}
    methods = sorted(n for n in names if not n.startswith("_") and n != "tiny")
    assert {"supervised", "meanteacher", "reco", "css", "prcl", "rc2l", "allspark"} <= set(methods)
    assert sorted((r.method, r.precision, r.channels_last) for r in rows) == sorted(
        (m, p, c) for m in methods for p, c in (("fp32", False), ("bf16", True)))
    for r in rows:
        assert not r.error, (r.method, r.error)
        # images per step: the smoke batch is 2 labeled + 2 unlabeled, unlabeled only if the method uses them
        cfg = load_config(f"pascal/{r.method}", ["model.pretrained=none"])
        assert r.images == 2 + (2 if method_class(cfg.method.name).uses_unlabeled else 0), r.method
        assert r.step_ms > 0 and r.peak_mb > 0 and r.gflop > 0
        assert r.images_per_s == pytest.approx(r.images / (r.step_ms / 1e3), rel=1e-9)
        assert r.tflops == pytest.approx(r.gflop / r.step_ms, rel=1e-9)  # GFLOP / ms = TFLOP / s
        assert r.mfu == pytest.approx(r.tflops / (4.0 if r.precision == "bf16" else 2.0), rel=1e-9)
    flops = {r.method: r.gflop for r in rows}
    # the mean teacher runs the supervised network plus a teacher and a student pass on the unlabeled
    # images: more than twice the supervised step's FLOPs on the same network
    assert flops["meanteacher"] > 2 * flops["supervised"]


def test_markdown_table_lists_every_row(smoke):
    gpu_check, rows, text, written = smoke
    lines = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert len(lines) == len(rows)
    for r, line in zip(rows, lines):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:4] == [r.method, r.precision, "on" if r.channels_last else "off", str(r.images)]
        ms, ips = float(cells[4]), float(cells[5])
        assert math.isclose(ms, r.step_ms, abs_tol=0.051) and math.isclose(ips, r.images_per_s, abs_tol=0.051)
        assert cells[9].endswith("%")
    # the file main() wrote: the supervised rows only, MFU n/a without a peak on CPU
    body = [line for line in written.splitlines() if line.startswith("| supervised")]
    assert len(body) == 2 and all(line.rstrip(" |").endswith("n/a") for line in body)
    assert "--cpu-smoke" in written
