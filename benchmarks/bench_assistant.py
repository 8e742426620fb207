"""Case study 6.2, the customer-service assistant: index build time, retrieval quality on the dev
questions (BM25, MiniLM, hybrid), the extractive assistant's dev scores, and ``POST /ask`` latency
over loopback (a real uvicorn server, one httpx client, the dev questions in turn, each request a
new question for the first 152 requests).

Everything is tuned and scored on the dev split only: the test split is for the chapter's final table.
The complaint classifier is not trained here (``build-index`` trains it, and the dev split has so far
switched it off); every other setting is chosen exactly as ``python -m lm4f.assistant build-index`` does.
"""

import tempfile
import time
from pathlib import Path

import httpx

import lm4f
import lm4f.serving
from lm4f import retrieval, shop
from lm4f.apps.assistant import create_app
from lm4f.assistant import Assistant, build_and_tune, evaluate
from lm4f.nlp import load_minilm


def run():
    lm4f.seed_everything(0)
    figures = []
    dev = shop.questions("dev")
    encoder = load_minilm()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        index = build_and_tune(Path(folder) / "index", encoder=encoder, dev_questions=dev, complaint=False,
                               verbose=False)
        tuned = time.perf_counter() - started
        build = index.manifest["build_seconds"]
        context = {"passages": len(index.passages), "dev_questions": len(dev)}
        figures += [
            {"metric": "index build (BM25 + MiniLM embeddings)", "value": build, "unit": "s", **context},
            {"metric": "build-index with dev tuning (no complaint model)", "value": tuned, "unit": "s", **context},
        ]
        for kind in ("bm25", "dense", "hybrid"):
            report = retrieval.retrieval_report(index.retriever(kind), dev)
            note = {"settings": index.settings["hybrid"]} if kind == "hybrid" else {}
            figures += [
                {"metric": f"{kind} dev recall@5", "value": report["recall"], "unit": "", "ci95": report["recall_ci"],
                 **note},
                {"metric": f"{kind} dev MRR", "value": report["mrr"], "unit": "", "ci95": report["mrr_ci"], **note},
            ]
        hybrid = index.retriever("hybrid")
        started = time.perf_counter()
        for question in dev:
            hybrid.search(question.question, k=5)
        figures.append({"metric": "hybrid search per question (in process)",
                        "value": (time.perf_counter() - started) * 1000 / len(dev), "unit": "ms"})

        bot = Assistant.from_index(index)
        report = evaluate(bot, dev)
        for name in ("correctness", "citation_precision", "citation_relevance", "token_f1", "hallucination",
                     "handoff_precision", "handoff_recall", "handoff_f1"):
            entry = report["metrics"][name]
            figures.append({"metric": f"extractive dev {name}", "value": entry["value"], "unit": "",
                            "ci95": (entry["low"], entry["high"]), "n": entry["n"]})
        figures.append({"metric": "extractive prompt tokens per request", "unit": "MiniLM word pieces",
                        "value": report["metrics"]["prompt_tokens"]["value"]})

        questions = [q.question for q in dev]
        with lm4f.serving.start(create_app(bot)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            position = iter(range(10**9))

            def send():
                question = questions[next(position) % len(questions)]
                response = client.post("/ask", json={"question": question})
                response.raise_for_status()

            stats = lm4f.serving.measure_latency(send, requests=200, warmup=5)
        for key in ("p50_ms", "p95_ms"):
            figures.append({"metric": f"POST /ask {key[:3]} latency (loopback)", "value": stats[key], "unit": "ms",
                            "requests": stats["requests"], "target": "p95 <= 50 ms on 2 CPU cores"})
    return figures
