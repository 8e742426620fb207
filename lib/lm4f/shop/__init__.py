"""The knowledge base and the labelled questions of the customer-service assistant (case study 6.2).

The assistant answers customers of "Maple & Thread", the course's fictional online shop for women's
clothing. Everything it may say comes from *passages*: short, self-contained texts with stable ids,
versioned as plain files in this folder.

- ``policies/<topic>.md``: the shop's policies (shipping, returns, sizing, care, payment, privacy,
  order changes, promotions, gift cards, contact), written for the course. One file per topic: a
  ``# Topic`` heading, then one ``## <id> | <Title>`` heading per passage followed by its text.
- ``products.jsonl``: product knowledge derived from the real Women's E-Commerce Clothing Reviews by
  :func:`build_products`. For the 40 most reviewed Clothing IDs: an overview (department, division,
  class, number of reviews, average rating, share who recommend), what reviewers say about fit
  (runs small / runs large / true to size), fabric (soft, thin, sheer, itchy, stretch, lining, ...)
  and colour (colour words, "looks different from the photo"). Counts come from simple keyword
  patterns (:data:`FIT_PATTERNS`, :data:`FABRIC_PATTERNS`, :data:`COLOUR_WORDS`); a match counts as
  negated when "not", "no", "never", "without" or "n't" appears shortly before it in the same clause.
  ``source`` cites review rows (the index of :func:`lm4f.data.clothing_reviews`).
  Same data, same file, byte for byte: ``python -m lm4f.shop build-products`` rewrites it.
- ``questions.jsonl``: customer questions, each labelled with the passages that support its answer, a
  short reference answer and the facts a correct answer must contain, or labelled *hand off* with a
  reason. The ``split`` field follows :func:`split_rule` (about 45% dev, 55% test, stratified by kind
  and hand-off reason). Tune on dev; the test split is for the final table only.
- ``holdout.jsonl``: 150 more questions in the same format (split ``"holdout"``, ids ``h001``...),
  written after the test split had been used once, by an author who had seen neither the other
  questions nor the assistant. They judge any change made after that first look at test.
- ``handoff_train.jsonl``: customer messages labelled ``answer`` or with a hand-off reason
  (``{"text", "label"}``), the training data of the hand-off classifier. None of them is a question
  of the three splits.

``python -m lm4f.shop check`` validates all of it and prints counts. Every loader raises
:class:`ShopDataError` naming the file, the line and the command that fixes it.

    from lm4f import shop
    kb = shop.passage_by_id()
    q = shop.questions("dev")[0]
    [kb[pid].text for pid in q.passage_ids]
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "Passage",
    "Question",
    "ShopDataError",
    "HANDOFF_REASONS",
    "KINDS",
    "SPLITS",
    "SHOP_DIR",
    "passages",
    "policy_passages",
    "product_passages",
    "passage_by_id",
    "questions",
    "handoff_examples",
    "build_products",
    "write_products",
    "split_rule",
    "check",
]

SHOP_NAME = "Maple & Thread"
SHOP_DIR = Path(__file__).resolve().parent
"""The folder holding ``policies/``, ``products.jsonl`` and ``questions.jsonl`` (tests point it elsewhere)."""

HANDOFF_REASONS = ("order_lookup", "complaint", "out_of_scope", "human_request")
KINDS = ("policy", "product", "multi", "typo", "handoff")
SPLITS = ("dev", "test", "holdout", "holdout2", "holdout3")
HOLDOUT_FILES = {"holdout": ("holdout.jsonl", "h"), "holdout2": ("holdout2.jsonl", "k"),
                 "holdout3": ("holdout3.jsonl", "m")}
"""Each fresh evaluation set: its file and its id prefix. ``holdout`` judged version 2 of the assistant once;
``holdout2`` was written afterwards, for the next version."""
HANDOFF_LABELS = ("answer",) + HANDOFF_REASONS
DEV_SHARE = 0.45

BUILD_COMMAND = "python -m lm4f.shop build-products"
CHECK_COMMAND = "python -m lm4f.shop check"
SPLIT_COMMAND = "python -m lm4f.shop split"
ID_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


class ShopDataError(ValueError):
    """A knowledge-base or question file is missing or malformed. The message says which and how to fix it."""


@dataclass(frozen=True)
class Passage:
    id: str  # stable, lowercase, e.g. "returns-02", "product-1078-fit"
    title: str  # short heading, e.g. "Return window"
    text: str  # 1-5 plain sentences; every fact a customer may ask about is stated literally
    source: str  # "policies/returns.md" or "reviews: Clothing ID 1078 (rows 12, 345, 901)"

    @property
    def full_text(self) -> str:
        """What retrieval indexes: the title, then the text (titles carry words such as "Returns" or an item number)."""
        return f"{self.title}. {self.text}" if self.title else self.text


@dataclass(frozen=True)
class Question:
    id: str  # "q001"... ("h001"... in holdout, "k001"... in holdout2)
    question: str  # as a customer would type it
    split: str  # "dev", "test", "holdout" or "holdout2"
    passage_ids: tuple[str, ...]  # passages that support the answer; () when handoff
    answer: str  # short reference answer ("" when handoff)
    facts: tuple[str, ...]  # short strings a correct answer must contain; () when handoff
    handoff: bool
    handoff_reason: str | None  # None, or one of HANDOFF_REASONS
    kind: str  # one of KINDS


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _shop_dir() -> Path:
    return Path(SHOP_DIR)


def _restore_hint(path: Path) -> str:
    return f"restore it from the repository (`git checkout -- {_display(path)}`)"


def _display(path: Path) -> str:
    """The path relative to the repository root when it lies inside it, else as given."""
    try:
        return str(path.resolve().relative_to(Path(__file__).resolve().parents[3]))
    except ValueError:
        return str(path)


def _parse_policy_file(path: Path) -> list[Passage]:
    """Parse one ``policies/<topic>.md``: ``# Topic``, then ``## <id> | <Title>`` + text per passage."""
    fix = f"Fix the file by hand (format: '# Topic', then '## <id> | <Title>' and the text) or {_restore_hint(path)}."
    lines = path.read_text(encoding="utf-8").splitlines()
    topic = path.stem
    found: list[tuple[int, str, str, list[str]]] = []  # (line number, id, title, text lines)
    seen_heading = False
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not seen_heading:
            if not line:
                continue
            if not line.startswith("# "):
                raise ShopDataError(f"{path}, line {number}: expected the '# Topic' heading, "
                                    f"found {line[:60]!r}. {fix}")
            seen_heading = True
            continue
        if line.startswith("## "):
            head = line[3:]
            if "|" not in head:
                raise ShopDataError(f"{path}, line {number}: a passage heading must read '## <id> | <Title>', "
                                    f"found {line[:60]!r}. {fix}")
            passage_id, title = (part.strip() for part in head.split("|", 1))
            if not ID_PATTERN.match(passage_id) or not passage_id.startswith(topic + "-"):
                raise ShopDataError(f"{path}, line {number}: passage id {passage_id!r} must be lowercase words and "
                                    f"digits joined by '-' and start with '{topic}-'. {fix}")
            if not title:
                raise ShopDataError(f"{path}, line {number}: passage {passage_id!r} has no title. {fix}")
            found.append((number, passage_id, title, []))
        elif line.startswith("#"):
            raise ShopDataError(f"{path}, line {number}: only one '# Topic' heading and '## <id> | <Title>' "
                                f"headings are allowed, found {line[:60]!r}. {fix}")
        elif line:
            if not found:
                raise ShopDataError(f"{path}, line {number}: text before the first '## <id> | <Title>' heading. {fix}")
            found[-1][3].append(line)
    if not seen_heading:
        raise ShopDataError(f"{path}: the file is empty. {fix}")
    if not found:
        raise ShopDataError(f"{path}: no '## <id> | <Title>' passage headings. {fix}")
    result = []
    for number, passage_id, title, text_lines in found:
        if not text_lines:
            raise ShopDataError(f"{path}, line {number}: passage {passage_id!r} has no text. {fix}")
        result.append(Passage(id=passage_id, title=title, text=" ".join(text_lines),
                              source=f"policies/{path.name}"))
    return result


def policy_passages() -> list[Passage]:
    """The policy passages: files in ``policies/`` by name, passages in file order."""
    folder = _shop_dir() / "policies"
    files = sorted(folder.glob("*.md")) if folder.is_dir() else []
    if not files:
        raise ShopDataError(f"{folder}: no policy files (policies/<topic>.md) found. "
                            f"Fix: {_restore_hint(folder)}.")
    result: list[Passage] = []
    for path in files:
        result.extend(_parse_policy_file(path))
    return result


def _read_jsonl(path: Path, fix: str) -> list[tuple[int, dict]]:
    if not path.exists():
        raise ShopDataError(f"{path}: file is missing. Fix: {fix}.")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ShopDataError(f"{path}, line {number}: not valid JSON ({error.msg}). Fix: {fix}.") from None
        if not isinstance(row, dict):
            raise ShopDataError(f"{path}, line {number}: expected a JSON object, found {type(row).__name__}. "
                                f"Fix: {fix}.")
        rows.append((number, row))
    if not rows:
        raise ShopDataError(f"{path}: file is empty. Fix: {fix}.")
    return rows


def product_passages() -> list[Passage]:
    """The product passages of ``products.jsonl`` in file order."""
    path = _shop_dir() / "products.jsonl"
    fix = f"run `{BUILD_COMMAND}` (it rebuilds the file from the reviews)"
    result = []
    for number, row in _read_jsonl(path, fix):
        fields = ("id", "title", "text", "source")
        if set(row) != set(fields) or not all(isinstance(row[name], str) and row[name].strip() for name in fields):
            raise ShopDataError(f"{path}, line {number}: expected non-empty string fields {', '.join(fields)} "
                                f"and nothing else, found keys {sorted(row)}. Fix: {fix}.")
        if not ID_PATTERN.match(row["id"]) or not row["id"].startswith("product-"):
            raise ShopDataError(f"{path}, line {number}: id {row['id']!r} must look like 'product-1078-fit'. "
                                f"Fix: {fix}.")
        result.append(Passage(**row))
    return result


def passages() -> list[Passage]:
    """Every passage: policy passages, then product passages, in a stable order. Ids are unique.

    The files are read on every call (a few milliseconds): keep the result when you loop.
    """
    result = policy_passages() + product_passages()
    counts = Counter(passage.id for passage in result)
    duplicated = sorted(pid for pid, n in counts.items() if n > 1)
    if duplicated:
        where = {pid: sorted({p.source for p in result if p.id == pid}) for pid in duplicated[:5]}
        raise ShopDataError(f"passage ids must be unique; duplicated: {where}. Fix: rename one of each pair "
                            f"in the policy files, then run `{CHECK_COMMAND}`.")
    return result


def passage_by_id() -> dict[str, Passage]:
    """Every passage, keyed by its id."""
    return {passage.id: passage for passage in passages()}


def _parse_question(path: Path, number: int, row: dict, fix: str, holdout: str | None = None) -> Question:
    where = f"{path}, line {number}"
    expected = {"id": str, "question": str, "split": str, "passage_ids": list, "answer": str, "facts": list,
                "handoff": bool, "handoff_reason": (str, type(None)), "kind": str}
    missing = sorted(set(expected) - set(row))
    extra = sorted(set(row) - set(expected))
    if missing or extra:
        raise ShopDataError(f"{where}: missing fields {missing}, unknown fields {extra}. Fix: {fix}.")
    for name, kind in expected.items():
        if not isinstance(row[name], kind):
            raise ShopDataError(f"{where}: field {name!r} has the wrong type ({type(row[name]).__name__}). "
                                f"Fix: {fix}.")
    for name in ("passage_ids", "facts"):
        if not all(isinstance(item, str) and item.strip() for item in row[name]):
            raise ShopDataError(f"{where}: {name!r} must be a list of non-empty strings. Fix: {fix}.")
    prefix = HOLDOUT_FILES[holdout][1] if holdout else "q"
    if not re.fullmatch(prefix + r"\d{3,}", row["id"]):
        raise ShopDataError(f"{where}: id {row['id']!r} must look like '{prefix}001'. Fix: {fix}.")
    if not row["question"].strip():
        raise ShopDataError(f"{where}: the question is empty. Fix: {fix}.")
    if holdout and row["split"] != holdout:
        raise ShopDataError(f"{where}: every question of this file has split {holdout!r}. Fix: {fix}.")
    if not holdout and row["split"] not in ("dev", "test"):
        raise ShopDataError(f"{where}: split {row['split']!r} must be 'dev' or 'test' (holdout questions live in "
                            f"holdout.jsonl). Fix: run `{SPLIT_COMMAND}`.")
    if row["kind"] not in KINDS:
        raise ShopDataError(f"{where}: kind {row['kind']!r} must be one of {KINDS}. Fix: {fix}.")
    if row["handoff"]:
        if row["handoff_reason"] not in HANDOFF_REASONS or row["kind"] != "handoff":
            raise ShopDataError(f"{where}: a hand-off needs kind 'handoff' and a handoff_reason in "
                                f"{HANDOFF_REASONS}. Fix: {fix}.")
        if row["passage_ids"] or row["facts"] or row["answer"]:
            raise ShopDataError(f"{where}: a hand-off has no passage_ids, facts or answer. Fix: {fix}.")
    else:
        if row["handoff_reason"] is not None or row["kind"] == "handoff":
            raise ShopDataError(f"{where}: an answerable question has handoff_reason null and a kind other than "
                                f"'handoff'. Fix: {fix}.")
        if not row["passage_ids"] or not row["facts"] or not row["answer"].strip():
            raise ShopDataError(f"{where}: an answerable question needs passage_ids, facts and an answer. "
                                f"Fix: {fix}.")
    return Question(id=row["id"], question=row["question"], split=row["split"],
                    passage_ids=tuple(row["passage_ids"]), answer=row["answer"], facts=tuple(row["facts"]),
                    handoff=row["handoff"], handoff_reason=row["handoff_reason"], kind=row["kind"])


def questions(split: str | None = None) -> list[Question]:
    """The labelled customer questions, in file order (``questions.jsonl``, then ``holdout.jsonl``, then
    ``holdout2.jsonl``).

    ``split`` is None (all), "dev", "test", "holdout" or "holdout2".
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be None or one of {SPLITS}, not {split!r}. Tune on 'dev'; the others "
                         "are for final tables only.")
    result = []
    files = [("questions.jsonl", None)] + [(name, holdout) for holdout, (name, _) in HOLDOUT_FILES.items()]
    for name, holdout in files:
        path = _shop_dir() / name
        in_file = (holdout,) if holdout else ("dev", "test")
        if split is not None and split not in in_file:
            continue
        rows = _read_jsonl(path, _restore_hint(path))
        fix = f"edit that line (see README.md in {_display(path.parent)}), then run `{CHECK_COMMAND}`"
        result += [_parse_question(path, number, row, fix, holdout) for number, row in rows]
    counts = Counter(question.id for question in result)
    duplicated = sorted(qid for qid, n in counts.items() if n > 1)
    if duplicated:
        raise ShopDataError(f"{path}: question ids must be unique; duplicated: {duplicated[:10]}. "
                            f"Fix: renumber them, then run `{CHECK_COMMAND}`.")
    return [question for question in result if split is None or question.split == split]


def handoff_examples() -> list[tuple[str, str]]:
    """The hand-off classifier's training messages: ``[(text, label)]``, label in ``HANDOFF_LABELS``."""
    path = _shop_dir() / "handoff_train.jsonl"
    fix = f"edit that line (fields 'text' and 'label', label one of {HANDOFF_LABELS}) or {_restore_hint(path)}"
    result = []
    for number, row in _read_jsonl(path, fix):
        if set(row) != {"text", "label"} or not isinstance(row["text"], str) or not row["text"].strip() \
                or row["label"] not in HANDOFF_LABELS:
            raise ShopDataError(f"{path}, line {number}: expected {{\"text\": non-empty string, \"label\": one of "
                                f"{list(HANDOFF_LABELS)}}}, found {row!r:.120}. Fix: {fix}.")
        result.append((row["text"], row["label"]))
    return result


# --------------------------------------------------------------------------------------------
# The split rule and the check
# --------------------------------------------------------------------------------------------


def split_rule(items: list[Question]) -> dict[str, str]:
    """The split of every question: ``{question id: "dev" | "test"}``.

    Questions are grouped by (kind, hand-off reason); inside a group they are ordered by the sha256
    of their id, and the first round(45%) go to dev, the rest to test. Deterministic, stratified, and
    adding one question moves at most a few others of its own group.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for question in items:
        groups.setdefault((question.kind, question.handoff_reason or ""), []).append(question.id)
    result = {}
    for ids in groups.values():
        ordered = sorted(ids, key=lambda qid: hashlib.sha256(qid.encode()).hexdigest())
        n_dev = int(DEV_SHARE * len(ordered) + 0.5)
        for position, qid in enumerate(ordered):
            result[qid] = "dev" if position < n_dev else "test"
    return result


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def check() -> dict:
    """Validate the knowledge base and the questions; return counts. Raises ShopDataError listing problems.

    Checks: passage and question ids unique; every question's passage_ids exist; every fact appears
    verbatim (case-insensitive, whitespace-normalised) in at least one of its passages and in its own
    reference answer; every number in a reference answer comes from the question or the passages (so a
    rebuilt ``products.jsonl`` with other counts is caught); a "multi" question cites 2+ passages; the
    stored dev/test splits follow :func:`split_rule`; every split (holdout too) holds every kind and every
    hand-off reason; question ids are unique across both files; ``handoff_train.jsonl`` loads and
    shares no message with the questions.
    """
    kb = passage_by_id()
    items = questions()
    path = _shop_dir() / "questions.jsonl"
    problems = []
    for question in items:
        unknown = [pid for pid in question.passage_ids if pid not in kb]
        if unknown:
            problems.append(f"{question.id}: unknown passage ids {unknown}")
            continue
        texts = [_normalise(kb[pid].text) for pid in question.passage_ids]
        for fact in question.facts:
            if not any(_normalise(fact) in text for text in texts):
                problems.append(f"{question.id}: fact {fact!r} is in none of {list(question.passage_ids)}")
            if _normalise(fact) not in _normalise(question.answer):
                problems.append(f"{question.id}: fact {fact!r} is missing from its own reference answer")
        for number in re.findall(r"\d+(?:[.,]\d+)?", question.answer):
            if number not in question.question and not any(number in text for text in texts):
                problems.append(f"{question.id}: the answer's number {number} is neither in the question nor in "
                                f"{list(question.passage_ids)}")
        if question.kind == "multi" and len(set(question.passage_ids)) < 2:
            problems.append(f"{question.id}: a 'multi' question must cite 2 or more passages")
    split_items = [question for question in items if question.split not in HOLDOUT_FILES]
    rule = split_rule(split_items)
    moved = [question.id for question in split_items if question.split != rule[question.id]]
    if moved:
        problems.append(f"splits of {len(moved)} questions differ from the split rule (e.g. {moved[:5]}); "
                        f"run `{SPLIT_COMMAND}`")
    for split in SPLITS:
        kinds = {question.kind for question in items if question.split == split}
        reasons = {question.handoff_reason for question in items if question.split == split and question.handoff}
        if set(KINDS) - kinds or set(HANDOFF_REASONS) - reasons:
            problems.append(f"split {split!r} lacks kinds {sorted(set(KINDS) - kinds)} "
                            f"or hand-off reasons {sorted(set(HANDOFF_REASONS) - reasons)}")
    examples = handoff_examples()
    asked = {_normalise(question.question) for question in items}
    shared = [text for text, _ in examples if _normalise(text) in asked]
    if shared:
        problems.append(f"handoff_train.jsonl repeats {len(shared)} labelled questions (e.g. {shared[0]!r}); "
                        "training messages must not be questions the assistant is scored on")
    if problems:
        shown = "\n  ".join(problems[:25])
        more = f"\n  ... and {len(problems) - 25} more" if len(problems) > 25 else ""
        raise ShopDataError(f"{path}: {len(problems)} problems:\n  {shown}{more}\n"
                            f"Fix: edit the questions or the passages, then run `{CHECK_COMMAND}` again.")
    all_passages = list(kb.values())
    return {
        "passages": len(all_passages),
        "policy passages": sum(p.source.startswith("policies/") for p in all_passages),
        "product passages": sum(p.id.startswith("product-") for p in all_passages),
        "questions": len(items),
        "by split": dict(Counter(question.split for question in items)),
        "hand-off training messages": dict(Counter(label for _, label in examples)),
        "by split and kind": {f"{split}/{kind}": sum(q.split == split and q.kind == kind for q in items)
                              for split in SPLITS for kind in KINDS},
        "by split and reason": {f"{split}/{reason}": sum(q.split == split and q.handoff_reason == reason
                                                         for q in items)
                                for split in SPLITS for reason in HANDOFF_REASONS},
    }


def _write_splits() -> int:
    """Rewrite the ``split`` field of questions.jsonl by :func:`split_rule`; return how many changed."""
    path = _shop_dir() / "questions.jsonl"
    items = [question for question in questions() if question.split not in HOLDOUT_FILES]
    rule = split_rule(items)
    changed = sum(question.split != rule[question.id] for question in items)
    lines = []
    for question in items:
        row = asdict(question)
        row["split"] = rule[question.id]
        row["passage_ids"], row["facts"] = list(question.passage_ids), list(question.facts)
        lines.append(json.dumps(row, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return changed


# --------------------------------------------------------------------------------------------
# Product knowledge from the reviews
# --------------------------------------------------------------------------------------------

# A match is negated when one of these words appears in the 25 characters before it, within the same clause.
NEGATION = re.compile(r"\b(?:not|no|never|without|nor|isnt|wasnt|doesnt|didnt)\b|n't")
_MODIFIER = r"(?:a (?:bit|little|tad) |slightly |very |really |way |super |quite |pretty |somewhat )?"

FIT_PATTERNS = {
    "small": rf"\b(?:runs?|ran|running|fits?|fitting) {_MODIFIER}small\b|\bsiz(?:e|ed|ing) up\b"
             r"|\b(?:go|went|going|order|ordered|get|got) up a size\b",
    "large": rf"\b(?:runs?|ran|running|fits?|fitting) {_MODIFIER}(?:large|big)\b|\bsiz(?:e|ed|ing) down\b"
             r"|\b(?:go|went|going|order|ordered|get|got) down a size\b",
    "true": r"\btrue to size\b|\btts\b|\bfits? true\b",
}
"""Keyword patterns (on the lower-cased title + review text) for what a review says about fit."""

FABRIC_PATTERNS = {
    "soft": r"\bsoft(?:er|est)?\b",
    "thin": r"\bthin\b|\bflimsy\b",
    "itchy": r"\bitch(?:y|es|ed|ing)?\b|\bscratch(?:y|es|ed|ing)?\b",
    "sheer": r"\bsee[- ]?through\b|\bsheer\b|\btransparent\b",
    "stretch": r"\bstretch(?:y|es|ed|ing)?\b",
    "lined": r"\bunlined\b|\blined\b|\blining\b",
    "wrinkles": r"\bwrinkl\w*",
    "pilling": r"\bpill(?:s|ed|ing|y)?\b",
}
"""Keyword patterns for fabric traits; "unlined" counts as a negated mention of a lining."""

MATERIALS = ("cotton", "linen", "silk", "rayon", "polyester", "wool", "cashmere", "denim", "lace", "velvet",
             "jersey", "chiffon", "modal", "viscose", "spandex", "suede", "leather")

COLOUR_WORDS = {
    "black": r"black", "white": r"white", "ivory": r"ivory", "cream": r"cream", "grey": r"gr[ae]y",
    "navy": r"navy", "blue": r"blue", "green": r"green", "olive": r"olive", "red": r"red",
    "burgundy": r"burgundy", "pink": r"pink", "coral": r"coral", "orange": r"orange", "yellow": r"yellow",
    "mustard": r"mustard", "purple": r"purple", "brown": r"brown", "beige": r"beige", "taupe": r"taupe",
    "camel": r"camel", "teal": r"teal", "mint": r"mint",
}
"""Colour words counted (one count per review that uses the word); "gray" counts as grey."""

# One regex per family with a named group per label, so that a text is scanned once for all labels.
_FIT_RE = re.compile("|".join(f"(?P<{label}>{pattern})" for label, pattern in FIT_PATTERNS.items()))
_FABRIC_RE = re.compile("|".join(f"(?P<{label}>{pattern})" for label, pattern in FABRIC_PATTERNS.items()))
_MATERIAL_RE = re.compile(r"\b(" + "|".join(MATERIALS) + r")\b")
_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOUR_WORDS.values()) + r")\b")


def _colour_name(word: str) -> str:
    """The canonical colour name of a matched colour word ("gray" -> "grey")."""
    return next(name for name, pattern in COLOUR_WORDS.items() if re.fullmatch(pattern, word))


_COLOUR_REF = r"\bcolou?rs?\b|\bshades?\b|\bhues?\b|\b(?:" + "|".join(COLOUR_WORDS.values()) + r")\b"
_PHOTO_REF = r"\b(?:pictures?|pictured|photos?|photographed|pics?|images?|online|website|screen)\b"
_PHOTO_DIFFERS = (r"\b(?:different|differs?|darker|lighter|brighter|duller|deeper|paler|richer|prettier|"
                  r"more vibrant|more muted|more of an?|justice|than)\b")
_PHOTO_MATCHES = (r"\bas (?:pictured|shown|in the (?:picture|photo)s?)\b|\btrue to the (?:picture|photo)s?\b"
                  r"|\b(?:same|exactly) (?:as|like) (?:in )?the (?:picture|photo)s?\b|\bmatch(?:es|ed)? the "
                  r"(?:picture|photo)s?\b")

NOUNS = {"Dresses": "a dress", "Knits": "a knit top", "Blouses": "a blouse", "Fine gauge": "a fine-gauge knit top",
         "Sweaters": "a sweater", "Pants": "a pair of pants", "Jeans": "a pair of jeans", "Skirts": "a skirt",
         "Jackets": "a jacket", "Outerwear": "a coat", "Shorts": "a pair of shorts", "Lounge": "a lounge piece",
         "Intimates": "an intimates piece", "Swim": "a swimsuit", "Sleep": "a sleepwear piece",
         "Legwear": "a legwear piece", "Layering": "a layering piece", "Trend": "a trend piece",
         "Casual bottoms": "a pair of casual bottoms", "Chemises": "a chemise"}

CITED_ROWS = 2  # review rows cited per counted category, the first by index


def _clause_before(text: str, start: int, width: int = 25) -> str:
    window = text[max(0, start - width):start]
    return re.split(r"[.,;:!?]|\bbut\b", window)[-1]


def _classify(text: str, combined: re.Pattern) -> dict[str, str]:
    """{label: "yes"} for labels with an un-negated match, {label: "no"} for labels with only negated ones."""
    verdicts: dict[str, str] = {}
    for hit in combined.finditer(text):
        label = hit.lastgroup
        negated = bool(NEGATION.search(_clause_before(text, hit.start()))) or hit.group(0).startswith("unlined")
        if not negated:
            verdicts[label] = "yes"
        else:
            verdicts.setdefault(label, "no")
    return verdicts


def _photo_colour(text: str) -> str | None:
    """"differs" / "matches" when a sentence talks about colour and the photos, else None."""
    verdict = None
    for sentence in re.split(r"[.!?]+", text):
        if not re.search(_COLOUR_REF, sentence) or not re.search(_PHOTO_REF, sentence):
            continue
        match = re.search(_PHOTO_MATCHES, sentence)
        if match and not NEGATION.search(_clause_before(sentence, match.start())):
            verdict = verdict or "matches"
        elif re.search(_PHOTO_DIFFERS, sentence):
            return "differs"
    return verdict


def _mode(values) -> str:
    counts = Counter(str(value) for value in values if value == value)  # value == value drops NaN
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[0][0] if counts else "unknown"


def _reviewers(n: int) -> str:
    return f"{n} reviewer{'s' if n != 1 else ''}"


def _verb(n: int, plural: str, singular: str) -> str:
    return singular if n == 1 else plural


def _listing(parts) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    parts = list(parts)
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _source(clothing_id: int, rows) -> str:
    return f"reviews: Clothing ID {clothing_id} (rows {', '.join(str(row) for row in sorted(set(rows)))})"


def _fit_passage(clothing_id, class_name, name, texts) -> Passage:
    verdicts = {row: _classify(text, _FIT_RE) for row, text in texts.items()}
    found = {label: [row for row in texts if verdicts[row].get(label) == "yes"] for label in FIT_PATTERNS}
    mentioning = sorted(set().union(*found.values()))
    n = len(mentioning)
    small, large, true = (len(found[label]) for label in ("small", "large", "true"))
    text = (f"How {name} fits, from {len(texts)} reviews with text: {n} {_verb(n, 'mention', 'mentions')} the fit; "
            f"{small} {_verb(small, 'say', 'says')} it runs small or that they sized up, {large} "
            f"{_verb(large, 'say', 'says')} it runs large or that they sized down, and {true} "
            f"{_verb(true, 'say', 'says')} it is true to size.")
    phrases = {"small": "it runs small", "large": "it runs large", "true": "it is true to size"}
    if n < 5:
        verdict = f" Too few reviewers mention the fit of {name} to say how it runs ({n} mentions)."
    else:
        count = max(len(rows) for rows in found.values())
        top = [label for label in ("true", "small", "large") if len(found[label]) == count]
        if len(top) > 1:
            verdict = (f" Reviewers who mention fit are split: as many say {phrases[top[0]]} as say "
                       f"{phrases[top[1]]} ({count} each, of {n}).")
        elif count * 2 > n:
            verdict = f" Most reviewers who mention fit say {phrases[top[0]]} ({count} of {n})."
        else:
            verdict = (f" Reviewers who mention fit are divided; the largest group says {phrases[top[0]]} "
                       f"({count} of {n}).")
    rows = [row for label in found for row in found[label][:CITED_ROWS]]
    return Passage(id=f"product-{clothing_id}-fit", title=f"Item {clothing_id} ({class_name}): fit",
                   text=text + verdict, source=_source(clothing_id, rows or list(texts)[:CITED_ROWS]))


def _fabric_passage(clothing_id, class_name, name, texts) -> Passage:
    said = {label: {"yes": [], "no": []} for label in FABRIC_PATTERNS}
    for row, text in texts.items():
        for label, verdict in _classify(text, _FABRIC_RE).items():
            said[label][verdict].append(row)
    yes = {label: len(said[label]["yes"]) for label in said}
    no = {label: len(said[label]["no"]) for label in said}
    sentences = [
        f"What reviewers say about the fabric of {name}, from {len(texts)} reviews with text: "
        f"{_reviewers(yes['soft'])} {_verb(yes['soft'], 'call', 'calls')} it soft, "
        f"{yes['thin']} {_verb(yes['thin'], 'call', 'calls')} it thin and "
        f"{yes['itchy']} {_verb(yes['itchy'], 'call', 'calls')} it itchy or scratchy "
        f"({no['itchy']} {_verb(no['itchy'], 'say', 'says')} it is not itchy).",
        f"{_reviewers(yes['sheer'])} {_verb(yes['sheer'], 'say', 'says')} it is sheer or see-through and "
        f"{no['sheer']} {_verb(no['sheer'], 'say', 'says')} it is not see-through.",
        f"{_reviewers(yes['lined'])} {_verb(yes['lined'], 'mention', 'mentions')} a lining and {no['lined']} "
        f"{_verb(no['lined'], 'say', 'says')} it is unlined; {yes['stretch']} "
        f"{_verb(yes['stretch'], 'mention', 'mentions')} stretch, {yes['wrinkles']} "
        f"{_verb(yes['wrinkles'], 'mention', 'mentions')} wrinkles and {yes['pilling']} "
        f"{_verb(yes['pilling'], 'mention', 'mentions')} pilling.",
    ]
    materials = Counter()
    material_rows: dict[str, list[int]] = {}
    for row, text in texts.items():
        for material in sorted(set(_MATERIAL_RE.findall(text))):
            materials[material] += 1
            material_rows.setdefault(material, []).append(row)
    named = [(material, count) for material, count in sorted(materials.items(), key=lambda kv: (-kv[1], kv[0]))
             if count >= 3][:3]
    if len(named) == 1:
        sentences.append(f"The material reviewers name most often for {name} is {named[0][0]} ({named[0][1]}).")
    elif named:
        listed = _listing(f"{material} ({count})" for material, count in named)
        sentences.append(f"The materials reviewers name most often for {name} are {listed}.")
    else:
        sentences.append(f"Reviewers of {name} rarely name a material.")
    rows = [row for label in said for row in said[label]["yes"][:1]]
    rows += [row for material, _ in named for row in material_rows[material][:1]]
    return Passage(id=f"product-{clothing_id}-fabric", title=f"Item {clothing_id} ({class_name}): fabric",
                   text=" ".join(sentences), source=_source(clothing_id, rows or list(texts)[:CITED_ROWS]))


def _colour_passage(clothing_id, class_name, name, texts) -> Passage:
    colour_rows: dict[str, list[int]] = {}
    photo = {"differs": [], "matches": []}
    for row, text in texts.items():
        for colour in sorted({_colour_name(word) for word in _COLOUR_RE.findall(text)}):
            colour_rows.setdefault(colour, []).append(row)
        verdict = _photo_colour(text)
        if verdict:
            photo[verdict].append(row)
    ranked = sorted(colour_rows.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:4]
    if ranked:
        listed = _listing(f"{colour} ({len(rows)})" for colour, rows in ranked)
        first = (f"Colour of {name}, from {len(texts)} reviews with text: the colour words reviewers use most "
                 f"are {listed}.")
    else:
        first = f"Colour of {name}, from {len(texts)} reviews with text: reviewers rarely name a colour."
    differs, matches = len(photo["differs"]), len(photo["matches"])
    second = (f"{_reviewers(differs)} {_verb(differs, 'say', 'says')} the colour looks different in person than in "
              f"the photos, and {matches} {_verb(matches, 'say', 'says')} it looks as pictured.")
    rows = [row for _, rows in ranked for row in rows[:1]]
    rows += photo["differs"][:CITED_ROWS] + photo["matches"][:CITED_ROWS]
    return Passage(id=f"product-{clothing_id}-colour", title=f"Item {clothing_id} ({class_name}): colour",
                   text=f"{first} {second}", source=_source(clothing_id, rows or list(texts)[:CITED_ROWS]))


def _overview_passage(clothing_id, class_name, item) -> Passage:
    department, division_counts = _mode(item["Department Name"]), Counter(item["Division Name"].dropna())
    divisions = sorted(division_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    n = len(item)
    rating = float(item["Rating"].mean())
    recommend = round(100 * float(item["Recommended IND"].mean()))
    noun = NOUNS.get(class_name, f"an item of class {class_name}")
    text = (f"Item {clothing_id} is {noun} (class {class_name}) from the {department} department. "
            f"It has {n} customer reviews with an average rating of {rating:.1f} out of 5, and {recommend}% of "
            f"reviewers recommend it.")
    filed = [f"{count} under the {division} division" for division, count in divisions]
    if filed:
        filed[0] = f"{divisions[0][1]} of its reviews are filed under the {divisions[0][0]} division"
        petite = {"General", "General Petite"} <= set(division_counts)
        sizes = "It comes in regular and petite sizes: " if petite else ""
        text += f" {sizes}{_listing(filed)}."
    return Passage(id=f"product-{clothing_id}-overview", title=f"Item {clothing_id} ({class_name}): overview",
                   text=text, source=_source(clothing_id, list(item.index[:3])))


REQUIRED_COLUMNS = ("Clothing ID", "Title", "Review Text", "Rating", "Recommended IND", "Division Name",
                    "Department Name", "Class Name")


def build_products(reviews_frame, n_products: int = 40) -> list[Passage]:
    """Product passages for the ``n_products`` most reviewed Clothing IDs (ties: smaller id first).

    Four passages per product, in this order: overview, fit, fabric, colour. ``reviews_frame`` is the
    raw frame of :func:`lm4f.data.clothing_reviews`; its index is what ``source`` cites. The keyword
    counts read the lower-cased "title. review text" of the rows that have a review text. Deterministic:
    the same frame gives the same passages.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in reviews_frame.columns]
    if missing:
        raise ValueError(f"build_products needs the columns of lm4f.data.clothing_reviews(); missing {missing}.")
    if n_products < 1:
        raise ValueError(f"n_products must be at least 1, not {n_products}.")
    counts = Counter(int(value) for value in reviews_frame["Clothing ID"])
    chosen = [cid for cid, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_products]]
    frame = reviews_frame.sort_index()
    result = []
    for clothing_id in chosen:
        item = frame[frame["Clothing ID"] == clothing_id]
        class_name = _mode(item["Class Name"])
        name = f"item {clothing_id} ({class_name})"
        has_text = item["Review Text"].notna()
        titles = item.loc[has_text, "Title"].fillna("").astype(str)
        texts = (titles + ". " + item.loc[has_text, "Review Text"].astype(str)).str.lower()
        texts = {int(row): text for row, text in texts.items()}
        result.append(_overview_passage(clothing_id, class_name, item))
        result.append(_fit_passage(clothing_id, class_name, name, texts))
        result.append(_fabric_passage(clothing_id, class_name, name, texts))
        result.append(_colour_passage(clothing_id, class_name, name, texts))
    return result


def write_products(items: list[Passage], path: Path | None = None) -> Path:
    """Write passages as ``products.jsonl`` (one JSON object per line, fixed key order)."""
    path = Path(path) if path is not None else _shop_dir() / "products.jsonl"
    lines = [json.dumps({"id": p.id, "title": p.title, "text": p.text, "source": p.source}, ensure_ascii=False)
             for p in items]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Command line: python -m lm4f.shop [build-products|check|split]
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else ""
    try:
        if command == "build-products":
            from lm4f.data import clothing_reviews

            items = build_products(clothing_reviews())
            path = write_products(items)
            print(f"wrote {len(items)} product passages to {path}")
            return 0
        if command == "check":
            report = check()
            print(f"{SHOP_NAME} knowledge base: {report['passages']} passages "
                  f"({report['policy passages']} policy, {report['product passages']} product)")
            print(f"questions: {report['questions']} ({', '.join(f'{k} {v}' for k, v in report['by split'].items())})")
            for key in ("by split and kind", "by split and reason"):
                print(f"{key}: " + ", ".join(f"{k} {v}" for k, v in report[key].items()))
            print("OK")
            return 0
        if command == "split":
            changed = _write_splits()
            print(f"split field rewritten by the split rule; {changed} questions changed split")
            return 0
    except ShopDataError as error:
        print(error, file=sys.stderr)
        return 1
    print("usage: python -m lm4f.shop [build-products|check|split]", file=sys.stderr)
    return 2
