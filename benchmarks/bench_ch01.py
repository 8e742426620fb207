"""Chapter 1's compute figures on this machine: achieved FLOP/s of a small GPT-2 training step
(FLOPs counted by PyTorch) next to the 6ND estimate, and MiniLM encoding throughput."""

import torch
from timing import best_of


def run():
    import transformers
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModel, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    import lm4f
    from lm4f import cost
    from lm4f.data import minilm_path

    transformers.logging.set_verbosity_error()
    device = lm4f.choose_device().type  # LM4F_DEVICE is honoured
    torch.manual_seed(0)

    # a small GPT-2 training step: counted FLOPs, the 6ND estimate, achieved FLOP/s
    model = GPT2LMHeadModel(GPT2Config(vocab_size=2048, n_positions=128, n_embd=128, n_layer=4, n_head=4)).to(device)
    tokens = torch.randint(0, 2048, (8, 128), device=device)  # (batch, sequence)
    n_params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter:
        model(tokens, labels=tokens).loss.backward()
    counted = counter.get_total_flops()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad()
        model(tokens, labels=tokens).loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    step_seconds = best_of(step)

    # MiniLM: sentences encoded per second (batch 32, 32 tokens)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    minilm = AutoModel.from_pretrained(str(minilm_path())).eval().to(device)
    batch = tokenizer(["this dress runs a little small in the shoulders"] * 32, padding="max_length", max_length=32,
                      return_tensors="pt").to(device)

    def encode():
        with torch.no_grad():
            minilm(**batch)
        if device == "cuda":
            torch.cuda.synchronize()

    encode_seconds = best_of(encode)
    return [
        {"metric": "GPT-2 (1.07M) step: counted / 6ND FLOPs",
         "value": counted / cost.training_flops(n_params, tokens.numel()), "unit": "ratio", "device": device},
        {"metric": "GPT-2 (1.07M) training step", "value": step_seconds * 1000, "unit": "ms (best of 3)",
         "device": device},
        {"metric": "GPT-2 (1.07M) achieved", "value": counted / step_seconds / 1e9, "unit": "GFLOP/s",
         "device": device},
        {"metric": "MiniLM encode, batch 32 x 32 tokens", "value": 32 / encode_seconds, "unit": "sentences/s",
         "device": device},
    ]
