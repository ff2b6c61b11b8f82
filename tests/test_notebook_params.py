"""Notebook parameters: ``-p FAST false`` really turns FAST off, and relative paths resolve
against the repository root (or ``S4KIT_HOME``), never the folder the kernel runs in."""
import json
from pathlib import Path

import papermill
import pytest

from s4kit.errors import S4kitError
from s4kit.notebook import SMOKE_BANNER, flag, home, home_path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), ("true", True), ("True", True), ("false", False), ("False", False),
    (" FALSE ", False), ("0", False), ("1", True), (0, False), (1, True), ("yes", True), ("no", False),
    (None, False), ("", False)])
def test_flag_reads_what_papermill_and_users_pass(value, expected, monkeypatch):
    monkeypatch.delenv("S4KIT_FAST", raising=False)
    assert flag(value) is expected


def test_the_environment_wins_so_the_book_can_run_at_smoke_settings(monkeypatch):
    monkeypatch.setenv("S4KIT_FAST", "1")
    assert flag(False) is True
    monkeypatch.setenv("S4KIT_FAST", "no")
    assert flag(True) is False
    monkeypatch.setenv("S4KIT_FAST", "perhaps")
    with pytest.raises(S4kitError, match="S4KIT_FAST="):
        flag(False)


@pytest.mark.parametrize("value", ["maybe", 2, "ture", 0.5])
def test_flag_refuses_anything_else_naming_the_parameter(value, monkeypatch):
    monkeypatch.delenv("S4KIT_FAST", raising=False)
    with pytest.raises(S4kitError, match="FAST="):
        flag(value)


def test_relative_paths_start_at_the_repository_root_wherever_the_kernel_runs(monkeypatch, tmp_path):
    monkeypatch.delenv("S4KIT_HOME", raising=False)
    monkeypatch.chdir(NOTEBOOKS)
    assert home() == ROOT
    assert home_path("data/digits") == ROOT / "data" / "digits"
    assert home_path(tmp_path) == tmp_path                  # absolute paths are kept
    monkeypatch.setenv("S4KIT_HOME", str(tmp_path))
    assert home_path("runs/x") == tmp_path / "runs" / "x"
    monkeypatch.setenv("S4KIT_HOME", str(tmp_path / "missing"))
    with pytest.raises(S4kitError, match="S4KIT_HOME"):
        home()


def test_a_notebook_run_from_its_own_folder_uses_the_home_data_and_fast_false_means_false(tmp_path, digits_root,
                                                                                          monkeypatch):
    """Notebook 00 executed with the kernel in ``notebooks/`` (as JupyterLab starts it) and the
    default ``DATA_ROOT = "data/digits"``: it reads ``$S4KIT_HOME/data/digits`` and makes no
    ``notebooks/data``; ``-p FAST false`` (the string papermill passes) takes the full path."""
    home_dir = tmp_path / "home"
    (home_dir / "data").mkdir(parents=True)
    (home_dir / "data" / "digits").symlink_to(digits_root, target_is_directory=True)
    monkeypatch.setenv("S4KIT_HOME", str(home_dir))
    stray = NOTEBOOKS / "data"
    existed = stray.exists()
    out = tmp_path / "00.ipynb"
    try:
        papermill.execute_notebook(str(NOTEBOOKS / "00_data_and_splits.ipynb"), str(out), progress_bar=False,
                                   kernel_name="python3", cwd=str(NOTEBOOKS), parameters={"FAST": "false"})
        assert existed or not stray.exists(), "the notebook built a dataset under notebooks/data"
    finally:
        if not existed and stray.exists():
            import shutil
            shutil.rmtree(stray)
    text = json.dumps(json.loads(out.read_text()))
    assert f"data_root: {home_dir / 'data' / 'digits'}" in text
    assert SMOKE_BANNER not in text                       # -p FAST false: the full path ran
    fast = tmp_path / "00_fast.ipynb"
    papermill.execute_notebook(str(NOTEBOOKS / "00_data_and_splits.ipynb"), str(fast), progress_bar=False,
                               kernel_name="python3", cwd=str(NOTEBOOKS), parameters={"FAST": "true"})
    assert SMOKE_BANNER in fast.read_text()


def test_gitignore_covers_data_and_run_folders_made_anywhere(tmp_path):
    import subprocess
    paths = ["runs/x/config.yaml", "notebooks/runs/a/log.csv", "notebooks/data/digits/splits/1_16/labeled.txt",
             "data/digits/JPEGImages/a.png", "data/voc/x.png"]
    out = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert sorted(out.stdout.split()) == sorted(paths)


def test_cached_run_is_keyed_by_the_whole_config(tmp_path, digits_root, capsys):
    """A run is reused only for the very same config: a FAST (shorter) run never stands in for a
    longer one, and changing any key trains a new run beside it."""
    from conftest import tiny_overrides

    from s4kit.notebook import cached_run

    base = [o for o in tiny_overrides(digits_root, tmp_path / "ignored", iters=2) if not o.startswith("run.dir")]
    first = cached_run("digits/supervised", base, tmp_path / "cache", progress=False)
    assert (first / "metrics.json").exists() and first.parent == tmp_path / "cache"
    stamp = (first / "metrics.json").stat().st_mtime_ns
    again = cached_run("digits/supervised", base, tmp_path / "cache", progress=False)
    assert again == first and (first / "metrics.json").stat().st_mtime_ns == stamp
    assert "reusing the finished run" in capsys.readouterr().out
    longer = cached_run("digits/supervised", [*base, "train.iters=4", "train.checkpoint_every=4"], tmp_path / "cache",
                        progress=False)
    assert longer != first
    import json
    assert json.loads((longer / "metrics.json").read_text())["iters"] == 4
