"""lm4f.privacy: the personal-data scrubber of chapter 8, its hand-labelled reviews and the membership attacks."""

import json

import numpy as np
import pytest

from lm4f import privacy


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Write to ann.lee+shop@example.co.uk please", "Write to [EMAIL] please"),
        ("call 555-123-4567 today", "call [PHONE] today"),
        ("call (555) 123 4567 today", "call [PHONE] today"),
        ("UK: +44 20 7946 0958.", "UK: [PHONE]."),
        ("I'm 34 and it fits", "I'm [AGE] and it fits"),
        ("i am 58. it is long", "i am [AGE]. it is long"),
        ("my mom is 73 years old", "my mom is [AGE] years old"),
        ("aged 41, petite", "aged [AGE], petite"),
        ("My name is Ann Lee and I love it", "My name is [NAME] and I love it"),
        ("Great dress\n- Maria", "Great dress\n- [NAME]"),
        # real phrasings from the labelled reviews (lower case after the first letter)
        ("my daughter's name is tegan and", "my daughter's name is [NAME] and"),
        ("i am in my mid-40's and", "i am in my mid-[AGE] and"),
        ("my 18-month-old son", "my [AGE]-month-old son"),
        ("as a 55-year-old woman", "as a [AGE]-year-old woman"),
        ("a 56 yr. old with", "a [AGE] yr. old with"),
        ("i am over 50, so", "i am over [AGE], so"),
        ("the baby just turned 3 and", "the baby just turned [AGE] and"),
        ("for this 40something.", "for this [AGE]."),
    ],
)
def test_scrub_replaces_personal_data(text, expected):
    assert privacy.scrub(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I'm 5'4 and 120 lbs, usually a size 8",  # height, weight and size are not ages
        "i'm 34 dd so the top was tight",  # a bra size
        "i am 34 weeks pregnant",  # not an age
        "i'm 38-27-35",  # measurements
        "bought 2 in 2019 for $59.99, 100% cotton",  # numbers that are no phone
        "I'm Happy with it",  # a capitalised word is not a name without an introduction
        "the design is completely faded, it looks 5 years old",  # comparisons are no one's age
        "it shrunk to a size that would fit a 4 year old",
        "i'm 39/28/35 140# 5'3", "i am 34, 30, 37 and", "i am 24 waist",  # measurements
        "a retro 70's vibe, like the 50s", "great for weather in the 40s",  # decades of fashion or weather
        "the name is misleading",
    ],
)
def test_scrub_leaves_ordinary_review_text_alone(text):
    assert privacy.scrub(text) == text
    assert privacy.find_pii(text) == []


def test_find_pii_names_kind_and_match():
    found = privacy.find_pii("mail a@b.com or 555.123.4567, I'm 45")
    assert found == [("EMAIL", "a@b.com"), ("PHONE", "555.123.4567"), ("AGE", "45")]


def test_scrub_rejects_missing_review_with_a_hint():
    with pytest.raises(TypeError, match="fillna"):
        privacy.scrub(float("nan"))


def test_roc_auc_matches_definition_and_sklearn():
    from sklearn.metrics import roc_auc_score

    assert privacy.roc_auc([3, 2, 1], [0, -1]) == 1.0
    assert privacy.roc_auc([0], [1]) == 0.0
    assert privacy.roc_auc([1, 1], [1, 1]) == 0.5  # ties count one half
    rng = np.random.default_rng(0)
    members = rng.normal(0.5, 1, 200).round(1)  # rounded: many ties
    nonmembers = rng.normal(0.0, 1, 150).round(1)
    expected = roc_auc_score(np.r_[np.ones(200), np.zeros(150)], np.r_[members, nonmembers])
    assert privacy.roc_auc(members, nonmembers) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_needs_both_groups():
    with pytest.raises(ValueError, match="at least one"):
        privacy.roc_auc([], [1.0])


def test_labelled_reviews_match_the_data_and_are_well_formed():
    texts = ["x"] * 10
    with pytest.raises(ValueError, match="line 1: review row"):
        privacy.load_labels(texts)  # not the labelled column: every checksum is checked
    labelled = privacy.load_labels()
    assert len(labelled) >= 300 and {r["sample"] for r in labelled} == {"candidate", "random"}
    assert {r["split"] for r in labelled} == {"dev", "test"}
    assert len({r["row"] for r in labelled}) == len(labelled)
    stored = [json.loads(line) for line in privacy.LABELS_FILE.read_text(encoding="utf-8").splitlines()]
    for review, entry in zip(labelled, stored):
        for (start, end, kind), span in zip(review["spans"], entry["spans"]):
            assert kind in privacy.KINDS and 0 <= start < end <= len(review["text"])
            assert review["text"][start:end] == span["text"]  # the span points at what the labeller read
    assert sum(len(r["spans"]) for r in labelled) >= 50


def test_scrubber_counts_follow_the_overlap_definition():
    labelled = [
        {"text": "i am 50 and my 5 year old loves it", "spans": [(5, 7, "AGE"), (15, 16, "AGE")]},
        {"text": "it looks like a 12 year old made it", "spans": []},  # labelled: nothing personal
        {"text": "she is mid 30's", "spans": [(11, 15, "AGE")]},
    ]
    counts = privacy.scrubber_counts(labelled)
    found = [privacy.find_spans(r["text"]) for r in labelled]
    assert counts[:, 0].tolist() == [len(f) for f in found]
    assert counts[:, 2].tolist() == [2, 0, 1]
    report = privacy.scrubber_report(labelled, resamples=50)
    assert report["precision"] == pytest.approx(counts[:, 1].sum() / counts[:, 0].sum())
    assert report["recall"] == pytest.approx(counts[:, 3].sum() / 3)
    assert report["precision_low"] <= report["precision"] <= report["precision_high"]


def test_membership_advantage_is_the_largest_tpr_minus_fpr():
    assert privacy.membership_advantage([3, 2, 1], [0, -1]) == 1.0
    assert privacy.membership_advantage([1, 1], [1, 1]) == 0.0
    # threshold 1: all 3 members at or above, 2 of 4 non-members -> 0.5; threshold 2: 2/3 - 1/4; 3: 1/3 - 0
    assert privacy.membership_advantage([1, 2, 3], [0, 0, 1, 2]) == pytest.approx(1 - 2 / 4)
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(1, 1, 300), rng.normal(0, 1, 300)
    brute = max(np.mean(members >= t) - np.mean(nonmembers >= t) for t in np.r_[members, nonmembers])
    assert privacy.membership_advantage(members, nonmembers) == pytest.approx(brute)


def test_membership_report_intervals_and_paired_difference():
    rng = np.random.default_rng(1)
    members, nonmembers = rng.normal(0.5, 1, 200), rng.normal(0, 1, 200)
    report = privacy.membership_report(members, nonmembers, versus=(members, nonmembers), resamples=200)
    assert report["auc_low"] < report["auc"] < report["auc_high"] and report["auc_low"] > 0.5
    assert report["difference_low"] == report["difference_high"] == report["auc_difference"] == 0.0
    rounded = privacy.membership_report(members, nonmembers, versus=(members.round(0), nonmembers.round(0)),
                                        resamples=200)
    assert rounded["auc_difference"] > 0  # rounding to whole numbers throws information away
    with pytest.raises(ValueError, match="same members and non-members"):
        privacy.membership_report(members, nonmembers, versus=(members[:10], nonmembers))
