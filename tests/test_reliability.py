"""Safe to share, safe to point anywhere: the fuzz and fault suite of the command line.

Every case runs the real command line (``s4kit.cli.main``, or the console script in a
subprocess where a process boundary matters) and asserts its exit code, a one-line message
naming the file or key, no traceback, and that the user's files are byte-identical afterwards.

``S4KIT_RELIABILITY_TABLE=path.md pytest tests/test_reliability.py`` also writes the table of
cases (case, exit code, message) that the closing note of the reliability issue quotes.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from s4kit.cli import main

from conftest import tiny_overrides

ROWS: list[tuple[str, int, str]] = []


@pytest.fixture(scope="module", autouse=True)
def _table():
    yield
    out = os.environ.get("S4KIT_RELIABILITY_TABLE")
    if out:
        lines = ["| case | exit | message |", "|---|---|---|"]
        lines += [f"| {case} | {code} | {msg.replace('|', '/')} |" for case, code, msg in ROWS]
        Path(out).write_text("\n".join(lines) + "\n")


def cli(case: str, args: list[str], capsys, code: int = 2, says: str | tuple[str, ...] = ()) -> str:
    """Run ``s4kit ARGS`` in-process; assert exit ``code``, one clean line (for code 2) holding
    every string of ``says``; return that line."""
    got = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("s4kit:")]
    ROWS.append((case, got, lines[-1] if lines else err.strip()[-200:]))
    assert got == code, err
    if code == 2:
        assert "Traceback" not in err, err
        assert len(lines) == 1 and lines[0].startswith("s4kit: error: "), err
        for s in (says,) if isinstance(says, str) else says:
            assert s in lines[0], lines[0]
        return lines[0]
    return err


def tree_hash(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``root`` (the user's files, to compare)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


FAST = ["viz.enabled=false", "viz.snapshots=0"]


@pytest.fixture(scope="module")
def finished_run(digits_root, tmp_path_factory):
    """A 2-iteration supervised run (checkpoint at iteration 2) to copy into each test."""
    run = tmp_path_factory.mktemp("reliability") / "run"
    assert main(train_args(digits_root, run)) == 0
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished_run, dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


def train_args(digits_root, run, iters=2, preset="digits/supervised"):
    return ["train", preset, *tiny_overrides(digits_root, run, iters=iters), "train.checkpoint_every=2", *FAST]


@pytest.fixture
def voc_folder(tmp_path):
    """A user's VOC-like folder: images, masks and official split lists s4kit must never touch."""
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "JPEGImages" / "2007_000032.jpg").write_bytes(b"\xff\xd8 user image")
    (root / "SegmentationClass" / "2007_000032.png").write_bytes(b"\x89PNG user mask")
    for split in ("1_16", "92"):
        (root / "splits" / split).mkdir(parents=True)
        (root / "splits" / split / "labeled.txt").write_text("JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png\n")
        (root / "splits" / split / "unlabeled.txt").write_text("JPEGImages/2007_000032.jpg\n")
    (root / "splits" / "val.txt").write_text("JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png\n")
    return root


# ---------------------------------------------------------------- 1. checkpoints carry no code

class Payload:
    """Pickles to ``os.mkdir(marker)``: loading it with ``weights_only=False`` would create the folder."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _poison(run: Path, marker: Path) -> None:
    path = run / "checkpoints" / "last.pt"
    state = torch.load(path, weights_only=True)
    state["extra"] = Payload(marker)
    torch.save(state, path)


def test_payload_in_checkpoint_never_runs(run_copy, digits_root, tmp_path, capsys):
    marker = tmp_path / "PAYLOAD_RAN"
    _poison(run_copy, marker)
    before = tree_hash(run_copy)
    cli("train (resume) on a checkpoint with a __reduce__ payload", train_args(digits_root, run_copy, iters=4), capsys,
        says=(str(run_copy / "checkpoints" / "last.pt"), "refused to load"))
    cli("eval on a checkpoint with a __reduce__ payload", ["eval", run_copy], capsys, says="refused to load")
    cli("export of a checkpoint with a __reduce__ payload", ["export", run_copy, "--out", tmp_path / "m.safetensors"],
        capsys, says="refused to load")
    assert not marker.exists() and not (tmp_path / "m.safetensors").exists()
    after = tree_hash(run_copy)
    assert {k: v for k, v in after.items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}
    # the installed console script too, in its own process
    res = subprocess.run([str(Path(sys.executable).parent / "s4kit"), "eval", str(run_copy)], capture_output=True,
                         text=True)
    assert res.returncode == 2 and "refused to load" in res.stderr and "Traceback" not in res.stderr
    assert not marker.exists()


def test_checkpoint_holds_only_tensors_and_plain_values(finished_run):
    state = torch.load(finished_run / "checkpoints" / "last.pt", weights_only=True)  # raises on any object
    assert state["step"] == 2 and isinstance(state["rng"]["numpy"][1], torch.Tensor)


def test_export_writes_safetensors_that_rebuild_the_method(run_copy, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from s4kit.config import ConfigError, load_config
    from s4kit.methods import build_method

    out = tmp_path / "share" / "model.safetensors"
    assert main(["export", str(run_copy), "--out", str(out)]) == 0
    tensors = load_file(out)
    state = torch.load(run_copy / "checkpoints" / "last.pt", weights_only=True)["method"]
    assert set(tensors) == set(state) and all(torch.equal(tensors[k], state[k]) for k in state)
    with safe_open(out, "pt") as f:
        meta = f.metadata()
    assert meta["step"] == "2"
    (tmp_path / "config.yaml").write_text(meta["s4kit_config"])
    method = build_method(load_config(tmp_path / "config.yaml"))
    method.load_state_dict(tensors, strict=True)
    before = out.read_bytes()
    cli("export onto an existing file", ["export", run_copy, "--out", out], capsys, says=(str(out), "exists"))
    assert out.read_bytes() == before
    with pytest.raises(ConfigError):
        from s4kit.engine.runs import export_run

        export_run(run_copy, tmp_path / "model.pt")


# ------------------------------------------------------- 2. never write into a folder s4kit did not make

def test_data_refuses_a_foreign_folder(voc_folder, capsys):
    before = tree_hash(voc_folder)
    cli("s4kit data digits --root <a VOC folder>", ["data", "digits", "--root", voc_folder], capsys,
        says=(str(voc_folder), "not an s4kit"))
    assert tree_hash(voc_folder) == before


def test_reproduce_validates_before_touching_any_folder(voc_folder, tmp_path, capsys):
    before = tree_hash(voc_folder)
    out = tmp_path / "out"
    cases = [
        ("reproduce --method bogus -p DATA_ROOT <VOC folder>", ["--method", "bogus"], "--method 'bogus'"),
        ("reproduce --dataset bogus", ["--method", "reco", "--dataset", "bogus"], "--dataset 'bogus'"),
        ("reproduce --split 1_3", ["--method", "reco", "--split", "1_3"], "--split '1_3'"),
        ("reproduce -p FAST maybe", ["--method", "reco", "-p", "FAST", "maybe"], "FAST"),
        ("reproduce -p MAX_ITERS -5", ["--method", "reco", "-p", "MAX_ITERS", "-5"], "MAX_ITERS"),
        ("reproduce -p NOPE 1", ["--method", "reco", "-p", "NOPE", "1"], "NOPE"),
        ("reproduce -p OVERRIDES optim.lr=-1", ["--method", "reco", "-p", "OVERRIDES", "optim.lr=-1"], "optim.lr"),
        ("reproduce -p OVERRIDES method.strategy=both (css)", ["--method", "css", "-p", "OVERRIDES",
                                                                "method.strategy=both"], "method.strategy"),
        ("reproduce -p DATA_ROOT <VOC folder>", ["--method", "reco"], str(voc_folder)),
    ]
    for case, extra, says in cases:
        args = ["reproduce", "--split", "1_16", "-p", "DATA_ROOT", voc_folder, "--out", out, *extra]
        if "--split" in extra:
            args = args[:1] + args[3:]
        cli(case, args, capsys, says=says)
        assert tree_hash(voc_folder) == before and not out.exists(), case


def test_reproduce_refuses_a_foreign_out_folder(digits_root, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    cli("reproduce --out <a user's folder>", ["reproduce", "--method", "reco", "--split", "1_16", "-p", "DATA_ROOT",
                                             digits_root, "--out", out], capsys, says=("not an s4kit run folder",))
    assert tree_hash(out) == {"notes.txt": hashlib.sha256(b"my notes").hexdigest()}


def test_train_refuses_a_foreign_run_dir(digits_root, tmp_path, capsys):
    user = tmp_path / "results"
    user.mkdir()
    (user / "log.csv").write_text("epoch,loss\n1,0.5\n")
    (user / "config.yaml").write_text("lr: 0.1\nmodel: mine\n")
    (user / "metrics.json").write_text('{"acc": 0.9}')
    before = tree_hash(user)
    cli("train run.dir=<a user's folder with log.csv, config.yaml, metrics.json>",
        train_args(digits_root, user), capsys, says=("not an s4kit run folder", str(user)))
    assert tree_hash(user) == before
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cli("train run.dir=<a file>", train_args(digits_root, a_file), capsys, says="is a file")
    cli("train run.dir=<a folder under a file>", train_args(digits_root, a_file / "run"), capsys, says="is a file")
    assert a_file.read_text() == "x"


def test_empty_folder_and_own_run_folder_are_accepted(digits_root, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(train_args(digits_root, empty)) == 0
    assert (empty / ".s4kit-run").exists() and (empty / "metrics.json").exists()
    assert main(train_args(digits_root, empty, iters=3)) == 0  # extended: resumed from its own folder


# ----------------------------------------------------------------- 3. atomic writes, lock, report

KILL_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    real = Path.write_text
    def dies_half_way(self, text, *a, **k):
        if self.name.startswith(".config.yaml"):
            real(self, text[: len(text) // 2], *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, text, *a, **k)
    Path.write_text = dies_half_way
    from s4kit.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_kill_while_writing_config_yaml_leaves_a_resumable_run(run_copy, digits_root, capsys):
    before = (run_copy / "config.yaml").read_bytes()
    args = train_args(digits_root, run_copy, iters=4)
    res = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, *args], capture_output=True, text=True,
                         cwd=Path(__file__).parent)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert (run_copy / "config.yaml").read_bytes() == before  # the old file, whole
    assert main(args) == 0  # resumes
    assert json.loads((run_copy / "metrics.json").read_text())["iters"] == 4


def test_second_process_on_a_run_dir_is_refused_naming_the_pid(run_copy, digits_root, capsys):
    from s4kit.io import RunLock

    with RunLock(run_copy):
        before = tree_hash(run_copy)
        cli("a second train into a run.dir in use", train_args(digits_root, run_copy, iters=4), capsys,
            says=(f"PID {os.getpid()}", "in use"))
        assert tree_hash(run_copy) == before
    assert main(train_args(digits_root, run_copy, iters=3)) == 0  # free again once released


def test_report_skips_and_lists_unreadable_metrics(finished_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(finished_run, runs / "good")
    (runs / "empty").mkdir()
    (runs / "empty" / "metrics.json").write_text("")
    (runs / "broken").mkdir()
    (runs / "broken" / "metrics.json").write_text('{"miou": 3')
    (runs / "list").mkdir()
    (runs / "list" / "metrics.json").write_text("[1, 2]")
    assert main(["report", str(runs)]) == 0
    out = capsys.readouterr()
    assert "| digits | supervised | 1_16 |" in out.out and len(out.out.strip().splitlines()) == 3
    skipped = [line for line in out.err.splitlines() if line.startswith("s4kit: skipped")]
    assert len(skipped) == 3 and all(name in out.err for name in ("empty", "broken", "list"))
    ROWS.append(("report with an empty, a truncated and a list metrics.json", 0, skipped[0]))


def test_metrics_json_writes_nan_as_null():
    import numpy as np

    from s4kit.io import json_dumps

    text = json_dumps({"miou": np.float32(41.5), "pl": float("nan"), "x": [float("inf"), 2, True], "s": "a"})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == \
        {"miou": 41.5, "pl": None, "x": [None, 2, True], "s": "a"}


def test_atomic_write_failure_leaves_the_old_file(tmp_path, monkeypatch):
    from s4kit.io import atomic_write_text

    path = tmp_path / "config.yaml"
    path.write_text("old: 1\n")
    real = Path.write_text

    def half_then_full_disk(self, text, *a, **k):
        real(self, text[:3], *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", half_then_full_disk)
    with pytest.raises(OSError):
        atomic_write_text(path, "new: 2\n")
    monkeypatch.undo()
    assert path.read_text() == "old: 1\n" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


# ------------------------------------------------------------ 4. checkpoints are only saved healthy

def test_non_finite_weights_are_never_checkpointed(digits_root, tmp_path, monkeypatch, capsys):
    from s4kit.methods.supervised import Supervised

    original = Supervised.after_step

    def poison_at_4(self, step):
        original(self, step)
        if step == 3:  # 0-based: right after the 4th optimiser step, before the checkpoint of iteration 4
            with torch.no_grad():
                next(self.student.parameters()).fill_(float("inf"))

    monkeypatch.setattr(Supervised, "after_step", poison_at_4)
    run = tmp_path / "run"
    args = train_args(digits_root, run, iters=6)
    ckpt = run / "checkpoints" / "last.pt"
    cli("weights become inf between checkpoints (the loss is still finite)", args, capsys,
        says=("iteration 4: non-finite values", "not saved", f"last healthy checkpoint: {ckpt}, iteration 2"))
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


# ------------------------------------------------------------------- 5. resume check without holes

def test_resume_refuses_checkpoint_without_config(run_copy, digits_root, capsys):
    (run_copy / "config.yaml").unlink()
    cli("resume: last.pt but no config.yaml", train_args(digits_root, run_copy, iters=4), capsys,
        says=("config.yaml is missing",))
    assert not (run_copy / "config.yaml").exists()


def test_resume_refuses_truncated_config(run_copy, digits_root, capsys):
    text = (run_copy / "config.yaml").read_text()
    (run_copy / "config.yaml").write_text(text[: len(text) // 3] + "\n  bad: [")
    before = tree_hash(run_copy)
    cli("resume: truncated config.yaml", train_args(digits_root, run_copy, iters=4), capsys,
        says=("config.yaml", "restore it"))
    assert {k: v for k, v in tree_hash(run_copy).items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}


def test_resume_refuses_fewer_iterations(run_copy, digits_root, capsys):
    before = (run_copy / "config.yaml").read_bytes()
    cli("resume with train.iters below the checkpoint's step", train_args(digits_root, run_copy, iters=1), capsys,
        says=("train.iters=1", "(2)"))
    assert (run_copy / "config.yaml").read_bytes() == before


@pytest.mark.parametrize("command", ["train", "eval"])
def test_corrupt_and_mismatched_checkpoints(run_copy, digits_root, command, tmp_path, capsys):
    ckpt = run_copy / "checkpoints" / "last.pt"
    good = ckpt.read_bytes()
    args = train_args(digits_root, run_copy, iters=4) if command == "train" else ["eval", run_copy]
    ckpt.write_bytes(good[: len(good) // 2])
    cli(f"{command}: truncated last.pt", args, capsys, says=(str(ckpt), "unreadable checkpoint"))
    ckpt.write_bytes(b"")
    cli(f"{command}: empty last.pt", args, capsys, says=(str(ckpt), "unreadable checkpoint"))
    state = torch.load(io_bytes(good), weights_only=True)
    state["method"] = {k.replace("student.", "student.x."): v for k, v in state["method"].items()}
    torch.save(state, ckpt)
    cli(f"{command}: last.pt of another model", args, capsys, says=(str(ckpt), "does not fit"))
    torch.save([1, 2, 3], ckpt)
    cli(f"{command}: last.pt that is a list", args, capsys, says=(str(ckpt), "not an s4kit checkpoint"))


def io_bytes(b: bytes):
    import io

    return io.BytesIO(b)


# --------------------------------------------------------------- 6. one line for every user mistake

@pytest.mark.parametrize("override, key", [
    ("train.batch_unlabeled=0", "train.batch_unlabeled"), ("train.batch_labeled=1", "train.batch_labeled"),
    ("optim.lr=-0.1", "optim.lr"), ("optim.lr=nan", "optim.lr"), ("train.checkpoint_every=0", "checkpoint_every"),
    ("train.log_every=0", "train.log_every"), ("train.seed=-1", "train.seed"), ("data.crop_size=0", "data.crop_size"),
    ("data.num_workers=-1", "data.num_workers"), ("train.threads=-2", "train.threads"),
    ("data.mean=[0.5,0.5]", "data.mean"), ("data.std=[0.2,0,0.2]", "data.std"), ("eval.max_images=-1", "max_images"),
    ("eval.pl_max_images=-1", "pl_max_images"), ("model.backbone=resnet7", "model.backbone"),
    ("model.output_stride=12", "model.output_stride"), ("device=tpu", "device"), ("train.iters=abc", "train.iters"),
    ("nosuch.key=1", "nosuch"), ("train=3", "train"), ("=3", "key=value"), ("method.strategy=both", "method.strategy"),
    ("model.name=deeplabv3plus", "model.name"),
])
def test_config_mistakes_are_one_line_and_write_nothing(override, key, digits_root, tmp_path, capsys):
    preset = "digits/rc2l" if override == "model.name=deeplabv3plus" else "digits/css"
    run = tmp_path / "run"
    cli(f"train {preset} {override}", train_args(digits_root, run, preset=preset) + [override], capsys, says=key)
    assert not run.exists()


def test_yaml_mistakes_are_one_line(tmp_path, capsys):
    cases = {
        "top-level list": ("- data\n- train\n", "bad.yaml"),
        "malformed YAML": ("train:\n  iters: [1, 2\n", "bad.yaml"),
        "_base_ cycle": ("_base_: cycle.yaml\n", "cycle.yaml"),
        "missing _base_": ("_base_: nowhere.yaml\n", "nowhere.yaml"),
        "method not a mapping": ("method: reco\n", "method: expected a mapping"),
    }
    for case, (text, says) in cases.items():
        path = tmp_path / ("cycle.yaml" if "cycle" in case else "bad.yaml")
        path.write_text(text)
        cli(f"train <YAML with a {case}>", ["train", path], capsys, says=says)
    (tmp_path / "latin1.yaml").write_bytes("train:\n  iters: 3 # caf\xe9\n".encode("latin-1"))
    cli("train <YAML that is not UTF-8>", ["train", tmp_path / "latin1.yaml"], capsys, says="not UTF-8")


def test_io_failures_are_one_line_naming_the_file(digits_root, tmp_path, monkeypatch, capsys):
    import s4kit.engine.trainer as trainer

    def no_space(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(trainer, "atomic_write_text", no_space)
    run = tmp_path / "run"
    cli("train with no space left on the device", train_args(digits_root, run), capsys,
        says=(str(run), "No space left"))


def test_weights_file_that_is_not_a_state_dict(digits_root, tmp_path, capsys):
    weights = tmp_path / "weights.pt"
    torch.save(torch.zeros(3), weights)
    before = weights.read_bytes()
    cli("model.pretrained=<a tensor, not a state dict>",
        train_args(digits_root, tmp_path / "run") + ["model.backbone=resnet18", f"model.pretrained={weights}"],
        capsys, says=str(weights))
    assert weights.read_bytes() == before


def _splits(tmp_path: Path, labeled: bytes) -> Path:
    splits = tmp_path / "splits"
    (splits / "1_16").mkdir(parents=True)
    (splits / "1_16" / "labeled.txt").write_bytes(labeled)
    (splits / "1_16" / "unlabeled.txt").write_text("JPEGImages/train_00001.jpg SegmentationClass/train_00001.png\n")
    (splits / "val.txt").write_text("JPEGImages/val_00000.jpg SegmentationClass/val_00000.png\n")
    return splits


GOOD = b"JPEGImages/train_00000.jpg SegmentationClass/train_00000.png\n"


@pytest.mark.parametrize("case, labeled, says", [
    ("an absolute path", GOOD + b"/etc/passwd SegmentationClass/train_00000.png\n", "labeled.txt:2"),
    ("a '../' path", GOOD + b"../secret.jpg SegmentationClass/train_00000.png\n", "labeled.txt:2"),
    ("a non-UTF-8 byte", GOOD + b"JPEGImages/caf\xe9.jpg x.png\n", "not UTF-8"),
    ("a duplicate entry", GOOD + GOOD, "labeled.txt:2"),
])
def test_split_file_mistakes(case, labeled, says, digits_root, tmp_path, capsys):
    splits = _splits(tmp_path, labeled)
    cli(f"split file with {case}", train_args(digits_root, tmp_path / "run") + [f"data.splits={splits}"], capsys,
        says=says)


def test_decompression_bomb_is_one_line(digits_root, tmp_path, capsys):
    import struct
    import zlib

    from PIL import Image

    root = tmp_path / "data"
    shutil.copytree(digits_root, root)
    target = root / "JPEGImages" / "train_00000.jpg"
    splits = _splits(tmp_path, GOOD + b"JPEGImages/train_00002.jpg SegmentationClass/train_00002.png\n")
    png = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1)).save(png)
    data = bytearray(png.read_bytes())
    data[16:24] = struct.pack(">II", 20000, 20000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    target.write_bytes(bytes(data))
    cli("an image whose header claims 20000x20000", train_args(digits_root, tmp_path / "run")
        + [f"data.root={root}", f"data.splits={splits}"], capsys, says=str(target))


def test_a_bug_keeps_its_traceback_and_exit_1(digits_root, tmp_path, monkeypatch, capsys):
    from s4kit.methods.supervised import Supervised

    def buggy(self, labeled, unlabeled=None):
        return 1 / 0

    monkeypatch.setattr(Supervised, "train_step", buggy)
    err = cli("a bug in s4kit (ZeroDivisionError)", train_args(digits_root, tmp_path / "run"), capsys, code=1)
    assert "Traceback" in err and "ZeroDivisionError" in err and "please report" in err
