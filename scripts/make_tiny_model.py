"""Build the tiny trained model the quality tests use: tests/data/tiny-shakespeare/.

A two-layer GPT-2 with the widths of ``conf/model/tiny-gpt2.yaml`` (so ``model=tiny-gpt2
model.hub_id=tests/data/tiny-shakespeare model.weights=pretrained`` loads it), trained for
a few hundred steps on the public-domain text kvopt ships (kvopt/data/coriolanus.txt), with
a byte-level BPE tokenizer of 1024 tokens trained on the same text and saved beside it, so
``AutoTokenizer.from_pretrained(folder)`` works offline. Fixed seed; CPU; under a minute.

Its outputs mean something (its next-token distributions are peaked and depend on the
context), which random weights do not: that is all the quality tests need from it.

    python scripts/make_tiny_model.py [--out tests/data/tiny-shakespeare] [--steps 600]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from kvopt.quality import SHIPPED_TEXT

REPO = Path(__file__).resolve().parent.parent
EOS = "<|endoftext|>"


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE on ``text``; id 0 is the end-of-text token (tiny-gpt2's bos/eos id)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([text], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "tiny-shakespeare")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # small matrices: one thread is fastest on a shared CPU
    arch = dict(OmegaConf.load(REPO / "conf" / "model" / "tiny-gpt2.yaml")["architecture"])
    arch.pop("model_type")
    text = SHIPPED_TEXT.read_text(encoding="utf-8")
    tokenizer = train_tokenizer(text, arch["vocab_size"])
    ids = torch.tensor(tokenizer(text)["input_ids"])
    model = GPT2LMHeadModel(GPT2Config(**arch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    seq, batch = 64, 16
    start = time.perf_counter()
    for step in range(args.steps):
        rows = torch.randint(0, len(ids) - seq - 1, (batch,))
        x = torch.stack([ids[r : r + seq] for r in rows])
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:  # linear decay to a tenth
            group["lr"] = 3e-3 * (1 - 0.9 * (step + 1) / args.steps)
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"{len(ids)} tokens, {sum(p.numel() for p in model.parameters())} parameters -> {args.out}")


if __name__ == "__main__":
    main()
