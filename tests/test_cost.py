"""lm4f.cost: parameter formulas match real modules and a real checkpoint; memory, FLOPs, time
and money follow from them; bad input says what to fix."""

import pytest
import torch

from lm4f import cost


def trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_minilm_formula_matches_the_real_checkpoint():
    from safetensors.numpy import load_file

    from lm4f.data import minilm_path

    weights = load_file(str(minilm_path() / "model.safetensors"))
    # position_ids is a buffer stored in the file, not a parameter
    in_file = sum(array.size for name, array in weights.items() if not name.endswith("position_ids"))
    assert in_file == cost.count_params("all-MiniLM-L6-v2") == 22_713_216


@pytest.mark.parametrize("layers,hidden,intermediate", [(2, 64, 128), (3, 96, 256)])
def test_bert_formula_matches_transformers_bert(layers, hidden, intermediate):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=intermediate, max_position_embeddings=128, type_vocab_size=2)
    model = BertModel(config)
    assert trainable(model) == cost.bert_params(1000, hidden, layers, intermediate, max_positions=128)
    model_no_pooler = BertModel(config, add_pooling_layer=False)
    assert trainable(model_no_pooler) == cost.bert_params(1000, hidden, layers, intermediate, 128, pooler=False)


def test_gpt2_formula_matches_transformers_gpt2_and_published_size():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=500, n_positions=64, n_embd=48, n_layer=3, n_head=4))
    assert trainable(model) == cost.gpt2_params(500, 48, 3, 64)  # tied head counted once
    assert cost.count_params("GPT-2 small") == 124_439_808  # the published 124M


def test_llama_formula_matches_transformers_llama_and_published_sizes():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    assert trainable(LlamaForCausalLM(config)) == cost.llama_params(300, 64, 2, 160, 8, 2)
    assert cost.count_params("Llama-2-7B") == 6_738_415_616
    assert cost.count_params("Llama-3-8B") == 8_030_261_248


def test_memory_flops_time_and_money_are_consistent():
    n = 7e9
    assert cost.weights_memory_gb(n, "fp32") == pytest.approx(28.0)
    assert cost.weights_memory_gb(n, "bf16") == pytest.approx(14.0)
    assert cost.weights_memory_gb(n, "int8") == pytest.approx(7.0)
    assert cost.training_memory_gb(n) == pytest.approx(112.0)  # 16 bytes per parameter with Adam
    assert cost.training_flops(n, 1e12) == pytest.approx(4.2e22)
    # 4.2e22 FLOPs on 100 H100 at 40 % MFU: 4.2e22 / (989e12 * 0.4 * 100) s
    days = cost.training_days(n, 1e12, "H100 SXM", n_gpus=100, mfu=0.4)
    assert days == pytest.approx(4.2e22 / (989e12 * 0.4 * 100) / 86400)
    dollars = cost.training_cost_usd(n, 1e12, "H100 SXM", n_gpus=100, mfu=0.4, price_per_hour=2.0)
    assert dollars == pytest.approx(days * 24 * 100 * 2.0)
    # twice the GPUs: half the days, same dollars
    assert cost.training_days(n, 1e12, "H100 SXM", 200, 0.4) == pytest.approx(days / 2)
    # Llama-2-7B KV cache at 4k context in bf16: 2 * 32 layers * 32 heads * 128 * 4096 * 2 bytes = 2.1 GB
    assert cost.kv_cache_gb(32, 32, 128, 4096) == pytest.approx(2.147483648)


def test_serving_is_memory_bound_at_batch_one_and_cheaper_with_batching():
    single = cost.serving_seconds_per_request(7e9, 1, 100, "L4", batch=1)
    # each of 100 tokens reads 14 GB of bf16 weights at 0.30 TB/s
    assert single == pytest.approx(2 * 7e9 * 1 / (121e12 * cost.DEFAULT_MFU) + 100 * 14e9 / 0.30e12)
    batched = cost.serving_seconds_per_request(7e9, 1, 100, "L4", batch=16)
    assert batched < single / 10
    assert cost.serving_cost_per_1k_requests(7e9, 200, 100, "L4", utilisation=1.0) < \
        cost.serving_cost_per_1k_requests(7e9, 200, 100, "L4", utilisation=0.25)
    assert cost.api_cost_per_1k_requests(1000, 500, 0.15, 0.60) == pytest.approx(0.45)


def test_scenarios_rank_as_expected_for_a_small_feature():
    rows = {row["scenario"]: row for row in cost.scenario_costs(requests_per_month=10_000, prompt_tokens=500,
                                                                 output_tokens=200)}
    assert set(rows) == {"call an API", "fine-tune an open model", "train from scratch"}
    assert rows["call an API"]["one-off USD"] == 0
    assert rows["train from scratch"]["one-off USD"] > 100 * rows["fine-tune an open model"]["one-off USD"]
    assert rows["call an API"]["first-year USD"] < rows["fine-tune an open model"]["first-year USD"]
    # a self-hosted model costs at least one GPU all month, however little traffic it gets
    assert rows["fine-tune an open model"]["USD per month"] == pytest.approx(cost.GPUS["L4"].price_per_hour * 730)
    busy = {row["scenario"]: row for row in cost.scenario_costs(100_000_000, 500, 200)}
    assert busy["fine-tune an open model"]["first-year USD"] < busy["call an API"]["first-year USD"]


def test_bad_input_gives_clear_messages():
    with pytest.raises(ValueError, match="Unknown precision 'fp8'"):
        cost.weights_memory_gb(1e9, "fp8")
    with pytest.raises(ValueError, match="mfu is a fraction"):
        cost.training_days(1e9, 1e9, mfu=35)
    with pytest.raises(KeyError, match="Unknown GPU"):
        cost.training_days(1e9, 1e9, "H1000")
    with pytest.raises(ValueError, match="n_params must be a positive number"):
        cost.training_flops(-1, 10)
