"""The wheel holds everything ``pip install .`` (non-editable) users need: every module, the
presets, ``py.typed`` and the notebooks (``s4kit reproduce`` reads them from the package)."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from s4kit.config import ConfigError
from s4kit.engine import reproduce as R

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built (no network, no build isolation) from a copy of the checkout, so the build
    writes no build/ or *.egg-info into it."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in ("s4kit", "notebooks"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                          "--no-index", "-q", "-w", str(tmp / "dist")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (whl,) = (tmp / "dist").glob("s4kit-*.whl")
    return whl


def test_the_wheel_holds_every_module_preset_notebook_and_py_typed(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "s4kit").rglob("*.py")}
    assert modules and modules <= names, sorted(modules - names)[:5]  # a subpackage missing from pyproject
    presets = {p.relative_to(ROOT).as_posix() for p in (ROOT / "s4kit" / "configs").glob("*/*.yaml")}
    assert "s4kit/configs/digits/reco.yaml" in presets and presets <= names
    assert "s4kit/py.typed" in names
    notebooks = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert "reproduce.ipynb" in notebooks
    assert sorted(n.split("/")[-1] for n in names if n.startswith("s4kit/notebooks/")) == notebooks
    with zipfile.ZipFile(wheel) as z:
        assert z.read("s4kit/notebooks/reproduce.ipynb") == (ROOT / "notebooks" / "reproduce.ipynb").read_bytes()


def test_an_installed_wheel_finds_its_notebook_outside_any_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                          str(target), str(wheel)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    code = "from s4kit.engine.reproduce import notebook_path; print(notebook_path('reproduce.ipynb'))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target)})
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()) == target / "s4kit" / "notebooks" / "reproduce.ipynb"


def test_the_checkout_notebook_comes_first_and_a_missing_one_names_both_places(monkeypatch, tmp_path):
    assert R.notebook_path("reproduce.ipynb") == ROOT / "notebooks" / "reproduce.ipynb"
    monkeypatch.setattr(R, "CHECKOUT", tmp_path)  # no pyproject.toml: not a checkout
    monkeypatch.setattr(R, "NOTEBOOK_DIR", ROOT / "notebooks")
    with pytest.raises(ConfigError, match=r"reproduce\.ipynb: notebook not found in .*notebooks nor in "
                                          r".*s4kit/notebooks/reproduce\.ipynb"):
        R.notebook_path("reproduce.ipynb")
