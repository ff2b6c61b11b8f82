"""docs/methods/rc2l.md: MyST format, and every section and label the code cites exists."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "methods" / "rc2l.md"
# files that cite rc2l.md's labels (bare "(R6)" or "D7" refer to this page there)
CITING = ["s4kit/losses/region.py", "s4kit/methods/rc2l.py", "s4kit/models/maskformer.py",
          "s4kit/configs/digits/rc2l.yaml", "s4kit/configs/pascal/rc2l.yaml", "s4kit/configs/cityscapes/rc2l.yaml",
          "notebooks/04_region_losses.ipynb"]


def page_labels(text: str) -> tuple[set[str], set[str]]:
    sections = set(re.findall(r"^## (\d+)\. \S", text, re.M)) | set(re.findall(r"^### (\d+\.\d+) \S", text, re.M))
    equations = set(re.findall(r"^\$\$ \(([A-Z]+\d+)\)\s*$", text, re.M))
    targets = set(re.findall(r"^\s*\(([A-Z]+\d+)\)=\s*$", text, re.M))
    return sections, equations | targets


def test_rc2l_page_format():
    text = PAGE.read_text()
    sections, labels = page_labels(text)
    assert {str(i) for i in range(1, 16)} <= sections
    assert {f"R{i}" for i in range(1, 11)} <= set(re.findall(r"^\$\$ \((R\d+)\)\s*$", text, re.M))
    assert "../../notebooks/04_region_losses.ipynb" in text.splitlines()[2] or "04_region_losses.ipynb" in text[:400]
    # display blocks are balanced: every opening $$ has a closing $$ line
    assert len(re.findall(r"^\$\$", text, re.M)) % 2 == 0


def test_every_citation_of_rc2l_page_resolves():
    sections, labels = page_labels(PAGE.read_text())
    files = [ROOT / f for f in CITING] + [p for p in ROOT.rglob("*") if p.suffix in (".py", ".yaml", ".md", ".ipynb")
                                          and "rc2l.md" in p.read_text(errors="ignore") and p != PAGE
                                          and ".venv" not in p.parts and ".git" not in p.parts]
    for path in set(files):
        text = path.read_text()
        for line in text.splitlines():
            if "rc2l.md" in line:
                for sec in re.findall(r"§(\d+(?:\.\d+)?)", line):
                    assert sec in sections, f"{path.name}: §{sec}"
        if str(path.relative_to(ROOT)) in CITING:
            for label in set(re.findall(r"\b([RDIST]\d+|M[12])\b", text)):
                assert label in labels, f"{path.name}: {label}"
