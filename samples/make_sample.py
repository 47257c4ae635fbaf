"""Make the embedded sample model, samples/tiny-llama/, from text every Python ships.

    python samples/make_sample.py            # writes samples/tiny-llama/ (minutes on 2 cores)
    python samples/make_sample.py --out DIR  # somewhere else

Steps, all seeded and deterministic on CPU:
1. Split the standard library's pydoc topics (`pydoc_data.topics`, sorted by key): the first
   90% of topics are the training text, the last 10% the held-out text, never trained on.
2. Train a byte-level BPE tokenizer (vocab 4096, `<|endoftext|>` as BOS/EOS) on the training
   text with `convkit tokenize train`; it writes the HF tokenizer.json.
3. Train a llama model (transformers' LlamaForCausalLM) whose row lengths are multiples of
   256 so every K-quant applies: hidden 256, FFN 768, 4 heads of 64, 2 KV heads (GQA),
   4 layers, untied output head. AdamW with a cosine schedule, a fixed number of steps.
4. Save an HF checkpoint (bf16 model.safetensors, config.json, generation_config.json,
   tokenizer.json, tokenizer_config.json) and TRAINING.md with the held-out perplexity,
   measured as llama.cpp does (chunks of 256 tokens, BOS first, second half scored) on the
   saved bf16 weights, next to a uniform model's perplexity (the vocab size).
"""
import argparse
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from convkit.samples import SAMPLE_SPECIAL_TOKEN, SAMPLE_VOCAB_SIZE, split_pydoc_topics

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "samples" / "tiny-llama"

SEED = 1234
VOCAB_SIZE = SAMPLE_VOCAB_SIZE
SPECIAL = SAMPLE_SPECIAL_TOKEN  # id 0: BOS and EOS
SEQ_LEN = 256
BATCH = 4
STEPS = 900
PEAK_LR = 4e-3
MIN_LR = 3e-4
WARMUP = 10
WEIGHT_DECAY = 0.1
PPL_CTX = 256

MODEL_DIMS = dict(hidden_size=256, intermediate_size=768, num_attention_heads=4, head_dim=64,
                  num_key_value_heads=2, num_hidden_layers=4, max_position_embeddings=512,
                  rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def train_tokenizer(train_text: str, out: Path):
    """convkit tokenize train on the training text; returns our tokenizer loaded back."""
    from tokenizers_impl import formats

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "train.txt"
        corpus.write_text(train_text, encoding="utf-8")
        cmd = [sys.executable, "-m", "convkit", "tokenize", "train", "--type", "bytelevel",
               "--vocab-size", str(VOCAB_SIZE), "--special-tokens", SPECIAL, "--quiet",
               "-o", str(out / "tokenizer.json"), str(corpus)]
        subprocess.run(cmd, check=True, cwd=REPO)
    tok = formats.load(out / "tokenizer.json")
    assert tok.token_to_id(SPECIAL) == 0 and tok.vocab_size == VOCAB_SIZE
    return tok


def write_tokenizer_config(out: Path) -> None:
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIAL, "eos_token": SPECIAL,
              "unk_token": None, "add_bos_token": True, "add_eos_token": False,
              "model_max_length": MODEL_DIMS["max_position_embeddings"], "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=VOCAB_SIZE, bos_token_id=0, eos_token_id=0, hidden_act="silu",
                       initializer_range=0.02, attention_bias=False, mlp_bias=False, **MODEL_DIMS)


def lr_at(step: int) -> float:
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    t = (step - WARMUP) / max(1, STEPS - WARMUP)
    return MIN_LR + 0.5 * (PEAK_LR - MIN_LR) * (1 + math.cos(math.pi * t))


def train_model(ids: torch.Tensor, steps: int):
    """Random windows of SEQ_LEN tokens, each starting with BOS (as llama.cpp's chunks do)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(SEED)
    model = LlamaForCausalLM(llama_config())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}], lr=PEAK_LR, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(SEED)
    bos = torch.zeros(BATCH, 1, dtype=torch.long)
    model.train()
    loss_log = []
    start = time.perf_counter()
    for step in range(steps):
        offsets = torch.randint(0, len(ids) - SEQ_LEN, (BATCH,), generator=gen)
        x = torch.cat([bos, torch.stack([ids[o:o + SEQ_LEN - 1] for o in offsets.tolist()])], dim=1)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_log.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss_log[-1]:.4f}  lr {lr_at(step):.2e}  "
                  f"{time.perf_counter() - start:6.1f}s", flush=True)
    return model, loss_log


def held_out_perplexity(model, ids: list[int], n_ctx: int = PPL_CTX) -> tuple[float, int, int]:
    """llama.cpp's perplexity: consecutive n_ctx chunks, first token replaced by BOS, logits at
    n_ctx/2 .. n_ctx-2 score the next token. Returns (PPL, chunks, scored tokens)."""
    n_chunks, first = len(ids) // n_ctx, n_ctx // 2
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(n_chunks):
            chunk = list(ids[i * n_ctx:(i + 1) * n_ctx])
            chunk[0] = 0
            logits = model(input_ids=torch.tensor([chunk])).logits[0, first:n_ctx - 1].float()
            targets = torch.tensor(chunk[first + 1:n_ctx])
            nll += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum").double())
            count += len(targets)
    return math.exp(nll / count), n_chunks, count


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=STEPS, help="training steps (the sample uses the default)")
    args = ap.parse_args(argv)

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    args.out.mkdir(parents=True, exist_ok=True)

    train_text, held_text = split_pydoc_topics()
    t0 = time.perf_counter()
    tok = train_tokenizer(train_text, args.out)
    write_tokenizer_config(args.out)
    print(f"tokenizer: {tok.vocab_size} tokens in {time.perf_counter() - t0:.1f}s", flush=True)
    train_ids = torch.tensor(tok.encode_ordinary(train_text), dtype=torch.long)
    held_ids = tok.encode_ordinary(held_text)
    print(f"training text: {len(train_text)} chars, {len(train_ids)} tokens; "
          f"held-out: {len(held_text)} chars, {len(held_ids)} tokens", flush=True)

    t0 = time.perf_counter()
    model, losses = train_model(train_ids, args.steps)
    train_s = time.perf_counter() - t0
    model.to(torch.bfloat16).save_pretrained(args.out, safe_serialization=True)

    # measured on what was saved: bf16 weights read back as float32
    from transformers import LlamaForCausalLM
    saved = LlamaForCausalLM.from_pretrained(args.out, torch_dtype=torch.float32).eval()
    ppl, n_chunks, n_scored = held_out_perplexity(saved, held_ids)
    final_loss = sum(losses[-10:]) / len(losses[-10:])
    n_params = sum(p.numel() for p in saved.parameters())
    print(f"final train loss (mean of last 10 steps) {final_loss:.4f}; held-out PPL {ppl:.3f} "
          f"vs uniform {VOCAB_SIZE}", flush=True)

    rel = os.path.relpath(args.out, REPO)
    report = f"""# tiny-llama: how it was made

Made by `python samples/make_sample.py` (command: `python samples/make_sample.py{'' if args.out == DEFAULT_OUT else ' --out ' + rel}{'' if args.steps == STEPS else f' --steps {args.steps}'}`),
Python {platform.python_version()}, torch {torch.__version__}, CPU, 2 threads, deterministic algorithms.

| | |
|---|---|
| seed | {SEED} |
| tokenizer | byte-level BPE, vocab {VOCAB_SIZE}, trained by `convkit tokenize train`; `{SPECIAL}` (id 0) is BOS and EOS |
| training text | pydoc_data.topics, first 90% of topics by key: {len(train_text)} chars, {len(train_ids)} tokens |
| held-out text | last 10% of topics by key: {len(held_text)} chars, {len(held_ids)} tokens, sha256 `{sha256(held_text)}` |
| model | llama, hidden 256, FFN 768, 4 heads x 64, 2 KV heads, 4 layers, untied output, {n_params} parameters, bf16 |
| training | {args.steps} steps x {BATCH} sequences x {SEQ_LEN} tokens (BOS first), AdamW (betas 0.9/0.95, wd {WEIGHT_DECAY}), lr {PEAK_LR} cosine to {MIN_LR}, {WARMUP} warmup steps, {train_s:.0f} s |
| final train loss | {final_loss:.4f} (mean of the last 10 steps) |
| held-out perplexity | **{ppl:.3f}** (llama.cpp method: {n_chunks} chunks of {PPL_CTX} tokens, BOS first, {n_scored} tokens scored; saved bf16 weights in float32) |
| uniform model perplexity | {VOCAB_SIZE} (the vocab size) |
"""
    (args.out / "TRAINING.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
