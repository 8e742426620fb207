"""Case study 6.2: the hand-labelled answers that validate the automatic hallucination check.

``lm4f/shop/hallucination_labels.jsonl`` holds 30 answers to dev questions, written by the
``local`` (tiny trained model) and ``extractive`` backends, each stored verbatim with the passages
the assistant read and a label given by hand, sentence by sentence. These tests keep the file
consistent with the knowledge base and the question set; the agreement between the labels and
``lm4f.assistant.unsupported_sentences`` is measured in the notebook, not asserted here.
"""

import json
from collections import Counter

import pytest

from lm4f import shop

LABELS_FILE = shop.SHOP_DIR / "hallucination_labels.jsonl"
FIELDS = {"id", "question", "backend", "answer", "read_passage_ids", "hallucinated",
          "unsupported_sentences_by_hand", "note"}


@pytest.fixture(scope="module")
def rows():
    assert LABELS_FILE.is_file(), f"{LABELS_FILE} is missing; restore it from version control"
    rows = []
    for number, line in enumerate(LABELS_FILE.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                pytest.fail(f"{LABELS_FILE.name} line {number} is not valid JSON: {error}")
    return rows


def test_thirty_rows_from_both_backends_with_every_field(rows):
    assert len(rows) == 30
    assert all(set(row) == FIELDS for row in rows), [sorted(set(row) ^ FIELDS) for row in rows if set(row) != FIELDS]
    backends = Counter(row["backend"] for row in rows)
    assert set(backends) == {"local", "extractive"}
    assert all(backends[name] > 0 for name in ("local", "extractive"))
    assert len({(row["id"], row["backend"]) for row in rows}) == len(rows)
    for row in rows:
        assert isinstance(row["hallucinated"], bool), row["id"]
        assert isinstance(row["answer"], str) and row["answer"].strip(), row["id"]
        assert isinstance(row["note"], str) and row["note"].strip(), row["id"]


def test_every_question_is_an_answerable_dev_question(rows):
    dev = {q.id: q for q in shop.questions("dev")}
    for row in rows:
        assert row["id"] in dev, f"{row['id']} is not a dev question (the labels must never use the test split)"
        assert not dev[row["id"]].handoff, f"{row['id']} is a hand-off question"
        assert row["question"] == dev[row["id"]].question, row["id"]


def test_read_passages_exist_in_the_knowledge_base(rows):
    known = shop.passage_by_id()
    for row in rows:
        read = row["read_passage_ids"]
        assert read and len(read) == len(set(read)), row["id"]
        missing = [pid for pid in read if pid not in known]
        assert not missing, f"{row['id']} read passages that are not in the knowledge base: {missing}"


def test_hand_marked_sentences_occur_in_their_answer(rows):
    for row in rows:
        marked = row["unsupported_sentences_by_hand"]
        assert isinstance(marked, list), row["id"]
        for sentence in marked:
            assert isinstance(sentence, str) and sentence.strip() and sentence in row["answer"], (row["id"], sentence)
        assert row["hallucinated"] == bool(marked), f"{row['id']}: 'hallucinated' disagrees with the marked sentences"
