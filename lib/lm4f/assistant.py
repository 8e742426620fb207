"""The customer-service assistant of case study 6.2: retrieve, decide whether to answer, answer, cite.

    index = lm4f.retrieval.load_index("models/assistant/index")
    bot = Assistant.from_index(index)                       # extractive backend, settings chosen on dev
    reply = bot.ask("How long do I have to return a dress?")
    reply.answer, reply.citations, reply.handed_off, reply.reason, reply.confidence

One interface, three answering backends (``Backend``):

- ``ExtractiveBackend`` (offline default): picks the retrieved passage that answers the question
  (one per part of a two-part question, one per item of a comparison) and quotes it, each quote
  followed by the ``[passage-id]`` it came from. It cannot say anything the shop's passages do not say.
- ``LocalBackend``: a causal LM run here through ``transformers`` (``lm4f.local_lm``), given the
  top passages in the course's one prompt format (``lm4f.local_lm.build_messages``).
- ``OpenAIBackend``: any OpenAI-compatible endpoint through the official ``openai`` client (the
  *buy* route): a hosted model, a local vLLM or Ollama server, or this course's own server.

For generated answers the citations are the ``[ids]`` the text cites that were among the passages
retrieved; when the endpoint returns a top-level ``citations`` field (as ``lm4f.apps.assistant``
does) that list is used instead.

Knowing when not to answer (``HandoffPolicy``): before any answer is written, a question is handed
to a person with a reason when it asks for a human (``human_request``), names or asks about a
particular order or account (``order_lookup``), tries to make the assistant leave its job or matches
nothing in the knowledge base (``out_of_scope``: the best passage's MiniLM cosine and BM25 score both
below thresholds), or is a complaint (``complaint``: complaint phrases, and a classifier trained on the
real reviews' low ratings when the dev questions show it helps). A generated answer
that cites no retrieved passage is replaced by a hand-off too (``low_confidence``). The thresholds
are chosen on the dev questions only, by ``choose_handoff``.

The evaluation harness (``evaluate``) scores any backend on labelled questions; every rate comes
with a seeded bootstrap 95 % interval and ``paired_bootstrap`` compares two systems on the same
questions. Definitions are in ``evaluate``'s docstring.

Command line:

    python -m lm4f.assistant build-index --out models/assistant/index
    python -m lm4f.assistant eval --split dev [--backend extractive|local|openai] [--base-url URL --llm NAME]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lm4f.data import sha256_file
from lm4f.retrieval import (REBUILD_COMMAND, Hit, Index, IndexFileError, bootstrap_interval, load_index,
                            paired_bootstrap, reciprocal_rank, recall_at_k, tokenize)

__all__ = [
    "HANDOFF_REASONS",
    "HANDOFF_MESSAGES",
    "DEFAULT_INDEX",
    "Citation",
    "Reply",
    "ReplyStream",
    "Draft",
    "ExtractiveBackend",
    "LocalBackend",
    "OpenAIBackend",
    "make_backend",
    "HandoffPolicy",
    "ComplaintDetector",
    "IntentClassifier",
    "choose_handoff",
    "choose_extractive",
    "choose_examples",
    "ExampleBank",
    "example_key",
    "question_parts",
    "item_numbers",
    "Assistant",
    "facts_present",
    "unsupported_sentences",
    "evaluate",
    "format_report",
    "compare_reports",
    "bootstrap_interval",
    "paired_bootstrap",
    "main",
]

DEFAULT_INDEX = Path("models/assistant/index")
HANDOFF_REASONS = ("order_lookup", "complaint", "out_of_scope", "human_request", "low_confidence")
HANDOFF_MESSAGES = {
    "human_request": "I'll connect you with a colleague from our customer-service team, who will reply shortly.",
    "order_lookup": ("I can't look up individual orders, so I've passed your question to a colleague who can "
                     "see your order; they will reply shortly."),
    "complaint": ("I'm sorry to hear that. I've passed your message to a colleague from our customer-service "
                  "team, who will get back to you personally."),
    "out_of_scope": ("I can only help with questions about our shop, its policies and its products, so I've "
                     "passed your question to a colleague."),
    "low_confidence": "I'm not sure I can answer that correctly, so I've passed your question to a colleague.",
}
CITATION_MARK = re.compile(r"\[([A-Za-z0-9][A-Za-z0-9_.:-]*)\]")
SNIPPET_CHARS = 200


# ---------------------------------------------------------------------------------------------
# What an answer is made of
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Citation:
    """A passage an answer relies on: its ``id``, where it comes from (``source``) and a ``snippet`` of its text."""

    id: str
    source: str
    snippet: str


@dataclass
class Reply:
    """What the assistant says to one question.

    ``answer``: the text for the customer (a hand-off message when ``handed_off``); ``citations``:
    the passages it relies on; ``reason``: why it was handed off (one of ``HANDOFF_REASONS``) or
    None; ``confidence``: how well the best passage matches the question, 0 to 1 (the MiniLM cosine
    of question and best passage, clipped at 0); ``prompt_tokens`` / ``completion_tokens``: what the
    request read and wrote (see ``Backend``). ``hits`` are the retrieved passages (for evaluation),
    ``finish_reason`` is ``"stop"`` or ``"length"`` (the answer was cut at ``max_tokens``).
    """

    answer: str
    citations: list[Citation]
    handed_off: bool
    reason: str | None
    confidence: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    hits: list[Hit] = field(default_factory=list, repr=False)
    finish_reason: str = "stop"

    def to_dict(self) -> dict:
        """The public fields, as ``POST /ask`` returns them."""
        return {"answer": self.answer, "citations": [asdict(c) for c in self.citations],
                "handed_off": self.handed_off, "reason": self.reason, "confidence": round(self.confidence, 4)}


@dataclass
class Draft:
    """A backend's answer before the assistant turns it into a ``Reply``.

    ``cited_ids``: the passages the backend says it used (None: read them from ``[id]`` marks in
    ``text``); ``handed_off`` / ``reason``: set when the backend itself declines (a remote server
    that handed off, a model that said it cannot answer).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    cited_ids: list[str] | None = None
    finish_reason: str = "stop"
    handed_off: bool = False
    reason: str | None = None
    remote_citations: list[dict] | None = None


class ReplyStream:
    """An answer as it is written: iterate for text pieces; ``reply`` holds the whole ``Reply`` once iteration ends.

        stream = assistant.stream("Do you ship to Canada?")
        for piece in stream:
            print(piece, end="")
        stream.reply.citations
    """

    def __init__(self, pieces: Iterator[str], finish: Callable[[str], Reply], first: Reply | None = None):
        self._pieces = pieces
        self._finish = finish
        self.reply: Reply | None = first
        self.handed_off = bool(first and first.handed_off)

    def __iter__(self) -> Iterator[str]:
        written = []
        for piece in self._pieces:
            written.append(piece)
            yield piece
        self.reply = self._finish("".join(written))


# ---------------------------------------------------------------------------------------------
# Text helpers shared by the extractive backend and the metrics
# ---------------------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split after . ! or ? when the next word starts with a capital or a digit."""
    return [part.strip() for part in _SENTENCE_END.split(text.strip()) if part.strip()]


def strip_citations(text: str) -> str:
    """``text`` without its ``[passage-id]`` marks."""
    return " ".join(CITATION_MARK.sub(" ", text).split())


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def _numbers(text: str) -> set[str]:
    """Numbers in ``text`` with thousands separators removed ("1,024" -> "1024"; "12.50" stays)."""
    found = set()
    for match in _NUMBER.findall(text):
        found.add(re.sub(r",(?=\d{3}\b)", "", match).rstrip(".,"))
    return found


def facts_present(answer: str, facts: Iterable[str]) -> bool:
    """True when every fact occurs in the answer, ignoring case and runs of white space."""
    text = _normalise(strip_citations(answer))
    return all(_normalise(fact) in text for fact in facts)


MIN_CONTENT_WORDS = 3
SUPPORTED_SHARE = 0.5


def unsupported_sentences(answer: str, passages: Sequence) -> list[str]:
    """The sentences of ``answer`` that assert facts none of ``passages`` (the retrieved ones) states.

    A sentence (after removing ``[id]`` marks) is *unsupported* when
    1. it contains a number (digits: an amount, a count, a number of days, "30%", "$5.99") that
       occurs in none of the passages (thousands separators ignored), or
    2. it has at least ``MIN_CONTENT_WORDS`` (3) content words (``lm4f.retrieval.tokenize``: lower
       case, stop words removed, lightly stemmed; numbers excluded) and fewer than half of them
       (``SUPPORTED_SHARE``) occur anywhere in the passages (titles and texts).
    A sentence with no number and fewer than 3 content words ("Yes.", "Happy to help!") asserts
    nothing checkable and is not *assessed*; see ``assessed_sentences``.
    """
    return [sentence for sentence, supported in _assess(answer, passages) if supported is False]


def assessed_sentences(answer: str, passages: Sequence) -> int:
    """How many sentences of ``answer`` ``unsupported_sentences`` can judge (the hallucination rate's denominator)."""
    return sum(supported is not None for _, supported in _assess(answer, passages))


def citation_supports(answer: str, passage) -> bool:
    """True when ``passage`` (one cited passage) alone supports at least one sentence of ``answer``."""
    if passage is None:
        return False
    return any(supported for _, supported in _assess(answer, [passage]))


def _assess(answer: str, passages: Sequence) -> list[tuple[str, bool | None]]:
    known_words: set[str] = set()
    known_numbers: set[str] = set()
    for passage in passages:
        text = f"{passage.title}. {passage.text}"
        known_words.update(tokenize(text))
        known_numbers |= _numbers(text)
    verdicts = []
    for sentence in split_sentences(strip_citations(answer)):
        numbers = _numbers(sentence)
        words = [w for w in tokenize(sentence) if not w.isdigit() and not any(ch.isdigit() for ch in w)]
        if numbers - known_numbers:
            verdicts.append((sentence, False))
        elif len(words) >= MIN_CONTENT_WORDS:
            share = sum(w in known_words for w in words) / len(words)
            verdicts.append((sentence, share >= SUPPORTED_SHARE))
        elif numbers:
            verdicts.append((sentence, True))
        else:
            verdicts.append((sentence, None))
    return verdicts


class TokenCounter:
    """Counts tokens with the MiniLM word-piece tokenizer (its own ``tokenizers`` instance, safe to share).

    The extractive backend reads text but runs no language model, so its "tokens" are the MiniLM
    word pieces of what it reads (the question and the retrieved passages) and writes (the answer):
    the same unit a generated answer would be billed in, give or take a tokenizer. Falls back to
    white-space words if the tokenizer file cannot be read.
    """

    def __init__(self):
        self._tokenizer = None
        try:
            from tokenizers import Tokenizer

            from lm4f.data import minilm_path

            self._tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
            self._tokenizer.no_truncation()
            self._tokenizer.no_padding()
        except Exception:  # no MiniLM files: count words
            self._tokenizer = None
        self.unit = "MiniLM word pieces" if self._tokenizer is not None else "white-space words"

    def __call__(self, text: str) -> int:
        if not text:
            return 0
        if self._tokenizer is None:
            return len(text.split())
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


# ---------------------------------------------------------------------------------------------
# Backends: one interface
# ---------------------------------------------------------------------------------------------
class Backend:
    """Writes an answer from the question and the retrieved passages.

    ``answer(question, passages, hits, max_tokens) -> Draft`` and ``stream(...) -> Iterator[str]``
    (pieces whose concatenation is the answer; ``finish_stream(text, question, passages)`` then
    gives the ``Draft``). ``passages`` are the retrieved passages in rank order, ``hits`` their scores.
    """

    name = "backend"

    def answer(self, question: str, passages: list, hits: list[Hit], max_tokens: int | None = None) -> Draft:
        raise NotImplementedError

    def stream(self, question: str, passages: list, hits: list[Hit], max_tokens: int | None = None) -> Iterator[str]:
        """Default: the whole answer as one piece (a backend that can stream overrides this)."""
        draft = self.answer(question, passages, hits, max_tokens)
        self._last_draft = draft
        yield draft.text

    def finish_stream(self, text: str, question: str, passages: list) -> Draft:
        draft = getattr(self, "_last_draft", None)
        if draft is not None and draft.text == text:
            return draft
        return Draft(text=text, prompt_tokens=0, completion_tokens=0)

    def describe(self) -> dict:
        return {"backend": self.name}

    def texts_to_embed(self, question: str) -> list[str]:
        """Texts besides the question this backend will embed (encoded in one batch with the question)."""
        return []


def _truncate_words(text: str, max_tokens: int | None, count: Callable[[str], int]) -> tuple[str, str]:
    """Cut ``text`` to at most ``max_tokens`` tokens (whole words); return (text, finish_reason)."""
    if max_tokens is None or count(text) <= max_tokens:
        return text, "stop"
    words = text.split()
    low, high = 0, len(words)
    while low < high:  # the longest prefix of words within the budget
        middle = (low + high + 1) // 2
        if count(" ".join(words[:middle])) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low]), "length"


_ITEM_NUMBER = re.compile(r"(?<![$\d.,])\b(\d{3,5})\b(?![.,]\d)")
_PART_SPLIT = re.compile(
    r"(?<=\?)\s+|,?\s+(?:and|also|plus)\s+(?=(?:also\s+)?(?:how|what|when|where|which|who|why|can|could|do|does|did|"
    r"is|are|will|would|should|if|i\s+also|i'd|i\s+want)\b)", re.IGNORECASE)


def question_parts(question: str) -> list[str]:
    """A two-part question split into its parts ("How long do I have, and do I pay for the label?").

    Splits after a question mark and before "and"/"also"/"plus" followed by a question word or an
    auxiliary ("and how ...", ", and do I ...", "and I also want ..."). A part without a content
    word ("and what do I do if it does?") is merged into the part before it.
    """
    parts: list[str] = []
    for piece in _PART_SPLIT.split(question.strip()):
        piece = piece.strip(" ,;")
        if not piece:
            continue
        if parts and not tokenize(piece):
            parts[-1] = f"{parts[-1]} {piece}"
        else:
            parts.append(piece)
    return parts or [question]


def _first_mentions(pattern: re.Pattern, text: str, allowed: Iterable[str]) -> list[str]:
    """The matches of ``pattern`` in ``text`` that are in ``allowed``, each once, in order of first mention."""
    allowed = set(allowed)
    return list(dict.fromkeys(match for match in pattern.findall(text) if match in allowed))


def item_numbers(question: str, known: Iterable[str]) -> list[str]:
    """The product numbers ("1078") the question names that the knowledge base has passages for."""
    return _first_mentions(_ITEM_NUMBER, question, known)


def _item_of(passage_id: str) -> str | None:
    match = re.match(r"product-(\d+)-", passage_id)
    return match.group(1) if match else None


def example_key(passage_id: str) -> str:
    """What a labelled example question says about a passage: a policy passage's own id, or, for a
    product passage, its *aspect* (``"aspect:fit"`` for ``product-1094-fit``), because "is the 1094
    roomy?" teaches which kind of passage answers "is the 862 cut generously?" for every item."""
    item = _item_of(passage_id)
    return f"aspect:{passage_id.rsplit('-', 1)[1]}" if item is not None else passage_id


class ExampleBank:
    """Questions customers asked before, each labelled with the passages that answer it, used as
    evidence for which passage answers a new question (the support team's past tickets, in effect).

    A passage's text and a customer's words often share nothing ("paper thin" against "37 call it
    thin"); a labelled question phrased like the new one bridges them. ``scores(text)`` gives, for
    every key (``example_key``), the highest MiniLM cosine between ``text`` and an example labelled
    with that key. Two ways to keep a question from being scored with its own label while settings are
    chosen on the very questions the bank holds: ``leave_out=True`` ignores examples whose text equals
    the question (leave-one-out); ``excluded_group = "test"`` ignores every example of that group (each
    example's ``groups`` entry is the split it came from: leave-one-split-out).
    """

    def __init__(self, texts: Sequence[str], keys: Sequence[Sequence[str]], vectors: np.ndarray,
                 embed: Callable[[str], np.ndarray] | None = None, groups: Sequence[str] | None = None):
        if len(texts) != len(keys) or len(texts) != len(vectors):
            raise ValueError(f"ExampleBank: {len(texts)} texts, {len(keys)} key lists and {len(vectors)} vectors; "
                             "they must match one to one.")
        self.texts = list(texts)
        self.keys = [tuple(k) for k in keys]
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.embed = embed
        self.groups = np.array(list(groups) if groups is not None else [""] * len(self.texts), dtype=object)
        if len(self.groups) != len(self.texts):
            raise ValueError(f"ExampleBank: {len(self.groups)} groups for {len(self.texts)} texts.")
        self.leave_out = False
        self.excluded_group: str | None = None
        self._normalised = np.array([_normalise(t) for t in self.texts], dtype=object)
        self._rows: dict[str, list[int]] = {}
        for row, row_keys in enumerate(self.keys):
            for key in row_keys:
                self._rows.setdefault(key, []).append(row)

    @classmethod
    def from_questions(cls, questions: Sequence, encoder, embed: Callable[[str], np.ndarray] | None = None):
        """The bank of the answerable ``questions`` (``lm4f.shop.Question``), encoded with ``encoder``."""
        from lm4f.nlp import embed as embed_texts

        answerable = [q for q in questions if not q.handoff and q.passage_ids]
        texts = [q.question for q in answerable]
        keys = [tuple(dict.fromkeys(example_key(pid) for pid in q.passage_ids)) for q in answerable]
        vectors = embed_texts(encoder, texts) if texts else np.zeros((0, 384), dtype=np.float32)
        return cls(texts, keys, vectors, embed, groups=[q.split for q in answerable])

    def __len__(self) -> int:
        return len(self.texts)

    def scores(self, text: str) -> dict[str, float]:
        """The best cosine between ``text`` and each key's examples (keys without examples are absent)."""
        if self.embed is None:
            raise ValueError("ExampleBank.scores needs `embed` (the retriever's query embedding).")
        if not len(self):
            return {}
        similarity = self.vectors @ np.asarray(self.embed(text), dtype=np.float32)
        if self.leave_out:
            similarity = np.where(self._normalised == _normalise(text), -np.inf, similarity)
        if self.excluded_group is not None:
            similarity = np.where(self.groups == self.excluded_group, -np.inf, similarity)
        best = {key: float(similarity[rows].max()) for key, rows in self._rows.items()}
        return {key: value for key, value in best.items() if np.isfinite(value)}


class ExtractiveBackend(Backend):
    """Answers with text copied from the retrieved passages, each passage followed by its ``[passage-id]``.

    Which passages (the rules; the weights are chosen on the dev questions by ``choose_extractive``):

    1. *Item numbers.* Product passages hold one item's reviews, so they answer only a question
       that names their item ("Does the 1078 run small?"); a question naming items is not answered
       from another item's passages. A question naming two items (a comparison) gets the best
       passage of each.
    2. *Parts.* A two-part question ("How long do I have to return it, and who pays the label?",
       ``question_parts``) gets the best passage for each part.
    3. *Best passage* for a part: the highest ``fused + lexical * bm25``, where ``fused`` is the
       retriever's score scaled to [0, 1] over the candidates (the first ``candidates`` hits) and
       ``bm25`` the part's BM25 score scaled the same way. BM25 settles what the embedding blurs:
       between the four passages of one item, the one that contains "pilling" answers "does it pill?".
    4. From each chosen passage, ``sentences`` sentences (the first, then those sharing the most
       IDF-weighted query words, in passage order); ``sentences=0`` copies the whole passage.

    Tokens: ``prompt_tokens`` counts the MiniLM word pieces of the question plus the passages it
    read (all retrieved passages), ``completion_tokens`` those of the answer (``TokenCounter``).
    """

    name = "extractive"

    def __init__(self, idf: dict[str, float], bm25=None, sentences: int = 0, lexical: float = 0.25,
                 item_lexical: float = 1.0, part_prior: float = 0.25, candidates: int = 5,
                 counter: TokenCounter | None = None, words_per_piece: int = 3,
                 examples: ExampleBank | None = None, policy_examples: float = 0.0, aspect_examples: float = 0.0):
        self.idf = idf
        self.examples = examples
        self.policy_examples = policy_examples
        self.aspect_examples = aspect_examples
        self.item_lexical = item_lexical
        self.part_prior = part_prior
        self.bm25 = bm25
        self.sentences = sentences
        self.lexical = lexical
        self.candidates = candidates
        self.count = counter or TokenCounter()
        self.words_per_piece = words_per_piece
        self._passage_tokens: dict[str, int] = {}
        self._items: set[str] = set()
        self._row: dict[str, int] = {}
        if bm25 is not None:
            self._items = {_item_of(p.id) for p in bm25.passages} - {None}
            self._row = {p.id: i for i, p in enumerate(bm25.passages)}

    @property
    def settings(self) -> dict:
        return {"sentences": self.sentences, "lexical": self.lexical, "item_lexical": self.item_lexical,
                "part_prior": self.part_prior, "candidates": self.candidates,
                "policy_examples": self.policy_examples, "aspect_examples": self.aspect_examples}

    def describe(self) -> dict:
        return {"backend": self.name, **self.settings, "token_unit": self.count.unit}

    def _weight(self, term: str) -> float:
        return self.idf.get(term, 0.0)

    def texts_to_embed(self, question: str) -> list[str]:
        """The parts of a multi-part question, which the example bank compares one by one."""
        if self.examples is None or self.policy_examples + self.aspect_examples <= 0:
            return []
        parts = question_parts(question)
        return parts if len(parts) > 1 else []

    def _lexical_scores(self, text: str, passages: list) -> np.ndarray:
        if self.bm25 is None:
            return np.zeros(len(passages))
        scores = self.bm25.scores(text)
        return np.array([scores[self._row[p.id]] if p.id in self._row else 0.0 for p in passages])

    @staticmethod
    def _scaled(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        if len(values) == 0:
            return values
        low, high = values.min(), values.max()
        return (values - low) / (high - low) if high - low > 1e-12 else np.zeros_like(values)

    def choose_passages(self, question: str, passages: list, hits: list[Hit] | None = None) -> list:
        """The passages the answer quotes, best first (see the class docstring for the rules)."""
        pool = passages[: self.candidates]
        if not pool:
            return []
        numbers = item_numbers(question, self._items) if self._items else []
        scores = [h.score for h in (hits or [])[: len(pool)]]
        fused = dict(zip([p.id for p in pool], self._scaled(scores))) if len(scores) == len(pool) else {}
        prior = {p.id: fused.get(p.id, 1.0 - i / len(pool)) for i, p in enumerate(pool)}

        def allowed(passage) -> bool:
            item = _item_of(passage.id)
            return item is None or item in numbers

        def best(text: str, among: list, prior_weight: float, lexical_weight: float, need_words: bool = False):
            if not among:
                return None
            lexical = self._lexical_scores(text, among)
            if need_words and not np.any(lexical > 0):
                return None
            scaled = self._scaled(lexical)
            totals = [prior_weight * prior.get(p.id, 0.0) + lexical_weight * scaled[i] for i, p in enumerate(among)]
            if self.examples is not None and self.policy_examples + self.aspect_examples > 0 and len(among) > 1:
                evidence = self.examples.scores(text)
                similar = self._scaled([evidence.get(example_key(p.id), 0.0) for p in among])
                weights = [self.aspect_examples if _item_of(p.id) else self.policy_examples for p in among]
                totals = [total + weights[i] * similar[i] for i, total in enumerate(totals)]
            return among[int(np.argmax(totals))]

        items = [p for p in pool if _item_of(p.id) in numbers]
        if len(numbers) >= 2:  # a comparison: the best passage of each item named
            chosen = [best(question, [p for p in items if _item_of(p.id) == n], 1.0, self.item_lexical)
                      for n in numbers]
            return [p for p in chosen if p is not None] or pool[:1]
        parts = question_parts(question)
        if len(parts) == 1:
            if items:  # between the passages of one item, its words decide more than the embedding
                return [best(question, items, 1.0, self.item_lexical)]
            return [best(question, [p for p in pool if allowed(p)] or pool, 1.0, self.lexical)]
        # A two-part question: each part's own words decide; the whole question's ranking breaks ties.
        # The first part is about the item named, if any. A part may need a passage the whole question
        # did not retrieve, so each also looks at its best BM25 matches in the whole knowledge base.
        chosen: list = []
        for number, part in enumerate(parts):
            extra = self._bm25_candidates(part, allowed)
            among = [p for p in {p.id: p for p in [*pool, *extra] if allowed(p)}.values() if p not in chosen]
            if number == 0 and items:
                among = [p for p in among if _item_of(p.id) in numbers]
            pick = best(part, among, self.part_prior, 1.0, need_words=number > 0)
            if pick is not None:
                chosen.append(pick)
        return chosen or pool[:1]

    def _bm25_candidates(self, text: str, allowed: Callable, k: int = 3) -> list:
        if self.bm25 is None:
            return []
        return [self.bm25.passages[self._row[h.id]] for h in self.bm25.search(text, k=k * 4)
                if h.score > 0 and allowed(self.bm25.passages[self._row[h.id]])][:k]

    def choose_sentences(self, question: str, passage) -> list[str]:
        parts = split_sentences(passage.text)
        if self.sentences <= 0 or len(parts) <= self.sentences:
            return parts
        terms = set(self.bm25.query_tokens(question)) if self.bm25 is not None else set(tokenize(question))
        scores = [sum(self._weight(t) for t in terms & set(tokenize(part))) for part in parts]
        ranked = sorted(range(1, len(parts)), key=lambda i: (-scores[i], i))
        keep = sorted([0] + ranked[: self.sentences - 1])
        return [parts[i] for i in keep]

    def compose(self, question: str, passages: list, hits: list[Hit] | None = None) -> tuple[str, list[str]]:
        """The answer text and the ids of the passages it quotes."""
        chosen = self.choose_passages(question, passages, hits)
        groups = [" ".join(self.choose_sentences(question, p)) + f" [{p.id}]" for p in chosen]
        return " ".join(groups), [p.id for p in chosen]

    def _read_tokens(self, question: str, passages: list) -> int:
        total = self.count(question)
        for passage in passages:
            if passage.id not in self._passage_tokens:
                self._passage_tokens[passage.id] = self.count(f"{passage.title}. {passage.text}")
            total += self._passage_tokens[passage.id]
        return total

    def answer(self, question, passages, hits, max_tokens=None) -> Draft:
        text, cited = self.compose(question, passages, hits)
        text, finish = _truncate_words(text, max_tokens, self.count)
        cited = [pid for pid in cited if f"[{pid}]" in text] or cited[:1]
        return Draft(text=text, prompt_tokens=self._read_tokens(question, passages),
                     completion_tokens=self.count(text), cited_ids=cited, finish_reason=finish)

    def stream(self, question, passages, hits, max_tokens=None) -> Iterator[str]:
        draft = self.answer(question, passages, hits, max_tokens)
        self._last_draft = draft
        words = draft.text.split(" ")
        for start in range(0, len(words), self.words_per_piece):
            piece = " ".join(words[start:start + self.words_per_piece])
            yield piece if start == 0 else " " + piece


def _cited_in(text: str, retrieved_ids: Sequence[str]) -> list[str]:
    """The ``[ids]`` ``text`` cites that were among the retrieved passages, in order of first mention."""
    return _first_mentions(CITATION_MARK, text, retrieved_ids)


class LocalBackend(Backend):
    """A causal LM run in this process (``lm4f.local_lm``): ``model`` is a folder or a hub id.

    The prompt is ``lm4f.local_lm.build_messages(question, passages, **chat.prompt_settings)`` with
    the top ``passages`` retrieved passages; decoding is greedy. Tokens are the model's own.
    """

    name = "local"

    def __init__(self, model: str | None = None, chat=None, passages: int = 3, max_new_tokens: int = 96):
        if chat is None:
            from lm4f import local_lm

            chat = local_lm.load_chat_model(model or "models/support-lm")
        self.chat = chat
        self.model = getattr(chat, "name", model)
        self.passages = passages
        self.max_new_tokens = max_new_tokens

    def describe(self) -> dict:
        return {"backend": self.name, "model": self.model, "passages": self.passages}

    def _messages(self, question, passages):
        from lm4f.local_lm import build_messages

        return build_messages(question, passages[: self.passages], **getattr(self.chat, "prompt_settings", {}))

    def answer(self, question, passages, hits, max_tokens=None) -> Draft:
        result = self.chat.reply(self._messages(question, passages), max_new_tokens=max_tokens or self.max_new_tokens,
                                 temperature=0.0)
        return Draft(text=result["text"], prompt_tokens=int(result["prompt_tokens"]),
                     completion_tokens=int(result["completion_tokens"]),
                     finish_reason=result.get("finish_reason", "stop"))

    def stream(self, question, passages, hits, max_tokens=None) -> Iterator[str]:
        messages = self._messages(question, passages)
        self._last_messages = messages
        yield from self.chat.stream(messages, max_new_tokens=max_tokens or self.max_new_tokens)

    def finish_stream(self, text, question, passages) -> Draft:
        tokenizer = getattr(self.chat, "tokenizer", None)
        completion = len(tokenizer(text, add_special_tokens=False)["input_ids"]) if tokenizer else len(text.split())
        try:
            prompt = int(self.chat.encode(self._last_messages)["input_ids"].shape[1])
        except Exception:  # a stand-in chat model without encode()
            prompt = 0
        return Draft(text=text, prompt_tokens=prompt, completion_tokens=completion)


class OpenAIBackend(Backend):
    """Any OpenAI-compatible chat-completions endpoint, through the official ``openai`` client.

    ``base_url`` selects the endpoint (``https://api.openai.com/v1``, ``http://127.0.0.1:8000/v1`` ...),
    ``model`` the model. The API key comes from ``OPENAI_API_KEY`` ("not-needed" when unset, which
    local servers accept). The prompt is ``lm4f.local_lm.build_messages`` with the top ``passages``
    passages; temperature 0. When the response carries the extra top-level fields ``citations`` and
    ``handed_off`` (this course's server sends them) they are used as they are.
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, passages: int = 3,
                 max_new_tokens: int = 256, timeout: float = 60.0, client=None):
        import openai

        self.base_url, self.model = base_url, model
        self.passages, self.max_new_tokens = passages, max_new_tokens
        self.client = client or openai.OpenAI(base_url=base_url,
                                              api_key=api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
                                              timeout=timeout, max_retries=1)

    def describe(self) -> dict:
        return {"backend": self.name, "base_url": self.base_url, "model": self.model, "passages": self.passages}

    def _messages(self, question, passages):
        from lm4f.local_lm import build_messages

        return build_messages(question, passages[: self.passages])

    @staticmethod
    def _extra(obj) -> dict:
        return dict(getattr(obj, "model_extra", None) or {})

    def _draft(self, text: str, usage, extra: dict, finish: str | None) -> Draft:
        remote = extra.get("citations")
        cited = None
        if isinstance(remote, list):
            cited = [str(c.get("id")) for c in remote if isinstance(c, dict) and c.get("id")]
        return Draft(text=text or "", prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                     completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0), cited_ids=cited,
                     finish_reason=finish or "stop", handed_off=bool(extra.get("handed_off", False)),
                     reason=extra.get("reason"), remote_citations=remote if isinstance(remote, list) else None)

    def answer(self, question, passages, hits, max_tokens=None) -> Draft:
        response = self.client.chat.completions.create(
            model=self.model, messages=self._messages(question, passages),
            max_tokens=max_tokens or self.max_new_tokens, temperature=0.0)
        choice = response.choices[0]
        return self._draft(choice.message.content, response.usage, self._extra(response), choice.finish_reason)

    def stream(self, question, passages, hits, max_tokens=None) -> Iterator[str]:
        self._stream_state = {"extra": {}, "usage": None, "finish": None}
        chunks = self.client.chat.completions.create(
            model=self.model, messages=self._messages(question, passages),
            max_tokens=max_tokens or self.max_new_tokens, temperature=0.0, stream=True,
            stream_options={"include_usage": True})
        for chunk in chunks:
            extra = self._extra(chunk)
            if extra:
                self._stream_state["extra"].update(extra)
            if chunk.usage is not None:
                self._stream_state["usage"] = chunk.usage
            for choice in chunk.choices:
                if choice.finish_reason:
                    self._stream_state["finish"] = choice.finish_reason
                if choice.delta and choice.delta.content:
                    yield choice.delta.content

    def finish_stream(self, text, question, passages) -> Draft:
        state = getattr(self, "_stream_state", {"extra": {}, "usage": None, "finish": None})
        return self._draft(text, state["usage"], state["extra"], state["finish"])


def make_backend(kind: str, index: Index | None = None, model: str | None = None, base_url: str | None = None,
                 settings: dict | None = None, embed: Callable[[str], np.ndarray] | None = None) -> Backend:
    """Build a backend by name: ``extractive`` (needs the index, for word weights and the example bank
    saved with it; ``embed`` is the retriever's query embedding, shared so a question is encoded once),
    ``local`` or ``openai``."""
    if kind == "extractive":
        if index is None:
            raise ValueError("the extractive backend needs the index (its word weights come from the passages).")
        chosen = dict((settings or index.settings).get("extractive", {}))
        examples = None
        if chosen.get("policy_examples", 0) > 0 or chosen.get("aspect_examples", 0) > 0:
            examples = load_examples(index, embed=embed or index.retriever("dense").embed_query)
            if examples is None:
                raise IndexFileError(f"Assistant index {index.folder}: settings.json uses an example bank but "
                                     f"{EXAMPLES_FILE} is not recorded in manifest.json.\nFix: rebuild the index "
                                     f"with `{REBUILD_COMMAND}`.")
        return ExtractiveBackend(passage_idf(index.passages), bm25=index.retriever("bm25"), examples=examples,
                                 **chosen)
    if kind == "local":
        return LocalBackend(model=model)
    if kind == "openai":
        if not base_url or not model:
            raise ValueError("the openai backend needs --base-url (e.g. http://127.0.0.1:8000/v1) and --llm "
                             "(the model name the endpoint serves).")
        return OpenAIBackend(base_url=base_url, model=model)
    raise ValueError(f"backend must be 'extractive', 'local' or 'openai', got {kind!r}.")


def passage_idf(passages: Sequence) -> dict[str, float]:
    """BM25's IDF of every word of the passages: log(1 + (N - df + 0.5) / (df + 0.5))."""
    frequency: dict[str, int] = {}
    for passage in passages:
        for term in set(tokenize(f"{passage.title}. {passage.text}")):
            frequency[term] = frequency.get(term, 0) + 1
    n = len(passages)
    return {term: math.log(1.0 + (n - df + 0.5) / (df + 0.5)) for term, df in frequency.items()}


# ---------------------------------------------------------------------------------------------
# Knowing when not to answer
# ---------------------------------------------------------------------------------------------
HUMAN_PATTERN = re.compile(
    r"\b(?:talk|speak|chat|connect|transfer|put)\b[^.?!]{0,40}\b(?:human|person|people|agent|representative|rep|"
    r"someone|somebody|manager|supervisor|staff|operator|employee|colleague|customer service)\b"
    r"|\b(?:get|give|want|need)\s+(?:me\s+)?(?:a|an|to\s+(?:a|an))?\s*(?:human|person|agent|operator|representative|"
    r"real person|manager)\b"
    r"|\b(?:real|live|actual)\s+(?:human|person|agent)\b|\bhuman\s+(?:being|agent|please)\b"
    r"|\b(?:call|phone|ring)\s+me\b|\bnot\s+(?:a\s+)?(?:bot|robot|machine)\b|\bagent,?\s+please\b"
    r"|^\W*(?:operator|human|agent|representative|manager)\W*(?:please)?\W*$",
    re.IGNORECASE)
"""A request for a person: "talk to a human", "get me an agent", "call me back", "operator"."""

ORDER_PATTERN = re.compile(
    r"\b(?:order|ord|confirmation|invoice)\s*(?:number|no\.?|num|#|id)?\s*[:#]?\s*[A-Z]{0,4}-?\d{4,}\b"
    r"|#\s?\d{4,}\b|\b[A-Z]{2,4}-\d{4,}\b"
    r"|\b(?:where(?:'s|\s+is)|status\s+of|track(?:ing)?)\b[^.?!]{0,25}\bmy\s+(?:order|package|parcel|delivery|"
    r"shipment|refund)\b"
    r"|\b(?:forgot|forgotten|reset|lost)\b[^.?!]{0,20}\bpassword\b|\bcan'?t\s+(?:log|sign)\s*in\b|\blocked\s+out\b",
    re.IGNORECASE)
"""Something only a person with access to orders and accounts can answer: an order number, "where is
my order", a password or log-in problem."""

INJECTION_PATTERN = re.compile(
    r"\bignore\b[^.?!]{0,30}\b(?:instructions|rules|prompt)\b|\bsystem\s+(?:prompt|override)\b|\bdeveloper\s+mode\b"
    r"|\bjailbreak\b|\bpretend\s+(?:you\s+are|you're|to\s+be)\b|\byou\s+are\s+now\b|\bact\s+as\s+(?:a|an|my)\b",
    re.IGNORECASE)
"""An attempt to make the assistant leave its job ("ignore your previous instructions", "pretend you are")."""

COMPLAINT_PATTERN = re.compile(
    r"\b(?:unacceptable|ridiculous|outrageous|disgusting|disgraceful|appalling|shocking|furious|livid|garbage|"
    r"rubbish|junk|worst|horrible|awful|pathetic|useless|scam|rip-?off|fed\s+up|sick\s+of|had\s+enough|"
    r"disappointed|disappointing|angry|upset|annoyed|frustrat\w*|rude|dangerous|unsafe|injur\w*|"
    r"apolog(?:y|ise|ize)|compensat\w*|spam(?:ming)?|how\s+dare)\b"
    r"|\bnever\s+(?:again|(?:order|buy|shop)(?:ing)?\s+(?:here|again|from\s+you))\b"
    r"|\b(?:want|demand|expect)\b[^.?!]{0,30}\b(?:my\s+money\s+back|honou?red|an\s+apology|compensation)\b"
    r"|\bstop\s+(?:sending|emailing|calling|texting|spamming)\b|\bprivacy\s+(?:issue|breach|violation)\b"
    r"|\bsomeone\s+else'?s\s+(?:order|parcel|package|name|address)\b|\bthis\s+is\s+(?:a\s+joke|insane|absurd)\b"
    r"|!{3,}",
    re.IGNORECASE)
"""The words of an unhappy customer: anger, a demand, a danger. Defect words alone ("damaged", "torn")
are not here: "What do I do if an item arrives damaged?" is a question the returns policy answers."""


class ComplaintDetector:
    """Is this message a complaint? A TF-IDF classifier trained on the real reviews, plus complaint phrases.

    The classifier is ``lm4f.nlp.TfidfClassifier`` trained to tell 1-2 star reviews (label 1:
    an unhappy customer) from 4-5 star ones (label 0), on the reviews of ``split_reviews``'s
    training split; 3-star reviews are left out as ambiguous. ``probability(text)`` is its
    P(unhappy). ``phrases`` is a regular expression of words an unhappy customer uses
    (``COMPLAINT_PATTERN``); the policy combines both (see ``HandoffPolicy``).
    """

    def __init__(self, classifier=None, phrases: re.Pattern = COMPLAINT_PATTERN):
        self.classifier = classifier
        self.phrases = phrases

    @classmethod
    def train(cls, max_reviews: int | None = None, seed: int = 0, max_features: int = 20_000):
        """Train on the real reviews (``lm4f.data.clothing_reviews``), word n-grams only (fast: seconds)."""
        import lm4f.data
        from lm4f.nlp import TfidfClassifier, clean_reviews, split_reviews

        frame, _ = clean_reviews(lm4f.data.clothing_reviews())
        train = split_reviews(frame, seed=seed)["train"]
        train = train[train["Rating"] != 3]
        if max_reviews is not None and len(train) > max_reviews:
            train = train.sample(max_reviews, random_state=seed)
        labels = (train["Rating"] <= 2).astype(int).to_numpy()
        classifier = TfidfClassifier(max_features=max_features).fit(train["text"], labels)
        return cls(classifier)

    def probability(self, text: str) -> float:
        if self.classifier is None:
            return 0.0
        return float(self.classifier.predict_proba([text])[0])

    def has_phrase(self, text: str) -> bool:
        return bool(self.phrases.search(text))


INTENT_C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


class IntentClassifier:
    """Answer it, or who must take it? A logistic regression on the message's MiniLM embedding.

    Five classes: ``answer`` and the four hand-off reasons (``lm4f.shop.HANDOFF_LABELS``). Trained
    on ``lm4f.shop.handoff_examples()``: messages written for training only, none of them a dev,
    test or holdout question. Its regularisation ``C`` is chosen by 5-fold cross-validation on those
    training messages (macro F1), so the dev questions stay free for choosing the policy's
    threshold. Where the regular expressions of ``HandoffPolicy`` catch one phrasing, the embedding
    also places "could a real person ring me" near "call me back".
    """

    def __init__(self, model=None, encoder=None, embed_query: Callable[[str], np.ndarray] | None = None):
        self.model = model
        self.encoder = encoder
        self.embed_query = embed_query  # e.g. the retriever's, which keeps the last queries' embeddings

    @classmethod
    def train(cls, encoder, examples: Sequence[tuple[str, str]] | None = None, c_grid=INTENT_C_GRID,
              seed: int = 0) -> IntentClassifier:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score

        from lm4f.nlp import embed

        if examples is None:
            from lm4f import shop

            examples = shop.handoff_examples()
        texts, labels = [text for text, _ in examples], np.array([label for _, label in examples])
        features = embed(encoder, texts)
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
        scores = {c: float(np.mean(cross_val_score(LogisticRegression(C=c, max_iter=2000), features, labels,
                                                   cv=folds, scoring="f1_macro"))) for c in c_grid}
        best_c = max(c_grid, key=lambda c: (round(scores[c], 6), -c))
        model = LogisticRegression(C=best_c, max_iter=2000).fit(features, labels)
        classifier = cls(model, encoder)
        classifier.cv_scores = scores
        return classifier

    def probabilities(self, text: str) -> dict[str, float]:
        """``{label: probability}`` over ``answer`` and the hand-off reasons."""
        from lm4f.nlp import embed

        features = self.embed_query(text)[None, :] if self.embed_query is not None else embed(self.encoder, [text])
        p = self.model.predict_proba(features)[0]
        return {str(label): float(value) for label, value in zip(self.model.classes_, p)}


@dataclass
class HandoffPolicy:
    """When to hand a question to a person instead of answering, checked in this order.

    1. ``human_request``: the customer asks for a person (``HUMAN_PATTERN``).
    2. ``order_lookup``: an order number ("order 58820", "#61877"), "where is my order", a password
       or log-in problem (``ORDER_PATTERN``): only a person who can open the order or account can help.
    3. ``out_of_scope`` (injection): an attempt to make the assistant leave its job (``INJECTION_PATTERN``).
    3b. the intent classifier's P(answer) < ``min_answer_p``: its most likely hand-off reason
       (``IntentClassifier``; ``min_answer_p = 0`` switches it off).
    4. ``complaint``: complaint language (``COMPLAINT_PATTERN``, when ``use_phrases``), or the review
       classifier's P(unhappy) >= ``complaint_threshold`` (a threshold above 1 switches it off).
    5. ``out_of_scope``: the best passage's MiniLM cosine < ``min_dense`` *and* its BM25 score <
       ``min_bm25``: nothing in the knowledge base is close, neither in meaning nor in words.

    ``min_dense``, ``min_bm25``, ``complaint_threshold`` and ``min_answer_p`` are chosen on the dev questions
    (``choose_handoff``). ``enabled=False`` never hands off (to measure what the policy is worth).
    """

    min_dense: float = 0.35
    min_bm25: float = 2.0
    complaint_threshold: float = 1.01
    min_answer_p: float = 0.0
    use_phrases: bool = True
    enabled: bool = True
    complaint: ComplaintDetector | None = field(default=None, repr=False)
    intent: IntentClassifier | None = field(default=None, repr=False)

    @property
    def settings(self) -> dict:
        return {"min_dense": self.min_dense, "min_bm25": self.min_bm25,
                "complaint_threshold": self.complaint_threshold, "min_answer_p": self.min_answer_p,
                "use_phrases": self.use_phrases, "enabled": self.enabled}

    def signals(self, question: str, hits: Sequence[Hit]) -> dict:
        """Everything the decision reads, computed once (``choose_handoff`` re-thresholds these)."""
        detector = self.complaint or ComplaintDetector(None)
        top = hits[0] if hits else None
        intent = self.intent.probabilities(question) if self.intent is not None and self.intent.model is not None \
            else {}
        hand_offs = {reason: p for reason, p in intent.items() if reason != "answer"}
        return {
            "human": bool(HUMAN_PATTERN.search(question)),
            "order": bool(ORDER_PATTERN.search(question)),
            "injection": bool(INJECTION_PATTERN.search(question)),
            "phrase": detector.has_phrase(question),
            "complaint_p": detector.probability(question) if detector.classifier is not None else 0.0,
            "answer_p": intent.get("answer", 1.0),
            "intent_reason": max(hand_offs, key=hand_offs.get) if hand_offs else None,
            "dense": max((h.dense for h in hits if h.dense is not None), default=(top.score if top else 0.0)),
            "bm25": max((h.bm25 for h in hits if h.bm25 is not None), default=0.0),
        }

    def decide_from(self, signals: dict) -> str | None:
        """The hand-off reason for these signals, or None to answer."""
        if not self.enabled:
            return None
        if signals["human"]:
            return "human_request"
        if signals["order"]:
            return "order_lookup"
        if signals["injection"]:
            return "out_of_scope"
        if signals.get("answer_p", 1.0) < self.min_answer_p and signals.get("intent_reason"):
            return signals["intent_reason"]
        if (self.use_phrases and signals["phrase"]) or signals["complaint_p"] >= self.complaint_threshold:
            return "complaint"
        if signals["dense"] < self.min_dense and signals["bm25"] < self.min_bm25:
            return "out_of_scope"
        return None

    def decide(self, question: str, hits: Sequence[Hit]) -> str | None:
        return self.decide_from(self.signals(question, hits))


def _f1_counts(predicted: np.ndarray, gold: np.ndarray) -> tuple[float, float, float]:
    tp = float(np.sum(predicted & gold))
    fp = float(np.sum(predicted & ~gold))
    fn = float(np.sum(~predicted & gold))
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    return precision, recall, f1


DENSE_GRID = tuple(round(float(x), 3) for x in np.arange(0.10, 0.551, 0.025))
BM25_GRID = (0.0, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0, math.inf)
COMPLAINT_GRID = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01)
ANSWER_P_GRID = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def choose_handoff(dev_questions: Sequence, retriever, complaint: ComplaintDetector | None = None, k: int = 5,
                   dense_grid=DENSE_GRID, bm25_grid=BM25_GRID, complaint_grid=COMPLAINT_GRID,
                   intent: IntentClassifier | None = None, answer_p_grid=ANSWER_P_GRID) -> dict:
    """Choose the hand-off thresholds on the DEV questions: the highest hand-off F1.

    Every question is retrieved once and its signals computed once; then every combination of
    ``min_dense`` x ``min_bm25`` x ``complaint_threshold`` x ``min_answer_p`` (the last only with an
    ``intent`` classifier) is scored. Ties go to the setting that hands off fewer answerable
    questions, then to the most permissive thresholds (lowest ``min_dense``, ``min_bm25`` and
    ``min_answer_p``, highest ``complaint_threshold``). Returns ``{"settings", "f1",
    "precision", "recall", "answerable_handed_off", "table"}``; ``table`` holds the best setting for
    each ``min_dense`` (the curve a notebook plots).
    """
    probe = HandoffPolicy(complaint=complaint, intent=intent)
    signals = [probe.signals(q.question, retriever.search(q.question, k=k)) for q in dev_questions]
    gold = np.array([bool(q.handoff) for q in dev_questions])
    if complaint is None or complaint.classifier is None:
        complaint_grid = (1.01,)
    if intent is None or intent.model is None:
        answer_p_grid = (0.0,)
    best, table = None, {}
    for min_dense, min_bm25, complaint_threshold, min_answer_p in itertools.product(
            dense_grid, bm25_grid, complaint_grid, answer_p_grid):
        policy = HandoffPolicy(min_dense=min_dense, min_bm25=min_bm25, complaint_threshold=complaint_threshold,
                               min_answer_p=min_answer_p)
        predicted = np.array([policy.decide_from(s) is not None for s in signals])
        precision, recall, f1 = _f1_counts(predicted, gold)
        wrongly = int(np.sum(predicted & ~gold))
        key = (round(f1 if not math.isnan(f1) else -1.0, 6), -wrongly, -min_dense, -min_bm25, -min_answer_p,
               complaint_threshold)
        row = {**policy.settings, "precision": precision, "recall": recall, "f1": f1,
               "answerable_handed_off": wrongly}
        if best is None or key > best[0]:
            best = (key, row)
        if min_dense not in table or key > table[min_dense][0]:
            table[min_dense] = (key, row)
    row = best[1]
    settings = {name: row[name] for name in ("min_dense", "min_bm25", "complaint_threshold", "min_answer_p",
                                             "use_phrases", "enabled")}
    return {"settings": settings, "f1": row["f1"], "precision": row["precision"], "recall": row["recall"],
            "answerable_handed_off": row["answerable_handed_off"],
            "table": [entry[1] for _, entry in sorted(table.items())]}


# ---------------------------------------------------------------------------------------------
# The assistant
# ---------------------------------------------------------------------------------------------
def _clip01(value: float | None) -> float:
    return 0.0 if value is None or math.isnan(value) else float(min(1.0, max(0.0, value)))


class Assistant:
    """Retrieve, decide, answer: ``ask(question) -> Reply`` and ``stream(question) -> ReplyStream``.

    ``retriever`` has ``search(query, k) -> list[Hit]`` and ``passages``; ``backend`` writes the
    answer; ``handoff`` decides when not to answer (None: always answer). ``k`` passages are
    retrieved per question. Thread-safe for a web server (the query embedding holds a lock).
    """

    def __init__(self, retriever, backend: Backend, handoff: HandoffPolicy | None = None, k: int = 5):
        self.retriever = retriever
        self.backend = backend
        self.handoff = handoff
        self.k = k
        self.passage_by_id = {p.id: p for p in retriever.passages}
        self._lock = threading.Lock()

    @classmethod
    def from_index(cls, index: Index | str | Path = DEFAULT_INDEX, backend: str | Backend = "extractive",
                   model: str | None = None, base_url: str | None = None, encoder=None, k: int = 5,
                   complaint: ComplaintDetector | None = None) -> Assistant:
        """The assistant as the service runs it: hybrid retrieval, hand-off and extractive settings saved
        with the index (chosen on dev by ``build-index``), the complaint classifier saved there too."""
        if not isinstance(index, Index):
            index = load_index(index, encoder=encoder)
        retriever = index.retriever("hybrid")
        if complaint is None:
            complaint = load_complaint(index)
        dense = getattr(retriever, "dense", None)
        intent = load_intent(index, embed_query=dense.embed_query if dense is not None else None)
        handoff = HandoffPolicy(complaint=complaint, intent=intent, **index.settings.get("handoff", {}))
        if isinstance(backend, str):
            backend = make_backend(backend, index=index, model=model, base_url=base_url,
                                   embed=dense.embed_query if dense is not None else None)
        return cls(retriever, backend, handoff, k=k)

    def describe(self) -> dict:
        settings = getattr(self.retriever, "settings", {})
        return {**self.backend.describe(), "retriever": type(self.retriever).__name__, "retrieval": settings,
                "handoff": self.handoff.settings if self.handoff else None, "k": self.k,
                "passages": len(self.passage_by_id)}

    def _retrieve(self, question: str) -> tuple[list[Hit], list, str | None]:
        with self._lock:  # the MiniLM tokenizer (retrieval and the intent classifier) is not safe to share
            dense = getattr(self.retriever, "dense", None)
            extra = self.backend.texts_to_embed(question)
            if extra and hasattr(dense, "embed_queries"):
                dense.embed_queries([question, *extra])  # one forward pass for the question and its parts
            hits = self.retriever.search(question, k=self.k)
            reason = self.handoff.decide(question, hits) if self.handoff else None
        return hits, [self.passage_by_id[h.id] for h in hits], reason

    def _handoff_reply(self, reason: str, hits: list[Hit], confidence: float, draft: Draft | None = None) -> Reply:
        return Reply(answer=HANDOFF_MESSAGES[reason], citations=[], handed_off=True, reason=reason,
                     confidence=confidence, prompt_tokens=draft.prompt_tokens if draft else 0,
                     completion_tokens=draft.completion_tokens if draft else 0, hits=hits)

    def _citation(self, passage_id: str, remote: list[dict] | None) -> Citation:
        passage = self.passage_by_id.get(passage_id)
        if passage is not None:
            snippet = passage.text if len(passage.text) <= SNIPPET_CHARS else passage.text[:SNIPPET_CHARS - 3] + "..."
            return Citation(passage.id, passage.source, snippet)
        for item in remote or []:
            if isinstance(item, dict) and item.get("id") == passage_id:
                return Citation(passage_id, str(item.get("source", "")), str(item.get("snippet", "")))
        return Citation(passage_id, "", "")

    def _finish(self, draft: Draft, hits: list[Hit], passages: list, confidence: float) -> Reply:
        if draft.handed_off:
            reason = draft.reason if draft.reason in HANDOFF_REASONS else "low_confidence"
            return Reply(answer=draft.text or HANDOFF_MESSAGES[reason], citations=[], handed_off=True, reason=reason,
                         confidence=confidence, prompt_tokens=draft.prompt_tokens,
                         completion_tokens=draft.completion_tokens, hits=hits, finish_reason=draft.finish_reason)
        retrieved = [p.id for p in passages]
        cited = draft.cited_ids if draft.cited_ids is not None else _cited_in(draft.text, retrieved)
        if not cited:  # a generated answer that cites nothing it was given is not trusted
            return self._handoff_reply("low_confidence", hits, confidence, draft)
        citations = [self._citation(pid, draft.remote_citations) for pid in cited]
        return Reply(answer=draft.text.strip(), citations=citations, handed_off=False, reason=None,
                     confidence=confidence, prompt_tokens=draft.prompt_tokens,
                     completion_tokens=draft.completion_tokens, hits=hits, finish_reason=draft.finish_reason)

    def _prepare(self, question: str):
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty string.")
        hits, passages, reason = self._retrieve(question)
        top_dense = hits[0].dense if hits and hits[0].dense is not None else None
        confidence = _clip01(top_dense if top_dense is not None else (hits[0].score if hits else 0.0))
        return hits, passages, confidence, reason

    def ask(self, question: str, max_tokens: int | None = None) -> Reply:
        """Answer one question (or hand it off). ``max_tokens`` caps the answer's length."""
        hits, passages, confidence, reason = self._prepare(question)
        if reason is not None:
            return self._handoff_reply(reason, hits, confidence)
        draft = self.backend.answer(question, passages, hits, max_tokens)
        return self._finish(draft, hits, passages, confidence)

    def stream(self, question: str, max_tokens: int | None = None) -> ReplyStream:
        """Like ``ask``, but the answer arrives in pieces; a hand-off arrives as one piece."""
        hits, passages, confidence, reason = self._prepare(question)
        if reason is not None:
            reply = self._handoff_reply(reason, hits, confidence)
            return ReplyStream(iter([reply.answer]), lambda text: reply, first=reply)
        pieces = self.backend.stream(question, passages, hits, max_tokens)

        def finish(text: str) -> Reply:
            return self._finish(self.backend.finish_stream(text, question, passages), hits, passages, confidence)

        return ReplyStream(pieces, finish)


# ---------------------------------------------------------------------------------------------
# Saving the complaint classifier and the tuned settings with the index
# ---------------------------------------------------------------------------------------------
COMPLAINT_FILE = "complaint.joblib"
INTENT_FILE = "intent.joblib"


def _save_model(index: Index, name: str, model) -> Path:
    """Save a fitted model beside the index (joblib) and record its sha256 in the manifest."""
    import joblib

    path = index.folder / name
    joblib.dump(model, path)
    return _record_file(index, path)


def _checked_file(index: Index, name: str) -> Path | None:
    """The path of a file saved beside the index, after checking it against the manifest's sha256;
    None if the manifest records no such file."""
    path = index.folder / name
    expected = index.manifest.get(f"{path.stem}_sha256")
    if expected is None:
        return None
    if not path.exists():
        raise IndexFileError(f"Assistant index: file {path} is missing.\nFix: rebuild the index with "
                             f"`{REBUILD_COMMAND}`.")
    if sha256_file(path) != expected:
        raise IndexFileError(f"Assistant index: file {path} is corrupt: its sha256 differs from the one in "
                             f"manifest.json.\nFix: rebuild the index with `{REBUILD_COMMAND}`.")
    return path


def _record_file(index: Index, path: Path) -> Path:
    import json

    index.manifest[f"{path.stem}_sha256"] = sha256_file(path)
    (index.folder / "manifest.json").write_text(json.dumps(index.manifest, indent=2))
    return path


def _load_model(index: Index, name: str):
    """A model saved with ``_save_model``, or None if the manifest records none.

    joblib files run code when loaded, so only a file whose sha256 matches the manifest is loaded.
    """
    path = _checked_file(index, name)
    if path is None:
        return None
    import joblib

    return joblib.load(path)


EXAMPLES_FILE = "examples.npz"
EXAMPLE_SPLITS = ("dev", "test", "holdout", "holdout2")
"""The labelled questions the example bank holds: every split already used for a final table.
``holdout3`` stays out: it judges the assistant that uses the bank."""


def save_examples(index: Index, bank: ExampleBank) -> Path:
    """Save the example bank (texts, keys, MiniLM vectors; no pickles) beside the index."""
    path = index.folder / EXAMPLES_FILE
    with open(path, "wb") as handle:
        np.savez(handle, texts=np.array(bank.texts, dtype=str), vectors=bank.vectors,
                 keys=np.array(["|".join(keys) for keys in bank.keys], dtype=str),
                 groups=np.array(bank.groups.tolist(), dtype=str))
    return _record_file(index, path)


def load_examples(index: Index, embed: Callable[[str], np.ndarray] | None = None) -> ExampleBank | None:
    """The example bank saved with the index (checked against the manifest), or None if none was saved."""
    path = _checked_file(index, EXAMPLES_FILE)
    if path is None:
        return None
    with np.load(path, allow_pickle=False) as saved:
        texts, vectors, keys = saved["texts"].tolist(), saved["vectors"], saved["keys"].tolist()
        groups = saved["groups"].tolist()
    return ExampleBank(texts, [key.split("|") for key in keys], vectors, embed, groups=groups)


def save_complaint(index: Index, detector: ComplaintDetector) -> Path:
    """Save the complaint classifier with the index."""
    return _save_model(index, COMPLAINT_FILE, detector.classifier)


def load_complaint(index: Index) -> ComplaintDetector:
    """The complaint classifier saved with the index (phrases only if none was saved)."""
    return ComplaintDetector(_load_model(index, COMPLAINT_FILE))


def save_intent(index: Index, intent: IntentClassifier) -> Path:
    """Save the intent classifier's logistic regression with the index (the encoder is the index's MiniLM)."""
    return _save_model(index, INTENT_FILE, intent.model)


def load_intent(index: Index, embed_query: Callable[[str], np.ndarray] | None = None) -> IntentClassifier | None:
    """The intent classifier saved with the index, on the index's encoder; None if none was saved.

    ``embed_query``: the retriever's query embedding, so that a question is encoded once, not twice."""
    model = _load_model(index, INTENT_FILE)
    return None if model is None else IntentClassifier(model, index.get_encoder(), embed_query)


EXTRACTIVE_GRID = tuple({"sentences": 0, "lexical": w, "item_lexical": i, "part_prior": r, "candidates": c}
                        for w in (0.0, 0.25, 0.5, 1.0) for i in (0.5, 1.0, 2.0, 4.0) for r in (0.0, 0.25, 0.5, 1.0)
                        for c in (3, 5))


def example_grid(settings: dict, policy: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
                 aspect: Sequence[float] = (0.0, 1.0, 2.0, 4.0),
                 item_lexical: Sequence[float] = (1.0, 2.0)) -> list[dict]:
    """Settings to try with the example bank: ``settings`` (the dev-chosen ones) with a weight for the
    evidence on policy passages, one for product aspects, and the item words' weight, since the
    examples take over part of what the words did. Policy passages and product aspects get separate
    weights because their examples differ: each aspect has a hundred examples across all items, a
    policy passage a handful."""
    return [{**settings, "policy_examples": p, "aspect_examples": a, "item_lexical": i}
            for p in policy for a in aspect for i in item_lexical]


def choose_examples(bank: ExampleBank, questions: Sequence, retriever, idf: dict[str, float], bm25=None,
                    settings: dict | None = None, grid: Sequence[dict] | None = None, hold_out: str = "split",
                    k: int = 5) -> dict:
    """Choose the example weights on the bank's own questions without scoring any with its own label.

    ``hold_out="split"`` (leave-one-split-out): the questions of each split are answered with the
    examples of the *other* splits only. Each split was written by a different person, so this asks
    what a fresh writer's questions will meet, which is what the next set of customers is.
    ``hold_out="question"`` (leave-one-out): each question is answered with every other example. It
    is optimistic when a split holds near-rewordings of another's questions, because the neighbour
    stays in the bank. The rest is ``choose_extractive`` over ``grid`` (default ``example_grid(settings)``);
    the tables of the held-out groups are pooled question by question. Returns ``{"settings", "table"}``.
    """
    if hold_out not in ("split", "question"):
        raise ValueError(f"hold_out must be 'split' or 'question', got {hold_out!r}.")
    grid = list(grid) if grid is not None else example_grid(settings or {})
    was = bank.leave_out, bank.excluded_group, bank.embed
    bank.embed = _memo(bank.embed)  # each question is asked once per candidate setting: encode it once
    try:
        if hold_out == "question":
            bank.leave_out = True
            return choose_extractive(questions, retriever, idf, bm25=bm25, k=k, examples=bank, grid=grid)
        tables = []
        for group in sorted({q.split for q in questions}):
            bank.excluded_group = group
            part = [q for q in questions if q.split == group]
            tables.append(choose_extractive(part, retriever, idf, bm25=bm25, k=k, examples=bank, grid=grid)["table"])
        table = [_pooled_row([t[i] for t in tables]) for i in range(len(grid))]
        return {"settings": _chosen_settings(table), "table": table}
    finally:
        bank.leave_out, bank.excluded_group, bank.embed = was


def _pooled_row(rows: Sequence[dict]) -> dict:
    """One grid row from the same setting's rows on disjoint question groups (question-weighted)."""
    answered = sum(r["questions"] for r in rows)
    cited, supported = sum(r["cited"] for r in rows), sum(r["supported"] for r in rows)
    correct = sum(r["correct"] * r["questions"] for r in rows) / answered
    relevance = supported / cited if cited else math.nan
    return {**{key: value for key, value in rows[0].items() if key not in _ROW_FIGURES},
            "correct": correct, "citation_relevance": relevance,
            "token_f1": sum(r["token_f1"] * r["questions"] for r in rows) / answered,
            "score": _harmonic(correct, relevance), "questions": answered, "cited": cited, "supported": supported}


_ROW_FIGURES = ("correct", "citation_relevance", "token_f1", "score", "questions", "cited", "supported")
_SETTING_KEYS = ("sentences", "lexical", "item_lexical", "part_prior", "candidates", "policy_examples",
                 "aspect_examples")


def _chosen_settings(table: Sequence[dict]) -> dict:
    """The best row's settings: highest score, then token-F1, then the first in the grid."""
    best = max(range(len(table)), key=lambda i: (round(table[i]["score"], 6), round(table[i]["token_f1"], 6), -i))
    return {key: table[best][key] for key in _SETTING_KEYS if key in table[best]}


def _harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 and not (math.isnan(a) or math.isnan(b)) else 0.0


def choose_extractive(dev_questions: Sequence, retriever, idf: dict[str, float], bm25=None, k: int = 5,
                      grid: Sequence[dict] = EXTRACTIVE_GRID, examples: ExampleBank | None = None) -> dict:
    """Choose the extractive backend's settings on the DEV answerable questions.

    Score: the harmonic mean of answer correctness (all facts present) and citation relevance (cited
    passages that are gold), so that neither is bought with the other; ties go to the higher token-F1
    to the reference (shorter answers that keep the facts), then to the first in ``grid``.
    Returns ``{"settings", "table"}``.
    """
    from lm4f.local_lm import token_f1

    answerable = [q for q in dev_questions if not q.handoff]
    passage_by_id = {p.id: p for p in retriever.passages}
    bm25 = bm25 if bm25 is not None else getattr(retriever, "bm25", None)
    prepared = []
    for question in answerable:
        hits = retriever.search(question.question, k=k)
        prepared.append((question, [passage_by_id[h.id] for h in hits], hits))
    counter = TokenCounter()
    table = []
    for candidate in grid:
        backend = ExtractiveBackend(idf, bm25=bm25, counter=counter, examples=examples, **candidate)
        correct, f1s, cited, supported = [], [], 0, 0
        for question, passages, hits in prepared:
            text, ids = backend.compose(question.question, passages, hits)
            correct.append(facts_present(text, question.facts))
            f1s.append(token_f1(text, question.answer))
            cited += len(ids)
            supported += sum(pid in question.passage_ids for pid in ids)
        relevance = supported / cited if cited else math.nan
        table.append({**candidate, "correct": float(np.mean(correct)), "citation_relevance": relevance,
                      "token_f1": float(np.mean(f1s)), "score": _harmonic(float(np.mean(correct)), relevance),
                      "questions": len(prepared), "cited": cited, "supported": supported})
    return {"settings": _chosen_settings(table), "table": table}


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
def _rate(values, seed: int, resamples: int, statistic=np.mean) -> dict:
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return {"value": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    low, high = bootstrap_interval(values, statistic=statistic, seed=seed, resamples=resamples)
    return {"value": float(statistic(values)), "low": low, "high": high, "n": int(len(values))}


def evaluate(assistant: Assistant, questions: Sequence, prices: dict | None = None, k: int = 5, seed: int = 0,
             resamples: int = 1000, progress: bool = False) -> dict:
    """Score an assistant (any backend) on labelled questions. Every rate has a bootstrap 95 % interval.

    Definitions (``n`` is how many questions or items each rate is over):

    - ``recall@5`` / ``mrr``: retrieval, on questions with gold passages (see ``lm4f.retrieval``).
    - ``correctness``: on answerable questions (gold ``handoff`` false): the assistant answered
      (did not hand off) and every one of the question's ``facts`` occurs in the answer, ignoring
      case and runs of white space (``facts_present``). A hand-off of an answerable question counts
      as wrong.
    - ``token_f1``: SQuAD-style token F1 of answer and reference answer (``lm4f.local_lm.token_f1``),
      answerable questions, hand-offs included (they score about 0).
    - ``citation_precision``: of all passages cited by answers (not hand-offs), the share that
      *support* the answer: at least one sentence of the answer is supported by that passage alone
      (the same check as ``hallucination``, run against the one cited passage,
      ``citation_supports``). A citation that props up nothing the answer says does not count.
      Pooled over citations; the bootstrap resamples questions.
    - ``citation_relevance``: the stricter share of citations that are among the question's
      labelled ``passage_ids`` (a passage can support what the answer says and still be the wrong
      passage for the question: the answer then quotes the wrong policy, and ``correctness``
      catches it); a citation in an answer to a question that should have been handed off never
      counts. ``uncited_answers`` is the share of answers that cite nothing.
    - ``hallucination``: of all assessed sentences of the answers (not hand-offs), the share that
      assert unsupported facts: a number that occurs in none of the passages the assistant read (the
      retrieved ones and any it cites), or fewer than half of its (3 or more) content words
      occurring in them (``unsupported_sentences``).
      ``hallucinated_answers``: the share of answers with at least one such sentence.
    - ``handoff_precision`` / ``handoff_recall`` / ``handoff_f1``: the positive class is "should be
      handed off" (gold ``handoff``); ``handoff_reason_accuracy``: among correctly handed-off
      questions, the share with the gold reason.
    - ``latency_p50_ms`` / ``latency_p95_ms``: wall time of ``assistant.ask`` in this process.
    - ``prompt_tokens`` / ``completion_tokens``: means per request, in the backend's tokens (for
      the extractive backend the MiniLM word pieces it reads and writes, see ``ExtractiveBackend``).
    - ``usd_per_1k_requests``: ``lm4f.cost.api_cost_per_1k_requests`` at the mean tokens and
      ``prices = {"usd_per_m_input": ..., "usd_per_m_output": ...}`` (None when no prices are given).

    Returns ``{"metrics": {name: {"value", "low", "high", "n"}}, "rows": [per question], "system": ...}``.
    """
    from lm4f.local_lm import token_f1

    rows = []
    iterator = questions
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(questions, desc="questions")
    for question in iterator:
        started = time.perf_counter()
        reply = assistant.ask(question.question)
        latency = (time.perf_counter() - started) * 1000.0
        read = [h.id for h in reply.hits] + [c.id for c in reply.citations]
        retrieved = [assistant.passage_by_id[pid] for pid in dict.fromkeys(read) if pid in assistant.passage_by_id]
        ranked = [h.id for h in reply.hits]
        gold = set(question.passage_ids)
        cited = [c.id for c in reply.citations]
        answered = not reply.handed_off
        assessed = assessed_sentences(reply.answer, retrieved) if answered else 0
        unsupported = len(unsupported_sentences(reply.answer, retrieved)) if answered else 0
        rows.append({
            "id": question.id, "kind": question.kind, "question": question.question, "answer": reply.answer,
            "gold_handoff": bool(question.handoff), "gold_reason": question.handoff_reason,
            "handed_off": reply.handed_off, "reason": reply.reason, "confidence": reply.confidence,
            "retrieved": ranked, "cited": cited,
            "recall": recall_at_k(ranked, gold, k) if gold else None,
            "reciprocal_rank": reciprocal_rank(ranked, gold) if gold else None,
            "correct": (answered and facts_present(reply.answer, question.facts)) if not question.handoff else None,
            "token_f1": token_f1(reply.answer, question.answer) if not question.handoff else None,
            "citations": len(cited) if answered else 0,
            "supported_citations": sum(citation_supports(reply.answer, assistant.passage_by_id.get(pid))
                                       for pid in cited) if answered else 0,
            "relevant_citations": sum(pid in gold for pid in cited) if answered else 0,
            "assessed_sentences": assessed, "unsupported_sentences": unsupported,
            "latency_ms": latency, "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
        })
    return summarise(rows, prices=prices, seed=seed, resamples=resamples, system=assistant.describe(), k=k)


def _pooled(pairs: np.ndarray) -> float:
    """Sum of the first column over sum of the second (a pooled rate such as supported / all citations)."""
    total = pairs[:, 1].sum()
    return float(pairs[:, 0].sum() / total) if total else math.nan


class _HandoffStatistic:
    """Hand-off precision (0), recall (1) or F1 (2) of rows (predicted, gold), for the bootstrap."""

    def __init__(self, position: int):
        self.position = position

    def __call__(self, rows: np.ndarray) -> float:
        return _f1_counts(rows[:, 0].astype(bool), rows[:, 1].astype(bool))[self.position]


def summarise(rows: list[dict], prices: dict | None = None, seed: int = 0, resamples: int = 1000,
              system: dict | None = None, k: int = 5) -> dict:
    """The metrics of ``evaluate`` from its per-question rows (so a subset of rows can be re-scored)."""
    from lm4f.cost import api_cost_per_1k_requests

    def column(name, where=lambda row: True):
        return [row[name] for row in rows if where(row) and row[name] is not None]

    metrics = {
        f"recall@{k}": _rate(column("recall"), seed, resamples),
        "mrr": _rate(column("reciprocal_rank"), seed, resamples),
        "correctness": _rate([float(v) for v in column("correct")], seed, resamples),
        "token_f1": _rate(column("token_f1"), seed, resamples),
    }
    answered = [row for row in rows if not row["handed_off"]]
    pairs = np.array([[row["supported_citations"], row["citations"]] for row in answered], dtype=float).reshape(-1, 2)
    metrics["citation_precision"] = (_rate(pairs, seed, resamples, statistic=_pooled) if pairs[:, 1].sum()
                                     else {"value": math.nan, "low": math.nan, "high": math.nan, "n": 0})
    metrics["citation_precision"]["n"] = int(pairs[:, 1].sum())
    relevant = np.array([[row["relevant_citations"], row["citations"]] for row in answered],
                        dtype=float).reshape(-1, 2)
    metrics["citation_relevance"] = (_rate(relevant, seed, resamples, statistic=_pooled) if relevant[:, 1].sum()
                                     else {"value": math.nan, "low": math.nan, "high": math.nan, "n": 0})
    metrics["citation_relevance"]["n"] = int(relevant[:, 1].sum())
    metrics["uncited_answers"] = _rate([float(row["citations"] == 0) for row in answered], seed, resamples)
    sentences = np.array([[row["unsupported_sentences"], row["assessed_sentences"]] for row in answered],
                         dtype=float).reshape(-1, 2)
    metrics["hallucination"] = (_rate(sentences, seed, resamples, statistic=_pooled) if sentences[:, 1].sum()
                                else {"value": math.nan, "low": math.nan, "high": math.nan, "n": 0})
    metrics["hallucination"]["n"] = int(sentences[:, 1].sum())
    metrics["hallucinated_answers"] = _rate([float(row["unsupported_sentences"] > 0) for row in answered],
                                            seed, resamples)
    decisions = np.array([[row["handed_off"], row["gold_handoff"]] for row in rows], dtype=bool).reshape(-1, 2)
    for position, name in enumerate(("handoff_precision", "handoff_recall", "handoff_f1")):
        metrics[name] = _rate(decisions.astype(float), seed, resamples, statistic=_HandoffStatistic(position))
    metrics["handoff_precision"]["n"] = int(decisions[:, 0].sum())
    metrics["handoff_recall"]["n"] = int(decisions[:, 1].sum())
    caught = [row for row in rows if row["handed_off"] and row["gold_handoff"]]
    metrics["handoff_reason_accuracy"] = _rate([float(row["reason"] == row["gold_reason"]) for row in caught],
                                               seed, resamples)
    latencies = np.array(column("latency_ms"), dtype=float)
    metrics["latency_p50_ms"] = {"value": float(np.percentile(latencies, 50)) if len(latencies) else math.nan,
                                 "n": len(latencies)}
    metrics["latency_p95_ms"] = {"value": float(np.percentile(latencies, 95)) if len(latencies) else math.nan,
                                 "n": len(latencies)}
    prompt = float(np.mean(column("prompt_tokens"))) if rows else math.nan
    completion = float(np.mean(column("completion_tokens"))) if rows else math.nan
    metrics["prompt_tokens"] = {"value": prompt, "n": len(rows)}
    metrics["completion_tokens"] = {"value": completion, "n": len(rows)}
    cost = None
    if prices is not None:
        cost = api_cost_per_1k_requests(prompt, completion, prices["usd_per_m_input"], prices["usd_per_m_output"])
    metrics["usd_per_1k_requests"] = {"value": cost, "n": len(rows), "prices": prices}
    return {"metrics": metrics, "rows": rows, "system": system or {}, "questions": len(rows)}


def compare_reports(report_a: dict, report_b: dict, metric: str = "correct", seed: int = 0,
                    resamples: int = 1000) -> dict:
    """Paired bootstrap of one per-question column (``correct``, ``token_f1``, ``recall``, ...) of two reports,
    or of hand-off ``handoff_precision`` / ``handoff_recall`` / ``handoff_f1`` (recomputed on each resample).

    Only questions present (with a value) in both reports are compared, matched by question id.
    """
    handoff = ("handoff_precision", "handoff_recall", "handoff_f1")
    if metric in handoff:
        gold = {row["id"]: row["gold_handoff"] for row in report_a["rows"]}
        a = {row["id"]: row["handed_off"] for row in report_a["rows"]}
        b = {row["id"]: row["handed_off"] for row in report_b["rows"]}
        shared = [qid for qid in a if qid in b]
        result = paired_bootstrap([[a[q], gold[q]] for q in shared], [[b[q], gold[q]] for q in shared],
                                  statistic=_HandoffStatistic(handoff.index(metric)), seed=seed, resamples=resamples)
        return {"metric": metric, "questions": len(shared), **result}
    a = {row["id"]: row[metric] for row in report_a["rows"] if row.get(metric) is not None}
    b = {row["id"]: row[metric] for row in report_b["rows"] if row.get(metric) is not None}
    shared = [qid for qid in a if qid in b]
    result = paired_bootstrap([float(a[q]) for q in shared], [float(b[q]) for q in shared], seed=seed,
                              resamples=resamples)
    return {"metric": metric, "questions": len(shared), **result}


def format_report(report: dict) -> str:
    """The metrics as a plain-text table (value and 95 % interval)."""
    lines = [f"{'metric':28s} {'value':>9s}   95% interval        n"]
    for name, entry in report["metrics"].items():
        value = entry.get("value")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            shown = "      n/a"
        else:
            shown = f"{value:9.3f}" if abs(value) < 1000 else f"{value:9.1f}"
        interval = (f"[{entry['low']:.3f}, {entry['high']:.3f}]" if "low" in entry and not math.isnan(entry["low"])
                    else "")
        lines.append(f"{name:28s} {shown}   {interval:18s} {entry.get('n', ''):>4}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def build_and_tune(out=DEFAULT_INDEX, encoder=None, passages=None, dev_questions=None, complaint=True,
                   intent=True, examples: bool | Sequence = True, verbose: bool = True) -> Index:
    """``build-index``: build the index from ``lm4f.shop``, then choose every setting on the dev questions.

    1. ``build_index`` over all passages; 2. ``choose_hybrid`` (fusion); 3. the complaint classifier
    trained on the reviews (skipped with ``complaint=False``) and the intent classifier trained on
    ``lm4f.shop.handoff_examples()`` (skipped with ``intent=False``); 4. ``choose_handoff``
    (thresholds; each classifier is kept only if dev finds a threshold at which it helps); 5. ``choose_extractive``
    (passage choice); 6. the example bank (``ExampleBank``) of the labelled questions of ``EXAMPLE_SPLITS``
    (or the questions passed as ``examples``; ``examples=False`` skips it), its weights chosen by
    leave-one-split-out (``choose_examples``) and kept only if that finds it helps. The settings (and the
    classifier and the bank, if kept) are saved with the index, so ``Assistant.from_index`` and the
    server run exactly what was chosen.
    """
    from lm4f.nlp import load_minilm
    from lm4f.retrieval import build_index, choose_hybrid, save_settings

    def say(message):
        if verbose:
            print(message, flush=True)

    from lm4f import shop

    if passages is None or dev_questions is None:
        passages = shop.passages() if passages is None else passages
        dev_questions = shop.questions("dev") if dev_questions is None else dev_questions
    encoder = encoder or load_minilm()
    started = time.perf_counter()
    index = build_index(passages, out, encoder)
    say(f"indexed {len(index.passages)} passages in {time.perf_counter() - started:.1f} s -> {index.folder}")
    hybrid = choose_hybrid(index, dev_questions)
    index.settings = {"hybrid": hybrid["settings"]}
    say(f"hybrid fusion chosen on {len(dev_questions)} dev questions: {hybrid['settings']}")
    retriever = index.retriever("hybrid")
    detector = ComplaintDetector.train() if complaint else ComplaintDetector(None)
    intents = IntentClassifier.train(index.get_encoder()) if intent else None
    if intents is not None:
        say(f"intent classifier: C chosen by 5-fold cross-validation on its training messages, macro F1 "
            f"{ {c: round(f, 3) for c, f in intents.cv_scores.items()} }")
    handoff = choose_handoff(dev_questions, retriever, complaint=detector, intent=intents)
    if detector.classifier is not None and handoff["settings"]["complaint_threshold"] <= 1.0:
        save_complaint(index, detector)  # only when dev found the classifier useful
    if intents is not None and handoff["settings"]["min_answer_p"] > 0:
        save_intent(index, intents)
    say(f"hand-off settings chosen on dev: {handoff['settings']} (dev F1 {handoff['f1']:.3f})")
    idf, bm25 = passage_idf(index.passages), index.retriever("bm25")
    extractive = choose_extractive(dev_questions, retriever, idf, bm25=bm25)
    say(f"extractive settings chosen on dev: {extractive['settings']}")
    if examples:
        labelled = [q for q in shop.questions() if q.split in EXAMPLE_SPLITS] if examples is True else examples
        bank = ExampleBank.from_questions(labelled, index.get_encoder(), embed=retriever.dense.embed_query)
        chosen = choose_examples(bank, labelled, retriever, idf, bm25=bm25, settings=extractive["settings"])
        say(f"example bank of {len(bank)} labelled questions; settings chosen by leave-one-split-out: "
            f"{chosen['settings']}")
        if chosen["settings"].get("policy_examples", 0) > 0 or chosen["settings"].get("aspect_examples", 0) > 0:
            extractive = chosen
            save_examples(index, bank)
    save_settings(index, {"hybrid": hybrid["settings"], "handoff": handoff["settings"],
                          "extractive": extractive["settings"]})
    return index


def _memo(embed: Callable[[str], np.ndarray]) -> Callable[[str], np.ndarray]:
    """``embed`` with an unbounded cache: choosing settings asks each question once per candidate setting."""
    return functools.lru_cache(maxsize=None)(embed)


def main(argv: list[str] | None = None) -> int:
    """``python -m lm4f.assistant build-index --out DIR`` or ``... eval --split test [--backend ...]``."""
    parser = argparse.ArgumentParser(prog="python -m lm4f.assistant",
                                     description="The customer-service assistant: build its index, evaluate it.")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-index", help="index the knowledge base and choose settings on dev")
    build.add_argument("--out", default=str(DEFAULT_INDEX), help=f"index folder (default {DEFAULT_INDEX})")
    build.add_argument("--no-complaint-model", action="store_true",
                       help="skip training the complaint classifier (phrases only)")
    build.add_argument("--no-intent-model", action="store_true",
                       help="skip training the intent classifier (rules and retrieval scores only)")
    build.add_argument("--no-examples", action="store_true",
                       help="skip the example bank of labelled questions (passage choice from words and ranks only)")
    run = commands.add_parser("eval", help="score a backend on the labelled questions")
    run.add_argument("--split", default="dev", choices=("dev", "test", "holdout", "holdout2", "holdout3", "all"))
    run.add_argument("--backend", default="extractive", choices=("extractive", "local", "openai"))
    run.add_argument("--index", default=str(DEFAULT_INDEX))
    run.add_argument("--llm", default=None,
                     help="the language model: local: model folder or hub id; openai: the endpoint's model name "
                          "(the same option as `python -m lm4f.serve assistant --llm`)")
    run.add_argument("--base-url", default=None, help="openai: the endpoint, e.g. http://127.0.0.1:8000/v1")
    run.add_argument("--usd-per-m-input", type=float, default=None, help="price per million prompt tokens")
    run.add_argument("--usd-per-m-output", type=float, default=None, help="price per million completion tokens")
    run.add_argument("--json", default=None, help="also write the report (metrics and rows) to this file")
    args = parser.parse_args(argv)
    try:
        if args.command == "build-index":
            build_and_tune(args.out, complaint=not args.no_complaint_model, intent=not args.no_intent_model,
                           examples=not args.no_examples)
            return 0
        from lm4f import shop

        assistant = Assistant.from_index(args.index, backend=args.backend, model=args.llm, base_url=args.base_url)
        questions = shop.questions(None if args.split == "all" else args.split)
        prices = None
        if args.usd_per_m_input is not None or args.usd_per_m_output is not None:
            prices = {"usd_per_m_input": args.usd_per_m_input or 0.0, "usd_per_m_output": args.usd_per_m_output or 0.0}
        report = evaluate(assistant, questions, prices=prices, progress=sys.stderr.isatty())
        print(f"{args.backend} backend, {args.split} split, {len(questions)} questions")
        print(format_report(report))
        if args.json:
            import json

            Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        return 0
    except (IndexFileError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
