"""The command line: user mistakes print one line and exit 2; commands produce their outputs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from s4kit.cli import main

from conftest import tiny_overrides


def _run(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("args, message", [
    (["train", "digits/nosuch"], "unknown preset"),
    (["train", "digits/reco", "train.itres=3"], "itres"),
    (["train", "digits/reco", "data.root=/nonexistent/digits", "device=cpu"], "labeled.txt: split file not found"),
    (["eval", "/nonexistent/run"], "not a run folder"),
    (["report", "/nonexistent/runs"], "no such folder"),
    (["data", "mnist"], "only the embedded digits"),
])
def test_user_errors_are_one_line_with_exit_code_2(args, message, capsys):
    code, _, err = _run(args, capsys)
    assert code == 2
    assert err.startswith("s4kit: error:") and message in err and "Traceback" not in err


@pytest.mark.parametrize("preset, hint", [
    ("digits/reco", "build the dataset first: s4kit data digits --root /nonexistent/d"),
    ("pascal/tiny", "copy UniMatch's official lists splits/pascal/ to data.splits=/nonexistent/d/splits "
                    "(data/README.md, 'PASCAL VOC 2012')"),
])
def test_a_missing_split_file_says_how_to_get_it(preset, hint, tmp_path, capsys):
    code, _, err = _run(["train", preset, "data.root=/nonexistent/d", f"run.dir={tmp_path / 'run'}", "device=cpu"],
                        capsys)
    assert code == 2 and "/nonexistent/d/splits/" in err and "split file not found; " + hint in err


def test_empty_split_file_is_reported(digits_root, tmp_path, capsys):
    splits = tmp_path / "splits"
    (splits / "1_16").mkdir(parents=True)
    (splits / "1_16" / "labeled.txt").write_text("")
    (splits / "1_16" / "unlabeled.txt").write_text("JPEGImages/train_00000.jpg SegmentationClass/train_00000.png\n")
    code, _, err = _run(["train", "digits/supervised", f"data.root={digits_root}", f"data.splits={splits}",
                         f"run.dir={tmp_path / 'run'}", "device=cpu"], capsys)
    assert code == 2 and "labeled.txt: split file is empty" in err


def test_train_eval_report(digits_root, tmp_path, capsys):
    run = tmp_path / "runs" / "a"
    code, out, _ = _run(["train", "digits/supervised"] + tiny_overrides(digits_root, run), capsys)
    assert code == 0 and "miou" in out and f"run folder: {run}" in out
    code, out, _ = _run(["eval", str(run)], capsys)
    assert code == 0
    saved = json.loads((run / "metrics.json").read_text())
    assert json.loads((run / "eval.json").read_text())["miou"] == pytest.approx(saved["miou"])
    code, out, _ = _run(["report", str(tmp_path / "runs")], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("| dataset | method") and "| digits | supervised | 1_16 |" in lines[2]
    assert f"{saved['miou']:.1f}" in lines[2]


def test_console_script_and_module_entry_point(tmp_path):
    res = subprocess.run([sys.executable, "-m", "s4kit.run", "report", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2 and "no metrics.json" in res.stderr


def test_summary_says_n_a_for_what_was_not_measured_and_names_the_run_folder():
    from s4kit.cli import _summary

    text = _summary({"method": "reco", "miou": 41.234, "pseudo_label_precision": float("nan"),
                     "pseudo_label_coverage": None, "iters": 4}, "runs/x")
    lines = dict(line.strip().split(": ", 1) for line in text.splitlines())
    assert lines == {"method": "reco", "iters": "4", "miou": "41.23", "pseudo_label_precision": "n/a",
                     "pseudo_label_coverage": "n/a", "run folder": "runs/x"}


def test_default_run_folders_are_per_preset_split_and_seed(tmp_path):
    from s4kit.config import load_config

    assert load_config("digits/reco").run.dir == "runs/digits/reco/1_16/seed0"
    assert load_config("digits/supervised_maskformer", ["data.split=full", "train.seed=2"]).run.dir == \
        "runs/digits/supervised_maskformer/full/seed2"
    own = tmp_path / "my_experiment.yaml"
    own.write_text("_base_: " + str(Path(__file__).resolve().parents[1] / "s4kit/configs/digits/reco.yaml") + "\n")
    assert load_config(own).run.dir == "runs/digits/my_experiment/1_16/seed0"
    assert load_config("digits/reco", ["run.dir=elsewhere"]).run.dir == "elsewhere"


def test_a_command_that_fails_before_training_leaves_no_run_folder(digits_root, tmp_path, capsys):
    run = tmp_path / "runs" / "digits" / "a"
    (tmp_path / "runs" / "other").mkdir(parents=True)  # a folder beside: kept, and so is runs/
    code, _, err = _run(["train", "digits/supervised", "data.root=/nonexistent/d", f"run.dir={run}", "device=cpu"],
                        capsys)
    assert code == 2 and "split file not found" in err and not (tmp_path / "runs" / "digits").exists()
    assert (tmp_path / "runs" / "other").is_dir()
    kept = tmp_path / "kept"
    kept.mkdir()  # a folder that existed before the command is never removed
    code, _, _ = _run(["train", "digits/supervised", "data.root=/nonexistent/d", f"run.dir={kept}", "device=cpu"],
                      capsys)
    assert code == 2 and kept.is_dir()
    code, out, _ = _run(["train", "digits/supervised"] + tiny_overrides(digits_root, run), capsys)
    assert code == 0 and (run / "metrics.json").is_file()  # the corrected command starts clean


def test_a_finished_run_is_reported_not_redone_unless_force_eval(digits_root, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "digits/supervised"] + tiny_overrides(digits_root, run)
    assert _run(args, capsys)[0] == 0
    metrics = run / "metrics.json"
    before = (metrics.read_text(), metrics.stat().st_mtime_ns)
    code, out, _ = _run(args, capsys)
    assert code == 0 and out.startswith(f"already finished: {run} (mIoU ") and "--force-eval" in out
    assert (metrics.read_text(), metrics.stat().st_mtime_ns) == before
    code, out, _ = _run(args + ["--force-eval"], capsys)
    assert code == 0 and f"run folder: {run}" in out and metrics.stat().st_mtime_ns != before[1]
    assert json.loads(metrics.read_text())["miou"] == pytest.approx(json.loads(before[0])["miou"])
    code, out, _ = _run(args + ["train.iters=6"], capsys)  # a larger train.iters extends the run
    assert code == 0 and "already finished" not in out and json.loads(metrics.read_text())["iters"] == 6


def test_presets_lists_every_preset_once_with_its_method_network_and_a_description(capsys):
    from s4kit.config import available_presets, load_config

    code, out, _ = _run(["presets"], capsys)
    rows = [line.split(None, 4) for line in out.splitlines()]
    assert code == 0 and [r[0] for r in rows] == available_presets()
    for name, method, network, encoder, description in rows:
        cfg = load_config(name, ["model.pretrained=none"])
        assert method == cfg.method.name and network == cfg.model.name, name
        assert encoder == f"({cfg.model.encoder if network == 'segformer' else cfg.model.backbone})", name
        assert len(description) > 20, name


def test_config_prints_the_resolved_config_train_would_save(capsys):
    from omegaconf import OmegaConf

    from s4kit.config import from_yaml, load_config

    code, out, _ = _run(["config", "digits/reco", "train.iters=7", "method.num_queries=32"], capsys)
    assert code == 0
    printed = OmegaConf.to_container(from_yaml_text(out, from_yaml))
    assert printed == OmegaConf.to_container(load_config("digits/reco", ["train.iters=7", "method.num_queries=32"]))
    assert printed["train"]["iters"] == 7 and printed["run"]["dir"] == "runs/digits/reco/1_16/seed0"
    code, _, err = _run(["config", "digits/reco", "method.num_querys=3"], capsys)
    assert code == 2 and "num_querys" in err


def from_yaml_text(text, from_yaml):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "config.yaml"
        path.write_text(text)
        return from_yaml(path)


def test_help_lists_the_choices_and_shows_no_markup(capsys):
    from s4kit.config import available_presets

    with pytest.raises(SystemExit) as ex:
        main(["--help"])
    out = capsys.readouterr().out
    assert ex.value.code == 0 and "``" not in out and "s4kit command line" in out
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in available_presets():
        dataset, method = name.split("/")
        assert method in out and dataset in out, name
    assert "1_512" in out and "u2pl_1_16" in out
