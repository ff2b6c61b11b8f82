"""docs/methods/prcl.md: every section and label the code cites for PRCL exists in the page."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "methods" / "prcl.md"
CITING = ("s4kit", "notebooks", "benchmarks", "tests")


def _citing_files():
    for top in CITING:
        for path in (ROOT / top).rglob("*"):
            if path.suffix in (".py", ".ipynb", ".yaml", ".md") and path.is_file():
                yield path, path.read_text(encoding="utf-8", errors="replace")


def _page():
    text = PAGE.read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\d+)\. \S", text, re.M))
    sections |= set(re.findall(r"^### (\d+\.\d+) \S", text, re.M))
    equations = set(re.findall(r"^\$\$ \((P\d+[a-z]?)\)$", text, re.M))
    targets = set(re.findall(r"^\(([\w-]+)\)=$", text, re.M))
    return text, sections, equations, targets


def test_page_formats():
    text, sections, equations, targets = _page()
    assert {str(n) for n in range(15)} <= sections and {"2.1", "2.2", "2.3", "5.1", "5.2", "5.3"} <= sections
    assert {"P1", "P1a", "P1b", *(f"P{n}" for n in range(2, 12))} <= equations
    # every display block opens and closes: an even number of $$ lines
    assert len(re.findall(r"^\$\$", text, re.M)) % 2 == 0
    assert "notebooks/03_gaussian_prototypes.ipynb" in text.splitlines()[2]
    assert {f"prcl-check-{n}" for n in range(1, 20)} <= targets


def test_every_citation_resolves():
    _, sections, equations, targets = _page()
    missing = []
    for path, text in _citing_files():
        if path.name == Path(__file__).name:
            continue
        for line in text.splitlines():
            if "prcl.md" in line:
                for sec in re.findall(r"§(\d+(?:\.\d+)?)", line):
                    if sec not in sections:
                        missing.append((path.name, f"§{sec}"))
                for num in re.findall(r"check (\d+)", line):
                    if f"prcl-check-{num}" not in targets:
                        missing.append((path.name, f"check {num}"))
            # P-labels are PRCL's (CSS uses C, the substrate S, RC2L R, AllSpark A)
            for label in re.findall(r"\b(P\d+[a-z]?)\b", line):
                if label not in equations:
                    missing.append((path.name, label))
    assert not missing, missing
