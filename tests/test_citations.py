"""Every citation of the method notes resolves: ``docs/methods/<page>.md §N`` names a section of
an existing page, and every equation label (S3, C7, P2, R6, A4 ... and ranges such as S5-S9)
used in code, notebooks, presets and benchmarks is defined on its page, as a labelled display
equation ``$$ (C7)`` or a MyST target ``(C7)=``."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "docs" / "methods"
PREFIX = {"S": "substrate.md", "C": "css.md", "P": "prcl.md", "R": "rc2l.md", "A": "allspark.md"}
SOURCES = [p for d in ("s4kit", "notebooks", "benchmarks", "tests") for p in (ROOT / d).rglob("*")
           if p.suffix in (".py", ".ipynb", ".yaml", ".md") and p.is_file() and p.name != "test_citations.py"]
SOURCES += [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

PAGE_CITE = re.compile(r"docs/methods/([\w-]+\.md)((?:[\s,;]*(?:and\s+)?§[\w.]+(?:\s*[-–]\s*§?[\w.]+)?)*)")
SECTION = re.compile(r"§(\w+(?:\.\d+)?)(?:\s*[-–]\s*§?(\w+(?:\.\d+)?))?")
LABEL = re.compile(r"(?<![\w.§/-])([SCPRA])([1-9]\d?)(?:\s*[-–]\s*\1?([1-9]\d?))?(?![\w])")


def _texts():
    for path in SOURCES:
        yield path, path.read_text(encoding="utf-8", errors="replace")


def _headings(page: Path) -> set[str]:
    """Section numbers of a page: '## 7. Title' -> '7', '### 2.1 Title' -> '2.1', '## A. ...' -> 'A'."""
    out = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{2,4}\s+§?([A-Z]?\d+(?:\.\d+)*|[A-Z])\.?(?:\s|$)", line)
        if m:
            out.add(m.group(1))
    return out


def _labels(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    return set(re.findall(r"\$\$\s*\(([A-Z]\d+)\)", text)) | set(re.findall(r"^\(([A-Z]\d+)\)=\s*$", text, re.M))


def test_every_cited_page_and_section_exists():
    missing = []
    for path, text in _texts():
        for m in PAGE_CITE.finditer(text):
            page = PAGES / m.group(1)
            where = f"{path.relative_to(ROOT)}: docs/methods/{m.group(1)}{m.group(2)}"
            if not page.is_file():
                missing.append(f"{where} (no such page)")
                continue
            heads = _headings(page)
            for s in SECTION.finditer(m.group(2)):
                first, last = s.group(1), s.group(2)
                if last and first.isdigit() and last.isdigit():
                    wanted = [str(k) for k in range(int(first), int(last) + 1)]
                else:
                    wanted = [first] + ([last] if last else [])
                missing += [f"{where} (no section {w})" for w in wanted if w not in heads]
    assert not missing, "\n".join(missing)


def test_every_equation_label_is_defined_on_its_page():
    defined = {prefix: _labels(PAGES / page) if (PAGES / page).is_file() else set()
               for prefix, page in PREFIX.items()}
    missing = set()
    for path, text in _texts():
        if path.is_relative_to(ROOT / "docs"):
            continue  # the notes define labels (and frameworks.md has sections named A2, B1 ...)
        for m in LABEL.finditer(text):
            a, b = int(m.group(2)), int(m.group(3) or m.group(2))
            missing |= {f"{m.group(1)}{k} ({path.relative_to(ROOT)})" for k in range(a, b + 1)
                        if f"{m.group(1)}{k}" not in defined[m.group(1)]}
    assert not missing, "\n".join(sorted(missing))


def test_no_citation_points_outside_the_project():
    stale = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p, t in _texts()
             for m in re.finditer(r"(?<!docs/methods/)(?<![\w/])reference/[\w-]+\.md", t)]
    assert not stale, "\n".join(stale)


@pytest.mark.parametrize("page", sorted(set(PREFIX.values())))
def test_each_method_page_defines_its_equations(page):
    equations = re.findall(r"\$\$\s*\(([A-Z]\w*)\)", (PAGES / page).read_text(encoding="utf-8"))
    prefix = next(k for k, v in PREFIX.items() if v == page)
    assert equations and all(label.startswith(prefix) for label in equations), equations
    assert len(set(equations)) == len(equations), "an equation label defined twice"
