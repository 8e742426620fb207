"""``results/recsys.json`` holds the figures of the run whose outputs are stored in chapter 6.4.

Chapter 7 and appendix F read the results file; a reader reads the notebook. Both must come from the
same execution: a file written by another run (another seed, another machine, an older version of
the code) disagrees with the stored outputs in some printed digit, and these tests fail.
"""

import json
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "chapters" / "ch06_4_recommender.ipynb"
RESULTS = ROOT / "results" / "recsys.json"
NUMBER = r"([-+]?\d+\.\d+|nan|NaN|None)"
STALE = "results/recsys.json predates the chapter's ablation: re-execute chapters/ch06_4_recommender.ipynb"


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RESULTS.read_text())


@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def output_of(notebook, marker: str) -> str:
    """The stored text output of the one code cell whose source contains ``marker``."""
    cells = [cell for cell in notebook.cells if cell.cell_type == "code" and marker in cell.source]
    assert len(cells) == 1, f"expected one cell of {NOTEBOOK.name} containing {marker!r}, found {len(cells)}"
    text = "".join(output.get("text", "") for output in cells[0].outputs if output.output_type == "stream")
    assert text, f"the cell containing {marker!r} has no stored output: re-execute {NOTEBOOK.name}"
    return text


def printed(text: str, pattern: str) -> tuple[str, ...]:
    found = re.search(pattern, text, flags=re.MULTILINE)
    assert found, f"no line matching {pattern!r} in the stored output:\n{text}"
    return found.groups()


def agrees(shown: str, value, decimals: int) -> bool:
    """``shown`` (a printed number) is ``value`` printed with ``decimals`` decimals."""
    if value is None:
        return shown.lower() in ("nan", "none")
    return abs(float(shown) - float(value)) <= 0.5 * 10 ** -decimals + 1e-9


def test_the_results_file_is_a_ci_size_record(record):
    assert record["case"] == "recsys" and record["size"] == "ci" and record["machine"]
    assert {"ablation", "comparisons"} <= set(record), STALE
    assert [row["model"] for row in record["rows"]] == [
        "matrix factorisation (rating prediction)", "popularity", "BPR-MF", "Transformer (SASRec)"]


def test_every_row_matches_the_table_printed_where_the_file_was_written(notebook, record):
    assert "ablation" in record, STALE
    text = output_of(notebook, "RESULTS.write_text")
    for row in record["rows"] + [record["ablation"]]:
        label = rf"^\s*{re.escape(row['model'])}\s+{re.escape(row['quality_metric'])}"
        quality, seconds, p50 = printed(text, rf"{label}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$")
        assert agrees(quality, row["quality"], 4), (row["model"], quality, row["quality"])
        assert agrees(seconds, row["train_seconds"], 2), (row["model"], seconds, row["train_seconds"])
        assert agrees(p50, row.get("p50_ms"), 2), (row["model"], p50, row.get("p50_ms"))
    for comparison in record["comparisons"]:
        difference, low, high, verdict = printed(
            text, rf"^{re.escape(comparison['comparison'])}: {NUMBER} \[{NUMBER}, {NUMBER}\] (.+)$")
        assert [float(difference), float(low), float(high)] == [
            comparison["difference"], comparison["low"], comparison["high"]], comparison
        assert verdict == comparison["verdict"]


def test_the_file_agrees_with_the_figures_a_reader_sees(notebook, record):
    rows = {row["model"]: row for row in record["rows"]}
    table = output_of(notebook, "next_item = pd.DataFrame")
    for shown_as, row in [("popularity", rows["popularity"]), ("BPR-MF", rows["BPR-MF"]),
                          ("SASRec", rows["Transformer (SASRec)"]), ("SASRec, order shuffled", record["ablation"])]:
        (hit_rate,) = printed(table, rf"^{re.escape(shown_as)}\s+{NUMBER}\s")
        assert agrees(hit_rate, row["quality"], 3), (shown_as, hit_rate, row["quality"])
    verdicts = table + output_of(notebook, 'compare("SASRec + latest movie"')
    for comparison in record["comparisons"]:
        label = comparison["comparison"]
        if label == "HR@10 SASRec + latest movie - SASRec":  # printed in words in its own cell
            label = "HR@10 difference from the same model without it"
        difference, low, high, verdict = printed(
            verdicts, rf"^{re.escape(label)}: {NUMBER} \[{NUMBER}, {NUMBER}\] -> (.+)$")
        for shown, value in [(difference, comparison["difference"]), (low, comparison["low"]),
                             (high, comparison["high"])]:
            assert agrees(shown, value, 3), (comparison["comparison"], shown, value)
        assert verdict == comparison["verdict"]
    (rmse,) = printed(output_of(notebook, "rmse_cv_mean = summary"), r"^MF: (\d\.\d+) ± ")
    assert agrees(rmse, rows["matrix factorisation (rating prediction)"]["quality"], 3)
