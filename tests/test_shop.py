"""Case study 6.2: the shop's knowledge base and the labelled customer questions (lm4f.shop)."""

import json
import re
import shutil
import subprocess
import sys
from collections import Counter

import pandas as pd
import pytest

import lm4f.data
from lm4f import shop


@pytest.fixture
def shop_copy(tmp_path, monkeypatch):
    """A copy of the shop folder that a test may break; lm4f.shop reads from it."""
    folder = tmp_path / "shop"
    shutil.copytree(shop.SHOP_DIR, folder, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    monkeypatch.setattr(shop, "SHOP_DIR", folder)
    return folder


def _normalise(text):
    return " ".join(text.lower().split())


def test_passages_load_in_a_stable_order_with_unique_ids():
    policy, products, everything = shop.policy_passages(), shop.product_passages(), shop.passages()
    assert everything == policy + products
    assert 35 <= len(policy) <= 50
    assert len(products) == 4 * 40
    ids = [passage.id for passage in everything]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", pid) for pid in ids)
    assert all(passage.title and passage.text and passage.source for passage in everything)
    assert {passage.source for passage in policy} == {f"policies/{path.name}"
                                                     for path in (shop.SHOP_DIR / "policies").glob("*.md")}
    assert all(passage.source.startswith(f"reviews: Clothing ID {passage.id.split('-')[1]} (rows ")
               for passage in products)
    kb = shop.passage_by_id()
    assert list(kb) == ids and kb["returns-01"].title == "Return window and condition"
    # every policy topic the assistant must cover has passages
    topics = Counter(pid.rsplit("-", 1)[0] for pid in ids if not pid.startswith("product-"))
    assert {"shipping", "returns", "sizing", "care", "payment", "privacy", "orders"} <= set(topics)


def test_policy_passages_state_the_numbers_customers_ask_about():
    kb = shop.passage_by_id()
    assert "30 days" in kb["returns-01"].text
    assert "$75" in kb["shipping-01"].text
    assert "1 hour" in kb["orders-01"].text
    assert "cm" in kb["sizing-02"].text and " in)" in kb["sizing-02"].text


def test_questions_are_labelled_consistently():
    kb = shop.passage_by_id()
    items = shop.questions()
    assert len(items) >= 300
    assert len({question.id for question in items}) == len(items)
    assert len({_normalise(question.question) for question in items}) == len(items), "duplicate questions"
    for question in items:
        assert question.kind in shop.KINDS and question.split in shop.SPLITS
        if question.handoff:
            assert question.handoff_reason in shop.HANDOFF_REASONS and question.kind == "handoff"
            assert question.passage_ids == () and question.facts == () and question.answer == ""
            continue
        assert question.handoff_reason is None and question.passage_ids and question.facts and question.answer
        texts = [_normalise(kb[pid].text) for pid in question.passage_ids]  # KeyError = unknown passage id
        for fact in question.facts:
            assert any(_normalise(fact) in text for text in texts), (question.id, fact)
            assert _normalise(fact) in _normalise(question.answer), (question.id, fact)
        if question.kind == "multi":
            assert len(set(question.passage_ids)) >= 2, question.id
    assert shop.check()["questions"] == len(items)


def test_the_question_mix():
    items = shop.questions()
    kinds = Counter(question.kind for question in items)
    assert kinds["product"] >= 80 and kinds["handoff"] >= 60 and kinds["typo"] >= 35 and kinds["multi"] >= 30
    product_ids = {pid.split("-")[1] for question in items for pid in question.passage_ids
                   if pid.startswith("product-")}
    assert len(product_ids) >= 30, "product questions should cover most of the 40 products"
    # a product question names its product, so that retrieval has a chance
    for question in items:
        for pid in question.passage_ids:
            if pid.startswith("product-"):
                assert pid.split("-")[1] in question.question, question.id


def test_splits_are_stratified_deterministic_and_complete():
    items = [question for question in shop.questions() if question.split not in shop.HOLDOUT_FILES]
    dev, test = shop.questions("dev"), shop.questions("test")
    assert len(dev) + len(test) == len(items) and not {q.id for q in dev} & {q.id for q in test}
    assert 0.40 <= len(dev) / len(items) <= 0.50
    for split in (dev, test):
        assert {question.kind for question in split} == set(shop.KINDS)
        assert {question.handoff_reason for question in split if question.handoff} == set(shop.HANDOFF_REASONS)
    rule = shop.split_rule(items)
    assert all(question.split == rule[question.id] for question in items)
    assert shop.split_rule(list(reversed(items))) == rule
    with pytest.raises(ValueError, match="'dev'"):
        shop.questions("train")


@pytest.mark.parametrize("split", list(shop.HOLDOUT_FILES))
def test_each_holdout_split_is_separate_complete_and_new(split):
    holdout = shop.questions(split)
    prefix = shop.HOLDOUT_FILES[split][1]
    assert len(holdout) >= 150
    assert all(question.split == split and question.id.startswith(prefix) for question in holdout)
    assert {question.kind for question in holdout} == set(shop.KINDS)
    assert {question.handoff_reason for question in holdout if question.handoff} == set(shop.HANDOFF_REASONS)
    earlier = {_normalise(question.question) for question in shop.questions() if question.split != split}
    assert not earlier & {_normalise(question.question) for question in holdout}
    ids = [question.id for question in shop.questions()]
    position = ids.index(holdout[0].id)  # each holdout file is read after the ones written before it
    assert ids[position:position + len(holdout)] == [question.id for question in holdout]
    assert all(ids.index(shop.questions(other)[0].id) < position for other in list(shop.HOLDOUT_FILES)[
        :list(shop.HOLDOUT_FILES).index(split)])


def test_handoff_training_messages_cover_every_label_and_no_scored_question():
    examples = shop.handoff_examples()
    labels = Counter(label for _, label in examples)
    assert set(labels) == set(shop.HANDOFF_LABELS) and min(labels.values()) >= 30 and len(examples) >= 300
    assert len({_normalise(text) for text, _ in examples}) == len(examples)
    asked = {_normalise(question.question) for question in shop.questions()}
    assert not asked & {_normalise(text) for text, _ in examples}


def test_check_catches_a_training_message_that_is_a_scored_question(shop_copy):
    question = shop.questions("test")[0].question
    with (shop_copy / "handoff_train.jsonl").open("a", encoding="utf-8") as out:
        out.write(json.dumps({"text": question, "label": "answer"}) + "\n")
    with pytest.raises(shop.ShopDataError, match="handoff_train.jsonl repeats 1 labelled questions"):
        shop.check()
    (shop_copy / "handoff_train.jsonl").write_text('{"text": "hi", "label": "maybe"}\n', encoding="utf-8")
    with pytest.raises(shop.ShopDataError, match=r"handoff_train\.jsonl, line 1: .*'answer'"):
        shop.handoff_examples()


def test_a_holdout_line_in_the_wrong_split_is_named(shop_copy):
    path = shop_copy / "holdout.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[0])
    row["split"] = "dev"
    path.write_text("\n".join([json.dumps(row)] + lines[1:]) + "\n", encoding="utf-8")
    with pytest.raises(shop.ShopDataError, match=r"holdout\.jsonl, line 1: every question of this file has split"):
        shop.questions()


def test_product_knowledge_is_rebuilt_byte_for_byte_from_the_reviews(tmp_path):
    rebuilt = shop.build_products(lm4f.data.clothing_reviews())
    path = shop.write_products(rebuilt, tmp_path / "products.jsonl")
    assert path.read_bytes() == (shop.SHOP_DIR / "products.jsonl").read_bytes(), (
        "products.jsonl is out of date: run `python -m lm4f.shop build-products`")


def _frame(texts, clothing_id=7):
    n = len(texts)
    return pd.DataFrame({
        "Clothing ID": [clothing_id] * n, "Title": [None] * n, "Review Text": texts,
        "Rating": [5, 4, 5, 3, 4, 5, 1, 2, 5, 4][:n], "Recommended IND": [1, 1, 1, 0, 1, 1, 0, 0, 1, 1][:n],
        "Division Name": ["General"] * n, "Department Name": ["Dresses"] * n, "Class Name": ["Dresses"] * n,
    })


def test_build_products_counts_fit_fabric_and_colour_from_review_text():
    texts = [
        "Runs small, I sized up to a medium.",
        "Definitely runs a bit small.",
        "True to size and so soft.",
        "It doesn't run small at all. Lovely.",  # negated: not counted as "runs small"
        "Soft, but a little see-through in the white.",
        "Not see-through, and the lining is nice. The blue is darker than in the picture.",
        None,  # a rating without text counts as a review, not as a text
        "Ran small in the bust, order a size up.",
        "I went up a size.",
        "Fits small.",
    ]
    frame = pd.concat([_frame(texts), _frame(["Runs large."], clothing_id=8)])
    frame.index = range(100, 111)
    passages = shop.build_products(frame, n_products=1)
    assert [p.id for p in passages] == ["product-7-overview", "product-7-fit", "product-7-fabric", "product-7-colour"]
    overview, fit, fabric, colour = (p.text for p in passages)
    assert "It has 10 customer reviews with an average rating of 3.8 out of 5, and 70% of reviewers recommend it." \
        in overview
    assert ("from 9 reviews with text: 6 mention the fit; 5 say it runs small or that they sized up, 0 say it runs "
            "large or that they sized down, and 1 says it is true to size.") in fit
    assert "Most reviewers who mention fit say it runs small (5 of 6)." in fit
    assert "1 reviewer says it is sheer or see-through and 1 says it is not see-through." in fabric
    assert "1 reviewer mentions a lining" in fabric
    assert "1 reviewer says the colour looks different in person" in colour
    assert passages[1].source == "reviews: Clothing ID 7 (rows 100, 101, 102)"
    assert shop.build_products(frame, n_products=1) == passages  # deterministic
    few = shop.build_products(_frame(["Runs small.", "True to size."]), n_products=1)[1].text
    assert "Too few reviewers mention the fit of item 7 (Dresses) to say how it runs (2 mentions)." in few
    with pytest.raises(ValueError, match="Class Name"):
        shop.build_products(frame.drop(columns=["Class Name"]))


def test_a_missing_products_file_names_the_rebuild_command(shop_copy):
    (shop_copy / "products.jsonl").unlink()
    with pytest.raises(shop.ShopDataError, match=r"products\.jsonl.*missing.*python -m lm4f.shop build-products"):
        shop.passages()


def test_a_corrupt_question_line_is_named_with_its_line_number(shop_copy):
    path = shop_copy / "questions.jsonl"
    original = path.read_text(encoding="utf-8").splitlines()
    truncated = list(original)
    truncated[2] = truncated[2][:40]
    path.write_text("\n".join(truncated) + "\n", encoding="utf-8")
    with pytest.raises(shop.ShopDataError, match=r"questions\.jsonl, line 3: not valid JSON.*git checkout"):
        shop.questions()
    row = json.loads(original[5])
    row["kind"] = "chitchat"
    wrong_kind = original[:5] + [json.dumps(row)] + original[6:]
    path.write_text("\n".join(wrong_kind) + "\n", encoding="utf-8")
    with pytest.raises(shop.ShopDataError, match=r"questions\.jsonl, line 6: kind 'chitchat'"):
        shop.questions()


def test_a_malformed_policy_file_is_named_with_its_line(shop_copy):
    path = shop_copy / "policies" / "returns.md"
    text = path.read_text(encoding="utf-8").replace("## returns-02 | How to return an item", "## How to return")
    path.write_text(text, encoding="utf-8")
    line = text.splitlines().index("## How to return") + 1
    with pytest.raises(shop.ShopDataError, match=rf"returns\.md, line {line}: a passage heading must read"):
        shop.passages()


def test_check_catches_a_fact_that_no_passage_supports(shop_copy):
    path = shop_copy / "policies" / "returns.md"
    path.write_text(path.read_text(encoding="utf-8").replace("within 30 days of the delivery date",
                                                             "within 60 days of the delivery date"),
                    encoding="utf-8")
    with pytest.raises(shop.ShopDataError, match=r"fact '30 days' is in none of \['returns-01'\]"):
        shop.check()


def test_check_command_prints_counts():
    result = subprocess.run([sys.executable, "-m", "lm4f.shop", "check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "passages" in result.stdout and "dev/handoff" in result.stdout and result.stdout.strip().endswith("OK")
    unknown = subprocess.run([sys.executable, "-m", "lm4f.shop", "frobnicate"], capture_output=True, text=True,
                             timeout=120)
    assert unknown.returncode == 2 and "build-products|check|split" in unknown.stderr
