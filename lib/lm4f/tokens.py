"""Tokens (chapter 4.3, `ch04_3_bpe_tokens`): a byte-level BPE tokeniser trained offline, Chinese text,
bits per character.

    from lm4f.tokens import train_bpe, pieces, bits_per_character
    bpe = train_bpe(lines, vocab_size=2000)          # a tokenizers.Tokenizer, trained in seconds on a CPU
    pieces(bpe, "Runs small!")                       # ['Runs', ' small', '!']: what each token stands for
    bits_per_character(total_nats, n_characters)     # a loss any tokeniser can be compared on

Two Chinese texts ship with the library, so that every machine measures the same thing:

- ``book_sample_zh()``: every ``SAMPLE_EVERY``-th line of Chinese prose of the book's own drafts
  (``shared/seeds/00*.txt``, the five drafts in file-name order, lines picked by ``chinese_prose``);
  ``book_drafts_zh()`` reads all of that prose from the drafts themselves where they are at hand
  (``None`` where they are not); ``tests/test_tokens.py`` checks that the sample is exactly that.
- ``support_conversations()``: twelve short customer-service conversations of the course's shop
  (chapter 6.2), each written in English and in Chinese with the same content, to price the same
  conversation in both languages.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

__all__ = ["train_bpe", "pieces", "chinese_prose", "book_sample_zh", "book_drafts_zh", "drafts_folder",
           "support_conversations", "bits_per_character", "SAMPLE_EVERY"]

HERE = Path(__file__).resolve().parent
BOOK_SAMPLE_ZH = HERE / "tokens_book_sample_zh.txt"
SUPPORT_CONVERSATIONS = HERE / "tokens_support_en_zh.jsonl"
SAMPLE_EVERY = 4
# CJK ideographs, CJK punctuation (。、「」) and full-width forms (，：（）)
_CHINESE = re.compile(r"[\u4e00-\u9fff\u3000-\u303f\uff00-\uffef]")


def train_bpe(texts, vocab_size: int, min_frequency: int = 2, special_tokens=()):
    """A byte-level BPE tokeniser (the ``tokenizers`` library) trained on ``texts`` (an iterable of strings).

    It starts from the 256 byte values, so any string encodes (no unknown token) and decodes back
    exactly; then it merges the most frequent adjacent pair, again and again, until the vocabulary
    holds ``vocab_size`` entries (fewer on a small corpus: a pair must occur ``min_frequency`` times).
    Words are split at spaces and punctuation first, GPT-2 style, and a token keeps its leading space.
    ``special_tokens`` (control tokens such as ``"<|endoftext|>"``) get the first ids and are never split.
    """
    if vocab_size < 257:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for merges: byte-level BPE starts from 256 "
                         "byte tokens, so ask for at least 257.")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(list(texts), trainer)
    return tokenizer


def pieces(tokenizer, text: str) -> list[str]:
    """What each token of ``text`` stands for, as text (a byte-level token that holds part of a
    multi-byte character, such as one of the 3 bytes of a Chinese character, shows as "\\ufffd")."""
    ids = tokenizer.encode(text).ids
    return [tokenizer.decode([i]) for i in ids]


def chinese_prose(text: str, min_share: float = 0.6, min_length: int = 20) -> list[str]:
    """The lines of ``text`` that are Chinese prose: stripped, at least ``min_length`` characters, not a
    Markdown heading, and at least ``min_share`` of their non-space characters Chinese (ideographs and
    Chinese punctuation). Code, formulas and English lines of the drafts drop out."""
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if len(line) < min_length or line.startswith("#"):
            continue
        visible = [ch for ch in line if not ch.isspace()]
        if sum(bool(_CHINESE.match(ch)) for ch in visible) >= min_share * len(visible):
            lines.append(line)
    return lines


def drafts_folder() -> Path:
    """Where the book's drafts are expected: ``$LM4F_SEEDS``, else ``shared/seeds`` beside the repository."""
    return Path(os.environ.get("LM4F_SEEDS", HERE.parents[2] / "shared" / "seeds"))


def book_drafts_zh(folder: str | Path | None = None) -> list[str] | None:
    """All Chinese prose lines of the five drafts (file-name order), or ``None`` if the drafts are absent."""
    folder = Path(folder) if folder is not None else drafts_folder()
    files = sorted(folder.glob("00*_*.txt")) if folder.is_dir() else []
    if not files:
        return None
    return [line for path in files for line in chinese_prose(path.read_text(encoding="utf-8"))]


def book_sample_zh() -> list[str]:
    """The Chinese sample stored with the library: every ``SAMPLE_EVERY``-th line of ``book_drafts_zh()``."""
    return BOOK_SAMPLE_ZH.read_text(encoding="utf-8").splitlines()


def support_conversations() -> list[dict]:
    """Twelve shop conversations, ``{"id", "en", "zh"}``; each text is ``"Customer: ...\\nAgent: ..."``
    (``"顾客：...\\n客服：..."``), the two languages saying the same thing."""
    with open(SUPPORT_CONVERSATIONS, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def bits_per_character(total_nats: float, characters: int) -> float:
    """A language model's loss per character of text, in bits: ``total_nats / characters / ln 2``.

    ``total_nats`` is the summed negative log-likelihood (natural log) of all the tokens of a text,
    ``characters`` that text's length. Unlike loss (or perplexity) per token, it does not depend on
    how the tokeniser cut the text, so models with different tokenisers can be compared on it.
    """
    if characters <= 0:
        raise ValueError(f"characters must be positive, got {characters}.")
    if total_nats < 0:
        raise ValueError(f"total_nats is a sum of -log p and cannot be negative, got {total_nats}.")
    return total_nats / characters / math.log(2)
