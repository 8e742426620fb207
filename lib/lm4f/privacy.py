"""Data-risk tools shared by chapter 8 and its tests: personal-data scrubbing and membership attacks.

    lm4f.privacy.scrub("Mail me at ann.lee@example.com, I'm 34")
    -> "Mail me at [EMAIL], I'm [AGE]"

The scrubber is a set of plain regular expressions, one per kind of personal data, applied in a
fixed order. It is a first line of defence for free text such as customer reviews, not a
guarantee: chapter 8 measures what it catches and what it misses on real reviews labelled by hand.

**The labelled reviews** (``privacy_labels.jsonl`` beside this file, ``load_labels()``): 530 reviews
of ``lm4f.data.clothing_reviews()`` (column ``Review Text``, ``row`` = position in that table), each
with every span of personal data in it. Personal data here means: a person's NAME (a private
person, not a brand, designer or public figure), EMAIL, PHONE, a street ADDRESS, and the AGE of a
specific real person, the reviewer or someone they mention ("i am 50", "my 8yo daughter", "in my
mid-40's", "my 5 month old"); not comparisons ("looks like a 15 year-old"), not sizes, heights,
weights or measurements, not towns, not pregnancy months. How they were found: (1) a candidate pass
with deliberately broad patterns (any number before years/months/old/yo, "i am"/"i'm" + a number,
any decade such as "40s", "@", phone-like digits, "name is"/"named", street words, sign-offs) flagged
380 reviews with 423 matches, each read by hand in its context and labelled; (2) 150 reviews drawn
at random (seed 16) from the 22,261 the candidate pass did not flag were read in full, to catch what
the patterns miss (one age was found there). ``sample`` says which group a review came from;
``split`` (``dev``/``test``, random halves of each group, seed 0) keeps the reviews the scrubber
was tuned on apart from those it is judged on. ``text_sha256`` is the first 16 hex digits of the
review text's SHA-256, so a changed data file is noticed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

LABELS_FILE = Path(__file__).with_name("privacy_labels.jsonl")
KINDS = ("EMAIL", "PHONE", "AGE", "NAME", "ADDRESS")

# One pattern per kind of personal data. Order matters: e-mails before phones (an e-mail may hold
# digits), phones before ages (a phone is a long run of digits). The review text is lower case after
# its first letter, so no pattern may rely on capitals.
_NOT_AN_AGE = (r"(?!['\"\u2019/-]|, ?\d| ?(?:lbs?|pounds|kg|%|inches|in\b|cm|ft|feet|weeks?|months?|waist|hips?|bust"
               r"|inseam|[a-d]{1,3}\b))")  # 5'4", 34-27-35, 39/28/35, "34, 30, 37", 120 lbs, 34 dd, 24 waist
_SELF = [f"{who} {qualifier}" for who in ("i'm", "i am") for qualifier in ("", "over ", "nearly ", "almost ")]
_QUALIFIERS = ("early ", "mid ", "mid-", "late ")
_DECADE_BEFORE = ([f"{where} {qualifier}" for where in ("in my", "in her", "in his", "in your", "to my")
                   for qualifier in ("", *_QUALIFIERS)]
                  + [f"{who} {qualifier}" for who in ("is", "this", "my") for qualifier in _QUALIFIERS] + ["my age ("])
_lookbehinds = lambda prefixes: "(?:" + "|".join(f"(?<=\\b{re.escape(p)})" for p in prefixes) + ")"  # noqa: E731

PATTERNS: dict[str, re.Pattern] = {
    "EMAIL": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    # +1 (555) 123-4567, 555-123-4567, 555.123.4567, 020 7946 0958, +44 20 7946 0958
    "PHONE": re.compile(r"(?<![\w.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\d{2,4})[\s.-]\d{3,4}[\s.-]\d{3,4}(?![\w])"),
    # "I'm 34", "i am over 50", "34 years old", "my 18-month-old son", "a 56 yr. old", "age 34", "aged 34",
    # "34yo", "just turned 3", "in my mid-40's", "my daughter who is mid 30's", "this 40something". After
    # "I'm" only 18-99 counts, not followed by a unit, a cup size or more measurements. Not an age:
    # "looks 5 years old", "would fit a 9 year old", "looked like 20 years old" (comparisons).
    "AGE": re.compile(
        r"(?i)" + _lookbehinds(_SELF) + r"(?:1[89]|[2-9]\d)\b" + _NOT_AN_AGE
        + r"|(?<!fit a )(?<!fits a )(?<!looks )(?<!like )(?<!like a )(?<!like an )"
          r"\b\d{1,2}(?:\.\d)?(?=[ -]?(?:years?|yrs?\.?|months?)[ -]?old\b)"
        + r"|(?<=\bage )\d{1,2}\b|(?<=\baged )\d{1,2}\b|(?<=\bturned )\d{1,2}\b" + _NOT_AN_AGE
        + r"|\b\d{1,2}(?= ?yo\b)"
        + r"|" + _lookbehinds(_DECADE_BEFORE) + r"[1-9]0'?s\b"
        + r"|\b[1-9]0-?something\b"
    ),
    # "my name is Ann", "I'm Ann Lee" is too ambiguous ("I'm Happy"): only explicit introductions,
    # "my daughter's name is tegan" (names are lower case in this data) and sign-offs are names.
    "NAME": re.compile(
        r"(?<=\b[Mm]y name is )[A-Za-z][a-z]+(?: [A-Z][a-z]+)?"
        r"|(?<='s name is )[A-Za-z][a-z]+(?: [A-Z][a-z]+)?"
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


def find_spans(text: str, patterns: dict[str, re.Pattern] | None = None) -> list[tuple[int, int, str]]:
    """``[(start, end, kind), ...]`` of every match in ``text``, sorted by position (default: ``PATTERNS``)."""
    if not isinstance(text, str):
        raise TypeError(f"find_spans expects a str, got {type(text).__name__}. Convert missing reviews "
                        "(NaN) to '' first, e.g. df['Review Text'].fillna('').")
    patterns = PATTERNS if patterns is None else patterns
    return sorted((m.start(), m.end(), kind) for kind, pattern in patterns.items() for m in pattern.finditer(text))


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
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([members, nonmembers]))  # average ranks (1-based): ties share: Mann-Whitney U
    member_rank_sum = ranks[: members.size].sum()
    u_statistic = member_rank_sum - members.size * (members.size + 1) / 2
    return float(u_statistic / (members.size * nonmembers.size))


def membership_advantage(member_scores, nonmember_scores) -> float:
    """The best threshold attack's advantage: max over thresholds of TPR - FPR (0 = no better than guessing).

    TPR is the share of members scored at or above the threshold, FPR the share of non-members. Yeom
    et al. (2018) call it the membership advantage; it is the largest gap between the two groups'
    score distributions (the Kolmogorov-Smirnov statistic), so it reads as "the attack is right about
    this share of people more often than a coin".
    """
    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if members.size == 0 or nonmembers.size == 0:
        raise ValueError("membership_advantage needs at least one member and one non-member score.")
    thresholds = np.unique(np.concatenate([members, nonmembers]))  # (T,) ascending
    members.sort()
    nonmembers.sort()
    tpr = 1.0 - np.searchsorted(members, thresholds, side="left") / members.size  # share >= threshold
    fpr = 1.0 - np.searchsorted(nonmembers, thresholds, side="left") / nonmembers.size
    return float(max(0.0, (tpr - fpr).max()))


def membership_report(member_scores, nonmember_scores, *, versus=None, resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """Attack AUC and advantage with percentile bootstrap intervals (members and non-members resampled apart).

    ``versus=(member_scores_b, nonmember_scores_b)``: a second attack on the *same* records (e.g. the
    same people sent to an API that returns fewer digits); then ``auc_difference`` (this AUC minus
    that one) and its interval come from the same resampled records, a paired comparison.
    """
    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if versus is not None:
        other_members, other_nonmembers = (np.asarray(v, dtype=np.float64).ravel() for v in versus)
        if other_members.shape != members.shape or other_nonmembers.shape != nonmembers.shape:
            raise ValueError("versus must score the same members and non-members, in the same order: got "
                             f"{other_members.size}/{other_nonmembers.size} scores for "
                             f"{members.size}/{nonmembers.size} records.")
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(resamples):
        m, n = rng.integers(0, members.size, members.size), rng.integers(0, nonmembers.size, nonmembers.size)
        row = [roc_auc(members[m], nonmembers[n]), membership_advantage(members[m], nonmembers[n])]
        if versus is not None:
            row.append(row[0] - roc_auc(other_members[m], other_nonmembers[n]))
        stats.append(row)
    stats = np.array(stats)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(stats, tail, axis=0), np.percentile(stats, 100.0 - tail, axis=0)
    report = {"members": int(members.size), "nonmembers": int(nonmembers.size),
              "auc": roc_auc(members, nonmembers), "auc_low": float(low[0]), "auc_high": float(high[0]),
              "advantage": membership_advantage(members, nonmembers),
              "advantage_low": float(low[1]), "advantage_high": float(high[1])}
    if versus is not None:
        report.update(auc_difference=report["auc"] - roc_auc(other_members, other_nonmembers),
                      difference_low=float(low[2]), difference_high=float(high[2]))
    return report


# ---------------------------------------------------------------------------------------------
# The hand-labelled reviews: how well does the scrubber do on real text?
# ---------------------------------------------------------------------------------------------
def load_labels(texts=None, path=LABELS_FILE) -> list[dict]:
    """The labelled reviews (see the module docstring), each ``{"row", "sample", "split", "spans", "text"}``.

    ``texts`` is the ``Review Text`` column (default: ``lm4f.data.clothing_reviews()``); every
    labelled review's text is checked against the checksum stored with its labels.
    """
    if texts is None:
        from lm4f.data import clothing_reviews

        texts = clothing_reviews()["Review Text"]
    texts = list(texts)
    labelled = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        entry = json.loads(line)
        row = entry["row"]
        text = texts[row] if 0 <= row < len(texts) and isinstance(texts[row], str) else None
        if text is None or hashlib.sha256(text.encode("utf-8")).hexdigest()[:16] != entry["text_sha256"]:
            raise ValueError(f"{path}, line {number}: review row {row} is not the text that was labelled. The "
                             "labels belong to the original Review Text column of lm4f.data.clothing_reviews(), "
                             "unfiltered and in file order; pass that column (or check the data with "
                             "python -m lm4f.data).")
        spans = [(span["start"], span["end"], span["kind"]) for span in entry["spans"]]
        labelled.append({"row": row, "sample": entry["sample"], "split": entry["split"], "spans": spans,
                         "text": text})
    return labelled


def scrubber_counts(labelled: list[dict], patterns: dict[str, re.Pattern] | None = None) -> np.ndarray:
    """Per review: ``[found, found that is personal data, labelled, labelled that was found]``, shape (N, 4).

    A found span counts as personal data when it overlaps a labelled span (of any kind: what
    matters is that the text is removed); a labelled span counts as found when a match overlaps it.
    """
    counts = []
    for review in labelled:
        found = find_spans(review["text"], patterns)
        overlaps = lambda a, b: a[0] < b[1] and b[0] < a[1]  # noqa: E731
        counts.append([len(found), sum(any(overlaps(f, g) for g in review["spans"]) for f in found),
                       len(review["spans"]), sum(any(overlaps(g, f) for f in found) for g in review["spans"])])
    return np.array(counts, dtype=np.int64).reshape(-1, 4)


def scrubber_report(labelled: list[dict], patterns: dict[str, re.Pattern] | None = None, resamples: int = 1000,
                    seed: int = 0) -> dict:
    """Precision and recall of the scrubber on labelled reviews, with bootstrap 95 % intervals (reviews resampled).

    Precision = found spans that are personal data / found spans; recall = labelled spans found /
    labelled spans. Both are ratios of sums over reviews, so the bootstrap resamples whole reviews.
    """
    from lm4f.retrieval import bootstrap_interval

    counts = scrubber_counts(labelled, patterns)
    ratio = lambda numerator, denominator: (lambda rows: rows[:, numerator].sum() / rows[:, denominator].sum()  # noqa: E731
                                            if rows[:, denominator].sum() else np.nan)
    report = {"reviews": len(labelled), "found": int(counts[:, 0].sum()), "labelled": int(counts[:, 2].sum())}
    for name, (numerator, denominator) in {"precision": (1, 0), "recall": (3, 2)}.items():
        statistic = ratio(numerator, denominator)
        report[name] = float(statistic(counts))
        report[f"{name}_low"], report[f"{name}_high"] = bootstrap_interval(counts, statistic, resamples=resamples,
                                                                          seed=seed)
    return report
