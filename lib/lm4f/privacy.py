"""Data-risk tools shared by chapter 8 and its tests: personal-data scrubbing and membership AUC.

    lm4f.privacy.scrub("Mail me at ann.lee@example.com, I'm 34")
    -> "Mail me at [EMAIL], I'm [AGE]"

The scrubber is a set of plain regular expressions, one per kind of personal data, applied in a
fixed order. It is a first line of defence for free text such as customer reviews, not a
guarantee: chapter 8 measures what it catches and shows what it misses.
"""

from __future__ import annotations

import re

import numpy as np

# One pattern per kind of personal data. Order matters: e-mails before phones (an e-mail may hold
# digits), phones before ages (a phone is a long run of digits).
PATTERNS: dict[str, re.Pattern] = {
    "EMAIL": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    # +1 (555) 123-4567, 555-123-4567, 555.123.4567, 020 7946 0958, +44 20 7946 0958
    "PHONE": re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\d{2,4})[\s.-]\d{3,4}[\s.-]\d{3,4}(?![\w])"),
    # "I'm 34", "I am 34", "34 years old", "34 yrs old", "age 34", "aged 34", "34yo". After "I'm" only
    # 18-99 counts, not followed by a unit or a cup size: "I'm 5'4", "I'm 8" (a dress size) and
    # "I'm 34 dd" are not ages.
    "AGE": re.compile(
        r"(?i)(?<=\bi'm )(?:1[89]|[2-9]\d)\b"
        r"(?!['\"\u2019-]| ?(?:lbs?|pounds|kg|%|inches|in\b|cm|ft|feet|weeks?|months?|[a-d]{1,3}\b))"
        r"|(?<=\bi am )(?:1[89]|[2-9]\d)\b"
        r"(?!['\"\u2019-]| ?(?:lbs?|pounds|kg|%|inches|in\b|cm|ft|feet|weeks?|months?|[a-d]{1,3}\b))"
        r"|\b\d{1,2}(?= ?(?:years?|yrs?)[ -]old\b)"
        r"|(?<=\bage )\d{1,2}\b|(?<=\baged )\d{1,2}\b"
        r"|\b\d{1,2}(?= ?yo\b)"
    ),
    # "my name is Ann", "I'm Ann Lee" is too ambiguous ("I'm Happy"): only explicit introductions
    # and sign-offs are treated as names.
    "NAME": re.compile(
        r"(?<=\b[Mm]y name is )[A-Z][a-z]+(?: [A-Z][a-z]+)?"
        r"|(?<=\b[Nn]ame: )[A-Z][a-z]+(?: [A-Z][a-z]+)?"
        r"|(?<=^- )[A-Z][a-z]+(?: [A-Z][a-z]+)?$"
        r"|(?<=\n- )[A-Z][a-z]+(?: [A-Z][a-z]+)?$",
        re.MULTILINE,
    ),
}


def find_pii(text: str) -> list[tuple[str, str]]:
    """Return ``[(kind, matched text), ...]`` for every personal-data match in ``text``."""
    if not isinstance(text, str):
        raise TypeError(f"find_pii expects a str, got {type(text).__name__}. Convert missing reviews "
                        "(NaN) to '' first, e.g. df['Review Text'].fillna('').")
    found = []
    for kind, pattern in PATTERNS.items():
        found.extend((kind, match.group(0)) for match in pattern.finditer(text))
    return found


def scrub(text: str) -> str:
    """Replace every personal-data match by its placeholder (``[EMAIL]``, ``[PHONE]``, ...)."""
    if not isinstance(text, str):
        raise TypeError(f"scrub expects a str, got {type(text).__name__}. Convert missing reviews "
                        "(NaN) to '' first, e.g. df['Review Text'].fillna('').")
    for kind, pattern in PATTERNS.items():
        text = pattern.sub(f"[{kind}]", text)
    return text


def roc_auc(member_scores, nonmember_scores) -> float:
    """Area under the ROC curve of "score above a threshold means member".

    Equals the probability that a random member scores higher than a random non-member (ties
    count one half): 0.5 is chance, 1.0 a perfect attack. For a loss-threshold attack pass
    ``-loss`` as the score (members have lower loss).
    """
    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("roc_auc needs at least one member and one non-member score.")
    scores = np.concatenate([members, nonmembers])
    # Average ranks (1-based) handle ties: the Mann-Whitney U statistic.
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2 + 1
        start = end + 1
    member_rank_sum = ranks[: members.size].sum()
    u_statistic = member_rank_sum - members.size * (members.size + 1) / 2
    return float(u_statistic / (members.size * nonmembers.size))
