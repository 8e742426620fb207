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

Your own data instead of the course's (``lm4f.own_data`` reads it; the site's "Use your own data"
page walks through each case on example files that ``python -m lm4f.own_data examples`` writes):

    python -m lm4f.train reviews --csv FILE --text-column COL --label-column COL
    python -m lm4f.train movies --ratings-csv FILE --user-column COL --item-column COL
                                [--rating-column COL [--min-rating X]] [--timestamp-column COL]
    python -m lm4f.train images --image-folder DIR      # DIR/<class name>/<images of any size and format>

The same model and settings as the case study, trained on the file; 80% of the rows train, 10%
validate (the review threshold) and 10% test (stratified by label; every label in each part). The
saved model keeps the label names, your ids or the class names, and the API answers with them.
"""

from __future__ import annotations

import argparse
import shlex
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
    epochs = lm4f.pick(ci=3, full=10, smoke=1)  # the settings of ch06_3
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
    history = vision.train_classifier(model, train_x, train_y, epochs=epochs, batch_size=batch_size, lr=3e-3,
                                      weight_decay=1e-4, schedule="onecycle", use_augmentation=False)
    model.cpu().eval()
    validation_accuracy = vision.classifier_accuracy(model, val_x, val_y)
    test_accuracy = vision.classifier_accuracy(model, test_x, test_y)
    _say(f"ProductCNN: {len(train_x):,} images x {epochs} epochs, validation accuracy {validation_accuracy:.4f}, "
         f"test accuracy {test_accuracy:.4f}")
    metrics = {"split": f"test ({len(test_x):,} images)", "accuracy": round(test_accuracy, 4),
               "validation_accuracy": round(validation_accuracy, 4)}
    return save_model(
        "images", lambda folder: vision.save_classifier(folder, model), metrics=metrics, root=root,
        data={f"fashion-mnist/{name}": digest for name, digest in data.FASHION_MNIST_FILES.items()},
        training={"train_images": len(train_x), "epochs": epochs, "batch_size": batch_size, "lr": 3e-3,
                  "final_train_loss": round(history[-1]["train_loss"], 4),
                  "parameters": lm4f.count_parameters(model), "seconds": round(time.perf_counter() - started, 1)})


# ---------------------------------------------------------------------------------------------
# movies: the settings of chapters/ch06_4_recommender.ipynb (its served model, SASRec)
# ---------------------------------------------------------------------------------------------
def train_movies(root=None) -> SavedModel:
    from lm4f import data
    from lm4f import recsys as rs

    epochs = lm4f.pick(ci=5, full=60, smoke=2)  # the settings of ch06_4
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
                  "final_train_loss": round(losses[-1], 4), "parameters": lm4f.count_parameters(sasrec),
                  "seconds": round(time.perf_counter() - started, 1)},
        packages=("safetensors",))


# ---------------------------------------------------------------------------------------------
# assistant: python -m lm4f.assistant build-index, scored on the holdout3 questions
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
        # holdout3: the one split neither the settings nor the example bank has seen (lm4f.assistant.EXAMPLE_SPLITS)
        questions = shop.questions("holdout3")
        report = evaluate(Assistant.from_index(index), questions)
        figures = {name: row["value"] for name, row in report["metrics"].items()
                   if isinstance(row, dict) and isinstance(row.get("value"), (int, float))}
        _say(f"holdout3 split, {len(questions)} questions: " + ", ".join(
            f"{name} {figures[name]:.3f}" for name in ("recall@5", "correctness", "handoff_f1") if name in figures))
        return save_assistant(index, root=root,
                              metrics={"split": f"holdout3 ({len(questions)} questions, extractive backend)",
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
# Your own data: a CSV of labelled texts, a CSV of interactions, a folder of images (lm4f.own_data)
# ---------------------------------------------------------------------------------------------
def _majority_accuracy(train_labels, test_labels) -> float:
    most_common = np.bincount(train_labels).argmax()
    return float(np.mean(np.asarray(test_labels) == most_common))


def train_reviews_csv(root=None, *, csv, text_column: str, label_column: str, rebuild: str | None = None):
    """The review classifier (TF-IDF + logistic regression) on a CSV of your texts and labels.

    Each label weighs the same in the loss (``class_weight="balanced"``: a founder's labels are often
    lopsided). Two labels: the decision threshold on P(second label) is tuned on the validation rows
    for macro-F1, as chapter 6.2 does; three or more: the most probable label wins. No ``/ask`` index
    (it searches the course's reviews by product).
    """
    from sklearn.metrics import confusion_matrix, f1_score

    from lm4f import own_data
    from lm4f.nlp import TfidfClassifier, save_triage

    started = time.perf_counter()
    table = own_data.read_labelled_texts(csv, text_column, label_column)
    train_rows, validation_rows, test_rows = own_data.stratified_split(table.labels, seed=SEED)
    texts, labels = np.asarray(table.texts, dtype=object), table.labels
    classifier = TfidfClassifier(labels=table.names, class_weight="balanced").fit(texts[train_rows],
                                                                                   labels[train_rows])
    if len(table.names) == 2:
        classifier.tune_threshold(texts[validation_rows], labels[validation_rows])
    predicted = classifier.predict(texts[test_rows])
    truth = labels[test_rows]
    accuracy = float(np.mean(predicted == truth))
    macro_f1 = float(f1_score(truth, predicted, average="macro", labels=range(len(table.names))))
    majority = _majority_accuracy(labels[train_rows], truth)
    _say(f"classifier: {len(table.names)} labels ({', '.join(table.names)}), trained on {len(train_rows):,} rows; "
         f"test accuracy {accuracy:.3f}, macro-F1 {macro_f1:.3f} (majority label {majority:.3f}, "
         f"{len(test_rows)} rows)")
    metrics = {"split": f"test ({len(test_rows):,} rows of {Path(csv).name}, seed {SEED})",
               **_rounded({"accuracy": accuracy, "macro_f1": macro_f1, "majority_accuracy": majority}),
               "confusion": confusion_matrix(truth, predicted, labels=range(len(table.names))).tolist()}
    if len(table.names) == 2:
        metrics["threshold"] = classifier.threshold
    counts = np.bincount(labels, minlength=len(table.names))
    return save_model(
        "reviews", lambda folder: save_triage(folder, classifier), metrics=metrics, root=root, rebuild=rebuild,
        data={f"own/{Path(csv).name}": own_data.file_digest(csv)},
        training={"source": {"csv": str(csv), "text_column": text_column, "label_column": label_column},
                  "labels": {name: int(n) for name, n in zip(table.names, counts)}, "dropped": table.dropped,
                  "rows": {"train": len(train_rows), "validation": len(validation_rows), "test": len(test_rows)},
                  "seconds": round(time.perf_counter() - started, 1)},
        packages=("joblib",))


def train_movies_csv(root=None, *, ratings_csv, user_column: str, item_column: str, rating_column: str | None = None,
                     timestamp_column: str | None = None, min_rating: float | None = None,
                     rebuild: str | None = None) -> SavedModel:
    """The SASRec recommender of chapter 6.4 on a CSV of your interactions, with your ids.

    Each user's last item is the test target and the one before it the validation target
    (leave-one-out by time), ranked against every item they have not interacted with.
    """
    from lm4f import own_data
    from lm4f import recsys as rs

    epochs = lm4f.pick(ci=5, full=60, smoke=2)
    max_len = lm4f.pick(ci=50, full=200)
    started = time.perf_counter()
    interactions = own_data.read_interactions(ratings_csv, user_column, item_column, rating_column,
                                              timestamp_column, min_rating)
    sequences, item_ids = interactions.sequences, interactions.item_ids
    n_items = len(item_ids)  # dense ids 1..n plus the padding id 0
    split = rs.leave_one_out(sequences)
    lm4f.seed_everything(SEED)
    sasrec, seconds, losses = rs.train_sasrec(split.train, max_len=max_len, epochs=epochs, seed=SEED, n_items=n_items)
    result = rs.evaluate_ranking(lambda user, history: sasrec.next_item_scores(history), split, "test")
    baseline = rs.evaluate_ranking(lambda user, history: rs.popularity_scores(split.train, n_items), split, "test")
    _say(f"SASRec: {len(sequences):,} users, {n_items - 1:,} items, {interactions.rows:,} interactions; {epochs} "
         f"epochs in {seconds:.0f} s; test HR@10 {result['HR@10']:.3f}, NDCG@10 {result['NDCG@10']:.3f} "
         f"(popularity HR@10 {baseline['HR@10']:.3f}, {result['users']} users)")
    recommender = rs.Recommender(sasrec.next_item_scores, histories=sequences,
                                 popularity=rs.popularity_scores(sequences, n_items),
                                 titles={i: item for i, item in enumerate(item_ids) if i > 0},
                                 known_users=list(sequences), item_ids=item_ids)
    metrics = {"split": f"test (leave-one-out by time, full ranking, {result['users']} users)",
               **_rounded({"HR@10": result["HR@10"], "NDCG@10": result["NDCG@10"],
                           "popularity_HR@10": baseline["HR@10"]})}
    source = {"ratings_csv": str(ratings_csv), "user_column": user_column, "item_column": item_column,
              "rating_column": rating_column, "timestamp_column": timestamp_column, "min_rating": min_rating}
    return save_model(
        "movies", lambda folder: rs.save_recommender(folder, sasrec, recommender), metrics=metrics, root=root,
        rebuild=rebuild, data={f"own/{Path(ratings_csv).name}": own_data.file_digest(ratings_csv)},
        training={"source": source, "users": len(sequences), "items": n_items - 1, "interactions": interactions.rows,
                  "dropped": interactions.dropped, "epochs": epochs, "max_len": max_len,
                  "final_train_loss": round(losses[-1], 4), "parameters": lm4f.count_parameters(sasrec),
                  "seconds": round(time.perf_counter() - started, 1)},
        packages=("safetensors",))


def train_images_folder(root=None, *, image_folder, rebuild: str | None = None) -> SavedModel:
    """The ProductCNN of chapter 6.3 on a folder of your images, one subfolder per class.

    Every image goes through ``lm4f.vision.prepare_image`` (the conversion ``/predict/image`` applies
    to an upload), so the model trains on what it will be sent. Small folders train for more
    epochs than the 54,000 Fashion-MNIST images need, with flips and shifts (``vision.augment``).
    """
    import torch

    from lm4f import own_data, vision

    epochs = lm4f.pick(ci=15, full=30, smoke=2)
    batch_size = lm4f.pick(ci=128, full=512)
    started = time.perf_counter()
    folder = own_data.read_image_folder(image_folder)
    _say(f"{len(folder.files)} images converted to 28x28 grey; steps taken: "
         + ", ".join(f"{step} {n}" for step, n in sorted(folder.steps.items())))
    train_rows, validation_rows, test_rows = own_data.stratified_split(folder.labels, seed=SEED)
    images, labels = vision.to_tensor(folder.pixels), torch.from_numpy(folder.labels)
    lm4f.seed_everything(SEED)
    model = vision.ProductCNN(classes=len(folder.classes)).to(lm4f.choose_device())
    history = vision.train_classifier(model, images[train_rows], labels[train_rows], epochs=epochs,
                                      batch_size=batch_size, lr=3e-3, weight_decay=1e-4, schedule="onecycle",
                                      use_augmentation=True, seed=SEED)
    model.cpu().eval()
    validation_accuracy = vision.classifier_accuracy(model, images[validation_rows], labels[validation_rows])
    test_accuracy = vision.classifier_accuracy(model, images[test_rows], labels[test_rows])
    majority = _majority_accuracy(folder.labels[train_rows], folder.labels[test_rows])
    _say(f"ProductCNN: {len(folder.classes)} classes ({', '.join(folder.classes)}), {len(train_rows):,} images x "
         f"{epochs} epochs; validation accuracy {validation_accuracy:.3f}, test accuracy {test_accuracy:.3f} "
         f"(majority class {majority:.3f}, {len(test_rows)} images)")
    metrics = {"split": f"test ({len(test_rows)} images of {Path(image_folder).name}, seed {SEED})",
               **_rounded({"accuracy": test_accuracy, "validation_accuracy": validation_accuracy,
                           "majority_accuracy": majority})}
    counts = np.bincount(folder.labels, minlength=len(folder.classes))
    return save_model(
        "images", lambda target: vision.save_classifier(target, model, classes=folder.classes), metrics=metrics,
        root=root, rebuild=rebuild, data={f"own/{Path(image_folder).name} ({len(folder.files)} files)": folder.digest},
        training={"source": {"image_folder": str(image_folder)},
                  "classes": {name: int(n) for name, n in zip(folder.classes, counts)},
                  "conversions": dict(sorted(folder.steps.items())),
                  "images": {"train": len(train_rows), "validation": len(validation_rows), "test": len(test_rows)},
                  "epochs": epochs, "batch_size": batch_size, "lr": 3e-3, "augmentation": True,
                  "final_train_loss": round(history[-1]["train_loss"], 4),
                  "parameters": lm4f.count_parameters(model), "seconds": round(time.perf_counter() - started, 1)})


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trainer:
    """One trainable case: a one-line description, ``train(root) -> SavedModel`` and, for a case that
    takes data of your own, ``own(root, **options) -> SavedModel`` with the names of those options."""

    description: str
    train: Callable[..., SavedModel]
    own: Callable[..., SavedModel] | None = None
    options: tuple[str, ...] = ()


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
    "reviews": Trainer("review triage (6.2): TF-IDF classifier + MiniLM review search", train_reviews,
                       train_reviews_csv, ("csv", "text_column", "label_column")),
    "images": Trainer("product images (6.3): the ProductCNN on Fashion-MNIST", train_images,
                      train_images_folder, ("image_folder",)),
    "movies": Trainer("recommender (6.4): SASRec over MovieLens-100K histories", train_movies, train_movies_csv,
                      ("ratings_csv", "user_column", "item_column", "rating_column", "timestamp_column",
                       "min_rating")),
    "assistant": Trainer("customer-service assistant (6.2): index, tuned settings, classifiers", train_assistant),
    "generate": Trainer("product-image generator (2.3): a conditional GAN on Fashion-MNIST", train_generate),
}


REQUIRED = {"csv": ("text_column", "label_column"), "ratings_csv": ("user_column", "item_column")}


def train(case: str, root=None, **own) -> SavedModel:
    """Train ``case`` at the current ``LM4F_SIZE`` and save it under ``root`` (default ``models_dir()``).

    ``own``: the options of data of your own (``csv=..., text_column=..., label_column=...`` for
    reviews; see ``TRAINERS[case].options``); without them the case trains on the course's data.
    """
    if case not in TRAINERS:
        raise ValueError(f"unknown case {case!r}; choose one of: {', '.join(TRAINERS)}")
    trainer = TRAINERS[case]
    own = {name: value for name, value in own.items() if value is not None}
    if not own or set(own) == {"rebuild"}:
        return trainer.train(root)
    return trainer.own(root, **own)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_own_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The own-data options given, checked: each belongs to the case, and each file comes with its columns."""
    given = {name: getattr(args, name) for trainer in TRAINERS.values() for name in trainer.options
             if getattr(args, name, None) is not None}
    allowed = TRAINERS[args.case].options
    for name in given:
        if name not in allowed:
            owner = next(case for case, trainer in TRAINERS.items() if name in trainer.options)
            parser.error(f"{_flag(name)} is an option of the {owner} case, not of {args.case}")
    if given:
        source = allowed[0]  # --csv, --ratings-csv or --image-folder
        if source not in given:
            parser.error(f"{', '.join(_flag(n) for n in given)} need(s) {_flag(source)}: the file or folder to read")
        missing = [n for n in REQUIRED.get(source, ()) if n not in given]
        if missing:
            parser.error(f"{_flag(source)} needs {' and '.join(_flag(n) for n in missing)}: the column(s) to read")
    return given


def main(argv: list[str] | None = None) -> int:
    cases = "\n".join(f"  {name:10s} {trainer.description}" for name, trainer in TRAINERS.items())
    parser = argparse.ArgumentParser(
        prog="python -m lm4f.train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Train a case study's model and save it as a new version.\n\ncases:\n{cases}\n\n"
                    "Size: LM4F_SIZE=ci (default, minutes on a laptop) or full.")
    parser.add_argument("case", choices=list(TRAINERS), metavar="CASE", help=f"one of: {', '.join(TRAINERS)}")
    parser.add_argument("--models", default=None,
                        help=f"folder that holds <case>/<version>/ (env LM4F_MODELS; default {models_dir()})")
    own = parser.add_argument_group("your own data (see lm4f.own_data and the site's 'Use your own data' page)")
    own.add_argument("--csv", help="reviews: a CSV file with a text column and a label column")
    own.add_argument("--text-column", help="reviews: the column holding the texts")
    own.add_argument("--label-column", help="reviews: the column holding the labels (two or more values)")
    own.add_argument("--ratings-csv", help="movies: a CSV file of interactions, one per row")
    own.add_argument("--user-column", help="movies: the column holding user ids (any text)")
    own.add_argument("--item-column", help="movies: the column holding item ids (any text)")
    own.add_argument("--rating-column", help="movies: the column holding ratings (numbers; optional)")
    own.add_argument("--timestamp-column", help="movies: the column ordering each history: numbers or dates "
                                                "(optional; default the file's row order)")
    own.add_argument("--min-rating", type=float, help="movies: keep only ratings >= this (default: every rating)")
    own.add_argument("--image-folder", help="images: a folder with one subfolder of images per class")
    args = parser.parse_args(argv)
    options = _check_own_options(parser, args)
    if options:
        words = sys.argv[1:] if argv is None else list(argv)
        options["rebuild"] = (f"LM4F_SIZE={lm4f.SIZE} " if lm4f.SIZE != "ci" else "") + \
            "python -m lm4f.train " + shlex.join(words)
    started = time.perf_counter()
    source = next((f" from {value}" for name, value in options.items() if name in ("csv", "ratings_csv",
                                                                                     "image_folder")), "")
    _say(f"training {args.case}{source} at size {lm4f.SIZE} ...")
    try:
        saved = train(args.case, args.models, **options)
    except (ModelFileError, DataError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    metrics = ", ".join(f"{key} {value}" for key, value in saved.metadata["metrics"].items())
    _say(f"saved {args.case} {saved.version} -> {saved.folder} in {time.perf_counter() - started:.0f} s\n"
         f"  {metrics}\n  serve it: python -m lm4f.serve {args.case} --model {saved.folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
