"""The review corpus and its character tokeniser (the GPT of chapter 4.3, reused by chapters 8-10).

    from lm4f.text import CharTokenizer, review_corpus, encode_corpus, get_batch
    tokenizer = CharTokenizer()                # fixed vocabulary: "\\n" + printable ASCII = 96 ids
    ids = tokenizer.encode("Runs small!")      # list[int]
    tokenizer.decode(ids)                      # "Runs small!"
    train_text = review_corpus("train")        # str, one review per line (90% of the reviews)
    val_text = review_corpus("val")            # str, the other 10% (fixed split, seed 0)
    train_ids = encode_corpus("train")         # torch.long (N,), cached per process
    x, y = get_batch(train_ids, batch_size=32, block_size=128, generator=g)   # (B, T) each

Corpus: the Women's E-Commerce Clothing Reviews from ``lm4f.data.clothing_reviews()`` that have a
text, in the data set's row order, each written as ``"<title>: <text>"`` (or just the text when
the title is missing) on one line. Line breaks inside a review become spaces and characters
outside printable ASCII (a few mojibake accents) are dropped, so every character has an id.
The split is by review (never inside one): a seeded permutation puts 10% in ``val``.
"""

from __future__ import annotations

import re
import string
from functools import cache

import numpy as np

__all__ = ["CharTokenizer", "clean_review", "review_corpus", "encode_corpus", "get_batch",
           "VAL_FRACTION", "SPLIT_SEED"]

VAL_FRACTION = 0.10
SPLIT_SEED = 0
ALPHABET = "\n" + "".join(chr(code) for code in range(32, 127))   # newline + printable ASCII


class CharTokenizer:
    """One id per character of a fixed alphabet (newline + the 95 printable ASCII characters).

    A character outside the alphabet is an error by default (``errors="strict"``) with a message
    that names it; ``errors="replace"`` turns it into ``"?"``.
    """

    def __init__(self, alphabet: str = ALPHABET):
        self.alphabet = alphabet
        self.stoi = {ch: i for i, ch in enumerate(alphabet)}
        self.itos = dict(enumerate(alphabet))
        self.vocab_size = len(alphabet)

    def encode(self, text: str, errors: str = "strict") -> list[int]:
        ids = []
        for position, ch in enumerate(text):
            if ch in self.stoi:
                ids.append(self.stoi[ch])
            elif errors == "replace":
                ids.append(self.stoi["?"])
            else:
                raise ValueError(f"character {ch!r} at position {position} is not in the vocabulary "
                                 "(newline + printable ASCII). Clean the text with lm4f.text.clean_review "
                                 "or call encode(text, errors='replace').")
        return ids

    def decode(self, ids) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        try:
            return "".join(self.itos[int(i)] for i in ids)
        except KeyError as error:
            raise ValueError(f"id {error.args[0]} is outside the vocabulary 0..{self.vocab_size - 1}.") from None

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def clean_review(text: str) -> str:
    """One line of printable ASCII: line breaks and tabs become spaces, other characters go."""
    text = re.sub(r"\s+", " ", str(text))
    text = "".join(ch for ch in text if ch in string.printable and ch not in "\n\r\t\x0b\x0c")
    return text.strip()


@cache
def _reviews_by_split() -> dict[str, list[str]]:
    from lm4f.data import clothing_reviews

    frame = clothing_reviews()
    frame = frame[frame["Review Text"].notna()]
    lines = []
    for title, body in zip(frame["Title"], frame["Review Text"]):
        body = clean_review(body)
        title = clean_review(title) if isinstance(title, str) else ""
        if body:
            lines.append(f"{title}: {body}" if title else body)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(lines))
    n_val = int(round(VAL_FRACTION * len(lines)))
    val_rows, train_rows = sorted(order[:n_val]), sorted(order[n_val:])
    return {"train": [lines[i] for i in train_rows], "val": [lines[i] for i in val_rows]}


def review_corpus(split: str = "train", max_reviews: int | None = None) -> str:
    """The reviews of ``split`` ("train" or "val") joined by newlines (a final newline too)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}.")
    reviews = _reviews_by_split()[split]
    if max_reviews is not None:
        reviews = reviews[:max_reviews]
    return "\n".join(reviews) + "\n"


@cache
def _encoded(split: str):
    import torch

    # Vectorised CharTokenizer().encode: the corpus is pure ASCII, so one table lookup per byte.
    tokenizer = CharTokenizer()
    table = np.zeros(128, dtype=np.int64)
    for ch, i in tokenizer.stoi.items():
        table[ord(ch)] = i
    codes = np.frombuffer(review_corpus(split).encode("ascii"), dtype=np.uint8)
    return torch.from_numpy(table[codes])


def encode_corpus(split: str = "train"):
    """The whole split as a 1-D torch.long tensor of character ids (cached per process)."""
    return _encoded(split)


def get_batch(ids, batch_size: int, block_size: int, generator=None):
    """Random windows of ``ids`` (1-D): inputs x and targets y = x shifted by one, both (B, T)."""
    import torch

    if ids.dim() != 1:
        raise ValueError(f"ids must be one long 1-D tensor, got shape {tuple(ids.shape)}.")
    if len(ids) <= block_size:
        raise ValueError(f"{len(ids)} tokens is too short for block_size={block_size}.")
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)  # (B,)
    offsets = torch.arange(block_size)                                               # (T,)
    x = ids[starts[:, None] + offsets]                                               # (B, T)
    y = ids[starts[:, None] + offsets + 1]                                           # (B, T)
    return x, y
