"""Scaled dot-product attention, the one function the course's GPT (``lm4f.gpt``) and BERT encoder
(``lm4f.bert``) share. Chapter 4.2 builds it step by step.

    from lm4f.attention import attention
    y = attention(q, k, v, causal=True)                 # q, k, v: (B, heads, T, head size)
    y = attention(q, k, v, key_mask=attention_mask)     # padding: False/0 = ignore that key

It has a fast path (PyTorch's fused ``scaled_dot_product_attention``) and a plain path written out
step by step (``fused=False``); both give the same numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["attention"]


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
