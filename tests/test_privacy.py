"""lm4f.privacy: the personal-data scrubber of chapter 8 and the membership-attack AUC."""

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
