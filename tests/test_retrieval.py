"""Retrieval for the customer-service assistant (case study 6.2): BM25, MiniLM, hybrid, the saved index.

Unit tests use a handful of passages written here; the integration test indexes the real knowledge
base (all policy passages and the passages of a few products) with the real MiniLM once per module.
"""

import json
import re

import numpy as np
import pytest

from lm4f import retrieval, shop
from lm4f.nlp import load_minilm
from lm4f.retrieval import (REBUILD_COMMAND, BM25Retriever, IndexFileError, Passage, bootstrap_interval, build_index,
                            load_index, paired_bootstrap, recall_at_k, reciprocal_rank, tokenize)

FIXTURE = [
    Passage("returns-01", "Return window", "You can return items within 30 days of delivery for a full refund. "
            "Items must be unworn with the tags attached.", "policies/returns.md"),
    Passage("shipping-01", "Shipping costs", "Standard shipping is free on orders of $75 or more; below that it "
            "costs $6.95. Express shipping costs $14.95.", "policies/shipping.md"),
    Passage("care-03", "Caring for wool and cashmere", "Hand wash wool and cashmere sweaters in cold water and dry "
            "them flat. A fabric comb removes pilling.", "policies/care.md"),
    Passage("payment-01", "Payment methods", "We accept Visa, Mastercard, American Express, PayPal and Apple Pay.",
            "policies/payment.md"),
    Passage("product-1078-fit", "Item 1078: fit", "Most reviewers who mention fit say the 1078 dress runs large.",
            "reviews: Clothing ID 1078 (rows 1, 2)"),
]


def real_subset(items=("1078", "862", "936")):
    """Every policy passage, the passages of a few products, and the dev questions they answer."""
    passages = [p for p in shop.passages()
                if not p.id.startswith("product-") or p.id.split("-")[1] in items]
    ids = {p.id for p in passages}
    dev = [q for q in shop.questions("dev") if q.handoff or set(q.passage_ids) <= ids]
    return passages, dev


@pytest.fixture(scope="module")
def encoder():
    return load_minilm()


@pytest.fixture(scope="module")
def small_index(encoder, tmp_path_factory):
    return build_index(FIXTURE, tmp_path_factory.mktemp("small") / "index", encoder)


@pytest.fixture(scope="module")
def real_index(encoder, tmp_path_factory):
    passages, dev = real_subset()
    return build_index(passages, tmp_path_factory.mktemp("real") / "index", encoder), dev


def test_tokenize_stems_lightly_and_keeps_numbers():
    assert tokenize("Returns returned RETURNING") == ["return"] * 3
    assert tokenize("sizing, sized and sizes") == ["siz"] * 3
    assert tokenize("Is the 1078 dress $75?") == ["1078", "dress", "75"]
    assert tokenize("what is it") == []


def test_bm25_finds_the_passage_and_corrects_typos_but_not_real_words():
    bm25 = BM25Retriever.from_passages(FIXTURE)
    hits = bm25.search("how much does express shipping cost", k=3)
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].id == "shipping-01"
    assert hits[0].score > hits[1].score >= 0 and hits[0].bm25 == hits[0].score
    assert bm25.search("retrun policy", k=1)[0].id == "returns-01"
    assert bm25.query_tokens("cashmeer swetaers") == ["cashmer", "sweater"]
    assert bm25.query_tokens("retrun") == ["return"]
    no_typo = BM25Retriever(bm25.bm25, FIXTURE, correct_typos=False)
    assert no_typo.query_tokens("retrun policy") == []
    assert bm25.query_tokens("my apartment number") == []  # a real English word is not "fixed" into another
    assert not np.any(bm25.scores("zebra"))
    with pytest.raises(ValueError, match="positive integer"):
        bm25.search("shipping", k=0)


def test_dense_and_hybrid_rank_by_meaning(small_index):
    dense = small_index.retriever("dense")
    top = dense.search("Which credit cards can I pay with?", k=2)
    assert top[0].id == "payment-01" and -1.0 <= top[1].dense <= top[0].dense <= 1.0
    for method in ("rrf", "weighted"):
        hybrid = small_index.retriever("hybrid", method=method)
        hits = hybrid.search("Does the 1078 dress run small?", k=3)
        assert hits[0].id == "product-1078-fit" and hits[0].bm25 > 0 and hits[0].dense > 0.3
    query = "can I send back a jumper that pills"
    bm25_order = [h.id for h in small_index.retriever("bm25").search(query, k=5)]
    dense_order = [h.id for h in small_index.retriever("dense").search(query, k=5)]
    assert [h.id for h in small_index.retriever("hybrid", method="weighted", weight=0.0).search(query, 5)] \
        == bm25_order
    assert [h.id for h in small_index.retriever("hybrid", method="weighted", weight=1.0).search(query, 5)] \
        == dense_order
    with pytest.raises(ValueError, match="method"):
        small_index.retriever("hybrid", method="max")


def test_saved_index_reloads_to_the_same_results_and_records_checksums(small_index, encoder):
    manifest = json.loads((small_index.folder / "manifest.json").read_text())
    assert set(manifest["files"]) >= {"passages.jsonl", "embeddings.npy", "bm25/vocab.index.json"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in manifest["files"].values())
    assert manifest["encoder"]["weights_sha256"] == __import__("lm4f.data").data.MINILM_SAFETENSORS_SHA256
    loaded = load_index(small_index.folder, encoder=encoder)
    assert [p.id for p in loaded.passages] == [p.id for p in FIXTURE]
    np.testing.assert_array_equal(loaded.embeddings, small_index.embeddings)
    for query in ("free shipping over $75?", "wash a cashmere sweater"):
        assert loaded.retriever("hybrid").search(query, 3) == small_index.retriever("hybrid").search(query, 3)


def test_missing_or_corrupt_index_files_name_the_file_and_the_rebuild_command(small_index, encoder, tmp_path):
    with pytest.raises(IndexFileError, match="manifest.json is missing") as missing:
        load_index(tmp_path / "nowhere")
    assert REBUILD_COMMAND in str(missing.value)
    copy = tmp_path / "index"
    import shutil

    shutil.copytree(small_index.folder, copy)
    embeddings = copy / "embeddings.npy"
    embeddings.write_bytes(embeddings.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(IndexFileError, match="embeddings.npy is corrupt") as corrupt:
        load_index(copy)
    assert REBUILD_COMMAND in str(corrupt.value)
    shutil.copy(small_index.folder / "embeddings.npy", embeddings)
    (copy / "bm25" / "vocab.index.json").unlink()
    with pytest.raises(IndexFileError, match=r"vocab.index.json is missing"):
        load_index(copy)
    shutil.copy(small_index.folder / "bm25" / "vocab.index.json", copy / "bm25" / "vocab.index.json")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["encoder"]["weights_sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFileError, match="same model"):
        load_index(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFileError, match="not a valid index manifest"):
        load_index(copy)


def test_build_index_refuses_duplicate_ids(encoder, tmp_path):
    with pytest.raises(ValueError, match="unique"):
        build_index([FIXTURE[0], FIXTURE[0]], tmp_path / "index", encoder)


def test_rank_metrics_and_bootstrap():
    assert recall_at_k(["a", "b", "c"], ["c", "z"], k=3) == 0.5
    assert recall_at_k(["a", "b", "c"], ["c"], k=2) == 0.0
    assert reciprocal_rank(["a", "b", "c"], ["c", "b"]) == 0.5 and reciprocal_rank(["a"], ["z"]) == 0.0
    values = np.r_[np.ones(80), np.zeros(20)]
    low, high = bootstrap_interval(values, seed=0)
    assert low < 0.8 < high and 0.05 < high - low < 0.2
    assert bootstrap_interval(values, seed=0) == (low, high)  # seeded: the same interval every time
    better = paired_bootstrap(values, np.r_[np.ones(60), np.zeros(40)])
    assert better["difference"] == pytest.approx(0.2) and better["low"] > 0 and better["p_a_not_better"] < 0.05
    with pytest.raises(ValueError, match="same questions"):
        paired_bootstrap([1, 0], [1])


def test_real_knowledge_base_hybrid_beats_or_matches_each_retriever_on_dev(real_index):
    index, dev = real_index
    answerable = [q for q in dev if q.passage_ids]
    assert len(answerable) >= 60
    reports = {kind: retrieval.retrieval_report(index.retriever(kind), answerable, resamples=200)
               for kind in ("bm25", "dense")}
    chosen = retrieval.choose_hybrid(index, answerable)
    assert chosen["settings"]["method"] in ("rrf", "weighted") and len(chosen["table"]) == len(retrieval.HYBRID_GRID)
    hybrid = retrieval.retrieval_report(index.retriever("hybrid", **chosen["settings"]), answerable, resamples=200)
    assert hybrid["recall"] >= 0.9 and hybrid["mrr"] >= 0.8
    assert hybrid["mrr"] >= max(r["mrr"] for r in reports.values()) - 1e-9
    assert hybrid["recall_ci"][0] <= hybrid["recall"] <= hybrid["recall_ci"][1]


def test_dense_query_embeddings_are_kept_for_the_next_reader_and_read_only(small_index):
    dense = small_index.retriever("dense")
    first = dense.embed_query("Can I return a dress?")
    assert dense.embed_query("Can I return a dress?") is first and not first.flags.writeable
    for i in range(dense.QUERY_CACHE + 1):
        dense.embed_query(f"question {i}")
    assert len(dense._recent) == dense.QUERY_CACHE and "Can I return a dress?" not in dense._recent
    assert np.allclose(dense.embed_query("Can I return a dress?"), first)


def test_queries_go_through_the_traced_encoder_with_the_plain_encoders_embeddings(small_index, encoder):
    from lm4f.nlp import TracedEncoder, embed

    dense = small_index.retriever("dense")
    assert isinstance(dense.encoder, TracedEncoder) and small_index.get_query_encoder() is dense.encoder
    texts = ["Can I return a dress?", "wash a cashmere sweater in cold water, and do you ship to Canada?",
             "ok", "word " * 300]  # padding inside one batch, and a text cut at max_seq_length
    expected = embed(encoder, texts)
    np.testing.assert_allclose(embed(dense.encoder, texts), expected, atol=1e-5)
    np.testing.assert_allclose(np.stack([embed(dense.encoder, [t])[0] for t in texts]), expected, atol=1e-5)
    assert embed(dense.encoder, []).shape == (0, 384)
    plain = retrieval.DenseRetriever(encoder, small_index.embeddings, small_index.passages)
    for query in ("free shipping over $75?", "wash a cashmere sweater"):
        assert [h.id for h in dense.search(query, 3)] == [h.id for h in plain.search(query, 3)]


def test_a_test_double_encoder_is_used_as_it_is(tmp_path):
    class Double:
        def encode(self, texts, **_):
            return np.ones((len(texts), 4), dtype=np.float32) / 2

    index = build_index(FIXTURE[:3], tmp_path / "index", Double())
    assert isinstance(index.get_query_encoder(), Double)
