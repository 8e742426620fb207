"""The course's Transformers in one readable file: a GPT (decoder) and a BERT-style encoder.

GPT (chapter 4.3, reused by chapters 8-10)::

    from lm4f.transformer import GPTConfig, GPT
    config = GPTConfig(vocab_size=97, block_size=128, n_layer=4, n_head=4, n_embd=128)
    model = GPT(config)
    logits, loss = model(idx, targets)      # idx, targets: (B, T) int64
                                            # logits: (B, T, vocab_size) always (also at inference)
                                            # loss: mean cross-entropy, or None without targets
    model.num_params()                      # parameters, position embeddings excluded by default
    model.generate(idx, max_new_tokens=200, temperature=0.8, top_k=20, top_p=0.95)  # (B, T + new)
    model.flops_per_token()                 # training FLOPs per token (6 N + attention, see below)
    model.estimate_mfu(tokens_per_second, device)   # model FLOPs utilisation, 0..1

BERT-style encoder (chapter 4.3: the real all-MiniLM-L6-v2 weights in code written here)::

    from lm4f.transformer import BertConfig, BertEncoder, load_minilm, mean_pool
    encoder = load_minilm()                          # reads lm4f.data.minilm_path(); no network
    hidden = encoder(input_ids, attention_mask)      # (B, T, 384) token embeddings
    sentences = encoder.sentence_embeddings(input_ids, attention_mask)   # (B, 384), unit length

Training lives in ``lm4f.training`` (``make_optimizer``, ``lr_at``, ``train_steps``, checkpoints,
``peak_flops``); those names are also importable from here, for the notebooks that import them so.

Attention has a fast path (PyTorch's fused ``scaled_dot_product_attention``) and a plain
fallback written out step by step (``attention(..., fused=False)``); both give the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lm4f.training import (PEAK_FLOPS, load_checkpoint, lr_at, make_optimizer, peak_flops,  # noqa: F401
                           save_checkpoint, train_steps)

__all__ = [
    "attention", "next_token_probs", "GPTConfig", "GPT", "BertConfig", "BertEncoder", "load_minilm", "mean_pool",
    "make_optimizer", "lr_at", "train_steps", "save_checkpoint", "load_checkpoint",
    "PEAK_FLOPS", "peak_flops",
]


# =============================================================================================
# Attention: plain and fused
# =============================================================================================


def attention(q, k, v, causal: bool = False, key_mask=None, dropout: float = 0.0, fused: bool = True):
    """Scaled dot-product attention softmax(q k^T / sqrt(d)) v.

    q: (B, nh, Tq, hs); k, v: (B, nh, Tk, hs). ``causal``: query i sees keys 0..i only.
    ``key_mask``: bool (B, Tk), True where a key is a real token (False = padding, ignored).
    Returns (B, nh, Tq, hs).
    """
    mask = None
    if key_mask is not None:
        mask = key_mask[:, None, None, :].bool()                   # (B, 1, 1, Tk)
        if causal:                                                 # both: fold causal into the mask
            Tq, Tk = q.size(-2), k.size(-2)
            mask = mask & torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
            causal = False
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                              is_causal=causal)
    hs = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)               # (B, nh, Tq, Tk)
    if causal:
        Tq, Tk = q.size(-2), k.size(-2)
        allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.softmax(scores, dim=-1)                            # rows sum to 1
    if dropout > 0:
        weights = F.dropout(weights, p=dropout)
    return weights @ v                                             # (B, nh, Tq, hs)


# =============================================================================================
# GPT: a decoder-only Transformer (pre-LayerNorm, like GPT-2)
# =============================================================================================


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int          # longest context the model sees (T)
    n_layer: int
    n_head: int
    n_embd: int              # width C; each head has C / n_head dimensions
    dropout: float = 0.0
    bias: bool = True        # biases in Linear and LayerNorm layers
    fused_attention: bool = True   # False: the plain attention written out above

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} "
                             "(each head gets n_embd // n_head dimensions).")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.fused = config.fused_attention
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)                            # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)     # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)     # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)     # (B, nh, T, hs)
        y = attention(q, k, v, causal=True, dropout=self.dropout if self.training else 0.0,
                      fused=self.fused)                                     # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                    # heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):                                                   # (B, T, C)
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))              # (B, T, C)


class Block(nn.Module):
    """x + attention(LN(x)), then x + MLP(LN(x)): the pre-LayerNorm decoder block."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)   # token embeddings
        self.wpe = nn.Embedding(config.block_size, config.n_embd)   # learned positions
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight                       # weight tying (as in GPT-2)
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():             # GPT-2: scale residual outputs
            if name.endswith("c_proj.weight"):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        if idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError(f"idx must be a (batch, time) int64 tensor of token ids, got shape "
                             f"{tuple(idx.shape)} and dtype {idx.dtype}. Use torch.tensor(ids)[None] "
                             "for one sequence.")
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} is longer than block_size={self.config.block_size}: "
                             f"keep the last {self.config.block_size} tokens (idx[:, -block_size:]).")
        positions = torch.arange(T, device=idx.device)                      # (T,)
        x = self.drop(self.wte(idx) + self.wpe(positions))                  # (B, T, C)
        for block in self.blocks:
            x = block(x)                                                    # (B, T, C)
        logits = self.lm_head(self.ln_f(x))                                 # (B, T, vocab)
        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, "
                                 f"got {tuple(targets.shape)}: targets are idx shifted by one token.")
            loss = F.cross_entropy(logits.float().view(B * T, -1), targets.reshape(B * T))
        return logits, loss

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. ``non_embedding``: leave out the position embeddings (the token
        embeddings stay in: they are tied to the output layer, whose matmul does cost FLOPs)."""
        count = sum(p.numel() for p in self.parameters())
        if non_embedding:
            count -= self.wpe.weight.numel()
        return count

    def flops_per_token(self) -> int:
        """Training FLOPs per token: 6 N (forward 2 N + backward 4 N for the weight matmuls)
        plus attention's scores and weighted sum, 6 * 2 * n_layer * T * n_embd (PaLM, appendix B).
        """
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.block_size * c.n_embd

    def estimate_mfu(self, tokens_per_second: float, device=None, peak: float | None = None) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s over the device's peak FLOP/s."""
        peak = peak if peak is not None else peak_flops(device)[1]
        return self.flops_per_token() * tokens_per_second / peak

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None):
        """Append ``max_new_tokens`` sampled tokens to idx (B, T); returns (B, T + max_new_tokens).

        The knobs act on the next-token distribution in this order (see ``next_token_probs``):
        ``temperature`` divides the logits (below 1: safer, above 1: wilder; 0: always the most
        likely token), ``top_k`` keeps the k most likely tokens, ``top_p`` keeps the smallest set of
        most likely tokens whose probabilities add up to at least p (nucleus sampling).
        """
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.block_size:]                      # (B, <=block)
            logits, _ = self(context)
            logits = logits[:, -1, :].float()                               # (B, vocab)
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)               # (B, 1)
            else:
                probs = next_token_probs(logits, temperature, top_k, top_p)
                next_id = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
        self.train(was_training)
        return idx


def next_token_probs(logits, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
    """Sampling probabilities (..., vocab) from logits (..., vocab): temperature, then top-k, then top-p.

    ``temperature`` > 0 divides the logits. ``top_k``: tokens below the k-th largest logit get
    probability 0. ``top_p`` (0 < p <= 1): sort the probabilities, keep the smallest prefix whose sum
    reaches p (the most likely token is always kept), renormalise.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 here, got {temperature}; for greedy decoding take the argmax "
                         "(generate(..., temperature=0) does).")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[..., [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs           # mass of the more likely tokens
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


# =============================================================================================
# A BERT-style encoder (post-LayerNorm) that loads the real all-MiniLM-L6-v2 weights
# =============================================================================================


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    n_layer: int = 6
    n_head: int = 12
    intermediate_size: int = 1536
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    fused_attention: bool = True


class BertLayer(nn.Module):
    """x = LN(x + attention(x)); x = LN(x + FFN(x)): the post-LayerNorm encoder block."""

    def __init__(self, config: BertConfig):
        super().__init__()
        H = config.hidden_size
        self.n_head, self.fused = config.n_head, config.fused_attention
        self.query, self.key, self.value = nn.Linear(H, H), nn.Linear(H, H), nn.Linear(H, H)
        self.attn_out = nn.Linear(H, H)
        self.ln_attn = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(H, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, H)
        self.ln_ffn = nn.LayerNorm(H, eps=config.layer_norm_eps)

    def split_heads(self, x):                                               # (B, T, H)
        B, T, H = x.shape
        return x.view(B, T, self.n_head, H // self.n_head).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x, key_mask=None):
        B, T, H = x.shape
        q, k, v = self.split_heads(self.query(x)), self.split_heads(self.key(x)), self.split_heads(self.value(x))
        y = attention(q, k, v, key_mask=key_mask, fused=self.fused)         # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, H)                              # (B, T, H)
        x = self.ln_attn(x + self.attn_out(y))
        return self.ln_ffn(x + self.ffn_out(F.gelu(self.ffn_in(x))))       # (B, T, H)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.ln_embeddings = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList([BertLayer(config) for _ in range(config.n_layer)])

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        """input_ids, attention_mask (1 = token, 0 = padding): (B, T). Returns (B, T, hidden)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}.")
        B, T = input_ids.shape
        if T > self.config.max_position:
            raise ValueError(f"{T} tokens is longer than max_position={self.config.max_position}; "
                             "truncate when tokenising (truncation=True).")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(T, device=input_ids.device)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))                  # (B, T, H)
        x = self.ln_embeddings(x)
        key_mask = attention_mask.bool() if attention_mask is not None else None
        for layer in self.layers:
            x = layer(x, key_mask)
        return x

    def sentence_embeddings(self, input_ids, attention_mask):
        """Mean of the token embeddings over real tokens, scaled to unit length: (B, hidden)."""
        return F.normalize(mean_pool(self(input_ids, attention_mask), attention_mask), dim=-1)


def mean_pool(hidden, attention_mask):
    """Average (B, T, H) over the tokens where attention_mask is 1: (B, H)."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)                 # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


# Our names -> the names in the Hugging Face BERT checkpoint
_BERT_NAMES = {
    "word_embeddings.weight": "embeddings.word_embeddings.weight",
    "position_embeddings.weight": "embeddings.position_embeddings.weight",
    "token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "ln_embeddings.weight": "embeddings.LayerNorm.weight",
    "ln_embeddings.bias": "embeddings.LayerNorm.bias",
}
_BERT_LAYER_NAMES = {
    "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
    "attn_out": "attention.output.dense", "ln_attn": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ln_ffn": "output.LayerNorm",
}


def load_minilm(path=None, fused_attention: bool = True) -> BertEncoder:
    """Build a BertEncoder from a Hugging Face BERT folder (default: lm4f.data.minilm_path())."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    if path is None:
        from lm4f.data import minilm_path

        path = minilm_path()
    path = Path(path)
    hf = json.loads((path / "config.json").read_text())
    config = BertConfig(vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
                        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                        intermediate_size=hf["intermediate_size"],
                        max_position=hf["max_position_embeddings"],
                        type_vocab_size=hf["type_vocab_size"], layer_norm_eps=hf["layer_norm_eps"],
                        fused_attention=fused_attention)
    checkpoint = load_file(str(path / "model.safetensors"))
    model = BertEncoder(config)
    state = {}
    for ours in model.state_dict():
        if ours.startswith("layers."):
            _, index, module, kind = ours.split(".")                        # layers.3.query.weight
            theirs = f"encoder.layer.{index}.{_BERT_LAYER_NAMES[module]}.{kind}"
        else:
            theirs = _BERT_NAMES[ours]
        state[ours] = checkpoint[theirs]
    model.load_state_dict(state)
    return model.eval()
