"""Notebooks run headlessly under papermill with FAST settings; they are stored without outputs."""
import json
import re
from pathlib import Path

import pytest

from s4kit.engine.reproduce import reproduce


NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs_and_have_parameters(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1
    src = "".join(params[0]["source"])
    assert "FAST" in src and "DATA_ROOT" in src
    assert any("s4kit.__version__" in "".join(c["source"]) for c in code)


def test_reproduce_notebook_through_the_cli_function(digits_root, tmp_path, capsys):
    run = tmp_path / "run"
    out = reproduce("reco", "digits", "1_16", 0, {"FAST": "true", "DATA_ROOT": str(digits_root), "DEVICE": "cpu"},
                    run)
    assert out == run / "reproduce.ipynb" and out.exists()
    # streamed while it ran: the notebook's path first, papermill's cell bar, the cells' output
    # (the training bar as text, not a widget, and the stage lines)
    captured = capsys.readouterr()
    err = captured.err.replace("\r", "\n")
    assert err.startswith(f"executing {NOTEBOOKS / 'reproduce.ipynb'} into {out}\n")
    assert "Executing" in err and re.search(r"(?m)^reco: +100%", err) and re.search(r"(?m)^figures \.\.\. ", err)
    assert "miou" in captured.out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "reco" and metrics["iters"] == 12
    assert (run / "figures" / "tsne.png").exists()
    nb = json.loads(out.read_text())
    assert any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")  # the executed copy keeps them


# notebooks 00 and 01 are run by tests/test_notebook_00.py and tests/test_notebook_01.py


def test_library_figures_keep_a_notebooks_inline_backend(monkeypatch):
    """Training inside a notebook writes run figures; that must not switch the kernel's
    matplotlib backend to Agg, or the notebook's later figures silently stop showing."""
    import sys
    import types

    import matplotlib

    from s4kit.viz.figures import use_headless_backend

    calls = []
    monkeypatch.setattr(matplotlib, "use", lambda *args, **kwargs: calls.append(args))
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    use_headless_backend()
    assert calls == []
    monkeypatch.delitem(sys.modules, "ipykernel")
    use_headless_backend()
    assert calls == [("Agg",)]


def test_reproduce_streams_the_notebook_unless_told_not_to(digits_root, tmp_path, monkeypatch, capsys):
    """What ``s4kit reproduce`` passes papermill (no notebook runs here)."""
    import os
    import sys

    import papermill

    from s4kit.engine.stages import TEXT_BARS

    calls = []

    def execute_notebook(src, target, **kwargs):
        calls.append({**kwargs, "env": os.environ.get(TEXT_BARS), "err_before": capsys.readouterr().err,
                      "stdout": sys.stdout, "stderr": sys.stderr})

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    monkeypatch.delenv(TEXT_BARS, raising=False)
    params = {"FAST": "true", "DATA_ROOT": str(digits_root), "DEVICE": "cpu"}
    out = reproduce("supervised", "digits", "1_16", 0, params, tmp_path / "a")
    c = calls[-1]
    assert c["progress_bar"] is True and c["stdout_file"] is c["stdout"] and c["stderr_file"] is c["stderr"]
    assert c["env"] == "1" and TEXT_BARS not in os.environ  # text bars in the kernel only
    assert c["err_before"] == f"executing {NOTEBOOKS / 'reproduce.ipynb'} into {out}\n"
    reproduce("supervised", "digits", "1_16", 0, params, tmp_path / "b", progress=False)
    c = calls[-1]
    assert c["progress_bar"] is False and c["stdout_file"] is None and c["stderr_file"] is None
    assert c["env"] is None and c["err_before"] == "" and capsys.readouterr() == ("", "")


@pytest.mark.teaching
def test_reproduce_notebook_at_its_defaults(tmp_path):
    """FAST off: the preset's full digits run (reco, 1_16, 800 iterations) into a temporary folder."""
    from conftest import run_notebook

    nb = run_notebook("reproduce.ipynb", tmp_path, DATA_ROOT=str(tmp_path / "digits"), RUN_DIR=str(tmp_path / "run"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["iters"] == 800 and "smoke-test settings" not in json.dumps(nb)
