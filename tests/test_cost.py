"""lm4f.cost: parameter formulas match real modules and a real checkpoint; memory, FLOPs, time
and money follow from them; bad input says what to fix."""

import math

import numpy as np
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
    assert in_file == cost.architecture_params("all-MiniLM-L6-v2") == 22_713_216


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
    assert cost.architecture_params("GPT-2 small") == 124_439_808  # the published 124M


def test_llama_formula_matches_transformers_llama_and_published_sizes():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    assert trainable(LlamaForCausalLM(config)) == cost.llama_params(300, 64, 2, 160, 8, 2)
    assert cost.architecture_params("Llama-2-7B") == 6_738_415_616
    assert cost.architecture_params("Llama-3-8B") == 8_030_261_248


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


# ---------------------------------------------------------------------------------------------
# Build or buy: monthly cost of a route and the break-even volume
# ---------------------------------------------------------------------------------------------
CPU = dict(usd_per_hour=0.10, machine="2-vCPU server")  # floor: 0.10 x 730 = 73 USD a month


def test_self_hosted_pays_its_floor_at_zero_and_low_volume_and_busy_time_at_high_volume():
    route = cost.SelfHostedRoute("own", seconds_per_request=0.01, utilisation=0.5, **CPU)
    assert route.floor_usd_per_month == pytest.approx(73.0)
    # one request: 0.01 s / 0.5 busy x 0.10 USD/h / 3600 s/h
    assert route.usd_per_request == pytest.approx(0.02 * 0.10 / 3600)
    assert cost.monthly_cost(0, route) == pytest.approx(73.0)  # no traffic, still one machine all month
    assert cost.monthly_cost(10_000, route) == pytest.approx(73.0)  # busy cost 0.06 USD: the floor decides
    high = 1_000_000_000
    assert cost.monthly_cost(high, route) == pytest.approx(high * 0.02 * 0.10 / 3600)  # 556 USD > floor
    assert route.floor_covers_requests == pytest.approx(73.0 / (0.02 * 0.10 / 3600))
    two = cost.SelfHostedRoute("own", 0.01, always_on=2, **CPU)
    assert cost.monthly_cost(0, two) == pytest.approx(146.0)
    serverless = cost.SelfHostedRoute("own", 0.01, always_on=0, **CPU)
    assert cost.monthly_cost(0, serverless) == 0.0


def test_people_time_is_added_at_every_volume():
    bare = cost.SelfHostedRoute("own", 0.01, **CPU)
    staffed = cost.SelfHostedRoute("own", 0.01, people_hours_per_month=8, people_usd_per_hour=100, **CPU)
    volumes = [0, 10_000, 1e9]
    assert staffed.people_usd_per_month == 800
    assert cost.monthly_cost(volumes, staffed) - cost.monthly_cost(volumes, bare) == pytest.approx([800] * 3)
    api = cost.ApiRoute.per_request("api", 1.0, people_hours_per_month=2, people_usd_per_hour=100)
    assert cost.monthly_cost(0, api) == pytest.approx(200.0)


def test_api_routes_at_zero_low_and_high_volume():
    llm = cost.ApiRoute.per_token("llm", 1000, 500, 0.15, 0.60)
    assert cost.monthly_cost(0, llm) == 0.0
    assert cost.monthly_cost(10_000, llm) == pytest.approx(10 * 0.45)  # 0.45 USD per 1,000 requests
    assert cost.monthly_cost(1e8, llm) == pytest.approx(1e5 * 0.45)
    assert cost.text_llm_api(1000, 500).tiers == llm.tiers  # the list price is the one the chapters used
    images = cost.image_label_api()  # first 1,000 free, 1.50 per 1,000 to 5M, 1.00 above
    assert cost.monthly_cost([0, 1_000, 11_000], images) == pytest.approx([0.0, 0.0, 15.0])
    assert cost.monthly_cost(10_000_000, images) == pytest.approx(4_999 * 1.50 + 5_000 * 1.00)
    recommender = cost.recommendation_api()  # at least 1 request per second billed, 0.20 USD per TPS-hour
    floor = 730 * 0.20
    assert cost.monthly_cost([0, 100_000, 730 * 3600], recommender) == pytest.approx([floor] * 3)
    assert cost.monthly_cost(2 * 730 * 3600, recommender) == pytest.approx(2 * floor)


def test_monthly_cost_takes_a_number_or_many():
    route = cost.SelfHostedRoute("own", 0.01, **CPU)
    volumes = np.array([0, 1e3, 1e6, 1e9])
    many = cost.monthly_cost(volumes, route)
    assert isinstance(cost.monthly_cost(1e6, route), float) and many.shape == (4,)
    assert many == pytest.approx([cost.monthly_cost(v, route) for v in volumes])


def _check_break_even(own, api):
    even = cost.break_even_requests(own, api)
    at = even.requests_per_month
    assert cost.monthly_cost(at, own) == pytest.approx(cost.monthly_cost(at, api), rel=1e-9)
    assert even.usd_per_month == pytest.approx(cost.monthly_cost(at, own), rel=1e-9)
    names = {own.name: own, api.name: api}
    below, above = names[even.cheaper_below], names[even.cheaper_above]
    other = {own.name: api, api.name: own}
    for volume in (at * 0.5, at * 0.99):
        assert cost.monthly_cost(volume, below) < cost.monthly_cost(volume, other[below.name])
    for volume in (at * 1.01, at * 2, at * 100):
        assert cost.monthly_cost(volume, above) < cost.monthly_cost(volume, other[above.name])
    return even


def test_break_even_on_the_floor_where_costs_are_equal_and_the_cheaper_side_flips():
    own = cost.SelfHostedRoute("own", 0.004, people_hours_per_month=8, people_usd_per_hour=100, **CPU)
    api = cost.ApiRoute.per_token("llm", 300, 20, 0.15, 0.60)  # 0.057 USD per 1,000 requests
    even = _check_break_even(own, api)
    assert even.requests_per_month == pytest.approx(873 / 0.057 * 1000)
    assert (even.cheaper_below, even.cheaper_above) == ("llm", "own")
    assert even.crossings == (even.requests_per_month,)
    assert "below it llm is cheaper, above it own" in str(even)


def test_break_even_inside_a_price_tier_and_past_the_last_kink():
    own = cost.SelfHostedRoute("own", 0.004, people_hours_per_month=8, people_usd_per_hour=100, **CPU)
    even = _check_break_even(own, cost.image_label_api())  # 873 = (v - 1,000) x 1.50 / 1,000
    assert even.requests_per_month == pytest.approx(873 / 1.5 * 1000 + 1000)
    # a GPU route whose busy cost passes its floor before it crosses a cheap API
    gpu_route = cost.gpu_serving_route(7e9, 500, 200, "L4")
    api = cost.ApiRoute.per_token("api", 500, 200, 0.15, 0.60)
    even = cost.break_even_requests(gpu_route, api)
    assert even.requests_per_month is None and even.cheaper_below == "api"  # 0.59 USD per 1k vs 0.195: never
    # a slow model with people time: its busy cost passes the floor before the cheap API catches up
    slow = cost.SelfHostedRoute("own", 0.2, people_hours_per_month=8, people_usd_per_hour=100, **CPU)
    llm = cost.ApiRoute.per_token("llm", 300, 20, 0.15, 0.60)
    even = _check_break_even(slow, llm)
    assert even.requests_per_month > slow.floor_covers_requests  # crossed on the busy-cost line
    assert even.requests_per_month == pytest.approx(800 / (llm.usd_per_request - slow.usd_per_request))


def test_routes_that_never_cross_say_which_is_cheaper():
    cheap_own = cost.SelfHostedRoute("own", 0.004, **CPU)  # 73 USD floor, tiny busy cost
    recommender = cost.recommendation_api()  # 146 USD minimum, then more per request than the server
    even = cost.break_even_requests(cheap_own, recommender)
    assert even.requests_per_month is None and even.cheaper_below == "own" and even.cheaper_above is None
    assert "own is cheaper at every volume" in str(even)
    embeddings = cost.embedding_api(20)  # 0.0004 USD per 1,000 requests, less than the busy cost
    slow_own = cost.SelfHostedRoute("own", 0.02, **CPU)
    assert cost.break_even_requests(slow_own, embeddings).cheaper_below == "hosted embeddings API"
    twin = cost.SelfHostedRoute("twin", 0.004, **CPU)
    assert cost.break_even_requests(cheap_own, twin).cheaper_below == "neither"


def test_every_crossing_is_found_and_the_first_is_the_break_even():
    own = cost.SelfHostedRoute("own", 0.01, always_on=2, **CPU)  # 146 USD floor
    # free up to 1M, then dear, then (an odd price list) very cheap: the API wins, loses, wins again
    api = cost.ApiRoute("api", ((1e6, 0.0), (1e7, 1.0), (math.inf, 1e-4)))
    even = cost.break_even_requests(own, api)
    assert len(even.crossings) == 2 and even.requests_per_month == even.crossings[0]
    assert even.requests_per_month == pytest.approx(1e6 + 146 * 1000)
    assert (even.cheaper_below, even.cheaper_above) == ("api", "own")
    for at in even.crossings:
        assert cost.monthly_cost(at, own) == pytest.approx(cost.monthly_cost(at, api), rel=1e-9)


def test_self_hosted_usd_per_month_is_the_route_model_on_a_gpu():
    per_1k = cost.serving_cost_per_1k_requests(1e9, 500, 200, "L4")
    for volume in (0, 10_000, 100_000_000):
        expected = max(volume / 1000 * per_1k, cost.GPUS["L4"].price_per_hour * 730)
        assert cost.self_hosted_usd_per_month(1e9, volume, 500, 200) == pytest.approx(expected)


def test_bad_route_inputs_give_clear_messages():
    route = cost.SelfHostedRoute("own", 0.01, **CPU)
    for bad in (-1, [10, -5], float("nan"), float("inf"), "many", None, True):
        with pytest.raises(ValueError, match="requests_per_month"):
            cost.monthly_cost(bad, route)
    with pytest.raises(TypeError, match="SelfHostedRoute or an ApiRoute"):
        cost.monthly_cost(10, {"usd_per_hour": 1})
    with pytest.raises(ValueError, match="utilisation is a fraction"):
        cost.SelfHostedRoute("own", 0.01, utilisation=0, **CPU)
    with pytest.raises(ValueError, match="always_on counts whole machines"):
        cost.SelfHostedRoute("own", 0.01, always_on=1.5, **CPU)
    with pytest.raises(ValueError, match="usd_per_hour must be a finite number >= 0"):
        cost.SelfHostedRoute("own", 0.01, usd_per_hour=-0.1)
    with pytest.raises(ValueError, match="seconds_per_request must be a finite number >= 0"):
        cost.SelfHostedRoute("own", None, usd_per_hour=0.1)
    with pytest.raises(ValueError, match="needs a name"):
        cost.SelfHostedRoute("", 0.01, **CPU)
    with pytest.raises(ValueError, match="last must be math.inf"):
        cost.ApiRoute("api", ((1000, 1.0),))
    with pytest.raises(ValueError, match="tier bounds must rise"):
        cost.ApiRoute("api", ((5000, 1.0), (1000, 2.0), (math.inf, 0.5)))
    with pytest.raises(ValueError, match="tiers must be pairs"):
        cost.ApiRoute("api", (1.0, 2.0))
    with pytest.raises(ValueError, match="usd_per_1k_requests must be a finite number >= 0"):
        cost.ApiRoute.per_request("api", -1.0)
    with pytest.raises(ValueError, match="prompt_tokens must be a finite number >= 0"):
        cost.ApiRoute.per_token("api", -300, 20, 0.15, 0.60)
    with pytest.raises(ValueError, match="different names"):
        cost.break_even_requests(route, cost.ApiRoute.per_request("own", 1.0))
    with pytest.raises(TypeError, match="routes must be"):
        cost.break_even_requests(route, 0.057)


@pytest.mark.parametrize("device_name, card", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA A100-SXM4-40GB", "A100 80GB"), ("NVIDIA A100 80GB PCIe", "A100 80GB"), ("NVIDIA L4", "L4"),
    ("NVIDIA A10", "A10"), ("Tesla T4", "T4"), ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA L40S", None), ("NVIDIA A10G", None), ("NVIDIA GeForce RTX 3090", None),
])
def test_gpu_for_device_finds_the_card_by_its_cuda_name(device_name, card):
    found = cost.gpu_for_device(device_name)
    assert (found.name if found else None) == card


def test_peak_flops_of_a_gpu_comes_from_the_one_gpu_table(monkeypatch):
    import torch

    from lm4f.training import peak_flops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert peak_flops("cuda") == ("H100 PCIe", cost.GPUS["H100 PCIe"].peak_tflops * 1e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L40S")
    with pytest.raises(KeyError, match="add it to lm4f.cost.GPUS"):
        peak_flops("cuda")
