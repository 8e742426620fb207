"""A BERT-style encoder written here, that loads the real all-MiniLM-L6-v2 weights (chapter 4.3).

    from lm4f.bert import BertConfig, BertEncoder, load_bert, mean_pool
    encoder = load_bert()                            # reads lm4f.data.minilm_path(); no network
    hidden = encoder(input_ids, attention_mask)      # (B, T, 384) token embeddings
    sentences = encoder.sentence_embeddings(input_ids, attention_mask)   # (B, 384), unit length

``BertLayer`` is the post-LayerNorm encoder block (x = LN(x + attention(x)); x = LN(x + FFN(x))),
with no causal mask: every token sees every real token. ``load_bert`` maps the names in a Hugging
Face BERT checkpoint onto ours (``_BERT_NAMES``, ``_BERT_LAYER_NAMES``), so the numbers that come
out equal those of ``transformers`` and of ``sentence-transformers`` (chapter 4.3 checks both).
For retrieval the course uses the library (``lm4f.nlp.load_minilm``, a SentenceTransformer); this
file is for reading and checking what that library computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lm4f.attention import attention

__all__ = ["BertConfig", "BertLayer", "BertEncoder", "load_bert", "mean_pool"]


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


def load_bert(path=None, fused_attention: bool = True) -> BertEncoder:
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
