"""lm4f.gpt, lm4f.bert, lm4f.attention, lm4f.training and lm4f.text: shapes, causality, fused == plain, sampling
knobs, FLOPs, the training loop's hook and schedule, checkpoint resume, and the real MiniLM
weights in our encoder against transformers."""

import os

import pytest
import torch

from lm4f.text import CharTokenizer, encode_corpus, get_batch, review_corpus
from lm4f.training import load_checkpoint, lr_at, make_optimizer, peak_flops, save_checkpoint, train_steps
from lm4f.attention import attention
from lm4f.bert import load_bert
from lm4f.gpt import GPT, GPTConfig, next_token_probs

CONFIG = GPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=32)


def tiny_gpt(seed=0, **changes):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**CONFIG.__dict__, **changes}))


def test_shapes_and_loss_at_initialisation():
    model = tiny_gpt()
    idx = torch.randint(96, (3, 20))
    logits, loss = model(idx)
    assert logits.shape == (3, 20, 96) and loss is None
    _, loss = model(idx, torch.randint(96, (3, 20)))
    # a fresh model guesses nearly uniformly: loss close to ln(96) = 4.56
    assert abs(loss.item() - torch.log(torch.tensor(96.0)).item()) < 0.1


def test_clear_errors_for_learner_mistakes():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="int64"):
        model(torch.rand(2, 5))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=3, n_embd=32)


def test_fused_attention_equals_plain_attention():
    q, k, v = torch.randn(3, 2, 4, 7, 8).unbind(0)        # (B, nh, T, hs) each
    key_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0]]).bool()
    for causal in (False, True):
        for mask in (None, key_mask):
            fused = attention(q, k, v, causal=causal, key_mask=mask, fused=True)
            plain = attention(q, k, v, causal=causal, key_mask=mask, fused=False)
            assert torch.allclose(fused, plain, atol=1e-6)
    fast, slow = tiny_gpt(fused_attention=True), tiny_gpt(fused_attention=False)
    idx = torch.randint(96, (2, 32))
    assert torch.allclose(fast(idx)[0], slow(idx)[0], atol=1e-5)


def test_gpt_is_causal():
    model = tiny_gpt()
    idx = torch.randint(96, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 96           # change the future only
    before, after = model(idx)[0], model(changed)[0]
    assert torch.equal(before[0, :10], after[0, :10])
    assert not torch.allclose(before[0, 10:], after[0, 10:])


def test_generate_lengths_greedy_and_top_k():
    model = tiny_gpt()
    start = torch.zeros(2, 1, dtype=torch.long)
    out = model.generate(start, 40, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 41) and out.dtype == torch.long   # longer than block_size: cropped context
    greedy = model.generate(start, 10, temperature=0)
    top1 = model.generate(start, 10, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(greedy, top1)
    a = model.generate(start, 10, generator=torch.Generator().manual_seed(3))
    b = model.generate(start, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_sampling_knobs():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.allclose(next_token_probs(logits), torch.tensor([[0.5, 0.3, 0.15, 0.05]]), atol=1e-6)
    # top-p keeps the smallest prefix reaching p: 0.5 + 0.3 = 0.8 >= 0.7 -> two tokens, renormalised
    assert torch.allclose(next_token_probs(logits, top_p=0.7), torch.tensor([[0.625, 0.375, 0, 0]]), atol=1e-6)
    assert torch.allclose(next_token_probs(logits, top_p=0.8001), torch.tensor([[0.5, 0.3, 0.15, 0]]) / 0.95, atol=1e-6)
    assert torch.equal(next_token_probs(logits, top_p=0.1), torch.tensor([[1.0, 0, 0, 0]]))   # the top token stays
    assert torch.allclose(next_token_probs(logits, top_k=2), next_token_probs(logits, top_p=0.7), atol=1e-6)
    cold, hot = next_token_probs(logits, temperature=0.5), next_token_probs(logits, temperature=2.0)
    assert cold[0, 0] > 0.5 > hot[0, 0] and torch.allclose(cold.sum(), torch.tensor(1.0))
    assert torch.allclose(cold, torch.tensor([[25, 9, 2.25, 0.25]]) / 36.5, atol=1e-6)   # p^(1/T), renormalised
    with pytest.raises(ValueError, match="top_p"):
        next_token_probs(logits, top_p=0)
    with pytest.raises(ValueError, match="greedy"):
        next_token_probs(logits, temperature=0)
    model = tiny_gpt()                                      # top_p=1 changes nothing in generate
    start = torch.zeros(1, 1, dtype=torch.long)
    assert torch.equal(model.generate(start, 12, top_p=1.0, generator=torch.Generator().manual_seed(5)),
                       model.generate(start, 12, generator=torch.Generator().manual_seed(5)))


def test_train_steps_hook_schedule_and_stop():
    ids = torch.randint(96, (5000,), generator=torch.Generator().manual_seed(0))
    model = tiny_gpt()
    optimizer = make_optimizer(model, lr=1e-2)
    seen = []

    def hook(step, loss, seconds):
        seen.append((step, loss, seconds, optimizer.param_groups[0]["lr"]))
        model.eval()                                        # an evaluation would do this
        return step == 6                                    # stop after step 6

    losses = train_steps(model, optimizer, ids, 20, batch_size=4, generator=torch.Generator().manual_seed(1),
                         start_step=3, total_steps=20, max_lr=1e-2, warmup_steps=5, hook=hook)
    assert [row[0] for row in seen] == [3, 4, 5, 6] and losses == [row[1] for row in seen]
    assert all(row[2] > 0 for row in seen) and model.training
    assert [row[3] for row in seen] == [lr_at(step, 1e-2, 5, 20) for step in (3, 4, 5, 6)]
    assert lr_at(4, 1e-2, 5, 20) == pytest.approx(1e-2) and lr_at(19, 1e-2, 5, 20) < 2e-3
    assert lr_at(100, 1e-2, 5, 20) == pytest.approx(1e-3)   # cosine ends at min_ratio * max_lr


def test_training_loop_learns():
    text = torch.tensor([0, 1, 2, 3] * 500)                 # a pattern a GPT must learn
    model = tiny_gpt()
    losses = train_steps(model, make_optimizer(model, lr=1e-2), text, 60, batch_size=8,
                         generator=torch.Generator().manual_seed(0), max_lr=1e-2, warmup_steps=5)
    assert losses[0] > 4 and losses[-1] < 0.1


def test_parameter_count_and_flops():
    model = tiny_gpt()
    C, L, V, T = 32, 2, 96, 32
    per_block = 12 * C * C + 13 * C                           # weights + biases + 2 LayerNorms
    expected = V * C + L * per_block + 2 * C                  # tied embeddings, final LayerNorm
    assert model.num_params() == expected
    assert model.num_params(non_embedding=False) == expected + T * C
    assert model.flops_per_token() == 6 * expected + 12 * L * T * C
    name, peak = peak_flops("cpu")
    assert "CPU estimate" in name and peak > 0
    assert model.estimate_mfu(1000.0, peak=1e12) == pytest.approx(model.flops_per_token() * 1000 / 1e12)


def test_tokenizer_round_trip_and_errors():
    tokenizer = CharTokenizer()
    text = "Runs small! Size up: 5'8\", 130 lbs.\nLove it."
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.vocab_size == 96
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer.encode("café")
    assert tokenizer.decode(tokenizer.encode("café", errors="replace")) == "caf?"


def test_corpus_split_is_fixed_and_disjoint():
    train, val = review_corpus("train").splitlines(), review_corpus("val").splitlines()
    assert 22000 < len(train) + len(val) <= 22641          # reviews that have a text
    assert abs(len(val) / (len(train) + len(val)) - 0.10) < 0.005
    assert not set(val) & set(train[:2000]) - {""}
    ids = encode_corpus("val")
    assert ids.dtype == torch.long and ids.max() < 96
    assert CharTokenizer().decode(ids[:200]) == review_corpus("val")[:200]
    x, y = get_batch(ids, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])


def test_checkpoint_resume_is_identical(tmp_path):
    ids = torch.randint(96, (5000,), generator=torch.Generator().manual_seed(0))

    def fresh():
        model = tiny_gpt(dropout=0.1)                          # dropout: the RNG state matters too
        return model, make_optimizer(model, lr=3e-3), torch.Generator().manual_seed(1)

    settings = dict(batch_size=4, total_steps=8, max_lr=3e-3, warmup_steps=2)
    model, optimizer, generator = fresh()
    straight = train_steps(model, optimizer, ids, 8, generator=generator, **settings)

    model_a, optimizer_a, generator_a = fresh()
    first = train_steps(model_a, optimizer_a, ids, 4, generator=generator_a, **settings)
    save_checkpoint(tmp_path / "half.pt", model_a, optimizer_a, step=4, generator=generator_a)
    torch.manual_seed(123)                                     # disturb the global RNG on purpose
    model_b, optimizer_b, generator_b = fresh()
    model_b, step = load_checkpoint(tmp_path / "half.pt", model_b, optimizer_b, generator_b)
    second = train_steps(model_b, optimizer_b, ids, 4, generator=generator_b, start_step=step, **settings)

    assert step == 4 and first + second == straight
    for (name, p), q in zip(model.named_parameters(), model_b.parameters()):
        assert torch.equal(p, q), name


def test_minilm_in_our_encoder_matches_transformers():
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from lm4f.data import minilm_path

    folder = str(minilm_path())
    sentences = ["This dress runs small, order a size up.", "Soft fabric.",
                 "The zipper broke after one wash, so I returned it for a refund."]
    batch = AutoTokenizer.from_pretrained(folder)(sentences, padding=True, return_tensors="pt")
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        reference = AutoModel.from_pretrained(folder).eval()(**batch).last_hidden_state
        for fused in (True, False):
            ours = load_bert(fused_attention=fused)(batch["input_ids"], batch["attention_mask"])
            assert (ours - reference)[real].abs().max().item() < 1e-5
        encoder = load_bert()
        mine = encoder.sentence_embeddings(batch["input_ids"], batch["attention_mask"])
    theirs = SentenceTransformer(folder, device="cpu").encode(sentences, convert_to_tensor=True)
    assert (mine - theirs).abs().max().item() < 1e-5
    assert torch.allclose(mine.norm(dim=-1), torch.ones(3), atol=1e-6)
