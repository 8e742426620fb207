"""lm4f.tokens: the byte-level BPE round-trips any text and learns the frequent pairs first; the stored
Chinese sample is the drafts' own prose; the parallel conversations are well formed; bits per
character is the loss over the text divided by its length, whatever the tokeniser."""

import math

import pytest

from lm4f import tokens

CORPUS = ["the dress runs small", "the dress is lovely", "this dress runs large", "the fabric is soft"] * 20


def test_bpe_round_trips_any_text_including_chinese_and_emoji():
    bpe = tokens.train_bpe(CORPUS, vocab_size=300)
    for text in ["the dress runs small", "Größe M passt nicht", "这件连衣裙偏小。", "sizes 🙂 xs-xl"]:
        assert bpe.decode(bpe.encode(text).ids) == text
    assert "".join(tokens.pieces(bpe, "the fabric runs large")) == "the fabric runs large"
    assert "\ufffd" in tokens.pieces(bpe, "连")      # a token holding one byte of a 3-byte character


def test_bpe_merges_frequent_words_into_single_tokens_and_respects_the_vocabulary_size():
    bpe = tokens.train_bpe(CORPUS, vocab_size=300)
    assert 256 < bpe.get_vocab_size() <= 300
    assert tokens.pieces(bpe, "the dress") == ["the", " dress"]          # seen 60 times: one token each
    assert len(bpe.encode("xylophone").ids) > 3                           # never seen: cut into small pieces
    # a byte-level tokeniser that never saw Chinese spends one token per byte: 3 per character
    assert len(bpe.encode("连衣裙").ids) == 9


def test_bpe_learns_chinese_characters_when_they_are_in_its_training_text():
    bpe = tokens.train_bpe(CORPUS + ["这件连衣裙偏小，这件连衣裙很好看。"] * 10, vocab_size=400)
    assert len(bpe.encode("连衣裙").ids) < 9


def test_bpe_needs_room_for_merges():
    with pytest.raises(ValueError, match="at least 257"):
        tokens.train_bpe(CORPUS, vocab_size=256)


def test_chinese_prose_keeps_chinese_lines_and_drops_code_headings_and_english():
    text = "\n".join([
        "大模型通常指的是拥有数十亿甚至千亿参数的深度学习模型。",
        "## 第1章：大模型时代来临，这是一个标题行而不是正文内容",
        "model = BertModel.from_pretrained('bert-base-chinese')  # 加载模型",
        "Large models have billions of parameters and need huge data.",
        "太短。",
        "- **参数量大**：大模型的参数量通常在数十亿到千亿级别。",
    ])
    assert tokens.chinese_prose(text) == ["大模型通常指的是拥有数十亿甚至千亿参数的深度学习模型。",
                                          "- **参数量大**：大模型的参数量通常在数十亿到千亿级别。"]


def test_stored_chinese_sample_is_chinese_prose():
    sample = tokens.book_sample_zh()
    assert len(sample) > 100 and sum(map(len, sample)) > 5000
    assert tokens.chinese_prose("\n".join(sample)) == sample


@pytest.mark.skipif(tokens.book_drafts_zh() is None, reason="the book's drafts are not in this checkout")
def test_stored_chinese_sample_is_every_nth_line_of_the_drafts():
    assert tokens.book_sample_zh() == tokens.book_drafts_zh()[::tokens.SAMPLE_EVERY]


def test_book_drafts_zh_is_none_where_the_drafts_are_absent(tmp_path):
    assert tokens.book_drafts_zh(tmp_path) is None
    prose = "大模型通常指的是拥有数十亿甚至千亿参数的深度学习模型。"
    (tmp_path / "000_x.txt").write_text(f"标题\n{prose}\nEnglish only here.\n", encoding="utf-8")
    assert tokens.book_drafts_zh(tmp_path) == [prose]


def test_support_conversations_are_parallel_two_turn_dialogues():
    conversations = tokens.support_conversations()
    assert len(conversations) == 12
    assert len({c["id"] for c in conversations}) == 12
    for c in conversations:
        en_customer, en_agent = c["en"].split("\n")
        zh_customer, zh_agent = c["zh"].split("\n")
        assert en_customer.startswith("Customer: ") and en_agent.startswith("Agent: ")
        assert zh_customer.startswith("顾客：") and zh_agent.startswith("客服：")
        assert tokens.chinese_prose(c["zh"], min_length=1) == c["zh"].split("\n")   # really Chinese
        assert len(c["zh"]) < len(c["en"])                                          # and shorter


def test_bits_per_character():
    # a fair coin per character: ln 2 nats each, so exactly 1 bit per character
    assert tokens.bits_per_character(10 * math.log(2), 10) == pytest.approx(1.0)
    assert tokens.bits_per_character(3.0, 4) == pytest.approx(3.0 / 4 / 0.6931471805599453)
    with pytest.raises(ValueError, match="characters"):
        tokens.bits_per_character(1.0, 0)
    with pytest.raises(ValueError, match="negative"):
        tokens.bits_per_character(-1.0, 5)
