"""docs/: the figures script runs and makes every figure the docs show; every code reference in the
README and the docs names a function, class or constant that exists; no document cites a file the
repository lacks."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
REFERENCE = re.compile(r"`([\w./-]+\.py):([A-Za-z_][\w.]*)`")  # `lcm/schedule.py:NoiseSchedule.add_noise`
FIGURE = re.compile(r"\]\((?:docs/)?figures/([\w-]+\.(?:png|gif))\)")  # in docs/*.md and the README
IMAGE = re.compile(r"!\[[^\]]*\]\(((?:docs/)?figures/[\w.-]+)\)")


def defined_names(body: list[ast.stmt]) -> dict[str, list[ast.stmt] | None]:
    """Names defined at one level: functions and classes (with their bodies), assigned constants."""
    names = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node.body
        elif isinstance(node, ast.Assign):
            names.update({t.id: None for t in node.targets if isinstance(t, ast.Name)})
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = None
    return names


def resolves(path: Path, dotted: str) -> bool:
    body = ast.parse(path.read_text()).body
    for part in dotted.split("."):
        names = defined_names(body or [])
        if part not in names:
            return False
        body = names[part]
    return True


def test_every_code_reference_in_the_docs_exists():
    references = [(doc.name, file, name) for doc in [ROOT / "README.md", *DOCS]
                  for file, name in REFERENCE.findall(doc.read_text())]
    assert len(references) > 50  # the walkthrough points at the code at every step
    missing = [f"{doc}: {file}:{name}" for doc, file, name in references
               if not (ROOT / file).is_file() or not resolves(ROOT / file, name)]
    assert not missing, "docs name code that does not exist:\n" + "\n".join(missing)


def test_reference_resolution_rejects_what_is_not_there():
    schedule = ROOT / "lcm" / "schedule.py"
    assert resolves(schedule, "NoiseSchedule.add_noise") and resolves(schedule, "SCHEDULES")
    assert not resolves(schedule, "NoiseSchedule.no_such_method") and not resolves(schedule, "add_noise")


def test_figures_script_makes_every_figure_the_docs_show(tmp_path):
    done = subprocess.run([sys.executable, "-m", "docs.figures", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = {name for doc in [ROOT / "README.md", *DOCS] for name in FIGURE.findall(doc.read_text())}
    made = {p.name for p in tmp_path.iterdir() if p.suffix in (".png", ".gif")}
    assert "strip.gif" in shown and shown == made, \
        f"shown but not made: {shown - made}; made but not shown: {made - shown}"
    for name in made:
        with Image.open(tmp_path / name) as image:
            image.load()  # a GIF: its first frame
            assert image.format == name.rsplit(".", 1)[1].upper() and min(image.size) >= 100
            extrema = image.convert("L").getextrema()
            assert extrema[1] - extrema[0] > 50  # not a blank canvas


def uncaptioned(markdown: str) -> list[str]:
    """The figures of a Markdown text without a caption: an italic paragraph (*...*, not bold) right after
    the paragraph that is the image alone."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", markdown)]
    missing = []
    for here, after in zip(paragraphs, [*paragraphs[1:], ""]):
        image = IMAGE.fullmatch(here)
        italic = after.startswith("*") and after.endswith("*") and not (after.startswith("**") or after.endswith("**"))
        if image and not italic:
            missing.append(image.group(1))
    return missing


def test_every_figure_in_the_docs_has_a_caption():
    shown = [(doc.name, name) for doc in [ROOT / "README.md", *DOCS] for name in IMAGE.findall(doc.read_text())]
    assert len(shown) > 15
    missing = [f"{doc}: {name}" for doc in [ROOT / "README.md", *DOCS] for name in uncaptioned(doc.read_text())]
    assert not missing, "figures without an italic caption right below:\n" + "\n".join(missing)


def test_caption_check_rejects_what_is_not_a_caption():
    image = "![a plot](figures/a.png)"
    assert uncaptioned(f"text\n\n{image}\n\n*What to look at: the crossing.*\n\nmore") == []
    for after in ("Plain prose after it.", "**A bold heading.** Prose.", "*Italic start,* then prose.", ""):
        assert uncaptioned(f"{image}\n\n{after}") == ["figures/a.png"], after


def project_files(suffix: str) -> list[Path]:
    """The repository's files ending in `suffix`, leaving out environments, runs and caches."""
    skip = {".git", ".venv", "runs", "out", "eval", "__pycache__", ".pytest_cache"}
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in skip]
        found += [Path(folder) / f for f in files if f.endswith(suffix)]
    return found


def test_no_document_or_docstring_cites_a_file_the_repository_lacks():
    """Markdown links and cited .md files resolve inside the repository (a clone has nothing else)."""
    link = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")
    cited = re.compile(r"\b([\w./-]+\.md)\b")
    documents = {p.name for p in project_files(".md")}
    missing = []
    for doc in [ROOT / "README.md", *DOCS]:
        for target in link.findall(doc.read_text()):
            if not (doc.parent / target).resolve().is_file():
                missing.append(f"{doc.name}: {target}")
    for source in project_files(".py"):
        if "tests" not in source.relative_to(ROOT).parts:
            missing += [f"{source.relative_to(ROOT)}: {name}" for name in cited.findall(source.read_text())
                        if Path(name).name not in documents]
    assert not missing, "cited but not in the repository:\n" + "\n".join(missing)


def test_every_generated_table_is_what_its_results_file_gives():
    """README.md's and docs/*.md's results tables are docs/tables.py's rendering of toy/weights/*.json:
    `python -m docs.tables` rewrites them after a study ships new results."""
    from docs import tables
    stale = [doc.name for doc in tables.DOCUMENTS if tables.regenerated(doc.read_text()) != doc.read_text()]
    assert not stale, f"tables differ from their results files in {stale}: run python -m docs.tables"
    shown = {m.group(2) for doc in tables.DOCUMENTS for m in tables.BLOCK.finditer(doc.read_text())}
    assert shown == set(tables.TABLES), f"generated but not shown: {set(tables.TABLES) - shown}"


def test_a_table_typed_over_by_hand_is_caught():
    from docs import tables
    doc = ROOT / "docs" / "toy-world.md"
    text = doc.read_text()
    start = text.index("<!-- table: t2v-fvd -->")
    row = text.index("| AnimateLCM (decoupled) |", start)
    edited = text[:row] + text[row:].replace(" ± ", " ± 9", 1)  # one digit changed in one cell
    assert tables.regenerated(edited) == text != edited
    with pytest.raises(KeyError, match="no generated table"):
        tables.render("no-such-table")


# ---- section pointers: "docs/consistency-distillation.md, section 7.3", "toy-world.md 6.4", ... ---------

SECTIONED = ("consistency-distillation.md", "toy-world.md")  # the documents others cite by section number
NUMBER = r"\d{1,2}(?:\.\d{1,2})?(?!\d)"
NUMBERS = rf"{NUMBER}(?:\s*-\s*{NUMBER})?(?:(?:\s*,\s*|\s+and\s+){NUMBER}(?:\s*-\s*{NUMBER})?)*"
SECTION_WORD = r"(?:[Ss]ections?|§)\s*"
CITATIONS = [  # (pattern, the document it names or None for the file's own); the numbers are group "n"
    # a document's name, then the numbers: "toy-world.md 6.4", "consistency-distillation.md, sections 2-5
    # and 7.2", "[toy-world.md](toy-world.md), section 4.3", a docstring's "md, "\n "section 7.2"
    (rf"(?P<doc>consistency-distillation|toy-world)\.md[\s,\"')(]*(?:{SECTION_WORD})?(?P<n>{NUMBERS})", None),
    # the walkthrough by name: "the walkthrough, section 6", "walkthrough's figures for its sections 1-5"
    (rf"walkthrough(?:'s)?(?:\W+\w+){{0,3}}?\W+[Ss]ections?\s+(?P<n>{NUMBERS})", "consistency-distillation.md"),
    (rf"[Ss]ections?\s+(?P<n>{NUMBERS})\s+of\s+the\s+walkthrough", "consistency-distillation.md"),
]
SELF_CITATION = rf"\b[Ss]ections?\s+(?P<n>{NUMBERS})"  # inside the walkthrough: its own sections ("§" is a paper's)
# Sections announced by a citation before they are written; an entry must go once its heading exists.
BEING_WRITTEN: set[tuple[str, str]] = set()


def section_numbers(doc: Path) -> set[str]:
    """The numbers of a document's "## N." and "### N.M" headings."""
    return {m.group(1) for line in doc.read_text().splitlines()
            if (m := re.match(r"#{2,4}\s+(\d+(?:\.\d+)?)\.?\s", line))}


def cited_numbers(numbers: str) -> list[str]:
    """"2-5 and 7.2" -> 2, 3, 4, 5, 7.2: a range of whole sections names each one in it."""
    cited = []
    for part in re.split(r"\s*,\s*|\s+and\s+", numbers.strip()):
        ends = [e.strip() for e in part.split("-")]
        if len(ends) == 2 and all(e.isdigit() for e in ends):
            cited += [str(i) for i in range(int(ends[0]), int(ends[1]) + 1)]
        else:
            cited += ends
    return cited


def section_citations(text: str, own: str | None = None) -> list[tuple[int, str, str]]:
    """(line, document, number) for every section a text cites; `own` is the text's own document, whose
    bare "section N" citations count only in the walkthrough (elsewhere a bare one names no document)."""
    found, covered = [], []
    for pattern, doc in CITATIONS:
        for m in re.finditer(pattern, text):
            name = doc or m.group("doc") + ".md"
            found += [(text.count("\n", 0, m.start()) + 1, name, n) for n in cited_numbers(m.group("n"))]
            covered.append(m.span())
    if own == "consistency-distillation.md":
        for m in re.finditer(SELF_CITATION, text):
            if not any(a <= m.start() < b for a, b in covered):
                found += [(text.count("\n", 0, m.start()) + 1, own, n) for n in cited_numbers(m.group("n"))]
    return found


def test_every_cited_section_is_a_heading_of_that_document():
    """Docstrings, comments and documents point a reader at "docs/consistency-distillation.md, section 7.3";
    each such number must be a heading of that document, or the reader lands in the wrong place."""
    headings = {name: section_numbers(ROOT / "docs" / name) for name in SECTIONED}
    here = Path(__file__).resolve()
    sources = [p for p in project_files(".py") + project_files(".md") if p.resolve() != here]
    citations = [(source, *c) for source in sources
                 for c in section_citations(source.read_text(), source.name)]
    assert len(citations) > 20
    wrong = [f"{source.relative_to(ROOT)}:{line}: {doc} has no section {number}"
             for source, line, doc, number in citations
             if number not in headings[doc] and (doc, number) not in BEING_WRITTEN]
    assert not wrong, "section pointers that name no heading:\n" + "\n".join(wrong)
    written = [f"{doc} {number}" for doc, number in BEING_WRITTEN if number in headings[doc]]
    assert not written, f"now written, remove from BEING_WRITTEN: {written}"


def test_section_citations_are_read_in_every_form_used_and_wrong_numbers_rejected():
    text = ('see docs/consistency-distillation.md, sections 2-5 and 7.2; toy-world.md 6.4;\n'
            '[docs/toy-world.md](docs/toy-world.md), section 3; (docs/consistency-distillation.md, "\n'
            '    "section 7.2)"; the walkthrough, section 6; the walkthrough\'s figures for its sections 1-4;\n'
            'section 6 of the walkthrough; docs/toy-world.md 150 steps')
    assert [(doc[:3], n) for _, doc, n in section_citations(text)] == [
        ("con", "2"), ("con", "3"), ("con", "4"), ("con", "5"), ("con", "7.2"), ("toy", "6.4"), ("toy", "3"),
        ("con", "7.2"), ("con", "6"), ("con", "1"), ("con", "2"), ("con", "3"), ("con", "4"), ("con", "6")]
    walkthrough = "Section 5 says why; [toy-world.md](toy-world.md) (section 3); AnimateLCM v1 §4.2"
    assert [(doc[:3], n) for _, doc, n in section_citations(walkthrough, "consistency-distillation.md")] == [
        ("toy", "3"), ("con", "5")]
    headings = section_numbers(ROOT / "docs" / "consistency-distillation.md")
    assert {"1", "5", "7", "7.2", "7.6", "9"} <= headings
    wrong = [n for _, doc, n in section_citations("docs/consistency-distillation.md, section 6.4") if n not in headings]
    assert wrong == ["6.4"]  # section 6 has no subsections: the old number of teacher-free adaptation
