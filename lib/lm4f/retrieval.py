"""Finding the passages that answer a customer's question (case study 6.2, the customer-service assistant).

Three retrievers share one interface, ``search(query, k) -> list[Hit]`` (best first):

- ``BM25Retriever``: lexical match with the ``bm25s`` library. Exact words, numbers and product
  codes ("30 days", "1078") score high; a word the shop never uses ("parcel" for "package") scores 0.
  Query words the index has never seen are corrected to the closest word it has (``difflib``), so
  "retrun" still finds "return".
- ``DenseRetriever``: cosine similarity of MiniLM sentence embeddings (``lm4f.nlp.embed``, unit
  vectors, so the dot product *is* the cosine). Paraphrases match; exact numbers matter less.
- ``HybridRetriever``: both, fused either by reciprocal-rank fusion (RRF: each list gives a passage
  ``1 / (rrf_k + rank)``) or by a weighted sum of min-max-normalised scores. Which fusion and which
  weight is chosen on the dev questions by ``choose_hybrid`` (never on the test questions).

An index is built once (``build_index``) and saved to a folder; the service loads it
(``load_index``), which checks every file against the sha256 written in ``manifest.json`` and the
embeddings against the MiniLM checkpoint they were made with. A missing or corrupt file raises
``IndexFileError`` naming the file and the command that rebuilds the index.

Retrieval quality (``retrieval_report``): recall@k (the share of a question's gold passages found in
the top k, averaged over questions) and MRR (mean of 1 / rank of the first gold passage, 0 when none
is in the top ``mrr_depth``), each with a seeded bootstrap 95 % interval (``bootstrap_interval``).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lm4f.shop import Passage  # one passage type for the knowledge base, the index and the assistant
from lm4f.data import sha256_file
from lm4f.saved_models import ModelFileError, verify_files

__all__ = [
    "REBUILD_COMMAND",
    "IndexFileError",
    "Passage",
    "Hit",
    "tokenize",
    "BM25Retriever",
    "DenseRetriever",
    "HybridRetriever",
    "Index",
    "build_index",
    "load_index",
    "save_settings",
    "recall_at_k",
    "reciprocal_rank",
    "retrieval_report",
    "choose_hybrid",
    "bootstrap_interval",
    "paired_bootstrap",
]

REBUILD_COMMAND = "python -m lm4f.assistant build-index --out models/assistant/index"
INDEX_FORMAT = "lm4f-assistant-index/1"
MANIFEST = "manifest.json"
PASSAGES_FILE = "passages.jsonl"
EMBEDDINGS_FILE = "embeddings.npy"
BM25_FOLDER = "bm25"
SETTINGS_FILE = "settings.json"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_MAX_SEQ_LENGTH = 256  # MiniLM's position table holds 512; 256 word pieces cover a whole passage


class IndexFileError(ModelFileError):
    """A file of a saved index is missing or does not hold what the manifest says. The message says how to fix it."""


# ---------------------------------------------------------------------------------------------
# Passages, hits and the BM25 tokeniser
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hit:
    """One retrieved passage: its ``id``, the retriever's ``score`` (higher is better) and ``rank`` (1 = best).

    A hybrid hit also carries the two scores it was fused from: ``bm25`` (raw BM25, 0 = no query
    word in the passage) and ``dense`` (cosine similarity, -1 to 1). A hand-off policy reads them:
    fused scores are relative to the other passages, raw ones say how well *this* passage matches.
    """

    id: str
    score: float
    rank: int
    bm25: float | None = None
    dense: float | None = None


# Words that say nothing about *which* passage answers: bm25s's English list plus question words.
STOPWORDS = frozenset("""
a an and are as at be but by for if in into is it no not of on or such that the their then there these they this
to was will with i me my mine we our us you your yours he she him her his its them what which who whom when where
why how do does did doing done can could would should shall may might must have has had having am been being
so than too very just also any some all about from up out off over again once here both each few more most other
own same only s t don now get got please hi hello thanks thank tell know want wanted like would ll ve re d
""".split())

_TOKEN = re.compile(r"[a-z0-9]+")


def _stem(word: str) -> str:
    """A light English suffix stripper (plural, -ing, -ed, -ly), enough to match "returns" with "returned".

    A final "e" goes too, so that "size", "sized" and "sizing" meet as "siz" (a stem is a key, not a
    word). Numbers are kept as they are. It is deliberately mild: over-stemming merges words a shop keeps
    apart ("sizing" and "size" should meet, "shipping" and "ship" may, "fitted" and "fit" should).
    """
    if word.isdigit() or len(word) <= 3:
        return word
    for suffix, keep in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("edly", ""), ("ed", ""), ("ly", ""),
                         ("es", "e"), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                return word
            stem = word[: len(word) - len(suffix)] + keep
            if suffix in ("ing", "ed") and len(stem) >= 4 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
                stem = stem[:-1]  # "shipping" -> "shipp" -> "ship"
            if suffix == "es" and stem.endswith(("ch", "sh", "xe", "sse")):
                stem = stem[:-1]  # "boxes" -> "boxe" -> "box"
            word = stem
            break
    if word.endswith("e") and len(word) >= 4:
        word = word[:-1]  # "size", "sizes", "sized", "sizing" all end as "siz"
    return word


def tokenize(text: str) -> list[str]:
    """Lower-case word and number tokens, stop words removed, lightly stemmed: what BM25 indexes and queries with."""
    return [_stem(token) for token in _TOKEN.findall(text.lower()) if token not in STOPWORDS]


_ENGLISH_WORDS: frozenset[str] | None = None


def english_words() -> frozenset[str]:
    """Whole words (letters only, 3+) of MiniLM's word-piece vocabulary: words a typo corrector must not touch.

    Empty if the MiniLM files are not there (then every unknown word may be corrected).
    """
    global _ENGLISH_WORDS
    if _ENGLISH_WORDS is None:
        try:
            from lm4f.data import minilm_path

            lines = (minilm_path() / "vocab.txt").read_text(encoding="utf-8").splitlines()
            _ENGLISH_WORDS = frozenset(w for w in lines if w.isalpha() and w.islower() and len(w) >= 3)
        except Exception:  # no MiniLM files here
            _ENGLISH_WORDS = frozenset()
    return _ENGLISH_WORDS


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first; ties keep passage order (stable)."""
    k = max(0, min(int(k), len(scores)))
    return np.argsort(-scores, kind="stable")[:k]


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer (how many passages to return), got {k!r}.")
    return int(k)


# ---------------------------------------------------------------------------------------------
# The three retrievers
# ---------------------------------------------------------------------------------------------
class BM25Retriever:
    """BM25 over the passages' title and text (``bm25s``, Lucene variant, k1 = 1.5, b = 0.75).

    ``correct_typos``: a query word that is neither in the index nor a known English word is
    replaced by the closest word of the passages (``difflib`` similarity >= ``typo_cutoff``; words
    of 4 letters or more), so "retrun polcy" scores like "return policy". Known English words are
    the whole words of MiniLM's word-piece vocabulary (``known_words``): "apartment" is a word the
    shop never uses, not a typo of "department", so it is left out instead. Numbers are never corrected.
    """

    def __init__(self, bm25, passages: Sequence[Passage], correct_typos: bool = True, typo_cutoff: float = 0.8,
                 known_words: frozenset[str] | None = None):
        self.bm25 = bm25
        self.passages = list(passages)
        self.correct_typos = correct_typos
        self.typo_cutoff = typo_cutoff
        self.known_words = english_words() if known_words is None else known_words
        self._words = sorted({w for p in self.passages for w in _TOKEN.findall(p.full_text.lower())
                              if not w.isdigit() and len(w) >= 3})
        self._corrections: dict[str, str | None] = {}

    @classmethod
    def from_passages(cls, passages: Sequence[Passage], k1: float = 1.5, b: float = 0.75, **options):
        import bm25s

        bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        bm25.index([tokenize(p.full_text) or ["_empty_"] for p in passages], show_progress=False)
        return cls(bm25, passages, **options)

    def correct(self, word: str) -> str | None:
        """The passage word closest to an unknown query ``word`` (None when nothing is close enough)."""
        if word not in self._corrections:
            close = difflib.get_close_matches(word, self._words, n=1, cutoff=self.typo_cutoff)
            self._corrections[word] = close[0] if close else None
        return self._corrections[word]

    def query_tokens(self, query: str) -> list[str]:
        """The tokens BM25 scores ``query`` with, after the typo correction."""
        vocabulary = self.bm25.vocab_dict
        kept = []
        for word in _TOKEN.findall(query.lower()):
            if word in STOPWORDS:
                continue
            token = _stem(word)
            if token in vocabulary:
                kept.append(token)
            elif (self.correct_typos and not word.isdigit() and len(word) >= 4 and word not in self.known_words):
                fixed = self.correct(word)
                if fixed is not None and _stem(fixed) in vocabulary:
                    kept.append(_stem(fixed))
        return kept

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for ``query``, shape (N,); 0 where no query word occurs."""
        tokens = self.query_tokens(query)
        if not tokens:
            return np.zeros(len(self.passages), dtype=np.float32)
        return np.asarray(self.bm25.get_scores(tokens), dtype=np.float32)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        k = _check_k(k)
        scores = self.scores(query)
        return [Hit(self.passages[i].id, float(scores[i]), rank, bm25=float(scores[i]))
                for rank, i in enumerate(_top_k(scores, k), start=1)]


class DenseRetriever:
    """Cosine similarity between the MiniLM embedding of the query and of each passage.

    ``embeddings`` is the (N, 384) float32 matrix of unit-length passage embeddings (row i =
    ``passages[i]``); ``encoder`` is ``lm4f.nlp.load_minilm()`` (or anything ``lm4f.nlp.embed`` accepts).
    """

    def __init__(self, encoder, embeddings: np.ndarray, passages: Sequence[Passage]):
        if embeddings.ndim != 2 or len(embeddings) != len(passages):
            raise ValueError(f"embeddings must be one row per passage: got shape {embeddings.shape} for "
                             f"{len(passages)} passages.")
        self.encoder = encoder
        self.embeddings = embeddings
        self.passages = list(passages)
        self._recent: dict[str, np.ndarray] = {}  # the last QUERY_CACHE queries' embeddings

    QUERY_CACHE = 32

    def embed_query(self, query: str) -> np.ndarray:
        """The query's unit-length embedding, shape (384,), read-only. The last few are kept, so that
        another reader of the same message (the assistant's intent classifier) does not encode it again."""
        from lm4f.nlp import embed

        vector = self._recent.get(query)
        if vector is None:
            vector = embed(self.encoder, [query])[0]
            vector.flags.writeable = False
            if len(self._recent) >= self.QUERY_CACHE:
                self._recent.pop(next(iter(self._recent)))
            self._recent[query] = vector
        return vector

    def embed_queries(self, queries: Sequence[str]) -> None:
        """Encode the queries not yet kept in one batch, so that ``embed_query`` finds them: one forward
        pass for a question and its parts instead of one per text."""
        from lm4f.nlp import embed

        missing = [query for query in dict.fromkeys(queries) if query not in self._recent]
        if not missing:
            return
        for query, vector in zip(missing, embed(self.encoder, missing)):
            vector.flags.writeable = False
            if len(self._recent) >= self.QUERY_CACHE:
                self._recent.pop(next(iter(self._recent)))
            self._recent[query] = vector

    def scores(self, query: str) -> np.ndarray:
        """Cosine similarity of every passage with ``query``, shape (N,), each in [-1, 1]."""
        return self.embeddings @ self.embed_query(query)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        k = _check_k(k)
        scores = self.scores(query)
        return [Hit(self.passages[i].id, float(scores[i]), rank, dense=float(scores[i]))
                for rank, i in enumerate(_top_k(scores, k), start=1)]


def _min_max(scores: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] over this query's passages (all zeros when every score is equal)."""
    low, high = float(scores.min()), float(scores.max())
    if high - low <= 1e-12:
        return np.zeros_like(scores, dtype=np.float32)
    return ((scores - low) / (high - low)).astype(np.float32)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of every passage (1 = highest score; ties broken by passage order)."""
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    return ranks


class HybridRetriever:
    """BM25 and dense retrieval fused into one ranking.

    ``method="rrf"``: score = 1 / (rrf_k + BM25 rank) + 1 / (rrf_k + dense rank) (Cormack et al. 2009;
    ``rrf_k`` = 60 is their default). Only ranks count, so the two scales never need to agree.
    ``method="weighted"``: score = weight * minmax(dense) + (1 - weight) * minmax(BM25), each
    min-max-normalised over the passages for this query; ``weight`` = 1 is dense alone, 0 is BM25 alone.
    """

    METHODS = ("rrf", "weighted")

    def __init__(self, bm25: BM25Retriever, dense: DenseRetriever, method: str = "rrf", weight: float = 0.5,
                 rrf_k: float = 60.0):
        if method not in self.METHODS:
            raise ValueError(f"method must be one of {self.METHODS}, got {method!r}.")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be between 0 (BM25 only) and 1 (dense only), got {weight}.")
        if [p.id for p in bm25.passages] != [p.id for p in dense.passages]:
            raise ValueError("the BM25 and the dense retriever must index the same passages in the same order.")
        self.bm25, self.dense = bm25, dense
        self.passages = bm25.passages
        self.method, self.weight, self.rrf_k = method, float(weight), float(rrf_k)

    @property
    def settings(self) -> dict:
        return {"method": self.method, "weight": self.weight, "rrf_k": self.rrf_k}

    def fuse(self, bm25_scores: np.ndarray, dense_scores: np.ndarray) -> np.ndarray:
        if self.method == "rrf":
            return 1.0 / (self.rrf_k + _ranks(bm25_scores)) + 1.0 / (self.rrf_k + _ranks(dense_scores))
        return self.weight * _min_max(dense_scores) + (1.0 - self.weight) * _min_max(bm25_scores)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        k = _check_k(k)
        bm25_scores, dense_scores = self.bm25.scores(query), self.dense.scores(query)
        fused = self.fuse(bm25_scores, dense_scores)
        return [Hit(self.passages[i].id, float(fused[i]), rank, bm25=float(bm25_scores[i]),
                    dense=float(dense_scores[i]))
                for rank, i in enumerate(_top_k(fused, k), start=1)]


# ---------------------------------------------------------------------------------------------
# Building, saving and loading the index
# ---------------------------------------------------------------------------------------------
def _as_passage(item) -> Passage:
    if isinstance(item, Passage):
        return item
    try:
        return Passage(id=str(item.id), title=str(item.title), text=str(item.text), source=str(item.source))
    except AttributeError as error:
        raise TypeError(f"a passage needs the fields id, title, text and source (like lm4f.shop.Passage); "
                        f"got {type(item).__name__}: {error}") from None


def _minilm_sha256() -> str:
    from lm4f.data import MINILM_SAFETENSORS_SHA256

    return MINILM_SAFETENSORS_SHA256


@dataclass
class Index:
    """A loaded index: the passages, the BM25 index, the passage embeddings and the manifest.

    ``retriever(kind, **settings)`` builds a retriever over it: ``"bm25"``, ``"dense"`` or ``"hybrid"``
    (the hybrid's settings default to those saved with the index by ``save_settings``, if any).
    The MiniLM encoder is loaded on first use of a dense or hybrid retriever unless one is given.
    """

    folder: Path
    passages: list[Passage]
    bm25: object
    embeddings: np.ndarray
    manifest: dict
    encoder: object = None
    settings: dict = field(default_factory=dict)
    query_encoder: object = None

    def __post_init__(self):
        self.passage_by_id = {p.id: p for p in self.passages}

    def get_encoder(self):
        if self.encoder is None:
            from lm4f.nlp import load_minilm

            self.encoder = load_minilm(max_seq_length=self.manifest["encoder"]["max_seq_length"])
        return self.encoder

    def get_query_encoder(self):
        """The encoder each query goes through: ``lm4f.nlp.TracedEncoder`` of ``get_encoder()`` on a CPU (the
        same embeddings to about 1e-6, a quarter less time per query), the encoder itself on a GPU or when
        the trace fails (with a warning saying why)."""
        if self.query_encoder is None:
            from lm4f.nlp import TracedEncoder

            encoder = self.get_encoder()
            self.query_encoder = encoder
            if str(getattr(encoder, "device", "")) == "cpu":  # a SentenceTransformer on the CPU (not a test double)
                try:
                    self.query_encoder = TracedEncoder(encoder)
                except Exception as error:  # noqa: BLE001 - any trace failure: serve with the plain encoder
                    import warnings

                    warnings.warn(f"queries use the plain MiniLM encoder, untraced ({type(error).__name__}: {error})",
                                  stacklevel=2)
        return self.query_encoder

    def retriever(self, kind: str = "hybrid", **settings):
        if kind == "bm25":
            return BM25Retriever(self.bm25, self.passages, **settings)
        if kind == "dense":
            return DenseRetriever(self.get_query_encoder(), self.embeddings, self.passages)
        if kind == "hybrid":
            chosen = {**self.settings.get("hybrid", {}), **settings}
            bm25_options = {key: chosen.pop(key) for key in ("correct_typos", "typo_cutoff", "known_words")
                            if key in chosen}
            return HybridRetriever(BM25Retriever(self.bm25, self.passages, **bm25_options),
                                   DenseRetriever(self.get_query_encoder(), self.embeddings, self.passages), **chosen)
        raise ValueError(f"kind must be 'bm25', 'dense' or 'hybrid', got {kind!r}.")


def build_index(passages: Iterable, folder, encoder, max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
                encoder_sha256: str | None = None, k1: float = 1.5, b: float = 0.75) -> Index:
    """Index ``passages`` for BM25 and dense retrieval and save everything to ``folder``.

    Writes ``bm25/`` (the ``bm25s`` index), ``embeddings.npy`` ((N, 384) float32, unit rows, row i =
    passage i), ``passages.jsonl`` (one passage per line, in index order) and ``manifest.json``
    (the sha256 of every file, the encoder's name and weights checksum, the tokeniser and BM25
    settings). ``encoder_sha256`` defaults to the checksum of the MiniLM checkpoint that
    ``lm4f.nlp.load_minilm`` loads. The folder is replaced as a whole, so a half-written index never
    mixes with an older one. Returns the loaded ``Index``.
    """
    from lm4f.nlp import embed

    passages = [_as_passage(p) for p in passages]
    if not passages:
        raise ValueError("build_index needs at least one passage.")
    ids = [p.id for p in passages]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"passage ids must be unique; repeated: {duplicates[:5]}")
    folder = Path(folder)
    staging = folder.with_name(folder.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.perf_counter()

    bm25 = BM25Retriever.from_passages(passages, k1=k1, b=b).bm25
    bm25.save(str(staging / BM25_FOLDER), show_progress=False)
    previous_length = getattr(encoder, "max_seq_length", None)
    if previous_length is not None:
        encoder.max_seq_length = max_seq_length
    try:
        embeddings = embed(encoder, [p.full_text for p in passages])  # (N, 384), unit rows
    finally:
        if previous_length is not None:
            encoder.max_seq_length = previous_length
    np.save(staging / EMBEDDINGS_FILE, embeddings)
    with open(staging / PASSAGES_FILE, "w", encoding="utf-8") as handle:
        for passage in passages:
            handle.write(json.dumps(asdict(passage), ensure_ascii=False) + "\n")

    files = sorted(str(path.relative_to(staging)) for path in staging.rglob("*") if path.is_file())
    manifest = {
        "format": INDEX_FORMAT,
        "n_passages": len(passages),
        "files": {name: sha256_file(staging / name) for name in files},
        "encoder": {"name": ENCODER_NAME, "weights_sha256": encoder_sha256 or _minilm_sha256(),
                    "max_seq_length": max_seq_length, "dimension": int(embeddings.shape[1])},
        "tokenizer": "lm4f.retrieval.tokenize: lower-case [a-z0-9]+ tokens, STOPWORDS removed, light suffix stemming",
        "bm25": {"library": "bm25s", "method": "lucene", "k1": k1, "b": b},
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return load_index(folder, encoder=encoder)


def _problem(path: Path, what: str) -> IndexFileError:
    return IndexFileError(f"Assistant index: file {path} {what}.\n"
                          f"Fix: rebuild the index with `{REBUILD_COMMAND}` "
                          f"(use --out {path.parent if path.name == MANIFEST else '<the index folder>'} "
                          f"for another folder).")


def load_index(folder, encoder=None, verify: bool = True) -> Index:
    """Load an index saved by ``build_index``; check every file's sha256 against ``manifest.json``.

    Raises ``IndexFileError`` (naming the file and the command that rebuilds the index) when the
    folder, the manifest or a file is missing, when a file's checksum differs, or when the
    embeddings were made with another encoder than the MiniLM checkpoint this library loads.
    """
    import bm25s

    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise _problem(manifest_path, f"is missing (there is no folder {folder})")
    if not manifest_path.exists():
        raise _problem(manifest_path, "is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = dict(manifest["files"])
        encoder_facts = manifest["encoder"]
    except (ValueError, KeyError, TypeError) as error:
        raise _problem(manifest_path, f"is not a valid index manifest ({error})") from None
    if manifest.get("format") != INDEX_FORMAT:
        raise _problem(manifest_path, f"has format {manifest.get('format')!r}, this library reads {INDEX_FORMAT!r}")
    verify_files(folder, files, _problem, manifest=MANIFEST, check_contents=verify)
    expected_encoder = _minilm_sha256()
    if encoder_facts.get("weights_sha256") != expected_encoder:
        raise IndexFileError(
            f"Assistant index: {folder / EMBEDDINGS_FILE} was embedded with encoder weights sha256 "
            f"{encoder_facts.get('weights_sha256')}, but this library queries with MiniLM sha256 {expected_encoder}; "
            f"query and passage embeddings must come from the same model.\nFix: `{REBUILD_COMMAND}`.")
    try:
        passages = [Passage(**json.loads(line)) for line in
                    (folder / PASSAGES_FILE).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (ValueError, TypeError) as error:
        raise _problem(folder / PASSAGES_FILE, f"cannot be read ({error})") from None
    try:
        embeddings = np.load(folder / EMBEDDINGS_FILE, allow_pickle=False)
    except ValueError as error:
        raise _problem(folder / EMBEDDINGS_FILE, f"cannot be read ({error})") from None
    if embeddings.shape != (len(passages), encoder_facts["dimension"]):
        raise _problem(folder / EMBEDDINGS_FILE, f"has shape {embeddings.shape}, expected "
                                                 f"({len(passages)}, {encoder_facts['dimension']})")
    try:
        bm25 = bm25s.BM25.load(str(folder / BM25_FOLDER), show_progress=False)
    except Exception as error:  # bm25s raises several kinds for unreadable files
        raise _problem(folder / BM25_FOLDER, f"cannot be loaded by bm25s ({type(error).__name__}: {error})") from None
    settings_path = folder / SETTINGS_FILE
    settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
    if settings and verify and manifest.get("settings_sha256") != sha256_file(settings_path):
        raise _problem(settings_path, f"is corrupt: its sha256 differs from the one in {MANIFEST}")
    return Index(folder=folder, passages=passages, bm25=bm25, embeddings=embeddings.astype(np.float32),
                 manifest=manifest, encoder=encoder, settings=settings)



def save_settings(index: Index, settings: dict) -> Path:
    """Save the settings chosen on the dev questions (hybrid fusion, hand-off policy) with the index.

    They go to ``settings.json`` in the index folder and their sha256 into the manifest, so the
    service that loads the index runs with exactly the settings the dev split chose.
    """
    path = index.folder / SETTINGS_FILE
    path.write_text(json.dumps(settings, indent=2, sort_keys=True))
    index.manifest["settings_sha256"] = sha256_file(path)
    (index.folder / MANIFEST).write_text(json.dumps(index.manifest, indent=2))
    index.settings = json.loads(path.read_text())
    return path


# ---------------------------------------------------------------------------------------------
# Retrieval quality with bootstrap intervals
# ---------------------------------------------------------------------------------------------
def recall_at_k(ranked_ids: Sequence[str], gold_ids: Iterable[str], k: int = 5) -> float:
    """Share of the gold passages found among the first ``k`` retrieved (1.0 = all found)."""
    gold = set(gold_ids)
    if not gold:
        raise ValueError("recall needs at least one gold passage id.")
    return len(gold & set(ranked_ids[:k])) / len(gold)


def reciprocal_rank(ranked_ids: Sequence[str], gold_ids: Iterable[str]) -> float:
    """1 / rank of the first gold passage in ``ranked_ids`` (0.0 when none of them is there)."""
    gold = set(gold_ids)
    for rank, passage_id in enumerate(ranked_ids, start=1):
        if passage_id in gold:
            return 1.0 / rank
    return 0.0


def bootstrap_interval(values, statistic: Callable = np.mean, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(values)``: resample items with replacement.

    ``values`` is an array whose first axis is the items (questions); ``statistic`` maps a resampled
    array to one number (default: the mean, i.e. a rate when values are 0/1). For a statistic that
    is not a mean of per-item numbers (an F1), pass rows of per-item counts and a function of them.
    Seeded: the same inputs give the same interval. Returns ``(low, high)``; (nan, nan) for no items.
    """
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(resamples, len(values)))
    stats = np.array([statistic(values[row]) for row in picks], dtype=float)
    if np.all(np.isnan(stats)):  # undefined in every resample (an F1 with no positives at all)
        return (math.nan, math.nan)
    tail = (1.0 - level) / 2.0 * 100.0
    return (float(np.nanpercentile(stats, tail)), float(np.nanpercentile(stats, 100.0 - tail)))


def paired_bootstrap(a, b, statistic: Callable = np.mean, resamples: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Compare two systems scored on the *same* questions: resample questions, recompute both.

    ``a`` and ``b`` hold one row per question, in the same order. Returns the observed difference
    ``statistic(a) - statistic(b)``, its bootstrap interval and ``p_a_not_better``: the share of
    resamples in which ``a`` does not beat ``b`` (a one-sided bootstrap p-value; small means a
    real improvement). Pairing removes the question-difficulty noise two separate intervals carry.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap needs the two systems scored on the same questions: "
                         f"got {len(a)} and {len(b)} rows.")
    if len(a) == 0:
        raise ValueError("paired_bootstrap needs at least one question.")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(resamples, len(a)))
    differences = np.array([statistic(a[row]) - statistic(b[row]) for row in picks], dtype=float)
    tail = (1.0 - level) / 2.0 * 100.0
    return {
        "difference": float(statistic(a) - statistic(b)),
        "low": float(np.nanpercentile(differences, tail)),
        "high": float(np.nanpercentile(differences, 100.0 - tail)),
        "p_a_not_better": float(np.mean(differences <= 0.0)),
        "resamples": resamples,
    }


def retrieval_report(retriever, questions: Iterable, k: int = 5, mrr_depth: int = 20, seed: int = 0,
                     resamples: int = 1000) -> dict:
    """Recall@k and MRR of ``retriever`` on the questions that have gold passages.

    Questions without ``passage_ids`` (hand-offs) are skipped. Returns ``recall``, ``mrr`` (the
    means), ``recall_ci`` and ``mrr_ci`` (bootstrap 95 % intervals, seeded), ``n`` and the
    per-question ``rows`` (id, ranked ids, recall, reciprocal rank) for a paired comparison.
    """
    rows = []
    for question in questions:
        gold = tuple(question.passage_ids)
        if not gold:
            continue
        ranked = [hit.id for hit in retriever.search(question.question, k=max(k, mrr_depth))]
        rows.append({"id": question.id, "kind": getattr(question, "kind", ""), "ranked": ranked[:max(k, 10)],
                     "recall": recall_at_k(ranked, gold, k), "reciprocal_rank": reciprocal_rank(ranked, gold)})
    recalls = np.array([row["recall"] for row in rows])
    ranks = np.array([row["reciprocal_rank"] for row in rows])
    return {
        "k": k, "n": len(rows),
        "recall": float(recalls.mean()) if rows else math.nan,
        "recall_ci": bootstrap_interval(recalls, seed=seed, resamples=resamples),
        "mrr": float(ranks.mean()) if rows else math.nan,
        "mrr_ci": bootstrap_interval(ranks, seed=seed, resamples=resamples),
        "rows": rows,
    }


HYBRID_GRID = ([{"method": "rrf", "rrf_k": value} for value in (10.0, 30.0, 60.0)]
               + [{"method": "weighted", "weight": value} for value in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)])


def choose_hybrid(index: Index, dev_questions: Sequence, grid: Sequence[dict] = HYBRID_GRID, k: int = 5) -> dict:
    """Pick the hybrid fusion on the DEV questions: highest MRR, then highest recall@k, then the first in ``grid``.

    MRR comes first because the answer is written from the first passages: a gold passage at rank 1
    is worth more than one that scrapes into the top k.

    Returns ``{"settings": the chosen dict, "table": one row per candidate (settings, recall, mrr)}``.
    The query embeddings and BM25 scores are computed once and re-fused for every candidate.
    """
    bm25 = index.retriever("bm25")
    dense = index.retriever("dense")
    cached = []
    for question in dev_questions:
        if question.passage_ids:
            cached.append((question, bm25.scores(question.question), dense.scores(question.question)))
    table = []
    for candidate in grid:
        fusion = HybridRetriever(bm25, dense, **candidate)
        recalls, ranks = [], []
        for question, bm25_scores, dense_scores in cached:
            ranked = [index.passages[i].id for i in _top_k(fusion.fuse(bm25_scores, dense_scores), 20)]
            recalls.append(recall_at_k(ranked, question.passage_ids, k))
            ranks.append(reciprocal_rank(ranked, question.passage_ids))
        table.append({**fusion.settings, "recall": float(np.mean(recalls)), "mrr": float(np.mean(ranks))})
    best = max(range(len(table)), key=lambda i: (round(table[i]["mrr"], 6), round(table[i]["recall"], 6), -i))
    chosen = {key: table[best][key] for key in ("method", "weight", "rrf_k")}
    return {"settings": chosen, "table": table}
