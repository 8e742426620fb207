"""The ``local`` answering backend of the customer-service assistant (case study 6.2).

One code path loads and runs a causal language model through ``transformers``:

    chat = load_chat_model("models/support-lm")            # the small model trained here (CI size)
    chat = load_chat_model(HUB_INSTRUCT_MODEL)             # a hub instruct model (LM4F_SIZE=full, internet once)
    messages = build_messages("Can I return shoes?", passages)
    chat.reply(messages)  # {"text": "...", "prompt_tokens": 212, "completion_tokens": 31, "finish_reason": "stop"}

``AutoTokenizer`` + ``AutoModelForCausalLM`` + the tokenizer's chat template do the same work for
both: the only difference is where the files come from and how many parameters they hold.

At the CI size the course builds its own model from the knowledge base (``lm4f.shop``), offline,
in about a minute on one CPU thread:

1. ``grounded_examples``: question + passages -> answer conversations. The reference answers of
   the *dev* questions (never the test questions), plus one made-up question per passage title
   whose answer is the passage's first sentence. Distractor passages sit beside the right one, in
   a seeded random order, so the model must find the passage to copy from and cite its id;
2. ``train_tokenizer``: a byte-level BPE tokeniser (the ``tokenizers`` library), wrapped as a
   ``transformers`` tokenizer with a ChatML-style chat template (``<|im_start|>role ... <|im_end|>``);
3. ``build_tiny_model``: a decoder of the Qwen2 family (the architecture of
   ``Qwen/Qwen2.5-0.5B-Instruct``, 0.8M parameters instead of 494M), from a config, random weights;
4. ``train``: next-token loss on the answer tokens only (the prompt is labelled -100);
5. ``save``: ``save_pretrained`` for model and tokenizer, plus ``manifest.json`` (sha256 of every
   file, the settings and the figures), which ``load_chat_model`` checks before it loads.

From the command line: ``python -m lm4f.local_lm train --out models/support-lm``.

What such a small model can and cannot do is measured in the notebook. It learns the answer
format (a sentence or two, then ``[id]``) and gives back much of the answers it was trained on,
but it has read a few hundred conversations, not billions of words: to a question it has not
seen it mostly strings together phrases of the knowledge base, often about the wrong thing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import lm4f
from lm4f.saved_models import file_checksums, verify_files

__all__ = [
    "HUB_INSTRUCT_MODEL",
    "SYSTEM_PROMPT",
    "HANDOFF_ANSWER",
    "ModelLoadError",
    "settings",
    "build_messages",
    "grounded_examples",
    "train_tokenizer",
    "build_tiny_model",
    "fine_tune",
    "save",
    "load_chat_model",
    "ChatModel",
    "token_f1",
    "main",
]

HUB_INSTRUCT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # what LM4F_SIZE=full loads (needs internet once)
SYSTEM_PROMPT = ("Answer the customer's question using only the passages. Cite passage ids in [brackets]. "
                 "If the passages do not answer it, say you will pass the question to a colleague.")
HANDOFF_ANSWER = "I will pass your question to a colleague, who will get back to you."
REBUILD_COMMAND = "python -m lm4f.local_lm train --out {folder}"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "lm4f.local_lm/1"

# Control tokens of the chat format (the same names as Qwen2.5 uses).
BOS, IM_START, IM_END, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class ModelLoadError(RuntimeError):
    """A model folder is missing or broken, or a hub model cannot be fetched. The message says how to fix it."""


# ------------------------------------------------------------------------------------------------
# Settings: one place for the CI-size and full-size choices
# ------------------------------------------------------------------------------------------------


def settings() -> dict:
    """The training and prompt settings for the current ``LM4F_SIZE``.

    CI size: tokeniser + model train in about 70 s of one CPU thread. Chosen by training without
    30 held-out dev questions and scoring answers to them (token-F1, facts copied): within that
    budget a 2-layer model that sees each conversation ~6 times beat wider or deeper ones that see
    them fewer times, and short prompts (2 passages of at most 120 characters) buy the steps.
    Full size: a deeper, wider model, longer prompts and many more steps, for a GPU.

    ``passages`` is how many passages a prompt shows (the right ones plus distractors) and
    ``max_chars`` cuts each to its first sentences; both are saved as the model's
    ``prompt_settings``, because a model answers best with prompts shaped like its training.
    """
    return {
        "size": lm4f.pick(ci="ci", full="full"),
        "vocab_size": lm4f.pick(ci=4000, full=8000),
        "steps": lm4f.pick(ci=900, full=4000, smoke=5),
        "batch_size": lm4f.pick(ci=4, full=32, smoke=2),
        "lr": lm4f.pick(ci=1e-2, full=1e-3),
        "max_length": lm4f.pick(ci=384, full=1024),
        "passages": lm4f.pick(ci=2, full=4),
        "max_chars": lm4f.pick(ci=120, full=None),
        "synthetic_per_passage": lm4f.pick(ci=1, full=4),
        "dev_variants": lm4f.pick(ci=2, full=4),
        "seed": 0,
    }


MODEL_SIZES = {
    # layers, width, heads, feed-forward width. Tied input/output embeddings, 1,024 positions.
    "ci": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4, "intermediate_size": 384},
    "full": {"num_hidden_layers": 8, "hidden_size": 512, "num_attention_heads": 8, "intermediate_size": 1536},
    "test": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 192},
}


# ------------------------------------------------------------------------------------------------
# The prompt: one format for the local and the OpenAI-compatible backends
# ------------------------------------------------------------------------------------------------


def _field(passage, name: str):
    """``passage.name`` for a ``shop.Passage`` (or any object), ``passage[name]`` for a dict."""
    if isinstance(passage, dict):
        return passage[name]
    return getattr(passage, name)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    """Split a passage into sentences (at ., ! or ? followed by white space)."""
    return [part.strip() for part in _SENTENCE_END.split(text.strip()) if part.strip()]


def shorten(text: str, max_chars: int | None) -> str:
    """The first whole sentences of ``text`` that fit in ``max_chars`` (always at least the first one)."""
    if max_chars is None or len(text) <= max_chars:
        return text
    kept: list[str] = []
    for sentence in sentences(text):
        if kept and len(" ".join(kept + [sentence])) > max_chars:
            break
        kept.append(sentence)
    return " ".join(kept)


def build_messages(question: str, passages: list, max_chars: int | None = None,
                   max_passages: int | None = None) -> list[dict]:
    """OpenAI-style messages for one question: the system prompt, then the passages and the question.

    Each passage (a ``shop.Passage`` or a dict with ``id``, ``title``, ``text``) becomes one line
    ``[id] title: text``; the user message ends with ``Question: ...``. The local and the OpenAI
    backends send exactly this, so their answers can be compared. A small model with a short
    context reads less: ``max_passages`` keeps the first (best-ranked) passages, ``max_chars``
    shortens each to its first sentences (see ``ChatModel.prompt_settings``).
    """
    passages = list(passages)[:max_passages]
    lines = [f"[{_field(p, 'id')}] {_field(p, 'title')}: {shorten(_field(p, 'text'), max_chars)}" for p in passages]
    user = "Passages:\n" + "\n".join(lines) + f"\n\nQuestion: {question.strip()}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def cite(answer: str, passage_ids) -> str:
    """``answer`` with ``[id]`` appended for every passage id it does not cite yet."""
    missing = [f"[{pid}]" for pid in passage_ids if f"[{pid}]" not in answer]
    return " ".join([answer.strip()] + missing)


# ------------------------------------------------------------------------------------------------
# Training conversations from the knowledge base
# ------------------------------------------------------------------------------------------------

TITLE_QUESTIONS = (
    "What can you tell me about {title}?",
    "I have a question about {title}.",
    "{title}?",
    "How does it work with {title}?",
    "Could you explain {title}?",
    "Where do I find information on {title}?",
)


def _first_sentence(text: str) -> str:
    parts = sentences(text)
    return parts[0] if parts else text.strip()


def grounded_examples(passages, questions, passages_per_prompt: int = 3, synthetic_per_passage: int = 2,
                      dev_variants: int = 1, max_chars: int | None = None, seed: int = 0) -> list[dict]:
    """Training conversations built from the knowledge base, never from a test question.

    - every *dev* question becomes one conversation: its passages (``passage_ids``) plus
      distractors up to ``passages_per_prompt``, in a seeded random order; the answer is the
      reference answer with ``[id]`` citations appended (a hand-off question with no passage
      gets the reference hand-off answer, or ``HANDOFF_ANSWER``). ``dev_variants`` > 1 repeats
      each with other distractors in another order, so the model cannot tie an answer to them;
    - every passage gives ``synthetic_per_passage`` made-up questions from its title (e.g.
      "What can you tell me about item 1078 (Dresses): fit?"), answered with the passage's first
      sentence and ``[id]``, again among distractors.

    Returns a list of ``{"id", "source", "messages"}`` where ``messages`` is system, user
    (``build_messages``) and the assistant's answer. Questions whose ``split`` is not ``"dev"``
    are skipped, whatever list is passed.
    """
    rng = random.Random(seed)
    by_id = {_field(p, "id"): p for p in passages}
    all_ids = sorted(by_id)

    def conversation(question: str, needed: list[str], answer: str) -> list[dict]:
        others = [pid for pid in all_ids if pid not in needed]
        shown = needed + rng.sample(others, max(0, min(len(others), passages_per_prompt - len(needed))))
        rng.shuffle(shown)
        messages = build_messages(question, [by_id[pid] for pid in shown], max_chars=max_chars)
        return messages + [{"role": "assistant", "content": answer}]

    examples = []
    for q in questions:
        if _field(q, "split") != "dev":
            continue
        needed = [pid for pid in (_field(q, "passage_ids") or []) if pid in by_id]
        answer = (_field(q, "answer") or "").strip()
        if needed:
            answer = cite(answer or HANDOFF_ANSWER, needed)
        elif _field(q, "handoff"):
            answer = answer or HANDOFF_ANSWER
        else:
            continue  # neither a passage nor a hand-off: nothing grounded to learn from
        for variant in range(dev_variants):
            examples.append({"id": _field(q, "id") + (f"/{variant}" if variant else ""), "source": "dev",
                             "messages": conversation(_field(q, "question"), needed, answer)})
    for pid in all_ids:
        passage = by_id[pid]
        title = _field(passage, "title").strip().rstrip("?.")
        templates = rng.sample(TITLE_QUESTIONS, min(synthetic_per_passage, len(TITLE_QUESTIONS)))
        for number, template in enumerate(templates):
            question = template.format(title=title[:1].lower() + title[1:] if template[0] != "{" else title)
            answer = cite(_first_sentence(_field(passage, "text")), [pid])
            examples.append({"id": f"{pid}/title-{number}", "source": "synthetic",
                             "messages": conversation(question, [pid], answer)})
    return examples


# ------------------------------------------------------------------------------------------------
# Tokeniser and model
# ------------------------------------------------------------------------------------------------


def train_tokenizer(texts, vocab_size: int = 4000):
    """A byte-level BPE tokeniser trained on ``texts``, as a ``transformers`` tokenizer with a chat template.

    Byte-level: every string can be encoded (no unknown token), and decoding gives it back
    exactly. The control tokens ``<|endoftext|>`` (bos), ``<|im_start|>``, ``<|im_end|>`` (eos)
    and ``<|pad|>`` are never split. ``vocab_size`` is an upper bound: on a small corpus BPE stops
    when no pair of tokens occurs twice.
    """
    from transformers import PreTrainedTokenizerFast

    from lm4f.tokens import train_bpe

    backend = train_bpe(texts, vocab_size, min_frequency=2, special_tokens=[BOS, IM_START, IM_END, PAD])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=IM_END, pad_token=PAD,
                                   unk_token=None, chat_template=CHAT_TEMPLATE, model_max_length=1024)


def build_tiny_model(tokenizer, size: str = "ci", seed: int = 0):
    """A small Qwen2-style decoder with random weights (``AutoModelForCausalLM.from_config``).

    ``size="ci"``: 2 layers, width 128, 4 heads (under a million parameters, almost half of them
    in the embedding); ``"full"``: 8 layers, width 512 (about 30M); ``"test"``: width 64, for
    fast tests. Input and output embeddings are tied; 1,024 positions (rotary). The bos/eos/pad
    ids come from ``tokenizer``, and generation stops at ``<|im_end|>``.
    """
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    if size not in MODEL_SIZES:
        raise ValueError(f"size must be one of {', '.join(MODEL_SIZES)}, not {size!r}")
    shape = MODEL_SIZES[size]
    config = Qwen2Config(vocab_size=len(tokenizer), num_key_value_heads=shape["num_attention_heads"],
                         max_position_embeddings=1024, tie_word_embeddings=True, use_cache=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


# ------------------------------------------------------------------------------------------------
# Training: loss on the answer tokens only
# ------------------------------------------------------------------------------------------------


def encode_example(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Token ids and labels for one conversation whose last message is the assistant's answer.

    The prompt is encoded exactly as ``ChatModel.reply`` encodes it (chat template with the
    generation prompt); the answer and ``<|im_end|>`` follow. Prompt positions get label -100,
    so the loss only asks the model to write the answer, not to predict the passages.
    """
    if messages[-1]["role"] != "assistant":
        raise ValueError("the last message of a training conversation must be the assistant's answer")
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=True)["input_ids"]
    answer = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt + answer, [-100] * len(prompt) + answer


def _batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of indices; examples of similar length share a batch (less padding)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    window = batch_size * 8
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def fine_tune(model, tokenizer, examples, steps: int, batch_size: int, lr: float, seed: int = 0, max_length: int = 512,
          device=None, progress: bool = True) -> list[dict]:
    """Fine-tune ``model`` on ``examples`` (``grounded_examples``) for ``steps`` optimiser steps.

    AdamW (weight decay on matrices only), linear warm-up over the first 5% of steps then cosine
    decay, gradient norm clipped at 1. bf16 autocast on CUDA, fp32 elsewhere. Conversations
    longer than ``max_length`` tokens are left out (a warning says how many). Returns one row
    per step: ``{"step", "loss", "lr"}`` (loss = mean over the answer tokens of the batch).
    The settings and final figures are also kept on ``model.lm4f_training`` for ``save``.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    started = time.perf_counter()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    encoded = [encode_example(tokenizer, e["messages"]) for e in examples]
    kept = [pair for pair in encoded if len(pair[0]) <= max_length]
    if len(kept) < len(encoded):
        warnings.warn(f"{len(encoded) - len(kept)} of {len(encoded)} conversations are longer than max_length="
                      f"{max_length} tokens and were left out; shorten the passages (max_chars) or raise max_length",
                      stacklevel=2)
    if not kept:
        raise ValueError(f"no training conversation fits in max_length={max_length} tokens")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.95))
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    pad = tokenizer.pad_token_id
    lengths = [len(ids) for ids, _ in kept]
    queue: list[list[int]] = []
    history = []
    model.train()
    for step in tqdm(range(1, steps + 1), desc="training", disable=not progress, leave=False):
        if not queue:
            queue = _batches(lengths, batch_size, rng)
        batch = [kept[i] for i in queue.pop()]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=device)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch], device=device)
        attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=device)
        with autocast:
            loss = answer_loss(model, input_ids, attention, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        history.append({"step": step, "loss": float(loss.item()), "lr": scheduler.get_last_lr()[0]})
    model.eval()
    tail = [row["loss"] for row in history[-max(1, steps // 10):]]
    model.lm4f_training = {
        "settings": {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "max_length": max_length,
                     "device": str(device), "examples": len(kept), "left_out": len(encoded) - len(kept),
                     "torch_threads": torch.get_num_threads()},
        "figures": {"first_loss": round(history[0]["loss"], 4), "final_loss": round(sum(tail) / len(tail), 4),
                    "train_seconds": round(time.perf_counter() - started, 1),
                    "parameters": lm4f.count_parameters(model)},
    }
    return history


def answer_loss(model, input_ids, attention_mask, labels):
    """Mean next-token cross-entropy over the positions whose label is not -100.

    The same number as ``model(input_ids, labels=labels).loss``, computed more cheaply: the
    output layer (hidden width x vocabulary) only runs where there is an answer token to predict,
    not over the whole prompt.
    """
    import torch.nn.functional as F

    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep])


# ------------------------------------------------------------------------------------------------
# Saving and loading (one code path for a local folder and a hub id)
# ------------------------------------------------------------------------------------------------


class _quiet_progress:
    """Switch off transformers' per-call progress bars ("Loading weights") for a small local model."""

    def __enter__(self):
        from transformers.utils import logging

        self.was_on = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging

        if self.was_on:
            logging.enable_progress_bar()
        return False


def save(model, tokenizer, folder, info: dict | None = None) -> None:
    """``save_pretrained`` for model and tokenizer, then ``manifest.json``.

    The manifest lists the sha256 and size of every file, the package versions, and the
    training settings and figures (``model.lm4f_training`` from ``train``, updated with
    ``info``; e.g. the prompt settings ``{"prompt": {"max_chars": 120, "max_passages": 2}}``).
    """
    import tokenizers
    import torch
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    with _quiet_progress():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    manifest = {"format": MANIFEST_FORMAT,
                "versions": {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
                             "tokenizers": tokenizers.__version__},
                **copy.deepcopy(getattr(model, "lm4f_training", {}))}
    for key, value in (info or {}).items():
        if isinstance(value, dict) and isinstance(manifest.get(key), dict):
            manifest[key].update(value)
        else:
            manifest[key] = value
    manifest["files"] = file_checksums(folder, skip=(MANIFEST,))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def verify_folder(folder) -> dict:
    """Check a saved model folder against its ``manifest.json``; return the manifest ({} if none).

    Raises ``ModelLoadError`` naming the first missing or changed file and the command that
    rebuilds the folder.
    """
    folder = Path(folder)
    rebuild = REBUILD_COMMAND.format(folder=folder)
    if not folder.is_dir():
        raise ModelLoadError(f"no model folder at {folder}: build it with `{rebuild}`")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return {}
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{manifest_path} is not a valid manifest ({error}); "
                             f"rebuild the model with `{rebuild}`") from error
    verify_files(folder, files, lambda path, what: ModelLoadError(f"{path} {what}; rebuild the model with `{rebuild}`"),
                 manifest=MANIFEST)
    return manifest


def _looks_like_path(name: str) -> bool:
    """A hub id is ``owner/name``; anything else (absolute, ./x, a/b/c, ~/x) is a local folder."""
    return (Path(name).exists() or name.startswith((".", "/", "~", "\\")) or name.count("/") != 1
            or "\\" in name or name.endswith("/"))


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return flag or bool(constants.HF_HUB_OFFLINE)


def _from_pretrained(source: str, dtype, **kwargs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    return tokenizer, model


def load_chat_model(name_or_path: str, device=None) -> ChatModel:
    """Load a chat model: a folder saved by ``save`` (or any ``save_pretrained`` folder), or a hub id.

    Both go through ``AutoTokenizer.from_pretrained`` + ``AutoModelForCausalLM.from_pretrained``.

    - a local folder is first checked against its ``manifest.json``; a missing or changed file
      raises ``ModelLoadError`` that names it and the command that rebuilds the folder;
    - a hub id (``owner/name``, e.g. ``HUB_INSTRUCT_MODEL``) is looked up in the local Hugging
      Face cache first; if it is not there it is downloaded, which needs internet once. With
      ``HF_HUB_OFFLINE=1`` (the course sets it when loading MiniLM) or without a connection it
      raises ``ModelLoadError`` saying so and how to fetch it.

    Weights are fp32 on a CPU, bf16 on a CUDA GPU. ``device`` defaults to ``lm4f.choose_device()``.
    """
    import torch

    device = torch.device(device) if device is not None else lm4f.choose_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = str(name_or_path)
    manifest: dict = {}
    if _looks_like_path(name):
        folder = Path(name).expanduser()
        manifest = verify_folder(folder)
        try:
            with _quiet_progress():
                tokenizer, model = _from_pretrained(str(folder), dtype, local_files_only=True)
        except Exception as error:  # missing config / weights, unreadable safetensors, foreign files
            rebuild = REBUILD_COMMAND.format(folder=folder)
            raise ModelLoadError(f"{folder} does not hold a loadable model ({type(error).__name__}: "
                                 f"{str(error)[:200]}); rebuild it with `{rebuild}`") from error
    else:
        tokenizer, model = _load_from_hub(name, dtype)
    model.to(device).eval()
    return ChatModel(model, tokenizer, name=name, manifest=manifest)


def _load_from_hub(name: str, dtype):
    try:
        return _from_pretrained(name, dtype, local_files_only=True)
    except OSError:
        pass  # not in the local cache (yet)
    fetch = f"HF_HUB_OFFLINE=0 python -c \"from lm4f.local_lm import load_chat_model; load_chat_model('{name}')\""
    local = (f" If you meant a local folder: there is none at {name}; build it with "
             f"`{REBUILD_COMMAND.format(folder=name)}`.")
    if _hub_offline():
        raise ModelLoadError(
            f"{name} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it "
            f"(no internet access is assumed). On a machine with internet, fetch it once with: {fetch}.{local}"
        ) from None
    try:
        return _from_pretrained(name, dtype)
    except OSError as error:  # no connection, unknown repository, gated model
        raise ModelLoadError(
            f"{name} could not be downloaded from the Hugging Face Hub ({type(error).__name__}: {str(error)[:200]}). "
            f"Check the name and the internet connection, then run again.{local}") from None


# ------------------------------------------------------------------------------------------------
# The chat model: reply and stream
# ------------------------------------------------------------------------------------------------


class ChatModel:
    """A causal LM with its tokenizer, answering OpenAI-style message lists.

    ``name`` is what it was loaded from. ``prompt_settings`` holds the prompt options the model
    was trained with (``{"max_chars": 120, "max_passages": 2}`` for the CI model, ``{}`` for a
    hub model, which reads whole passages): build its prompts with
    ``build_messages(question, passages, **chat.prompt_settings)``. One generation runs at a time
    (a lock), so a web server can share one ``ChatModel`` between threads.
    """

    def __init__(self, model, tokenizer, name: str, manifest: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.manifest = manifest or {}
        self.prompt_settings = dict(self.manifest.get("prompt", {}))
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ChatModel({self.name!r}, {lm4f.count_parameters(self.model) / 1e6:.1f}M parameters)"

    @property
    def device(self):
        return next(self.model.parameters()).device

    def encode(self, messages: list[dict]):
        """The prompt as token ids (1, T): the chat template with the assistant's generation prompt.

        Control tokens typed by a customer (e.g. ``<|im_end|>``) are encoded as plain text, so a
        message cannot close its turn and pose as the system.
        """
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                                     return_tensors="pt", sanitize_control_tokens=True)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        length = encoded["input_ids"].shape[1]
        if limit is not None and length >= limit:
            raise ValueError(f"the prompt has {length} tokens but {self.name} reads at most {limit}: "
                             "send fewer or shorter passages (build_messages(..., max_chars=...))")
        return {key: value.to(self.device) for key, value in encoded.items()}

    def _generation_config(self, max_new_tokens: int, temperature: float):
        generation = copy.deepcopy(self.model.generation_config)
        generation.max_new_tokens = max_new_tokens
        if generation.pad_token_id is None:
            generation.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        if temperature <= 0:  # greedy; the neutral values (not None, which generate() fills from the model's)
            generation.do_sample = False
            generation.temperature, generation.top_p, generation.top_k = 1.0, 1.0, 50
        else:
            generation.do_sample = True
            generation.temperature = temperature
        return generation

    def reply(self, messages: list[dict], max_new_tokens: int = 64, temperature: float = 0.0) -> dict:
        """Generate the assistant's answer: greedy when ``temperature == 0`` (the same text every time).

        Returns ``{"text", "prompt_tokens", "completion_tokens", "finish_reason"}``;
        ``finish_reason`` is ``"stop"`` when the model ended its turn, ``"length"`` when it hit
        ``max_new_tokens``. The rest of the model's own ``generation_config`` still applies (e.g.
        Qwen2.5's repetition penalty, and its top-p / top-k when ``temperature > 0``).
        """
        import torch

        inputs = self.encode(messages)
        prompt_tokens = inputs["input_ids"].shape[1]
        generation = self._generation_config(max_new_tokens, temperature)
        with self._lock, torch.inference_mode():
            output = self.model.generate(**inputs, generation_config=generation)
        new = output[0, prompt_tokens:].tolist()
        stops = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
        ended = next((i for i, token in enumerate(new) if token in stops), None)
        completion = new if ended is None else new[:ended + 1]
        text = self.tokenizer.decode(completion, skip_special_tokens=True).strip()
        return {"text": text, "prompt_tokens": prompt_tokens, "completion_tokens": len(completion),
                "finish_reason": "length" if ended is None else "stop"}

    def stream(self, messages: list[dict], max_new_tokens: int = 64) -> Iterator[str]:
        """The greedy answer as text pieces, as they are generated (for server-sent events).

        Joined, the pieces give ``reply(messages)["text"]`` (up to white space at the ends).
        """
        from transformers import TextIteratorStreamer

        inputs = self.encode(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        generation = self._generation_config(max_new_tokens, 0.0)
        failure: list[BaseException] = []

        def run():
            import torch

            try:
                with self._lock, torch.inference_mode():
                    self.model.generate(**inputs, generation_config=generation, streamer=streamer)
            except BaseException as error:  # surface it in the caller's thread
                failure.append(error)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True, name="lm4f-generate")
        worker.start()
        for piece in streamer:
            if piece:
                yield piece
        worker.join()
        if failure:
            raise failure[0]


# ------------------------------------------------------------------------------------------------
# A plain answer metric, and the command line
# ------------------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+(?:[.,'][a-z0-9]+)*")
_CITATION = re.compile(r"\[[^\]\s]+\]")


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 of two answers (lower-cased words and numbers; ``[id]`` citations ignored)."""
    from collections import Counter

    predicted = _WORD.findall(_CITATION.sub(" ", prediction).lower())
    expected = _WORD.findall(_CITATION.sub(" ", reference).lower())
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def build_and_train(out, steps: int | None = None, seed: int | None = None, device=None, progress: bool = True,
                    passages=None, questions=None) -> dict:
    """The whole recipe at the current size: examples -> tokeniser -> model -> train -> ``save(out)``.

    ``passages`` and ``questions`` default to the knowledge base (``lm4f.shop``); pass a subset of
    the dev questions to hold some out. Returns the manifest that was written.
    """
    import torch

    config = settings()
    if steps is not None:
        config["steps"] = steps
    if seed is not None:
        config["seed"] = seed
    if passages is None or questions is None:
        from lm4f import shop

        passages = shop.passages() if passages is None else passages
        questions = shop.questions() if questions is None else questions
    started, cpu_started = time.perf_counter(), time.process_time()
    lm4f.seed_everything(config["seed"])
    examples = grounded_examples(passages, questions, passages_per_prompt=config["passages"],
                                 synthetic_per_passage=config["synthetic_per_passage"],
                                 dev_variants=config["dev_variants"], max_chars=config["max_chars"],
                                 seed=config["seed"])
    texts = [f"{_field(p, 'title')}: {_field(p, 'text')}" for p in passages] + [SYSTEM_PROMPT]
    texts += [f"{m['role']}\n{m['content']}" for e in examples for m in e["messages"][1:]]
    tokenizer = train_tokenizer(texts, vocab_size=config["vocab_size"])
    model = build_tiny_model(tokenizer, size=config["size"], seed=config["seed"])
    device = torch.device(device) if device is not None else lm4f.choose_device()
    history = fine_tune(model, tokenizer, examples, steps=config["steps"], batch_size=config["batch_size"],
                    lr=config["lr"], seed=config["seed"], max_length=config["max_length"], device=device,
                    progress=progress)
    prompt = {key: value for key, value in (("max_chars", config["max_chars"]), ("max_passages", config["passages"]))
              if value is not None}
    info = {"settings": {**config, "size_switch": lm4f.SIZE, "vocab": len(tokenizer),
                         "dev_examples": sum(e["source"] == "dev" for e in examples),
                         "synthetic_examples": sum(e["source"] == "synthetic" for e in examples)},
            "figures": {"total_seconds": round(time.perf_counter() - started, 1),
                        "cpu_seconds": round(time.process_time() - cpu_started, 1)},
            "prompt": prompt,
            "loss_curve": [round(row["loss"], 4) for row in history]}
    save(model.to("cpu"), tokenizer, out, info=info)
    return json.loads((Path(out) / MANIFEST).read_text())


def main(argv=None) -> int:
    """``python -m lm4f.local_lm train --out FOLDER [--steps N] [--seed S] [--device cpu]``."""
    parser = argparse.ArgumentParser(prog="python -m lm4f.local_lm",
                                     description="Train the small answering model on the knowledge base and save it.")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("train", help="train tokeniser + model at the current LM4F_SIZE and save them")
    command.add_argument("--out", required=True, help="folder to save into (created if needed)")
    command.add_argument("--steps", type=int, default=None, help=f"optimiser steps (default {settings()['steps']})")
    command.add_argument("--seed", type=int, default=None)
    command.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best one present)")
    args = parser.parse_args(argv)
    import torch

    if os.environ.get("OMP_NUM_THREADS") == "1":
        torch.set_num_threads(1)
    manifest = build_and_train(args.out, steps=args.steps, seed=args.seed, device=args.device,
                               progress=sys.stderr.isatty())
    figures, chosen = manifest["figures"], manifest["settings"]
    print(f"saved to {args.out}: {figures['parameters'] / 1e6:.2f}M parameters, vocab {chosen['vocab']}, "
          f"{chosen['steps']} steps, loss {figures['first_loss']:.3f} -> {figures['final_loss']:.3f}, "
          f"{figures['total_seconds']:.0f} s ({figures['cpu_seconds']:.0f} s of CPU) on {chosen['device']} "
          f"({chosen['torch_threads']} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
