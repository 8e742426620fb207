"""Case study 6.2: task A quality and training time of the cheap models, MiniLM embedding speed,
and the review-assistant API's single-request latency (a real uvicorn server, httpx client).

The Transformer rows of task A take minutes; they are measured by
chapters/ch06_2_nlp_review_assistant.ipynb, and copied here from results/nlp.json (marked
``"source": "results/nlp.json"``) when that file exists. The notebook's best model, TF-IDF stacked
with frozen MiniLM embeddings of 2,000 training reviews, is also rebuilt and timed here on the whole
test split (2,263 reviews), so `make bench` reports it on the machine it runs on.
"""

import json
import time
from pathlib import Path

import httpx
import numpy as np

import lm4f
import lm4f.data
import lm4f.serving
from lm4f.apps.nlp import create_app
from lm4f.nlp import (LABEL, ReviewRetriever, TfidfClassifier, best_threshold, binary_report, clean_reviews,
                      embed, load_minilm, split_reviews)

RESULTS = Path(__file__).resolve().parents[1] / "results" / "nlp.json"


def stacked_on_the_whole_test_split(tfidf, encoder, train, validation, test, context, embedded=4_000, tokens=64):
    """A logistic regression on [TF-IDF logit, 384 MiniLM numbers], trained on ``embedded`` training
    reviews with *out-of-fold* TF-IDF logits (5 folds), threshold tuned on the validation split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split

    started = time.perf_counter()
    features = tfidf.pipeline[0]  # the fitted TF-IDF FeatureUnion
    labels = train[LABEL].to_numpy()
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    out_of_fold = cross_val_predict(LogisticRegression(C=tfidf.C, max_iter=2000), features.transform(train["text"]),
                                    labels, cv=folds, method="decision_function")  # (N_train,)
    chosen, _ = train_test_split(np.arange(len(train)), train_size=embedded, stratify=labels, random_state=0)
    encoder.max_seq_length = tokens

    def stack(logits, texts):
        return np.column_stack([logits, embed(encoder, texts)])  # (N, 1 + 384)

    stacker = LogisticRegression(C=0.5, max_iter=3000).fit(
        stack(out_of_fold[chosen], train["text"].iloc[chosen]), labels[chosen])
    validation_p = stacker.predict_proba(stack(tfidf.decision_function(validation["text"]), validation["text"]))[:, 1]
    test_p = stacker.predict_proba(stack(tfidf.decision_function(test["text"]), test["text"]))[:, 1]
    threshold = best_threshold(validation_p, validation[LABEL].to_numpy())
    report = binary_report(test[LABEL], (test_p >= threshold).astype(int))
    notes = {"embedded_train_reviews": embedded, "tokens": tokens, "threshold": threshold, **context}
    return [
        {"metric": "TF-IDF + MiniLM stacked test accuracy", "value": report["accuracy"], "unit": "", **notes},
        {"metric": "TF-IDF + MiniLM stacked test macro-F1", "value": report["macro_f1"], "unit": "", **notes},
        {"metric": "TF-IDF + MiniLM stacked, time to build", "value": time.perf_counter() - started, "unit": "s",
         **notes},
    ]


def run():
    lm4f.seed_everything(0)
    figures = []
    frame, _ = clean_reviews(lm4f.data.clothing_reviews())
    splits = split_reviews(frame, seed=0)
    train, validation, test = splits["train"], splits["validation"], splits["test"]
    context = {"test_reviews": len(test), "split": "seed 0, 80/10/10 stratified"}

    majority = binary_report(test[LABEL], np.ones(len(test), dtype=int))
    figures.append({"metric": "majority class test accuracy", "value": majority["accuracy"], "unit": "", **context})
    started = time.perf_counter()
    tfidf = TfidfClassifier().fit(train["text"], train[LABEL])
    train_seconds = time.perf_counter() - started
    tfidf.tune_threshold(validation["text"], validation[LABEL])
    report = binary_report(test[LABEL], tfidf.predict(test["text"]))
    figures += [
        {"metric": "TF-IDF test accuracy", "value": report["accuracy"], "unit": "", **context},
        {"metric": "TF-IDF test macro-F1", "value": report["macro_f1"], "unit": "", **context},
        {"metric": "TF-IDF training time", "value": train_seconds, "unit": "s", "train_reviews": len(train)},
    ]

    encoder = load_minilm(max_seq_length=128)
    figures += stacked_on_the_whole_test_split(tfidf, encoder, train, validation, test, context)
    sample = list(train["text"].iloc[:256])
    for tokens in (64, 128):
        encoder.max_seq_length = tokens
        embed(encoder, sample[:16])  # warm-up
        started = time.perf_counter()
        embed(encoder, sample)
        figures.append({"metric": f"MiniLM embedding throughput ({tokens} tokens)",
                        "value": len(sample) / (time.perf_counter() - started), "unit": "reviews/s"})

    encoder.max_seq_length = 128
    product_reviews = frame[frame["Clothing ID"] == 1078].iloc[:200]
    retriever = ReviewRetriever(encoder, product_reviews)
    with lm4f.serving.start(create_app(tfidf, retriever)) as server, httpx.Client(base_url=server.url) as client:
        requests = {
            "/classify": (lambda: client.post("/classify", json={"text": "Runs small but the colour is lovely."}), 200),
            "/ask": (lambda: client.post("/ask", json={"question": "Does it run small?", "clothing_id": 1078}), 50),
        }
        for path, (send, count) in requests.items():
            stats = lm4f.serving.measure_latency(send, requests=count)
            for key in ("p50_ms", "p95_ms"):
                figures.append({"metric": f"API {path} {key[:3]} latency", "value": stats[key], "unit": "ms",
                                "requests": count})

    if RESULTS.exists():
        stored = json.loads(RESULTS.read_text())
        for row in stored["rows"]:
            if row["quality_metric"] == "test accuracy" and row["model"] not in ("majority class",):
                figures.append({"metric": f"{row['model']} test accuracy", "value": row["quality"], "unit": "",
                                "source": "results/nlp.json", "size": stored["size"]})
    return figures
