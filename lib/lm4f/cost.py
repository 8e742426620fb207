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
- Build or buy (the end of this module): the monthly cost of each route at a given traffic.
  Self-hosting pays ``max(busy machine time, the machines rented all month) + people time``; an API
  pays its price per token, per image or per request. ``break_even_requests`` finds where they cross.
  API prices are public list prices with their source (``LIST_PRICES``): ASSUMPTIONS too, re-check them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np

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


def architecture_params(name: str) -> int:
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
    device_pattern: str = ""  # a regular expression that finds this card in torch.cuda.get_device_name()


# The one table of GPUs: the cost calculator reads it, and lm4f.training.peak_flops(device) finds the
# card a run is on here (model FLOPs utilisation divides by its peak).
GPUS = {
    "H100 SXM": GPU("H100 SXM", 989.0, 80, 3.35, 2.50,
                    "NVIDIA H100 datasheet: bf16 1,979 TFLOP/s with sparsity = 989 dense", r"H100(?!.*PCIe)"),
    "H100 PCIe": GPU("H100 PCIe", 756.0, 80, 2.0, 2.00,
                     "NVIDIA H100 datasheet: PCIe bf16 1,513 TFLOP/s with sparsity = 756 dense", r"H100.*PCIe"),
    "H200 SXM": GPU("H200 SXM", 989.0, 141, 4.8, 3.50,
                    "NVIDIA H200 datasheet: same compute as H100 SXM, more and faster memory", r"H200"),
    "A100 80GB": GPU("A100 80GB", 312.0, 80, 2.04, 1.50, "NVIDIA A100 datasheet: bf16 312 TFLOP/s dense", r"A100"),
    "L4": GPU("L4", 121.0, 24, 0.30, 0.80, "NVIDIA L4 datasheet: bf16 242 TFLOP/s with sparsity = 121 dense",
              r"\bL4\b"),
    "A10": GPU("A10", 125.0, 24, 0.60, 0.75, "NVIDIA A10 datasheet: bf16 250 TFLOP/s with sparsity = 125 dense",
               r"\bA10\b"),
    "T4": GPU("T4", 65.0, 16, 0.32, 0.35, "NVIDIA T4 datasheet: fp16 65 TFLOP/s (mixed precision; no bf16)",
              r"\bT4\b"),
    "RTX 4090": GPU("RTX 4090", 165.2, 24, 1.01, 0.40,
                    "NVIDIA Ada whitepaper: fp16/bf16 with fp32 accumulate 165.2 dense", r"4090"),
}


def gpu_for_device(device_name: str) -> GPU | None:
    """The ``GPUS`` entry for a name such as ``torch.cuda.get_device_name()`` gives
    ("NVIDIA H100 80GB HBM3" -> H100 SXM, "Tesla T4" -> T4), or None for a card not in the table."""
    return next((g for g in GPUS.values() if g.device_pattern and re.search(g.device_pattern, device_name)), None)


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
    return 1000 * busy_usd_per_request(seconds, card.price_per_hour, utilisation)


def busy_usd_per_request(seconds_per_request: float, usd_per_hour: float, utilisation: float = 0.5) -> float:
    """Dollars of machine time one request takes: its busy seconds, divided by the share of the time the
    machine may be busy (headroom for peaks), at the machine's price per second."""
    if not 0 < utilisation <= 1:
        raise ValueError(f"utilisation is a fraction between 0 and 1, got {utilisation}.")
    return seconds_per_request / utilisation * usd_per_hour / 3600


def api_cost_per_1k_requests(prompt_tokens: int, output_tokens: int, usd_per_m_input: float,
                             usd_per_m_output: float) -> float:
    """Dollars per 1,000 requests to a hosted model billed per million tokens."""
    return 1000 * (prompt_tokens * usd_per_m_input + output_tokens * usd_per_m_output) / 1e6


HOURS_PER_MONTH = 730  # 365 x 24 / 12


# ---------------------------------------------------------------------------------------------
# Build or buy: the monthly cost of a route, and the volume where two routes cost the same
# ---------------------------------------------------------------------------------------------
# Public list prices (USD) of the "buy" routes. ASSUMPTIONS: providers change prices and tiers, and
# billing details (free tiers, regions, batch discounts) differ; re-check the source before deciding.
# "tiers" are (requests per month up to which the price applies, USD per 1,000 requests).
LIST_PRICES = {
    "text LLM": {
        "usd_per_m_input": 0.15, "usd_per_m_output": 0.60,
        "source": "OpenAI API pricing (openai.com/api/pricing), gpt-4o-mini, standard tier: USD 0.15 per million "
                  "input tokens and 0.60 per million output tokens; the list price from July 2024, still listed "
                  "in 2026",
    },
    "text embeddings": {
        "usd_per_m_input": 0.02,
        "source": "OpenAI API pricing (openai.com/api/pricing), text-embedding-3-small: USD 0.02 per million "
                  "tokens; the list price from January 2024",
    },
    "image labels": {
        "tiers": ((1_000, 0.0), (5_000_000, 1.50), (math.inf, 1.00)),
        "source": "Google Cloud Vision pricing (cloud.google.com/vision/pricing), LABEL_DETECTION: first 1,000 "
                  "images a month free, USD 1.50 per 1,000 up to 5 million, 1.00 per 1,000 above; as listed "
                  "in 2026",
    },
    "recommendations": {
        # USD per TPS-hour (one request per second for an hour = 3,600 requests): 0.20 for the first
        # 20,000 TPS-hours a month, 0.10 for the next 180,000, 0.05 above; at least the minimum
        # provisioned TPS (1 by default) is billed every hour the campaign runs.
        "tiers": ((20_000 * 3600, 0.20 / 3.6), (200_000 * 3600, 0.10 / 3.6), (math.inf, 0.05 / 3.6)),
        "min_tps": 1,
        "source": "Amazon Personalize pricing (aws.amazon.com/personalize/pricing), real-time recommendations "
                  "from a campaign: USD 0.20 / 0.10 / 0.05 per TPS-hour (first 20,000 / next 180,000 / above), "
                  "billed at no less than the minimum provisioned 1 TPS; training and data ingestion extra. "
                  "Taken from users' quotes of the page (e.g. aws-samples/retail-demo-store issue 191), not the "
                  "page itself: the least certain price here, re-check it first",
    },
}


def _check_at_least_zero(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or math.isinf(value):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def _check_name(name) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"A route needs a name (a non-empty string), got {name!r}.")


@dataclass(frozen=True)
class SelfHostedRoute:
    """Serve your own model on machines rented by the hour.

    Monthly cost = ``max(busy cost, always-on floor) + people time``:

    - busy cost: requests x ``seconds_per_request`` (measured) / ``utilisation`` x ``usd_per_hour``;
    - floor: ``always_on`` machines x ``usd_per_hour`` x ``HOURS_PER_MONTH``, paid with no traffic at
      all (a service that answers at any hour keeps at least one machine running);
    - people time: ``people_hours_per_month`` x ``people_usd_per_hour`` (monitoring, patching,
      retraining): an ASSUMPTION, state it.
    Busy machines are counted in fractions (above the floor you would rent whole ones).
    """

    name: str
    seconds_per_request: float  # busy machine-seconds per request, measured
    usd_per_hour: float  # price of one machine: an ASSUMPTION (your quote)
    machine: str = "a rented machine"
    utilisation: float = 0.5  # the share of the time a machine may be busy (headroom for peaks)
    always_on: int = 1  # machines rented all month, whatever the traffic
    people_hours_per_month: float = 0.0
    people_usd_per_hour: float = 0.0

    def __post_init__(self):
        _check_name(self.name)
        _check_at_least_zero(seconds_per_request=self.seconds_per_request, usd_per_hour=self.usd_per_hour,
                             people_hours_per_month=self.people_hours_per_month,
                             people_usd_per_hour=self.people_usd_per_hour)
        if isinstance(self.always_on, bool) or not isinstance(self.always_on, int) or self.always_on < 0:
            raise ValueError(f"always_on counts whole machines (an int >= 0), got {self.always_on!r}.")
        busy_usd_per_request(self.seconds_per_request, self.usd_per_hour, self.utilisation)  # checks utilisation

    @property
    def usd_per_request(self) -> float:
        """Marginal dollars per request once the busy cost is above the floor."""
        return busy_usd_per_request(self.seconds_per_request, self.usd_per_hour, self.utilisation)

    @property
    def floor_usd_per_month(self) -> float:
        return self.always_on * self.usd_per_hour * HOURS_PER_MONTH

    @property
    def people_usd_per_month(self) -> float:
        return self.people_hours_per_month * self.people_usd_per_hour

    @property
    def floor_covers_requests(self) -> float:
        """Requests per month the always-on machines serve before the busy cost passes the floor."""
        return self.floor_usd_per_month / self.usd_per_request if self.usd_per_request else math.inf

    def _monthly(self, volumes: np.ndarray) -> np.ndarray:
        return np.maximum(volumes * self.usd_per_request, self.floor_usd_per_month) + self.people_usd_per_month

    def _kinks(self) -> list[float]:
        return [self.floor_covers_requests]


@dataclass(frozen=True)
class ApiRoute:
    """Call a hosted model and pay per request (per token, per image or per recommendation).

    Monthly cost = ``usage(max(requests, min_billed_requests_per_month)) + people time``, where usage
    sums ``tiers`` (``(requests per month up to which the price applies, USD per 1,000 requests)``,
    the last one up to ``math.inf``). ``min_billed_requests_per_month`` is a provisioned minimum that
    some APIs bill with no traffic (Amazon Personalize bills at least 1 request per second).
    """

    name: str
    tiers: tuple
    source: str = ""
    min_billed_requests_per_month: float = 0.0
    people_hours_per_month: float = 0.0
    people_usd_per_hour: float = 0.0

    def __post_init__(self):
        _check_name(self.name)
        _check_at_least_zero(min_billed_requests_per_month=self.min_billed_requests_per_month,
                             people_hours_per_month=self.people_hours_per_month,
                             people_usd_per_hour=self.people_usd_per_hour)
        try:
            tiers = tuple((float(upper), float(price)) for upper, price in self.tiers)
        except (TypeError, ValueError):
            raise ValueError(f"tiers must be pairs (up to requests per month, USD per 1,000 requests), "
                             f"got {self.tiers!r}.") from None
        uppers = [upper for upper, _ in tiers]
        if not tiers or uppers[-1] != math.inf or any(b <= a for a, b in zip([0.0] + uppers, uppers)):
            raise ValueError(f"tier bounds must rise from above 0 and the last must be math.inf, got {uppers}.")
        for _, price in tiers:
            _check_at_least_zero(usd_per_1k_requests=price)
        object.__setattr__(self, "tiers", tiers)

    @classmethod
    def per_request(cls, name: str, usd_per_1k_requests: float, source: str = "", **kwargs) -> ApiRoute:
        """An API with one price per 1,000 requests (images, calls)."""
        return cls(name, ((math.inf, usd_per_1k_requests),), source, **kwargs)

    @classmethod
    def per_token(cls, name: str, prompt_tokens: float, output_tokens: float, usd_per_m_input: float,
                  usd_per_m_output: float, source: str = "", **kwargs) -> ApiRoute:
        """A hosted model billed per million tokens, at the tokens one request reads and writes."""
        _check_at_least_zero(prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                             usd_per_m_input=usd_per_m_input, usd_per_m_output=usd_per_m_output)
        per_1k = api_cost_per_1k_requests(prompt_tokens, output_tokens, usd_per_m_input, usd_per_m_output)
        return cls.per_request(name, per_1k, source, **kwargs)

    @property
    def people_usd_per_month(self) -> float:
        return self.people_hours_per_month * self.people_usd_per_hour

    def _usage(self, billed: np.ndarray) -> np.ndarray:
        total, lower = np.zeros_like(billed), 0.0
        for upper, price in self.tiers:
            total = total + np.clip(billed - lower, 0.0, upper - lower) * (price / 1000)
            lower = upper
        return total

    def _monthly(self, volumes: np.ndarray) -> np.ndarray:
        return self._usage(np.maximum(volumes, self.min_billed_requests_per_month)) + self.people_usd_per_month

    def _kinks(self) -> list[float]:
        return [self.min_billed_requests_per_month] + [upper for upper, _ in self.tiers]

    @property
    def usd_per_request(self) -> float:
        """Marginal dollars per request in the last (highest-volume) tier."""
        return self.tiers[-1][1] / 1000


def text_llm_api(prompt_tokens: float, output_tokens: float, name: str = "hosted LLM API", **kwargs) -> ApiRoute:
    """A small hosted text model at ``LIST_PRICES["text LLM"]`` for the tokens one request reads and writes."""
    price = LIST_PRICES["text LLM"]
    return ApiRoute.per_token(name, prompt_tokens, output_tokens, price["usd_per_m_input"], price["usd_per_m_output"],
                              price["source"], **kwargs)


def embedding_api(tokens: float, name: str = "hosted embeddings API", **kwargs) -> ApiRoute:
    """A hosted text-embedding model at ``LIST_PRICES["text embeddings"]`` for ``tokens`` per request."""
    price = LIST_PRICES["text embeddings"]
    return ApiRoute.per_token(name, tokens, 0, price["usd_per_m_input"], 0.0, price["source"], **kwargs)


def image_label_api(name: str = "image-labelling API", **kwargs) -> ApiRoute:
    """A hosted image-classification (label detection) API at ``LIST_PRICES["image labels"]``, one image a request."""
    price = LIST_PRICES["image labels"]
    return ApiRoute(name, price["tiers"], price["source"], **kwargs)


def recommendation_api(name: str = "managed recommender API", min_tps: int | None = None, **kwargs) -> ApiRoute:
    """A managed real-time recommender at ``LIST_PRICES["recommendations"]``, billed for at least ``min_tps``
    requests per second all month."""
    price = LIST_PRICES["recommendations"]
    min_tps = price["min_tps"] if min_tps is None else min_tps
    _check_at_least_zero(min_tps=min_tps)
    return ApiRoute(name, price["tiers"], price["source"],
                    min_billed_requests_per_month=min_tps * 3600 * HOURS_PER_MONTH, **kwargs)


def _volumes(requests_per_month) -> np.ndarray:
    raw = np.asarray(requests_per_month)
    if raw.dtype.kind not in "iuf":  # not integers or floats: text, None, True/False, objects
        raise ValueError(f"requests_per_month must be a number or numbers, got {requests_per_month!r}.")
    volumes = raw.astype(float)
    if not np.isfinite(volumes).all():
        raise ValueError(f"requests_per_month must be finite, got {requests_per_month!r}.")
    if (volumes < 0).any():
        raise ValueError(f"requests_per_month cannot be negative, got {requests_per_month!r}.")
    return volumes


def monthly_cost(requests_per_month, route):
    """Dollars per month of ``route`` (a ``SelfHostedRoute`` or an ``ApiRoute``) at ``requests_per_month``.

    A number gives a float; a list or array of volumes gives an array (for a plot).
    """
    volumes = _volumes(requests_per_month)
    if not isinstance(route, (SelfHostedRoute, ApiRoute)):
        raise TypeError(f"route must be a SelfHostedRoute or an ApiRoute, got {type(route).__name__}.")
    cost = route._monthly(volumes)
    return float(cost) if volumes.ndim == 0 else cost


@dataclass(frozen=True)
class BreakEven:
    """Where two routes cost the same per month.

    ``requests_per_month``: the lowest volume where the cheaper route changes (``None`` when it never
    does); ``cheaper_below``: the route that is cheaper at lower volumes (everywhere when they never
    cross; "neither" when they cost the same everywhere); ``cheaper_above``: cheaper above the
    break-even (``None`` when they never cross); ``usd_per_month``: what each costs there;
    ``crossings``: every volume where the cheaper route changes (rarely more than one).
    """

    requests_per_month: float | None
    cheaper_below: str
    cheaper_above: str | None
    usd_per_month: float | None
    crossings: tuple = ()

    def __str__(self) -> str:
        if self.requests_per_month is None:
            return f"never cross: {self.cheaper_below} is cheaper at every volume" if self.cheaper_below != "neither" \
                else "never cross: the two routes cost the same at every volume"
        return (f"{self.requests_per_month:,.0f} requests/month (USD {self.usd_per_month:,.2f} each); "
                f"below it {self.cheaper_below} is cheaper, above it {self.cheaper_above}")


def break_even_requests(self_route, api_route) -> BreakEven:
    """The monthly volume at which two routes cost the same (usually a self-hosted one and an API).

    Both costs are piecewise linear in the volume (the floor, price tiers and billed minimums are the
    kinks), so their difference is linear between kinks: each crossing is solved exactly there, and
    past the last kink from the marginal prices. Returns a ``BreakEven``.
    """
    routes = (self_route, api_route)
    for route in routes:
        if not isinstance(route, (SelfHostedRoute, ApiRoute)):
            raise TypeError(f"routes must be SelfHostedRoute or ApiRoute, got {type(route).__name__}.")
    if self_route.name == api_route.name:
        raise ValueError(f"Both routes are called {self_route.name!r}: give them different names.")
    points = np.array(sorted({0.0, *(k for route in routes for k in route._kinks() if 0 < k < math.inf)}))
    gaps = monthly_cost(points, self_route) - monthly_cost(points, api_route)  # > 0: the API is cheaper
    slope_after = self_route.usd_per_request - api_route.usd_per_request  # of the gap past the last kink
    # The gap at every kink, then at "infinity", where the marginal prices decide its sign.
    samples = [(float(v), float(g)) for v, g in zip(points, gaps)]
    samples.append((math.inf, slope_after if slope_after else samples[-1][1]))
    crossings, before, zero_at, first = [], None, None, 0.0  # before: the last sample with a nonzero gap
    for volume, gap in samples:
        if gap == 0:
            zero_at = volume if zero_at is None else zero_at
            continue
        if before is not None and (gap > 0) != (before[1] > 0):
            if zero_at is not None:  # the gap touched 0 at a kink
                crossings.append(zero_at)
            elif volume == math.inf:  # past the last kink: solve the straight line
                crossings.append(before[0] - before[1] / slope_after)
            else:  # between two neighbouring kinks
                (v0, g0) = before
                crossings.append(v0 + (volume - v0) * g0 / (g0 - gap))
        first = gap if before is None else first
        before, zero_at = (volume, gap), None
    if before is None:
        return BreakEven(None, "neither", None, None)

    def cheaper(gap):
        return api_route.name if gap > 0 else self_route.name

    if not crossings:
        return BreakEven(None, cheaper(first), None, None)
    at = crossings[0]
    usd = (monthly_cost(at, self_route) + monthly_cost(at, api_route)) / 2
    return BreakEven(at, cheaper(first), cheaper(-first), usd, tuple(crossings))


def gpu_serving_route(n_params: float, prompt_tokens: int, output_tokens: int, gpu_name="L4",
                      mfu: float = DEFAULT_MFU, always_on_gpus: int = 1, price_per_hour: float | None = None,
                      batch: int = 8, utilisation: float = 0.5, name: str | None = None, **people) -> SelfHostedRoute:
    """Your own ``n_params`` model on rented GPUs, its busy seconds per request from
    ``serving_seconds_per_request`` (a lower bound: see there)."""
    card = gpu(gpu_name, price_per_hour)
    seconds = serving_seconds_per_request(n_params, prompt_tokens, output_tokens, card, batch, mfu)
    return SelfHostedRoute(name or f"own {n_params / 1e9:g}B model on {card.name}", seconds, card.price_per_hour,
                           machine=card.name, utilisation=utilisation, always_on=always_on_gpus, **people)


def self_hosted_usd_per_month(n_params: float, requests_per_month: float, prompt_tokens: int, output_tokens: int,
                              gpu_name="L4", mfu: float = DEFAULT_MFU, always_on_gpus: int = 1,
                              price_per_hour: float | None = None) -> float:
    """Monthly dollars to serve your own model: the GPU time the requests need, but never less than
    ``always_on_gpus`` GPUs rented all month (a service that answers at any hour keeps one running).
    GPU time only: ``monthly_cost`` with a ``SelfHostedRoute`` adds people time."""
    route = gpu_serving_route(n_params, prompt_tokens, output_tokens, gpu_name, mfu, always_on_gpus, price_per_hour)
    return monthly_cost(requests_per_month, route)


def scenario_costs(requests_per_month: float, prompt_tokens: int, output_tokens: int,
                   api_usd_per_m_input: float = LIST_PRICES["text LLM"]["usd_per_m_input"],
                   api_usd_per_m_output: float = LIST_PRICES["text LLM"]["usd_per_m_output"],
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
    api = ApiRoute.per_token("call an API", prompt_tokens, output_tokens, api_usd_per_m_input, api_usd_per_m_output)
    api_month = monthly_cost(requests_per_month, api)
    finetune = training_cost_usd(own_model_params, finetune_tokens, train_gpu, mfu=mfu)
    pretrain = training_cost_usd(own_model_params, pretrain_tokens, train_gpu, mfu=mfu)
    rows = [
        ("call an API", 0.0, api_month),
        ("fine-tune an open model", finetune, serve_month),
        ("train from scratch", pretrain, serve_month),
    ]
    return [{"scenario": name, "one-off USD": upfront, "USD per month": monthly,
             "first-year USD": upfront + 12 * monthly} for name, upfront, monthly in rows]
