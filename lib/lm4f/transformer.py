"""The course's Transformers in one readable file: a GPT (decoder) and a BERT-style encoder.

GPT (chapter 4.3, reused by chapters 8-10)::

    from lm4f.transformer import GPTConfig, GPT
    config = GPTConfig(vocab_size=97, block_size=128, n_layer=4, n_head=4, n_embd=128)
    model = GPT(config)
    logits, loss = model(idx, targets)      # idx, targets: (B, T) int64
                                            # logits: (B, T, vocab_size) always (also at inference)
                                            # loss: mean cross-entropy, or None without targets
    model.num_params()                      # parameters, position embeddings excluded by default
    model.generate(idx, max_new_tokens=200, temperature=0.8, top_k=20)   # (B, T + new) int64
    model.flops_per_token()                 # training FLOPs per token (6 N + attention, see below)
    model.estimate_mfu(tokens_per_second, device)   # model FLOPs utilisation, 0..1

BERT-style encoder (chapter 4.3: the real all-MiniLM-L6-v2 weights in code written here)::

    from lm4f.transformer import BertConfig, BertEncoder, load_minilm, mean_pool
    encoder = load_minilm()                          # reads lm4f.data.minilm_path(); no network
    hidden = encoder(input_ids, attention_mask)      # (B, T, 384) token embeddings
    sentences = encoder.sentence_embeddings(input_ids, attention_mask)   # (B, 384), unit length

Training helpers shared by the chapter, the benchmark and the tests: ``make_optimizer``,
``lr_at`` (warm-up + cosine), ``train_steps`` (one code path: CPU float32, or GPU with bf16
autocast), ``save_checkpoint`` / ``load_checkpoint`` (resume gives identical weights), and
``PEAK_FLOPS`` / ``peak_flops(device)`` for model FLOPs utilisation.

Attention has a fast path (PyTorch's fused ``scaled_dot_product_attention``) and a plain
fallback written out step by step (``attention(..., fused=False)``); both give the same numbers.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "attention", "GPTConfig", "GPT", "BertConfig", "BertEncoder", "load_minilm", "mean_pool",
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
                 generator: torch.Generator | None = None):
        """Append ``max_new_tokens`` sampled tokens to idx (B, T); returns (B, T + max_new_tokens).

        ``temperature`` divides the logits (below 1: safer, above 1: wilder; 0: always the most
        likely token). ``top_k`` keeps only the k most likely tokens before sampling.
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
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_id = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
        self.train(was_training)
        return idx


# =============================================================================================
# Peak FLOP/s per device, for model FLOPs utilisation
# =============================================================================================

# Dense (no sparsity) tensor-core peaks from the vendors' data sheets, bf16 unless noted.
PEAK_FLOPS = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "T4": 65e12,          # fp16 (no bf16 on T4)
}
CPU_GHZ = 2.5             # a stated estimate for a server core
CPU_FLOPS_PER_CYCLE = 32  # fp32: 2 FMA units x 8 lanes (AVX2) x 2 FLOPs per FMA


def peak_flops(device=None) -> tuple[str, float]:
    """(name, peak FLOP/s) for ``device``. For a CPU it is an estimate:
    threads x 2.5 GHz x 32 fp32 FLOPs per cycle (AVX2 with two FMA units)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if "H100" in name:
            key = "H100 PCIe" if "PCIe" in name else "H100 SXM"
        else:
            key = next((k for k in PEAK_FLOPS if k in name), None)
        if key is None:
            raise KeyError(f"No peak FLOP/s known for GPU {name!r}: add it to lm4f.transformer.PEAK_FLOPS "
                           "from the vendor's data sheet (dense bf16).")
        return key, PEAK_FLOPS[key]
    threads = torch.get_num_threads()
    return (f"CPU estimate ({threads} threads x {CPU_GHZ} GHz x {CPU_FLOPS_PER_CYCLE} FLOP/cycle)",
            threads * CPU_GHZ * 1e9 * CPU_FLOPS_PER_CYCLE)


# =============================================================================================
# Training helpers: optimiser, schedule, steps, checkpoints
# =============================================================================================


def make_optimizer(model, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.95)):
    """AdamW with weight decay on matrices only (not on biases, LayerNorm gains)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = any(p.is_cuda for p in decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def lr_at(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up to ``max_lr`` over ``warmup_steps``, then cosine decay to min_ratio * max_lr."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return max_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_steps(model, optimizer, train_ids, steps: int, batch_size: int, generator: torch.Generator,
                start_step: int = 0, total_steps: int | None = None, max_lr: float = 1e-3,
                warmup_steps: int = 0, grad_clip: float | None = 1.0, device=None,
                autocast_dtype: torch.dtype | None = None) -> list[float]:
    """Run ``steps`` optimiser steps from ``start_step``; return the training loss of each step.

    Batches are drawn from ``train_ids`` with ``generator`` (its state is part of a checkpoint,
    so a resumed run draws the same batches). ``autocast_dtype=torch.bfloat16`` trains in mixed
    precision (the weights and the optimiser stay float32).
    """
    from lm4f.text import get_batch

    device = torch.device(device) if device is not None else next(model.parameters()).device
    block_size = getattr(model, "_orig_mod", model).config.block_size
    total_steps = total_steps or start_step + steps
    losses = []
    model.train()
    for step in range(start_step, start_step + steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, max_lr, warmup_steps, total_steps)
        x, y = get_batch(train_ids, batch_size, block_size, generator)      # (B, T) each
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        losses.append(loss.item())
    return losses


def save_checkpoint(path, model, optimizer, step: int, generator: torch.Generator | None = None) -> None:
    """Save everything a resumed run needs: weights, optimiser state, step and RNG states."""
    raw = getattr(model, "_orig_mod", model)                               # unwrap torch.compile
    state = {
        "config": asdict(raw.config),
        "model": raw.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "torch_rng": torch.get_rng_state(),                                # dropout draws
        "batch_rng": generator.get_state() if generator is not None else None,
    }
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    torch.save(state, path)


def load_checkpoint(path, model=None, optimizer=None, generator: torch.Generator | None = None):
    """Load a checkpoint written by ``save_checkpoint``; returns ``(model, step)``.

    With ``model=None`` a new GPT is built from the stored config. The optimiser and the batch
    generator, when given, get their stored state back.
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    if model is None:
        model = GPT(GPTConfig(**state["config"]))
    getattr(model, "_orig_mod", model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if generator is not None and state["batch_rng"] is not None:
        generator.set_state(state["batch_rng"])
    torch.set_rng_state(state["torch_rng"])
    return model, state["step"]


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
