"""Case study 6.2: the cleaning rules, the seeded stratified split and the metrics helpers."""

import numpy as np
import pandas as pd
import pytest

import lm4f.data
from lm4f.nlp import LABEL, TfidfClassifier, best_threshold, binary_report, clean_reviews, split_reviews


@pytest.fixture(scope="module")
def cleaned():
    frame, removed = clean_reviews(lm4f.data.clothing_reviews())
    return frame, removed


def test_cleaning_removes_missing_duplicate_and_short_reviews(cleaned):
    frame, removed = cleaned
    raw = lm4f.data.clothing_reviews()
    assert removed["raw rows"] == len(raw) == 23486
    assert removed["missing text"] == int(raw["Review Text"].isna().sum()) == 845
    assert removed["duplicates"] > 0 and removed["too short"] >= 0
    assert removed["kept"] == len(frame) == (removed["raw rows"] - removed["missing text"]
                                              - removed["duplicates"] - removed["too short"])
    assert frame["Review Text"].notna().all() and (frame["n_words"] >= 3).all()
    assert not frame.duplicated(subset=["Title", "Review Text"]).any()
    # a missing title leaves the text alone; a present title is prefixed
    no_title = frame[frame["Title"] == ""].iloc[0]
    assert no_title["text"] == no_title["Review Text"]
    with_title = frame[frame["Title"] != ""].iloc[0]
    assert with_title["text"] == f"{with_title['Title']}. {with_title['Review Text']}"


def test_cleaning_on_a_hand_made_frame():
    raw = pd.DataFrame({
        "Title": ["Great", None, "Great", "Meh", "x"],
        "Review Text": ["Love it so much", "Runs small, size up", "Love it so much", None, "ok"],
        LABEL: [1, 0, 1, 0, 1], "Clothing ID": [1, 1, 1, 2, 2], "Rating": [5, 2, 5, 3, 4],
    })
    frame, removed = clean_reviews(raw)
    assert removed == {"raw rows": 5, "missing text": 1, "duplicates": 1, "too short": 1, "kept": 2}
    assert frame["text"].tolist() == ["Great. Love it so much", "Runs small, size up"]
    assert frame["row"].tolist() == [0, 1]


def test_split_is_stratified_disjoint_and_fixed_by_seed(cleaned):
    frame, _ = cleaned
    splits = split_reviews(frame, seed=0)
    sizes = {name: len(part) for name, part in splits.items()}
    assert sum(sizes.values()) == len(frame)
    assert abs(sizes["test"] - 0.1 * len(frame)) <= 1 and abs(sizes["validation"] - 0.1 * len(frame)) <= 2
    rows = [set(part["row"]) for part in splits.values()]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    share = frame[LABEL].mean()
    for part in splits.values():
        assert abs(part[LABEL].mean() - share) < 0.005
    again = split_reviews(frame, seed=0)
    other = split_reviews(frame, seed=1)
    assert again["test"]["row"].tolist() == splits["test"]["row"].tolist()
    assert other["test"]["row"].tolist() != splits["test"]["row"].tolist()


def test_rating_leaks_the_label(cleaned):
    """Why Rating must never be a feature: alone it predicts the label far above the majority class."""
    frame, _ = cleaned
    predicted = (frame["Rating"] >= 4).astype(int)
    leak = binary_report(frame[LABEL], predicted)
    majority = frame[LABEL].mean()
    assert leak["accuracy"] > 0.93 > majority + 0.1


def test_binary_report_and_threshold():
    report = binary_report([0, 0, 1, 1, 1], [0, 1, 1, 1, 0])
    assert report["confusion"] == [[1, 1], [1, 2]]
    assert report["accuracy"] == pytest.approx(0.6)
    assert report["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="shape"):
        binary_report([0, 1, 1], [0, 1])
    probabilities = np.array([0.1, 0.35, 0.4, 0.8, 0.9])
    labels = np.array([0, 0, 1, 1, 1])
    assert best_threshold(probabilities, labels) == pytest.approx(0.36)


def test_tfidf_classifier_learns_and_rejects_a_bare_string(cleaned):
    frame, _ = cleaned
    splits = split_reviews(frame, seed=0)
    train = splits["train"].iloc[:4000]
    model = TfidfClassifier(max_features=20_000).fit(train["text"], train[LABEL])
    test = splits["test"]
    report = binary_report(test[LABEL], model.predict(test["text"]))
    assert report["accuracy"] > 0.85  # majority class: about 0.82
    assert model.n_parameters > 1000
    with pytest.raises(TypeError, match="list of texts"):
        model.predict_proba("one bare string")
    with pytest.raises(RuntimeError, match="fit"):
        TfidfClassifier().predict_proba(["not trained"])
