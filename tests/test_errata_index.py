"""The index of corrections in chapters/ch05_2_errata.ipynb (the list `ERRATA`) stays complete and its links work.

- Every correction callout anywhere in the course (a markdown block of a chapter or solution notebook, or of an
  appendix page, that uses one of the phrasings in CALLOUT) is listed: some index row names that page and quotes
  words of that block.
- Every row points at a page that exists, at a heading anchor that page has (the id the docs site gives the
  heading), and quotes words that are on that page.
- The book's words in a row are the book's: every run of Chinese text occurs in the draft the row names.
"""

import ast
import json
import os
import re
from pathlib import Path

import pytest
from mkdocs_jupyter.utils import slugify

from tests.nbtools import REPO

INDEX = REPO / "chapters" / "ch05_2_errata.ipynb"
SEEDS = Path(os.environ.get("LM4F_SEEDS", REPO.parent / "shared" / "seeds"))
# How the course words a correction of the book. A new callout should use one of these
# ("> **Erratum (book, section N.M).** ...") so that the index test sees it.
CALLOUT = re.compile(
    r"errat(?:um|a)\b|correction to the book|\*\*correction \(book|book check|book (?:gets|goes) wrong"
    r"|bugs? in the book|as written leaks|gets one title|neither is right|could not be verified",
    re.IGNORECASE)
# Links to the index page itself mention its file name; they are not callouts.
INDEX_FILE_NAME = re.compile(r"\S*ch05_2_errata\.ipynb\S*")


def _literal(node: ast.AST):
    """A Python literal, also allowing `dict(key=literal, ...)`; anything else raises ValueError."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "dict" and not node.args:
        return {keyword.arg: _literal(keyword.value) for keyword in node.keywords}
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(item) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    return ast.literal_eval(node)


def errata() -> list[dict]:
    """The ERRATA list, read from the notebook's source (literals only, so no code runs)."""
    for cell in json.loads(INDEX.read_text(encoding="utf-8"))["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "ERRATA = [" in source:
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "ERRATA":
                    return _literal(node.value)
    raise AssertionError(f"{INDEX.relative_to(REPO)} has no ERRATA = [...] list")


def page_path(page: str) -> Path:
    return REPO / ("site/appendix" if page.endswith(".md") else "chapters") / page


def markdown_of(path: Path) -> str:
    if path.suffix == ".md":
        return path.read_text(encoding="utf-8")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def squash(text: str) -> str:
    return " ".join(text.split())


def heading_anchors(markdown: str) -> set[str]:
    """The ids the docs site gives the headings (mkdocs-jupyter slugifies the rendered text)."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"^#{1,6}\s+(.*)", line)
        if match:
            text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link keeps its text
            anchors.add(slugify(re.sub(r"[`$*_]", "", text)))
    return anchors


def blocks(markdown: str) -> list[str]:
    """Paragraphs, tables and block quotes (a quote's blank '>' lines stay inside it)."""
    markdown = re.sub(r"\n>\s*\n(?=>)", "\n> \n", markdown)
    return [block for block in re.split(r"\n\s*\n", markdown) if block.strip()]


def proofs(entry: dict) -> list[tuple]:
    return [tuple(entry["proof"]), *[tuple(item) for item in entry.get("also", [])]]


def course_pages() -> list[Path]:
    return (sorted((REPO / "chapters").glob("*.ipynb")) + sorted((REPO / "solutions").glob("*.ipynb"))
            + sorted((REPO / "site" / "appendix").glob("*.md")))


def test_every_row_points_at_an_existing_section_that_says_it():
    rows = errata()
    assert len({row["id"] for row in rows}) == len(rows), "two rows share an id"
    for row in rows:
        for page, anchor, words in proofs(row):
            path = page_path(page)
            assert path.exists(), f"{row['id']}: {page} does not exist"
            markdown = markdown_of(path)
            if path.suffix == ".ipynb":
                assert anchor in heading_anchors(markdown), (
                    f"{row['id']}: {page} has no heading with the anchor #{anchor}")
            assert squash(words) in squash(markdown), f"{row['id']}: {page} does not say {words!r}"


def test_every_correction_callout_in_the_course_is_in_the_index():
    quoted: dict[str, list[str]] = {}
    for row in errata():
        for page, _, words in proofs(row):
            quoted.setdefault(page, []).append(squash(words))
    missing = []
    for path in course_pages():
        if path == INDEX:
            continue
        for block in blocks(markdown_of(path)):
            if not CALLOUT.search(INDEX_FILE_NAME.sub("", block)):
                continue
            if not any(words in squash(block) for words in quoted.get(path.name, [])):
                missing.append(f"{path.relative_to(REPO)}: {squash(block)[:160]}")
    assert not missing, ("corrections of the book not listed in ERRATA (chapters/ch05_2_errata.ipynb):\n"
                         + "\n".join(missing))


def test_the_index_covers_every_section_of_the_errata_page():
    sections = set(re.findall(r"^## (E\d+):", markdown_of(INDEX), flags=re.MULTILINE))
    listed = {row["id"] for row in errata() if row["proof"][0] == INDEX.name}
    assert sections and sections == listed


def test_the_callout_pattern_finds_a_new_callout():
    # The detector itself: a callout in the course's usual form is found, plain prose is not.
    assert CALLOUT.search("> **Erratum (book, section 9.9).** The book says ...")
    assert not CALLOUT.search("The book's chapter 7 lists three values; here each gets a number.")
    assert not CALLOUT.search(INDEX_FILE_NAME.sub("", "Next: [`ch05_2_errata.ipynb`](ch05_2_errata.ipynb)"))


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the book's drafts are not in this checkout")
def test_the_books_words_are_the_books():
    drafts = {path.name[:3]: path.read_text(encoding="utf-8") for path in SEEDS.glob("00*_*.txt")}
    for row in errata():
        assert row["seed"] in drafts, f"{row['id']}: no draft {row['seed']}"
        for fragment in re.findall(r"[\u4e00-\u9fff][^$>\n]*[\u4e00-\u9fff]", row["book"]):
            assert fragment in drafts[row["seed"]], f"{row['id']}: {fragment!r} is not in draft {row['seed']}"
