"""What a model costs: parameter counts, memory, FLOPs, training time and serving cost.

Shared by chapter 1 (what "large" means) and chapter 7 (build vs buy). Every formula is plain
arithmetic on published architecture settings, so a test can check it against modules built in
PyTorch and against a real checkpoint.

Conventions
- ``n_params`` counts trainable numbers (weights and biases), not buffers.
- FLOPs count a multiply and an add as 2 operations. A forward pass costs about ``2 * n_params``
  FLOPs per token and a training step (forward + backward) about ``6 * n_params`` per token
  (Kaplan et al. 2020, "Scaling laws for neural language models"; attention's own
  ``seq_len``-dependent term is left out, it is small for short contexts).
- GPU peak FLOP/s are the vendors' published dense (no sparsity) tensor-core figures for bf16
  (fp16 where a card has no bf16). Prices per GPU-hour are ASSUMPTIONS (rough 2025 on-demand cloud
  list prices); edit them for your own quotes. MFU (model FLOPs utilisation: the share of peak a
  real training run achieves) is an assumption too: 30-50 % is typical for well-tuned training.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# ---------------------------------------------------------------------------------------------
# Bytes per number
# ---------------------------------------------------------------------------------------------
BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}

# Training with Adam keeps, per parameter (activations not included):
#   fp32:  weights 4 + gradients 4 + Adam first and second moments 4 + 4          = 16 bytes
#   mixed (bf16 compute): bf16 weights 2 + bf16 gradients 2 + fp32 master copy 4
#                         + Adam moments 4 + 4                                      = 16 bytes
# (the 16 bytes/parameter of Rajbhandari et al. 2020, "ZeRO", section 3.1)
TRAINING_BYTES_PER_PARAM = {"fp32": 16.0, "mixed": 16.0, "sgd_fp32": 8.0}


def _check_positive(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}.")


def bytes_per_param(precision: str) -> float:
    """Bytes one parameter takes in ``precision`` (fp32, fp16, bf16, int8, int4)."""
    try:
        return BYTES_PER_PARAM[precision]
    except KeyError:
        raise ValueError(f"Unknown precision {precision!r}; use one of {sorted(BYTES_PER_PARAM)}.") from None


def weights_memory_gb(n_params: float, precision: str = "bf16") -> float:
    """Memory (GB = 1e9 bytes) to hold the weights alone, e.g. for inference."""
    _check_positive(n_params=n_params)
    return n_params * bytes_per_param(precision) / 1e9


def training_memory_gb(n_params: float, recipe: str = "mixed") -> float:
    """Memory (GB) for weights, gradients and optimiser state while training (no activations).

    ``recipe``: ``"fp32"`` or ``"mixed"`` (Adam, 16 bytes/parameter either way) or ``"sgd_fp32"``
    (plain SGD: weights + gradients, 8 bytes/parameter).
    """
    _check_positive(n_params=n_params)
    if recipe not in TRAINING_BYTES_PER_PARAM:
        raise ValueError(f"Unknown recipe {recipe!r}; use one of {sorted(TRAINING_BYTES_PER_PARAM)}.")
    return n_params * TRAINING_BYTES_PER_PARAM[recipe] / 1e9


def kv_cache_gb(layers: int, kv_heads: int, head_dim: int, seq_len: int, batch: int = 1,
                precision: str = "bf16") -> float:
    """Memory (GB) of the key/value cache while generating: 2 (K and V) x layers x kv_heads x
    head_dim x seq_len x batch numbers."""
    _check_positive(layers=layers, kv_heads=kv_heads, head_dim=head_dim, seq_len=seq_len, batch=batch)
    return 2 * layers * kv_heads * head_dim * seq_len * batch * bytes_per_param(precision) / 1e9


# ---------------------------------------------------------------------------------------------
# Parameter counts from architecture settings
# ---------------------------------------------------------------------------------------------
def bert_params(vocab_size: int, hidden: int, layers: int, intermediate: int,
                max_positions: int = 512, type_vocab: int = 2, pooler: bool = True) -> int:
    """Trainable parameters of a BERT encoder (Hugging Face ``BertModel``).

    embeddings: token + position + segment tables and a LayerNorm (weight and bias);
    each layer: Q, K, V and output projections (with biases), LayerNorm, FFN up and down (with
    biases), LayerNorm; the optional pooler is one dense layer hidden -> hidden.
    """
    embeddings = (vocab_size + max_positions + type_vocab) * hidden + 2 * hidden
    attention = 4 * (hidden * hidden + hidden)  # Q, K, V, output: (hidden, hidden) + bias each
    ffn = hidden * intermediate + intermediate + intermediate * hidden + hidden
    per_layer = attention + ffn + 2 * (2 * hidden)  # two LayerNorms
    total = embeddings + layers * per_layer
    if pooler:
        total += hidden * hidden + hidden
    return int(total)


def gpt2_params(vocab_size: int, d_model: int, layers: int, context: int, tied: bool = True) -> int:
    """Trainable parameters of a GPT-2 style decoder (learned positions, biases, LayerNorm, FFN
    4 x d_model, output head tied to the token embedding when ``tied``)."""
    embeddings = vocab_size * d_model + context * d_model
    attention = 4 * (d_model * d_model + d_model)
    ffn = d_model * 4 * d_model + 4 * d_model + 4 * d_model * d_model + d_model
    per_layer = attention + ffn + 2 * (2 * d_model)
    total = embeddings + layers * per_layer + 2 * d_model  # final LayerNorm
    if not tied:
        total += vocab_size * d_model
    return int(total)


def llama_params(vocab_size: int, d_model: int, layers: int, ffn_hidden: int, heads: int,
                 kv_heads: int | None = None, tied: bool = False) -> int:
    """Trainable parameters of a Llama style decoder: no biases, RMSNorm (weight only), rotary
    positions (no table), SwiGLU FFN (three matrices), grouped-query attention with ``kv_heads``."""
    kv_heads = kv_heads or heads
    if d_model % heads:
        raise ValueError(f"d_model={d_model} must be divisible by heads={heads}.")
    head_dim = d_model // heads
    attention = 2 * d_model * d_model + 2 * d_model * kv_heads * head_dim  # Q, O and K, V
    ffn = 3 * d_model * ffn_hidden  # gate, up, down
    per_layer = attention + ffn + 2 * d_model  # two RMSNorms
    total = vocab_size * d_model + layers * per_layer + d_model  # embeddings, blocks, final norm
    if not tied:
        total += vocab_size * d_model  # separate output head
    return int(total)


# Published settings of real models (from their config files / papers).
ARCHITECTURES = {
    "all-MiniLM-L6-v2": dict(kind="bert", vocab_size=30522, hidden=384, layers=6, intermediate=1536),
    "BERT-base": dict(kind="bert", vocab_size=30522, hidden=768, layers=12, intermediate=3072),
    "BERT-large": dict(kind="bert", vocab_size=30522, hidden=1024, layers=24, intermediate=4096),
    "GPT-2 small": dict(kind="gpt2", vocab_size=50257, d_model=768, layers=12, context=1024),
    "GPT-2 XL": dict(kind="gpt2", vocab_size=50257, d_model=1600, layers=48, context=1024),
    "Llama-2-7B": dict(kind="llama", vocab_size=32000, d_model=4096, layers=32, ffn_hidden=11008, heads=32),
    "Llama-2-70B": dict(kind="llama", vocab_size=32000, d_model=8192, layers=80, ffn_hidden=28672,
                        heads=64, kv_heads=8),
    "Llama-3-8B": dict(kind="llama", vocab_size=128256, d_model=4096, layers=32, ffn_hidden=14336,
                       heads=32, kv_heads=8),
}


def count_params(name: str) -> int:
    """Parameter count of a model in ``ARCHITECTURES`` from its formula."""
    if name not in ARCHITECTURES:
        raise KeyError(f"Unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}.")
    settings = dict(ARCHITECTURES[name])
    kind = settings.pop("kind")
    return {"bert": bert_params, "gpt2": gpt2_params, "llama": llama_params}[kind](**settings)


# ---------------------------------------------------------------------------------------------
# FLOPs, hardware, time and money
# ---------------------------------------------------------------------------------------------
def training_flops(n_params: float, tokens: float) -> float:
    """About 6 x parameters x tokens: 2 for the forward pass, 4 for the backward pass."""
    _check_positive(n_params=n_params, tokens=tokens)
    return 6.0 * n_params * tokens


def inference_flops(n_params: float, tokens: float) -> float:
    """About 2 x parameters per token processed (forward pass only)."""
    _check_positive(n_params=n_params, tokens=tokens)
    return 2.0 * n_params * tokens


@dataclass(frozen=True)
class GPU:
    name: str
    peak_tflops: float       # dense bf16/fp16 tensor-core peak, vendor datasheet
    memory_gb: float
    bandwidth_tb_s: float    # memory bandwidth, vendor datasheet
    price_per_hour: float    # USD per GPU-hour: an ASSUMPTION, edit it
    source: str


GPUS = {
    "H100 SXM": GPU("H100 SXM", 989.0, 80, 3.35, 2.50,
                    "NVIDIA H100 datasheet: bf16 1,979 TFLOP/s with sparsity = 989 dense"),
    "H200 SXM": GPU("H200 SXM", 989.0, 141, 4.8, 3.50,
                    "NVIDIA H200 datasheet: same compute as H100 SXM, more and faster memory"),
    "A100 80GB": GPU("A100 80GB", 312.0, 80, 2.04, 1.50, "NVIDIA A100 datasheet: bf16 312 TFLOP/s dense"),
    "L4": GPU("L4", 121.0, 24, 0.30, 0.80, "NVIDIA L4 datasheet: bf16 242 TFLOP/s with sparsity = 121 dense"),
    "RTX 4090": GPU("RTX 4090", 165.2, 24, 1.01, 0.40,
                    "NVIDIA Ada whitepaper: fp16/bf16 with fp32 accumulate 165.2 dense"),
}

DEFAULT_MFU = 0.35  # an assumption: well-tuned large-model training reaches about 30-50 % of peak


def gpu(name_or_gpu, price_per_hour: float | None = None) -> GPU:
    """Look up a GPU by name (optionally with your own price per hour)."""
    if isinstance(name_or_gpu, GPU):
        chosen = name_or_gpu
    elif name_or_gpu in GPUS:
        chosen = GPUS[name_or_gpu]
    else:
        raise KeyError(f"Unknown GPU {name_or_gpu!r}; known: {', '.join(GPUS)}.")
    return replace(chosen, price_per_hour=price_per_hour) if price_per_hour is not None else chosen


def training_days(n_params: float, tokens: float, gpu_name="H100 SXM", n_gpus: int = 1,
                  mfu: float = DEFAULT_MFU) -> float:
    """Wall-clock days to train on ``n_gpus`` GPUs at the given MFU."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu is a fraction of peak between 0 and 1, got {mfu}.")
    _check_positive(n_gpus=n_gpus)
    card = gpu(gpu_name)
    seconds = training_flops(n_params, tokens) / (card.peak_tflops * 1e12 * mfu * n_gpus)
    return seconds / 86400


def training_cost_usd(n_params: float, tokens: float, gpu_name="H100 SXM", n_gpus: int = 1,
                      mfu: float = DEFAULT_MFU, price_per_hour: float | None = None) -> float:
    """Dollars for the GPU-hours of one training run (no failed runs, storage or staff)."""
    card = gpu(gpu_name, price_per_hour)
    days = training_days(n_params, tokens, card, n_gpus, mfu)
    return days * 24 * n_gpus * card.price_per_hour


def serving_seconds_per_request(n_params: float, prompt_tokens: int, output_tokens: int,
                                gpu_name="L4", batch: int = 8, mfu: float = DEFAULT_MFU,
                                precision: str = "bf16") -> float:
    """GPU-seconds one request costs, a lower bound from two limits.

    The prompt (prefill) is compute-bound: ``2 N prompt_tokens / (peak x mfu)``. Each generated
    token (decode) must read all weights once per step for the whole batch, so a step takes at
    least ``max(2 N batch / (peak x mfu), weight_bytes / bandwidth)``, shared by ``batch`` requests.
    """
    _check_positive(n_params=n_params, prompt_tokens=prompt_tokens, output_tokens=output_tokens, batch=batch)
    card = gpu(gpu_name)
    flops_per_s = card.peak_tflops * 1e12 * mfu
    prefill = inference_flops(n_params, prompt_tokens) / flops_per_s
    weight_read = n_params * bytes_per_param(precision) / (card.bandwidth_tb_s * 1e12)
    step = max(inference_flops(n_params, batch) / flops_per_s, weight_read)
    return prefill + output_tokens * step / batch


def serving_cost_per_1k_requests(n_params: float, prompt_tokens: int, output_tokens: int,
                                 gpu_name="L4", batch: int = 8, mfu: float = DEFAULT_MFU,
                                 price_per_hour: float | None = None, utilisation: float = 0.5) -> float:
    """Dollars per 1,000 requests on a rented GPU that is busy ``utilisation`` of the time."""
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation is a fraction between 0 and 1, got {utilisation}.")
    card = gpu(gpu_name, price_per_hour)
    seconds = serving_seconds_per_request(n_params, prompt_tokens, output_tokens, card, batch, mfu)
    return 1000 * seconds / utilisation * card.price_per_hour / 3600


def api_cost_per_1k_requests(prompt_tokens: int, output_tokens: int, usd_per_m_input: float,
                             usd_per_m_output: float) -> float:
    """Dollars per 1,000 requests to a hosted model billed per million tokens."""
    return 1000 * (prompt_tokens * usd_per_m_input + output_tokens * usd_per_m_output) / 1e6


HOURS_PER_MONTH = 730


def self_hosted_usd_per_month(n_params: float, requests_per_month: float, prompt_tokens: int, output_tokens: int,
                              gpu_name="L4", mfu: float = DEFAULT_MFU, always_on_gpus: int = 1,
                              price_per_hour: float | None = None) -> float:
    """Monthly dollars to serve your own model: the GPU time the requests need, but never less than
    ``always_on_gpus`` GPUs rented all month (a service that answers at any hour keeps one running)."""
    card = gpu(gpu_name, price_per_hour)
    busy = requests_per_month / 1000 * serving_cost_per_1k_requests(n_params, prompt_tokens, output_tokens,
                                                                     card, mfu=mfu)
    return max(busy, always_on_gpus * card.price_per_hour * HOURS_PER_MONTH)


def scenario_costs(requests_per_month: float, prompt_tokens: int, output_tokens: int,
                   api_usd_per_m_input: float = 0.15, api_usd_per_m_output: float = 0.60,
                   own_model_params: float = 1e9, finetune_tokens: float = 1e8,
                   pretrain_tokens: float = 1e12, train_gpu="H100 SXM", serve_gpu="L4",
                   mfu: float = DEFAULT_MFU) -> list[dict]:
    """Three ways to ship a feature, first-year dollars for each (all prices are assumptions).

    - call an API: pay per token;
    - fine-tune an open model of ``own_model_params`` on ``finetune_tokens`` tokens, then serve it;
    - train that model from scratch on ``pretrain_tokens`` tokens, then serve it.
    Only GPU time is priced: data, staff and failed runs come on top (they dominate for training).
    """
    _check_positive(requests_per_month=requests_per_month)
    serve_month = self_hosted_usd_per_month(own_model_params, requests_per_month, prompt_tokens, output_tokens,
                                            serve_gpu, mfu)
    api_month = requests_per_month / 1000 * api_cost_per_1k_requests(
        prompt_tokens, output_tokens, api_usd_per_m_input, api_usd_per_m_output)
    finetune = training_cost_usd(own_model_params, finetune_tokens, train_gpu, mfu=mfu)
    pretrain = training_cost_usd(own_model_params, pretrain_tokens, train_gpu, mfu=mfu)
    rows = [
        ("call an API", 0.0, api_month),
        ("fine-tune an open model", finetune, serve_month),
        ("train from scratch", pretrain, serve_month),
    ]
    return [{"scenario": name, "one-off USD": upfront, "USD per month": monthly,
             "first-year USD": upfront + 12 * monthly} for name, upfront, monthly in rows]
