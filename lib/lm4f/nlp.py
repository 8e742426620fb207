"""The customer-review assistant of case study 6.2, the parts its notebook, its API and its tests share.

- ``clean_reviews`` / ``split_reviews``: one cleaning rule and one seeded, stratified split, so the
  notebook, the API test and the benchmark all train and score on the same reviews;
- ``TfidfClassifier``: the TF-IDF + logistic-regression baseline with a tuned decision threshold;
- ``load_minilm`` / ``ReviewRetriever``: MiniLM sentence embeddings and cosine top-k retrieval;
- ``TracedEncoder``: the same MiniLM compiled once for answering one query at a time on a CPU;
- ``binary_report``: accuracy, macro-F1 and the confusion matrix in one dict.

``Rating`` is never a feature: a 4-5 star review is almost always "recommended", so a model that
sees the rating learns nothing about the text (the notebook measures how much it leaks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LABEL",
    "clean_reviews",
    "split_reviews",
    "binary_report",
    "best_threshold",
    "TfidfClassifier",
    "load_minilm",
    "TracedEncoder",
    "ReviewRetriever",
    "save_triage",
    "load_triage",
]

LABEL = "Recommended IND"
MIN_WORDS = 3  # a "review" shorter than this says nothing a model can learn from


def clean_reviews(reviews, min_words: int = MIN_WORDS):
    """Return a cleaned copy of the raw reviews and a dict counting what each rule removed.

    Rules, in order: drop rows without review text (a title alone is kept as part of ``text``
    when the text exists); fill a missing title with ""; drop exact duplicates of (title, text);
    drop texts shorter than ``min_words`` words. Adds ``text`` = "title. review text" and
    ``n_words``. The row index is reset; ``row`` keeps the position in the raw table.
    """
    import pandas as pd

    frame = reviews.copy()
    frame["row"] = np.arange(len(frame))
    removed = {"raw rows": len(frame)}
    has_text = frame["Review Text"].notna() & (frame["Review Text"].fillna("").str.strip() != "")
    removed["missing text"] = int((~has_text).sum())
    frame = frame[has_text].copy()
    frame["Title"] = frame["Title"].fillna("").str.strip()
    frame["Review Text"] = frame["Review Text"].str.strip()
    duplicated = frame.duplicated(subset=["Title", "Review Text"], keep="first")
    removed["duplicates"] = int(duplicated.sum())
    frame = frame[~duplicated].copy()
    title_part = frame["Title"].where(frame["Title"] == "", frame["Title"] + ". ")
    frame["text"] = title_part + frame["Review Text"]
    frame["n_words"] = frame["Review Text"].str.split().str.len()
    too_short = frame["n_words"] < min_words
    removed["too short"] = int(too_short.sum())
    frame = frame[~too_short].reset_index(drop=True)
    frame[LABEL] = frame[LABEL].astype("int64")
    removed["kept"] = len(frame)
    assert isinstance(frame, pd.DataFrame)
    return frame, removed


def split_reviews(frame, seed: int = 0, validation: float = 0.1, test: float = 0.1) -> dict:
    """Stratified train / validation / test split of a cleaned frame, fixed by ``seed``.

    Returns ``{"train", "validation", "test"}`` DataFrames (each with a fresh index). Every split
    keeps the share of recommended reviews of the whole (about 0.82).
    """
    from sklearn.model_selection import train_test_split

    labels = frame[LABEL].to_numpy()
    rest, test_part = train_test_split(frame, test_size=test, stratify=labels, random_state=seed)
    relative = validation / (1.0 - test)
    train_part, validation_part = train_test_split(
        rest, test_size=relative, stratify=rest[LABEL].to_numpy(), random_state=seed)
    return {name: part.reset_index(drop=True)
            for name, part in (("train", train_part), ("validation", validation_part), ("test", test_part))}


def binary_report(labels, predictions) -> dict:
    """Accuracy, macro-F1 and the 2x2 confusion matrix ([[TN, FP], [FN, TP]], rows = truth)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels have shape {labels.shape} but predictions {predictions.shape}; "
                         "pass one 0/1 prediction per review.")
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro")),
        "confusion": confusion_matrix(labels, predictions, labels=[0, 1]).tolist(),
    }


def best_threshold(probabilities, labels, grid=None) -> float:
    """The decision threshold on P(recommended) that maximises macro-F1 on these (validation) data."""
    from sklearn.metrics import f1_score

    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    grid = np.round(np.arange(0.05, 0.96, 0.01), 2) if grid is None else np.asarray(grid)
    scores = [f1_score(labels, (probabilities >= t).astype(int), average="macro") for t in grid]
    return float(grid[int(np.argmax(scores))])


@dataclass
class TfidfClassifier:
    """TF-IDF of word 1-2-grams and character 3-5-grams, then logistic regression.

    ``fit(texts, labels)`` trains; ``tune_threshold(texts, labels)`` picks the threshold on
    validation data; ``predict_proba(texts)`` gives P(recommended) per text, shape (N,).

    Trained on labels of your own (``python -m lm4f.train reviews --csv ...``), ``labels`` holds
    their names (label id i is ``labels[i]``): with two labels the threshold applies to P(``labels[1]``);
    with three or more, ``predict`` takes the most probable one and ``probabilities(texts)`` gives
    the (N, labels) matrix. ``labels`` is None for the course's recommended (1) / not (0) model.
    ``class_weight="balanced"`` (scikit-learn's) weighs each label equally in the loss, so a rare
    label is still predicted; your own labels are trained that way.
    """

    max_features: int = 50_000
    C: float = 4.0
    threshold: float = 0.5
    pipeline: object = field(default=None, repr=False)
    labels: list[str] | None = None
    class_weight: str | None = None  # "balanced": each label weighs the same in the loss, however rare

    def fit(self, texts, labels):
        self.fit_features(texts, labels)
        return self

    def fit_features(self, texts, labels):
        """``fit``, and return the training texts' TF-IDF features: a sparse (N, F) matrix.

        Out-of-fold work on the training texts (a stacker's inputs, cross-validation) needs those
        features; computing them again with ``pipeline[0].transform(texts)`` costs as much as the fit.
        """
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, make_pipeline

        features = FeatureUnion([
            ("words", TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=self.max_features,
                                      sublinear_tf=True, strip_accents="unicode")),
            ("chars", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=3,
                                      max_features=self.max_features, sublinear_tf=True)),
        ])
        self.pipeline = make_pipeline(features, LogisticRegression(C=self.C, max_iter=2000,
                                                                   class_weight=self.class_weight))
        training_features = self.pipeline[0].fit_transform(list(texts))  # (N, F) sparse
        self.pipeline[-1].fit(training_features, np.asarray(labels))
        return training_features

    def _check_fitted(self):
        if self.pipeline is None:
            raise RuntimeError("TfidfClassifier is not trained yet: call .fit(texts, labels) first.")

    @property
    def n_labels(self) -> int:
        self._check_fitted()
        return len(self.pipeline[-1].classes_)

    def features(self, texts):
        """The TF-IDF features of ``texts``, sparse (N, F): words then characters, as the pipeline's
        ``FeatureUnion`` stacks them. Each vectoriser is called directly: the union's own ``transform``
        first sets up joblib, which costs more than the work for the one text a web request brings."""
        from scipy import sparse

        self._check_fitted()
        return sparse.hstack([vectoriser.transform(texts) for _, vectoriser in self.pipeline[0].transformer_list],
                             format="csr")

    def probabilities(self, texts) -> np.ndarray:
        """P(label) for every label, shape (N, labels); rows sum to 1."""
        self._check_fitted()
        if isinstance(texts, str):
            raise TypeError("probabilities takes a list of texts; wrap one text as [text].")
        return self.pipeline[-1].predict_proba(self.features(list(texts)))

    def predict_proba(self, texts) -> np.ndarray:
        """P(label 1) per text, shape (N,): P(recommended) for the course's model. Two labels only."""
        if self.n_labels > 2:
            raise ValueError(f"this classifier has {self.n_labels} labels; use .probabilities(texts) for all of "
                             "them, or .predict(texts) for the most probable")
        return self.probabilities(texts)[:, 1]

    def decision_function(self, texts) -> np.ndarray:
        """The logistic regression's logit per text, shape (N,)."""
        self._check_fitted()
        return self.pipeline[-1].decision_function(self.features(list(texts)))

    def tune_threshold(self, texts, labels) -> float:
        self.threshold = best_threshold(self.predict_proba(texts), labels)
        return self.threshold

    def predict(self, texts) -> np.ndarray:
        """Label ids (N,): P(label 1) >= threshold with two labels, the most probable label with more."""
        if self.n_labels > 2:
            return self.probabilities(texts).argmax(axis=1).astype(np.int64)
        return (self.predict_proba(texts) >= self.threshold).astype(np.int64)

    @property
    def n_parameters(self) -> int:
        self._check_fitted()
        model = self.pipeline[-1]
        return int(model.coef_.size + model.intercept_.size)


def load_minilm(max_seq_length: int = 128, device: str = "cpu"):
    """The pretrained all-MiniLM-L6-v2 as a ``SentenceTransformer`` (offline, from lm4f.data)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from lm4f.data import minilm_path

    model = SentenceTransformer(str(minilm_path()), device=str(device))
    model.max_seq_length = max_seq_length
    return model


class TracedEncoder:
    """A ``load_minilm`` encoder compiled once with TorchScript for serving one query at a time on a CPU.

    ``torch.jit.trace`` records the Transformer's forward pass, ``torch.jit.freeze`` folds its weights
    in as constants, and ``torch.jit.optimize_for_inference`` swaps each ``Linear`` for a oneDNN kernel
    with the weights pre-packed in the layout the CPU reads fastest. Tokenizer, mean pooling over the
    real tokens and unit length are those of ``encoder.encode``; the embeddings agree with it to about
    1e-6 (``tests/test_nlp.py`` checks it), while a short query takes about a quarter less time
    (``make bench``). ``embed`` accepts it like the encoder it wraps.

    ``encoder`` must be on the CPU; any trace failure raises, so a caller can fall back to ``encoder``.
    """

    def __init__(self, encoder):
        import warnings

        import torch

        transformer = encoder[0]
        if next(transformer.auto_model.parameters()).device.type != "cpu":
            raise ValueError("TracedEncoder is for CPU serving; use the encoder itself on a GPU.")
        self.tokenizer = transformer.tokenizer
        self.max_seq_length = encoder.max_seq_length

        class LastHidden(torch.nn.Module):
            def __init__(self, model):
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask):
                return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        from transformers.utils import logging as transformers_logging

        example = self.tokenizer(["a traced example", "two"], padding=True, return_tensors="pt")
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # the trace reads every attribute, the unused loss too
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TorchScript's notes on Python values it records as constants
                traced = torch.jit.trace(LastHidden(transformer.auto_model).eval(),
                                         (example["input_ids"], example["attention_mask"]), strict=False)
                self.module = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
                self.module(example["input_ids"], example["attention_mask"])  # first call prepares the kernels
        finally:
            transformers_logging.set_verbosity(verbosity)

    def encode(self, texts, batch_size: int = 64, convert_to_numpy: bool = True, normalize_embeddings: bool = True,
               show_progress_bar: bool = False):
        """Mean-pooled (and unit-length) embeddings of ``texts``, float32 array (N, 384), in the input order."""
        import torch

        texts = list(texts)
        parts = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                       max_length=self.max_seq_length, return_tensors="pt")
                hidden = self.module(batch["input_ids"], batch["attention_mask"])  # (B, T, 384)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1), 1 on real tokens
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
                if normalize_embeddings:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                parts.append(pooled)
        vectors = torch.cat(parts) if parts else torch.zeros(0, 384)
        return vectors.numpy() if convert_to_numpy else vectors


def embed(encoder, texts, batch_size: int = 64) -> np.ndarray:
    """Unit-length MiniLM sentence embeddings, float32 array of shape (N, 384)."""
    vectors = encoder.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                             normalize_embeddings=True, show_progress_bar=False)
    return vectors.astype(np.float32)


class ReviewRetriever:
    """Cosine top-k over review embeddings: "does it run small?" -> the reviews that answer it.

    ``reviews`` is a DataFrame with at least ``text`` and ``Clothing ID``; its embeddings are
    computed once here (N, 384). ``search(question, k, clothing_id)`` returns a list of dicts.
    """

    def __init__(self, encoder, reviews, batch_size: int = 64, embeddings: np.ndarray | None = None):
        import threading

        self.encoder = encoder
        self.reviews = reviews.reset_index(drop=True)
        if embeddings is None:
            embeddings = embed(encoder, self.reviews["text"], batch_size=batch_size)  # (N, 384)
        if embeddings.shape[0] != len(self.reviews):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(self.reviews)} reviews: "
                             "pass one row per review.")
        self.embeddings = embeddings
        self.clothing_ids = self.reviews["Clothing ID"].to_numpy()
        self._lock = threading.Lock()  # a web server searches from several threads; the tokenizer is not shareable

    def products(self) -> list[int]:
        return sorted(int(i) for i in np.unique(self.clothing_ids))

    def search(self, question: str, k: int = 3, clothing_id: int | None = None) -> list[dict]:
        if clothing_id is not None and clothing_id not in set(self.clothing_ids.tolist()):
            raise KeyError(f"no reviews for clothing_id {clothing_id}; known ids: {self.products()[:20]}")
        with self._lock:
            query = embed(self.encoder, [question])[0]  # (384,)
        scores = self.embeddings @ query  # (N,) cosine similarities (unit vectors)
        candidates = np.arange(len(scores))
        if clothing_id is not None:
            candidates = candidates[self.clothing_ids == clothing_id]
        order = candidates[np.argsort(-scores[candidates], kind="stable")][:k]
        return [{"clothing_id": int(self.clothing_ids[i]), "score": float(scores[i]),
                 "review": str(self.reviews.loc[i, "text"]), "row": int(self.reviews.loc[i, "row"])}
                for i in order]


# ---------------------------------------------------------------------------------------------
# Saving and loading what the review API serves (a version folder of lm4f.saved_models)
# ---------------------------------------------------------------------------------------------
CLASSIFIER_FILE = "classifier.joblib"
REVIEWS_FILE = "reviews.jsonl"
EMBEDDINGS_FILE = "review_embeddings.npy"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def save_triage(folder, classifier: TfidfClassifier, retriever: ReviewRetriever | None = None) -> dict:
    """Write the classifier (``classifier.joblib``: the fitted scikit-learn pipeline, vocabulary included)
    and, if given, the retriever's reviews (``reviews.jsonl``) and their MiniLM embeddings
    (``review_embeddings.npy``, float32 (N, 384)) into ``folder``; return the config: the decision
    threshold, the classifier's settings and the encoder the embeddings were made with."""
    import json
    from pathlib import Path

    import joblib

    from lm4f.data import MINILM_SAFETENSORS_SHA256

    classifier._check_fitted()
    folder = Path(folder)
    joblib.dump(classifier.pipeline, folder / CLASSIFIER_FILE)
    config = {"threshold": float(classifier.threshold),
              "classifier": {"kind": "tfidf-logistic-regression", "max_features": classifier.max_features,
                             "C": classifier.C, **({"class_weight": classifier.class_weight}
                                                   if classifier.class_weight else {})},
              "retriever": None}
    if classifier.labels is not None:  # trained on labels of your own: their names, in the model's order
        config["labels"] = list(classifier.labels)
    if retriever is not None:
        with open(folder / REVIEWS_FILE, "w", encoding="utf-8") as handle:
            for row in retriever.reviews[["Clothing ID", "row", "text"]].itertuples(index=False):
                handle.write(json.dumps({"clothing_id": int(row[0]), "row": int(row[1]), "text": str(row[2])},
                                        ensure_ascii=False) + "\n")
        np.save(folder / EMBEDDINGS_FILE, retriever.embeddings.astype(np.float32))
        config["retriever"] = {"reviews": len(retriever.reviews), "products": retriever.products(),
                               "encoder": {"name": ENCODER_NAME, "weights_sha256": MINILM_SAFETENSORS_SHA256,
                                           "max_seq_length": int(getattr(retriever.encoder, "max_seq_length", 128)),
                                           "dimension": int(retriever.embeddings.shape[1])}}
    return config


def load_triage(saved, encoder=None) -> tuple[TfidfClassifier, ReviewRetriever | None]:
    """The classifier and retriever of a verified saved version (``open_model(path, "reviews")``).

    The retriever's reviews must have been embedded by the MiniLM checkpoint this library loads (the
    questions are embedded with it); ``encoder`` defaults to that checkpoint.
    """
    import json

    import joblib
    import pandas as pd

    from lm4f.data import MINILM_SAFETENSORS_SHA256

    config = saved.config
    try:
        pipeline = joblib.load(saved.file(CLASSIFIER_FILE))  # its sha256 was checked before this line
    except Exception as error:  # unpickling raises many kinds
        raise saved.problem(CLASSIFIER_FILE, f"cannot be loaded ({type(error).__name__}: {error})") from error
    settings = config.get("classifier", {})
    classifier = TfidfClassifier(max_features=settings.get("max_features", 50_000), C=settings.get("C", 4.0),
                                 threshold=float(config["threshold"]), pipeline=pipeline, labels=config.get("labels"),
                                 class_weight=settings.get("class_weight"))
    if classifier.labels is not None and len(classifier.labels) != classifier.n_labels:
        raise saved.problem(CLASSIFIER_FILE, f"predicts {classifier.n_labels} labels, but config.json names "
                                             f"{len(classifier.labels)}")
    facts = config.get("retriever")
    if not facts:
        return classifier, None
    if facts["encoder"]["weights_sha256"] != MINILM_SAFETENSORS_SHA256:
        used = facts["encoder"]["weights_sha256"]
        raise saved.problem(EMBEDDINGS_FILE, f"was embedded with encoder weights sha256 {used}, but this library "
                                             f"embeds questions with MiniLM sha256 {MINILM_SAFETENSORS_SHA256}; "
                                             "both must come from the same model")
    try:
        rows = [json.loads(line) for line in saved.file(REVIEWS_FILE).read_text(encoding="utf-8").splitlines()
                if line.strip()]
        embeddings = np.load(saved.file(EMBEDDINGS_FILE), allow_pickle=False)
    except (ValueError, OSError) as error:
        raise saved.problem(REVIEWS_FILE, f"or {EMBEDDINGS_FILE} cannot be read ({error})") from error
    if embeddings.shape != (len(rows), facts["encoder"]["dimension"]):
        raise saved.problem(EMBEDDINGS_FILE, f"has shape {embeddings.shape}, expected "
                                             f"({len(rows)}, {facts['encoder']['dimension']})")
    reviews = pd.DataFrame({"Clothing ID": [r["clothing_id"] for r in rows], "row": [r["row"] for r in rows],
                            "text": [r["text"] for r in rows]})
    encoder = encoder or load_minilm(max_seq_length=facts["encoder"]["max_seq_length"])
    return classifier, ReviewRetriever(encoder, reviews, embeddings=embeddings)
