"""docs/methods/substrate.md and frameworks.md: the mandatory MyST formats, and every section
number and equation label that s4kit, the notebooks, benchmarks and tests cite exists."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = {name: (ROOT / "docs" / "methods" / name).read_text(encoding="utf-8")
         for name in ("substrate.md", "frameworks.md")}
LABEL = {"substrate.md": r"S\d{1,2}", "frameworks.md": r"U\d"}


def sections(text):
    return set(re.findall(r"^## ([A-Z]?\d+)\. \S", text, re.M)) | set(re.findall(r"^### ([A-Z]?\d+\.\d+) \S", text, re.M))


def labels(text):
    return set(re.findall(r"^\$\$ \((\w+)\)$", text, re.M)) | set(re.findall(r"^\((\w+)\)=$", text, re.M))


def citing_files():
    for folder in ("s4kit", "notebooks", "benchmarks", "tests", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".ipynb", ".md", ".yaml") and path.name not in PAGES:
                yield path


@pytest.mark.parametrize("name", sorted(PAGES))
def test_equations_are_labelled_display_blocks(name):
    text = PAGES[name]
    blocks = re.findall(r"^\$\$\n(.+?)\n\$\$ \((\w+)\)$", text, re.M | re.S)
    assert blocks and {label for _, label in blocks} == labels(text)
    assert all(re.fullmatch(LABEL[name], label) for _, label in blocks)
    assert "notebooks/0" in text.split("\n## ")[0]  # the page opens with a link to its notebooks


def test_every_citation_of_the_pages_resolves():
    missing = []
    for path in citing_files():
        text = path.read_text(encoding="utf-8", errors="ignore")
        for page, refs in re.findall(r"(substrate|frameworks)\.md((?:[ ,]*(?:and )?§ ?[A-Z]?\d+(?:\.\d+)?"
                                     r"(?: ?-(?:§)?[A-Z]?\d+(?:\.\d+)?)?)+)", text):
            for ref in re.findall(r"[A-Z]?\d+(?:\.\d+)?", refs):
                if ref not in sections(PAGES[f"{page}.md"]):
                    missing.append((path.name, f"{page}.md §{ref}"))
        for page, pattern in LABEL.items():
            for label in set(re.findall(rf"\(({pattern})[,)\s-]", text)) | set(re.findall(rf"\b({pattern})-", text)):
                if label not in labels(PAGES[page]):
                    missing.append((path.name, label))
    assert not missing, missing
