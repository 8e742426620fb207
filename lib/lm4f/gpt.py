"""The course's GPT in one readable file (chapter 4.3; reused by chapters 2.2, 4.4, 8 and 9-10).

A decoder-only Transformer with GPT-2's design (pre-LayerNorm blocks, learned positions, GELU,
weight tying, GPT-2's initialisation), written in the style of Karpathy's nanoGPT::

    from lm4f.gpt import GPTConfig, GPT
    config = GPTConfig(vocab_size=97, block_size=128, n_layer=4, n_head=4, n_embd=128)
    model = GPT(config)
    logits, loss = model(idx, targets)      # idx, targets: (B, T) int64
                                            # logits: (B, T, vocab_size) always (also at inference)
                                            # loss: mean cross-entropy, or None without targets
    model.num_params()                      # parameters, position embeddings excluded by default
    model.generate(idx, max_new_tokens=200, temperature=0.8, top_k=20, top_p=0.95)  # (B, T + new)
    model.flops_per_token()                 # training FLOPs per token (6 N + attention, see below)
    model.estimate_mfu(tokens_per_second, device)   # model FLOPs utilisation, 0..1

The pieces, bottom up: ``CausalSelfAttention`` (queries, keys and values from one matrix, heads
split, ``lm4f.attention.attention`` with the causal mask), ``FeedForward`` (width x 4, GELU, back),
``Block`` (x + attention(LN(x)), then x + feed-forward(LN(x))), ``GPT`` (embeddings, blocks, final
LayerNorm, output layer tied to the token embeddings). ``next_token_probs`` applies temperature,
top-k and top-p to the next-token logits.

Training lives in ``lm4f.training`` (``make_optimizer``, ``lr_at``, ``train_steps``, checkpoints);
the BERT-style encoder that loads MiniLM's weights lives in ``lm4f.bert``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lm4f.attention import attention
from lm4f.training import peak_flops
from lm4f.utils import count_parameters

__all__ = ["GPTConfig", "CausalSelfAttention", "FeedForward", "Block", "GPT", "next_token_probs"]


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int          # longest context the model sees (T)
    n_layer: int
    n_head: int
    n_embd: int              # width C; each head has C / n_head dimensions
    dropout: float = 0.0
    bias: bool = True        # biases in Linear and LayerNorm layers
    fused_attention: bool = True   # False: the plain attention of lm4f.attention

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


class FeedForward(nn.Module):
    """Each position on its own: widen to 4 x n_embd, GELU, project back (GPT-2's "MLP")."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):                                                   # (B, T, C)
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))              # (B, T, C)


class Block(nn.Module):
    """x + attention(LN(x)), then x + feed-forward(LN(x)): the pre-LayerNorm decoder block."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = FeedForward(config)          # "mlp", as in GPT-2's weight names

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
        count = count_parameters(self)
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
