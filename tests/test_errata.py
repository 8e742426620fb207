"""The errata page covers every listed error of the book, each with a quote, a correction and a
cell that asserts it; the quotes are the book's own words where the drafts are at hand."""

import json
import os
import re
from pathlib import Path

import pytest

from tests.nbtools import REPO

NOTEBOOK = REPO / "chapters" / "ch05_2_errata.ipynb"
EXPECTED = {"E1": "000", "E2": "002", "E3": "000", "E4": "001", "E5": "002", "E6": "003", "E7": "004",
            "E8": "004", "E9": "004"}
SEEDS = Path(os.environ.get("LM4F_SEEDS", REPO.parent / "shared" / "seeds"))


def sections():
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    found = {}
    for index, cell in enumerate(cells):
        source = "".join(cell["source"])
        match = re.match(r"## (E\d+):", source)
        if cell["cell_type"] == "markdown" and match:
            following = []
            for later in cells[index + 1:]:
                if later["cell_type"] == "markdown" and "".join(later["source"]).startswith("## "):
                    break
                if later["cell_type"] == "code":
                    following.append("".join(later["source"]))
            found[match.group(1)] = (source, following)
    return found


def test_every_erratum_has_quote_correction_and_an_asserting_cell():
    found = sections()
    assert set(found) == set(EXPECTED)
    for name, (text, code_cells) in found.items():
        assert f"draft {EXPECTED[name]}" in text or f"outline {EXPECTED[name]}" in text, name
        assert "> **Book" in text and "Correction" in text, name
        assert any(re.search(r"^\s*assert ", source, re.M) for source in code_cells), name


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the book's drafts are not in this checkout")
def test_chinese_quotes_are_the_books_words():
    books = {path.name[:3]: path.read_text() for path in SEEDS.glob("00*_*.txt")}
    for name, (text, _) in sections().items():
        quoted = re.findall(r"[\u4e00-\u9fff][^$>\n]*[\u4e00-\u9fff]", text)  # runs of Chinese text
        for fragment in quoted:
            assert fragment in books[EXPECTED[name]], f"{name}: {fragment!r} not found in draft {EXPECTED[name]}"
