"""Train a case study's model outside its notebook and save it as a new version: ``python -m lm4f.train CASE``.

    python -m lm4f.train reviews                         # -> models/reviews/v1 (then v2, ...)
    LM4F_SIZE=full python -m lm4f.train images --models /srv/models
    python -m lm4f.serve images --model models/images    # serves the newest version

Cases (settings are the case notebooks', through ``lm4f.pick``: the CI size by default, which
finishes in a few minutes on 2 CPU cores; the full size under ``LM4F_SIZE=full``, where a GPU helps):

- ``reviews``: TF-IDF + logistic regression with its threshold tuned on the validation split, and
  MiniLM embeddings of the reviews ``/ask`` searches (chapter 6.2, review triage);
- ``images``: the ProductCNN on the 54,000 training images, exported with ``torch.export`` (6.3);
- ``movies``: the SASRec Transformer over users' histories, with the popularity fallback (6.4);
- ``assistant``: the customer-service index with the settings and classifiers chosen on the dev
  questions (``lm4f.assistant.build_and_tune``, 6.2);
- ``generate``: the conditional GAN that chapter 2.3 chooses (non-saturating loss with the
  mode-seeking term) on Fashion-MNIST. A generator has no test split to score; its metrics are the
  last training figures, and chapter 2.3 measures it against held-out images.

Each run scores the model on the case's test split, saves everything serving needs with those
figures, the data checksums, library versions and the git commit (``lm4f.saved_models``), and
prints where it went. ``--models`` (or ``LM4F_MODELS``) picks the folder, default ``models``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import lm4f
from lm4f.data import DataError
from lm4f.saved_models import ModelFileError, SavedModel, models_dir, save_model

__all__ = ["Trainer", "TRAINERS", "train", "save_assistant", "main"]

SEED = 0


def _say(message: str) -> None:
    print(message, flush=True)


def _rounded(figures: dict, digits: int = 4) -> dict:
    return {key: round(float(value), digits) if isinstance(value, (float, np.floating)) else value
            for key, value in figures.items()}


# ---------------------------------------------------------------------------------------------
# reviews: the settings of chapters/ch06_2_nlp_review_assistant.ipynb
# ---------------------------------------------------------------------------------------------
def train_reviews(root=None) -> SavedModel:
    from sklearn.model_selection import train_test_split

    from lm4f import data
    from lm4f.nlp import (LABEL, ReviewRetriever, TfidfClassifier, binary_report, clean_reviews, load_minilm,
                          save_triage, split_reviews)

    train_reviews_n = lm4f.pick(ci=None, full=None, smoke=2_000)   # training reviews (None: all 18,000)
    products = lm4f.pick(ci=3, full=None, smoke=1)                 # most reviewed products /ask searches (None: all)
    per_product = lm4f.pick(ci=200, full=None, smoke=40)           # their reviews embedded (None: all)
    started = time.perf_counter()
    frame, _ = clean_reviews(data.clothing_reviews())
    splits = split_reviews(frame, seed=SEED)
    train = splits["train"]
    if train_reviews_n is not None:
        train, _ = train_test_split(train, train_size=train_reviews_n, stratify=train[LABEL], random_state=SEED)
    classifier = TfidfClassifier().fit(train["text"], train[LABEL])
    classifier.tune_threshold(splits["validation"]["text"], splits["validation"][LABEL])
    test = splits["test"]
    report = binary_report(test[LABEL], classifier.predict(test["text"]))
    majority = binary_report(test[LABEL], np.ones(len(test), dtype=np.int64))
    _say(f"classifier: trained on {len(train):,} reviews, threshold {classifier.threshold:.2f}, "
         f"test accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f} "
         f"(majority class {majority['accuracy']:.3f})")
    counts = frame["Clothing ID"].value_counts()
    chosen = counts.index[:products] if products is not None else counts.index
    indexed = frame[frame["Clothing ID"].isin(chosen)]
    if per_product is not None:
        indexed = indexed.groupby("Clothing ID").head(per_product)
    retriever = ReviewRetriever(load_minilm(max_seq_length=128), indexed)
    _say(f"retriever: {len(indexed):,} reviews of {indexed['Clothing ID'].nunique()} products embedded")
    metrics = {"split": f"test ({len(test):,} reviews, seed {SEED})", **_rounded(report),
               "majority_accuracy": round(majority["accuracy"], 4), "threshold": classifier.threshold}
    return save_model(
        "reviews", lambda folder: save_triage(folder, classifier, retriever), metrics=metrics, root=root,
        data={**{f"clothing-reviews/{name}": digest for name, digest in data.REVIEWS_FILES.items()},
              "minilm/model.safetensors": data.MINILM_SAFETENSORS_SHA256},
        training={"train_reviews": len(train), "validation_reviews": len(splits["validation"]),
                  "indexed_reviews": len(indexed), "seconds": round(time.perf_counter() - started, 1)},
        packages=("sentence-transformers", "transformers", "joblib"))


# ---------------------------------------------------------------------------------------------
# images: the settings of chapters/ch06_3_cv_product_images.ipynb (its final model, the ProductCNN)
# ---------------------------------------------------------------------------------------------
def train_images(root=None) -> SavedModel:
    import torch

    from lm4f import data, vision

    validation_images = 6_000
    train_images_n = lm4f.pick(ci=None, full=None, smoke=2_000)   # None: all 54,000
    eval_images = lm4f.pick(ci=None, full=None, smoke=200)        # None: all validation and test images
    epochs = lm4f.pick(ci=5, full=10, smoke=1)
    batch_size = lm4f.pick(ci=128, full=512)
    started = time.perf_counter()
    train_u8, train_labels = data.fashion_mnist("train")
    test_u8, test_labels = data.fashion_mnist("test")
    order = np.random.default_rng(SEED).permutation(len(train_labels))
    validation_index = order[:validation_images][:eval_images]
    training_index = order[validation_images:][:train_images_n]
    train_x, train_y = vision.to_tensor(train_u8[training_index]), torch.from_numpy(train_labels[training_index])
    val_x, val_y = vision.to_tensor(train_u8[validation_index]), torch.from_numpy(train_labels[validation_index])
    test_x, test_y = vision.to_tensor(test_u8[:eval_images]), torch.from_numpy(test_labels[:eval_images])
    lm4f.seed_everything(SEED)
    model = vision.ProductCNN().to(lm4f.choose_device())
    history = vision.fit(model, train_x, train_y, epochs=epochs, batch_size=batch_size, lr=3e-3, weight_decay=1e-4,
                         schedule="onecycle", use_augmentation=False)
    model.cpu().eval()
    validation_accuracy = vision.accuracy(model, val_x, val_y)
    test_accuracy = vision.accuracy(model, test_x, test_y)
    _say(f"ProductCNN: {len(train_x):,} images x {epochs} epochs, validation accuracy {validation_accuracy:.4f}, "
         f"test accuracy {test_accuracy:.4f}")
    metrics = {"split": f"test ({len(test_x):,} images)", "accuracy": round(test_accuracy, 4),
               "validation_accuracy": round(validation_accuracy, 4)}
    return save_model(
        "images", lambda folder: vision.save_classifier(folder, model), metrics=metrics, root=root,
        data={f"fashion-mnist/{name}": digest for name, digest in data.FASHION_MNIST_FILES.items()},
        training={"train_images": len(train_x), "epochs": epochs, "batch_size": batch_size, "lr": 3e-3,
                  "final_train_loss": round(history[-1]["train_loss"], 4),
                  "parameters": vision.parameter_count(model), "seconds": round(time.perf_counter() - started, 1)})


# ---------------------------------------------------------------------------------------------
# movies: the settings of chapters/ch06_4_recommender.ipynb (its served model, SASRec)
# ---------------------------------------------------------------------------------------------
def train_movies(root=None) -> SavedModel:
    from lm4f import data
    from lm4f import recsys as rs

    epochs = lm4f.pick(ci=12, full=200, smoke=2)
    max_len = lm4f.pick(ci=50, full=200)
    ranking_users = lm4f.pick(ci=None, full=None, smoke=150)  # users in training and evaluation (None: all 943)
    started = time.perf_counter()
    movielens = data.movielens_100k()
    ratings, items, users = movielens["ratings"], movielens["items"], movielens["users"]
    sequences = rs.user_sequences(ratings)
    split = rs.leave_one_out(dict(list(sequences.items())[:ranking_users]))
    lm4f.seed_everything(SEED)
    sasrec, seconds, losses = rs.train_sasrec(split.train, max_len=max_len, epochs=epochs, seed=SEED)
    result = rs.evaluate_ranking(lambda user, history: sasrec.next_item_scores(history), split, "test")
    popularity_train = rs.popularity_scores(split.train)
    baseline = rs.evaluate_ranking(lambda user, history: popularity_train, split, "test")
    _say(f"SASRec: {epochs} epochs in {seconds:.0f} s, loss {losses[0]:.2f} -> {losses[-1]:.2f}; test HR@10 "
         f"{result['HR@10']:.3f}, NDCG@10 {result['NDCG@10']:.3f} (popularity HR@10 {baseline['HR@10']:.3f})")
    recommender = rs.Recommender(sasrec.next_item_scores, histories=sequences,
                                 popularity=rs.popularity_scores(sequences),
                                 titles=dict(zip(items.movie_id.tolist(), items.movie_title.tolist())),
                                 known_users=users.user_id.tolist())
    metrics = {"split": f"test (leave-one-out by time, full ranking, {result['users']} users)",
               **_rounded({"HR@10": result["HR@10"], "NDCG@10": result["NDCG@10"],
                           "popularity_HR@10": baseline["HR@10"]})}
    return save_model(
        "movies", lambda folder: rs.save_recommender(folder, sasrec, recommender), metrics=metrics, root=root,
        data={**{f"movielens-100k/{name}": digest for name, digest in data.MOVIELENS_FILES.items()},
              "movielens-100k/ratings (int64 user, movie, rating, timestamp)": data.MOVIELENS_RATINGS_SHA256},
        training={"epochs": epochs, "max_len": max_len, "users": len(split.train),
                  "final_train_loss": round(losses[-1], 4), "parameters": rs.count_parameters(sasrec),
                  "seconds": round(time.perf_counter() - started, 1)},
        packages=("safetensors",))


# ---------------------------------------------------------------------------------------------
# assistant: python -m lm4f.assistant build-index, scored on the test questions
# ---------------------------------------------------------------------------------------------
ASSISTANT_INDEX = "index"


def train_assistant(root=None) -> SavedModel:
    from lm4f import shop
    from lm4f.assistant import Assistant, build_and_tune, evaluate

    started = time.perf_counter()
    case_folder = Path(root if root is not None else models_dir()) / "assistant"
    case_folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=case_folder, prefix=".building-") as scratch:
        index = build_and_tune(Path(scratch) / ASSISTANT_INDEX)
        questions = shop.questions("test")
        report = evaluate(Assistant.from_index(index), questions)
        figures = {name: row["value"] for name, row in report["metrics"].items()
                   if isinstance(row, dict) and isinstance(row.get("value"), (int, float))}
        _say(f"test split, {len(questions)} questions: " + ", ".join(
            f"{name} {figures[name]:.3f}" for name in ("recall@5", "correctness", "handoff_f1") if name in figures))
        return save_assistant(index, root=root,
                              metrics={"split": f"test ({len(questions)} questions, extractive backend)",
                                       **_rounded(figures)},
                              training={"settings": index.settings, "seconds": round(time.perf_counter() - started, 1)})


def save_assistant(index, *, metrics: dict, training: dict | None = None, root=None) -> SavedModel:
    """Save a built index (``lm4f.retrieval.build_index``, settings and classifiers included) as a new
    ``assistant`` version: the index folder is copied to ``index/``; the data checksums are those of
    the shop's knowledge files and of the MiniLM checkpoint the embeddings were made with."""
    from lm4f import data, shop
    from lm4f.saved_models import file_checksums

    def write(folder: Path) -> dict:
        shutil.copytree(index.folder, folder / ASSISTANT_INDEX)
        return {"index": ASSISTANT_INDEX, "backend": "extractive", "passages": len(index.passages)}

    knowledge = {f"shop/{name}": facts["sha256"] for name, facts in file_checksums(shop.SHOP_DIR).items()
                 if name.endswith((".md", ".jsonl"))}
    return save_model("assistant", write, root=root, metrics=metrics, training=training,
                      data={**knowledge, "minilm/model.safetensors": data.MINILM_SAFETENSORS_SHA256},
                      packages=("sentence-transformers", "transformers", "bm25s", "joblib"))


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trainer:
    """One trainable case: a one-line description and ``train(root) -> SavedModel``."""

    description: str
    train: Callable[..., SavedModel]


# generate: the settings of chapters/ch02_3_generative_images.ipynb (the model it chooses and serves)
def train_generate(root=None) -> SavedModel:
    import torch

    from lm4f import data, generative

    steps = lm4f.pick(ci=450, full=6000, smoke=8)
    batch_size = lm4f.pick(ci=64, full=128, smoke=16)
    pixels, labels = data.fashion_mnist("train")
    started = time.perf_counter()
    model, _, history = generative.train_gan(generative.to_unit(pixels), torch.from_numpy(labels.astype(np.int64)),
                                             steps=steps, batch_size=batch_size, mode_seeking=1.0, seed=SEED,
                                             device=lm4f.choose_device())
    seconds = time.perf_counter() - started
    last = history[-1]
    _say(f"conditional GAN: {steps} steps of batch {batch_size} in {seconds:.0f} s; D(real) {last['d_real']:.3f}, "
         f"D(G(z)) {last['d_fake']:.3f}, spread {last['spread']:.3f}")
    metrics = {"split": "none (a generator; chapter 2.3 measures it against held-out images)",
               **_rounded({key: last[key] for key in ("d_real", "d_fake", "spread")})}
    return generative.save_generator(model.cpu(), metrics=metrics, root=root,
                                     training={"steps": steps, "batch_size": batch_size, "loss": "non_saturating",
                                               "mode_seeking": 1.0, "seconds": round(seconds, 1)})


TRAINERS: dict[str, Trainer] = {
    "reviews": Trainer("review triage (6.2): TF-IDF classifier + MiniLM review search", train_reviews),
    "images": Trainer("product images (6.3): the ProductCNN on Fashion-MNIST", train_images),
    "movies": Trainer("recommender (6.4): SASRec over MovieLens-100K histories", train_movies),
    "assistant": Trainer("customer-service assistant (6.2): index, tuned settings, classifiers", train_assistant),
    "generate": Trainer("product-image generator (2.3): a conditional GAN on Fashion-MNIST", train_generate),
}


def train(case: str, root=None) -> SavedModel:
    """Train ``case`` at the current ``LM4F_SIZE`` and save it under ``root`` (default ``models_dir()``)."""
    if case not in TRAINERS:
        raise ValueError(f"unknown case {case!r}; choose one of: {', '.join(TRAINERS)}")
    return TRAINERS[case].train(root)


def main(argv: list[str] | None = None) -> int:
    cases = "\n".join(f"  {name:10s} {trainer.description}" for name, trainer in TRAINERS.items())
    parser = argparse.ArgumentParser(
        prog="python -m lm4f.train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Train a case study's model and save it as a new version.\n\ncases:\n{cases}\n\n"
                    "Size: LM4F_SIZE=ci (default, minutes on a laptop) or full.")
    parser.add_argument("case", choices=list(TRAINERS), metavar="CASE", help=f"one of: {', '.join(TRAINERS)}")
    parser.add_argument("--models", default=None,
                        help=f"folder that holds <case>/<version>/ (env LM4F_MODELS; default {models_dir()})")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    _say(f"training {args.case} at size {lm4f.SIZE} ...")
    try:
        saved = train(args.case, args.models)
    except (ModelFileError, DataError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    metrics = ", ".join(f"{key} {value}" for key, value in saved.metadata["metrics"].items())
    _say(f"saved {args.case} {saved.version} -> {saved.folder} in {time.perf_counter() - started:.0f} s\n"
         f"  {metrics}\n  serve it: python -m lm4f.serve {args.case} --model {saved.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
