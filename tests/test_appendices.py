"""The generated appendix pages C and F must match what site/appendix_pages.py writes now."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_generator():
    spec = importlib.util.spec_from_file_location("appendix_pages", ROOT / "site" / "appendix_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["appC_literature.md", "appF_roadmap.md"])
def test_committed_appendix_matches_the_generator(page):
    generator = load_generator()
    expected = getattr(generator, generator.PAGES[page])()
    committed = (ROOT / "site" / "appendix" / page).read_text()
    assert committed == expected, (f"site/appendix/{page} is out of date with the notebooks or results/*.json: "
                                   "run `make appendices` and commit the result")


def test_roadmap_reads_the_case_study_results():
    page = load_generator().roadmap_page()
    for name in ("cv", "nlp", "recsys"):
        if (ROOT / "results" / f"{name}.json").exists():
            assert f"`results/{name}.json`" in page
    training_row = next(line for line in page.splitlines() if line.startswith("| 4. Model training"))
    assert "not measured yet" not in training_row


def test_literature_links_point_at_notebooks_that_exist():
    page = load_generator().literature_page()
    links = [part.split(")")[0] for part in page.split("](../")[1:]]
    assert links, "appendix C should link at least one notebook"
    for link in links:
        assert (ROOT / link).exists(), link
