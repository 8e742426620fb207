"""Each committed results/*.json must come from the run whose outputs its notebook stores.

Chapter 7 prices the case studies from ``results/*.json``; a learner reads the same figures in the
stored notebook. Running a notebook rewrites its results file, so a file written by another run (a
test run, a run whose outputs were not saved, a hand edit) silently disagrees with what the learner
reads. Each row of ``AGREEMENTS`` names a notebook, its results file and an *extractor*: a function
that finds figures in the notebook's stored outputs and pairs each with the same figure in the
results file. The test fails when any pair disagrees beyond the two roundings (the notebook's
printed precision and the file's).

To add a notebook: write an extractor ``(outputs, record) -> list[Figure]`` (``outputs`` holds the
stored text of each code cell, ``record`` the parsed results file) and append a row.

If this fails after you ran the notebook tests locally: those runs rewrite ``results/*.json``.
Restore the committed files (``git checkout results/``) or re-execute the notebook with
``make execute NB=...``, which rewrites the stored outputs and the results file together.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Figure:
    """One figure as the notebook printed it and as the results file records it."""

    what: str
    printed: str  # the text in the stored output, e.g. "0.909", "100,001", "3.8"
    recorded: float  # the value in the results file
    recorded_decimals: int | None  # how the results file rounded it (None: an exact integer)

    def agrees(self) -> bool:
        """True when both could come from the same value: each rounding moves it by half a last digit."""
        printed = float(self.printed.replace(",", ""))
        if self.recorded_decimals is None:
            return printed == self.recorded
        printed_decimals = len(self.printed.split(".")[1]) if "." in self.printed else 0
        slack = 0.5 * 10 ** -printed_decimals + 0.5 * 10 ** -self.recorded_decimals
        return abs(printed - self.recorded) <= slack + 1e-9


def stored_outputs(notebook: Path) -> list[str]:
    """The stored text output (streams and text/plain results) of every code cell, one string per cell."""
    cells = nbformat.read(notebook, as_version=4).cells
    texts = []
    for cell in cells:
        if cell.cell_type != "code":
            continue
        parts = []
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                parts.append(output.text)
            elif "text/plain" in output.get("data", {}):
                parts.append(output.data["text/plain"])
        texts.append("".join(parts))
    return texts


def find_one(outputs: list[str], pattern: str) -> re.Match:
    """The one line of the stored outputs that matches ``pattern`` (a regex); fails on none or several."""
    found = [match for text in outputs for match in re.finditer(pattern, text, flags=re.MULTILINE)]
    assert len(found) == 1, (f"expected one stored output line matching {pattern!r}, found {len(found)}: "
                             "the notebook's printed format changed, or it was not executed with outputs")
    return found[0]


def number(text: str) -> str:
    return rf"(?P<{text}>-?[\d,]+(?:\.\d+)?)"


# ------------------------------------------------------------------------------------------------
# Extractors: (stored outputs, results record) -> figures
# ------------------------------------------------------------------------------------------------

def review_triage_figures(outputs: list[str], record: dict) -> list[Figure]:
    """chapters/ch06_2: the evaluation table, the served model's latency, the retrieval precision."""
    figures = []
    served = [row for row in record["rows"] if row["quality_metric"] == "test accuracy" and row["p50_ms"] is not None]
    assert len(served) == 1, "results/nlp.json should give a latency for exactly one classifier (the served one)"
    chosen = find_one(outputs, r"^chosen on validation: (?P<model>.+?) \(").group("model")
    assert served[0]["model"] == chosen, (f"results/nlp.json serves {served[0]['model']!r}, "
                                          f"the stored notebook chose {chosen!r} on validation")
    for row in record["rows"]:
        model = row["model"]
        if row["quality_metric"] == "test accuracy":
            line = find_one(outputs, rf"^\s*{re.escape(model)}\s+\S+\s+{number('accuracy')}\s+{number('macro_f1')}"
                                     rf"\s+\S+\s+{number('seconds')}\s+{number('params')}\s*$")
            notes_f1 = re.search(r"test macro-F1 (\d\.\d+)", row["notes"])
            assert notes_f1, f"results/nlp.json row {model!r} has no 'test macro-F1' in its notes"
            figures += [Figure(f"{model}: test accuracy", line["accuracy"], row["quality"], 4),
                        Figure(f"{model}: test macro-F1", line["macro_f1"], float(notes_f1.group(1)), 4),
                        Figure(f"{model}: training seconds", line["seconds"], row["train_seconds"], 2),
                        Figure(f"{model}: parameters", line["params"], row["params"], None)]
        else:  # the retrieval row
            line = find_one(outputs, rf"^mean over the questions: .*MiniLM P@5 {number('precision')}")
            figures.append(Figure(f"{model}: precision@5", line["precision"], row["quality"], 4))
        if row["p50_ms"] is not None:
            route = r"/classify \(TF-IDF\)" if row["quality_metric"] == "test accuracy" else r"/ask \(MiniLM\)"
            line = find_one(outputs, rf"^{route}\s+p50 {number('p50')} ms, p95 {number('p95')} ms")
            figures += [Figure(f"{model}: p50 latency (ms)", line["p50"], row["p50_ms"], 2),
                        Figure(f"{model}: p95 latency (ms)", line["p95"], row["p95_ms"], 2)]
    return figures


def product_images_figures(outputs: list[str], record: dict) -> list[Figure]:
    """chapters/ch06_3: the verdict lines, each model's training line and the served model's latency."""
    figures = []
    served = [row for row in record["rows"] if row["p50_ms"] is not None]
    assert len(served) == 1, "results/cv.json should give a latency for exactly one model (the served one)"
    final = find_one(outputs, r"^final model: (?P<model>.+?), trained in").group("model")
    assert served[0]["model"] == final, f"results/cv.json serves {served[0]['model']!r}, the notebook chose {final!r}"
    for row in record["rows"]:
        model = row["model"]
        if model == final:
            line = find_one(outputs, rf"^test accuracy {number('accuracy')} \[")
        elif model.startswith(("ProductCNN", "SmallResNet")):  # the other candidate of the same budget
            line = find_one(outputs, rf"^for the record, {re.escape(model)} on test: {number('accuracy')};")
        else:  # the baselines: only the results table prints their test accuracy
            line = find_one(outputs, rf"^\s*{re.escape(model)}\s+test accuracy\s+{number('accuracy')}\s")
        figures.append(Figure(f"{model}: test accuracy", line["accuracy"], row["quality"], 4))
        if model.startswith(("ProductCNN", "SmallResNet")):
            name = model.split("(")[0]
            line = find_one(outputs, rf"^{name}: {number('params')} parameters, trained in {number('seconds')} s")
        else:
            line = find_one(outputs, rf"^{re.escape(model)}\s+{number('params')} params\s+{number('seconds')} s")
        figures += [Figure(f"{model}: training seconds", line["seconds"], row["train_seconds"], 1),
                    Figure(f"{model}: parameters", line["params"], row["params"], None)]
        if row["p50_ms"] is not None:
            line = find_one(outputs, rf"^/predict \(JSON\)\s+p50 {number('p50')} ms\s+p95 {number('p95')} ms")
            figures += [Figure(f"{model}: p50 latency (ms)", line["p50"], row["p50_ms"], 2),
                        Figure(f"{model}: p95 latency (ms)", line["p95"], row["p95_ms"], 2)]
    return figures


Extractor = Callable[[list[str], dict], list[Figure]]
AGREEMENTS: list[tuple[str, str, Extractor]] = [
    ("chapters/ch06_2_nlp_review_assistant.ipynb", "results/nlp.json", review_triage_figures),
    ("chapters/ch06_3_cv_product_images.ipynb", "results/cv.json", product_images_figures),
]


def disagreements(notebook: str, results: str, extract: Extractor, record: dict | None = None) -> list[str]:
    record = json.loads((REPO / results).read_text()) if record is None else record
    figures = extract(stored_outputs(REPO / notebook), record)
    assert figures, f"no figures extracted from {notebook}"
    return [f"{figure.what}: the notebook printed {figure.printed}, {results} holds {figure.recorded}"
            for figure in figures if not figure.agrees()]


@pytest.mark.parametrize("notebook, results, extract", AGREEMENTS, ids=[row[1] for row in AGREEMENTS])
def test_results_file_agrees_with_stored_outputs(notebook, results, extract):
    record = json.loads((REPO / results).read_text())
    assert record["size"] == "ci", f"{results} holds a {record['size']!r} run; the stored outputs are the CI size"
    wrong = disagreements(notebook, results, extract, record)
    assert not wrong, (f"{results} was not written by the run stored in {notebook} (see this file's docstring):\n  "
                       + "\n  ".join(wrong))


@pytest.mark.parametrize("notebook, results, extract", AGREEMENTS, ids=[row[1] for row in AGREEMENTS])
def test_a_figure_from_another_run_is_caught(notebook, results, extract):
    record = json.loads((REPO / results).read_text())
    moved = json.loads(json.dumps(record))
    moved["rows"][-1]["quality"] = round(moved["rows"][-1]["quality"] + 0.02, 4)  # two points: another run's figure
    assert len(disagreements(notebook, results, extract, moved)) == 1
    moved = json.loads(json.dumps(record))
    moved["rows"][0]["model"] += " (renamed)"  # a row the stored outputs never printed
    with pytest.raises(AssertionError, match="found 0"):
        disagreements(notebook, results, extract, moved)


def test_rounding_slack():
    assert Figure("accuracy", "0.909", 0.9094, 4).agrees()
    assert Figure("accuracy", "0.910", 0.9095, 4).agrees()  # printed from 0.90953, recorded rounded
    assert not Figure("accuracy", "0.909", 0.9104, 4).agrees()
    assert Figure("parameters", "100,001", 100001, None).agrees()
    assert not Figure("parameters", "100,001", 100002, None).agrees()
