"""Perplexity the way llama.cpp's `llama-perplexity` measures it (tools/perplexity/perplexity.cpp).

The text is tokenized once (BOS in front only when the model adds one) and cut into
`n_chunks` consecutive chunks of `n_ctx` tokens; a tail shorter than a chunk is dropped.
Each chunk is evaluated from an empty cache, with its first token replaced by BOS when the
model adds BOS. Only the second half is scored: the logits at positions
`n_ctx/2 .. n_ctx-2` predict the tokens at `n_ctx/2+1 .. n_ctx-1`, so every scored token
sees at least half a context. PPL = exp(mean NLL) over all scored tokens so far, and the
final estimate carries llama.cpp's uncertainty: PPL * sqrt(var(NLL) / (count - 1)).

`--batch` follows llama.cpp's `-b`: a multiple of n_ctx evaluates that many chunks in one
forward pass; a divisor of n_ctx feeds each chunk in pieces through the KV cache.
"""
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convkit.errors import ConvkitError

LSE_ROWS = 16  # rows of logits per logsumexp in token_nll: 16 x 49k floats fit in cache


def read_text(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ConvkitError(f"{path}: no such text file; give --text a UTF-8 text file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConvkitError(f"{path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None


@dataclass(frozen=True)
class ChunkPlan:
    """Which tokens llama.cpp evaluates and which positions it scores."""

    n_ctx: int
    n_chunks: int
    bos_id: int | None  # replaces each chunk's first token when the model adds BOS

    @property
    def first(self) -> int:
        """The first position whose logits are scored."""
        return self.n_ctx // 2

    @property
    def scored_per_chunk(self) -> int:
        return self.n_ctx - 1 - self.first

    def chunk(self, tokens: list[int], i: int) -> list[int]:
        ids = list(tokens[i * self.n_ctx:(i + 1) * self.n_ctx])
        if self.bos_id is not None:
            ids[0] = self.bos_id
        return ids

    def targets(self, tokens: list[int], i: int) -> list[int]:
        """The tokens predicted by positions first .. n_ctx-2 of chunk i (never the BOS swap)."""
        start = i * self.n_ctx
        return list(tokens[start + self.first + 1:start + self.n_ctx])


def plan_chunks(n_tokens: int, n_ctx: int, n_chunks: int | None = None, bos_id: int | None = None,
                source: str = "the text") -> ChunkPlan:
    """llama.cpp's chunking: needs 2 * n_ctx tokens; n_chunks = min(requested, n_tokens // n_ctx)."""
    if n_ctx < 4:
        raise ConvkitError(f"--ctx {n_ctx}: too small to score half a context; use at least 4 (default 512)")
    if n_tokens < 2 * n_ctx:
        raise ConvkitError(f"{source} tokenizes to {n_tokens} tokens; perplexity with --ctx {n_ctx} needs at "
                           f"least {2 * n_ctx}: give a longer text or a smaller --ctx")
    available = n_tokens // n_ctx
    if n_chunks is not None and n_chunks < 1:
        raise ConvkitError(f"--chunks {n_chunks}: give a positive number of chunks")
    return ChunkPlan(n_ctx, available if n_chunks is None else min(n_chunks, available), bos_id)


def tokenize_for_perplexity(tokenizer, text: str) -> list[int]:
    """Tokens as llama.cpp's common_tokenize(text, add_special=true, parse_special=false):
    special-token strings in the text stay plain text; BOS in front when the model adds it
    (and EOS at the end when a GGUF asks for it)."""
    return tokenizer.with_specials(tokenizer.bpe.encode_ordinary(text))


@dataclass
class ChunkLogits:
    index: int
    logits: torch.Tensor   # float32 [scored_per_chunk, vocab]: positions first .. n_ctx-2
    targets: torch.Tensor  # int64 [scored_per_chunk]: the tokens those positions predict


def _check_batch(batch: int, n_ctx: int) -> None:
    if batch < 1 or (batch < n_ctx and n_ctx % batch) or (batch >= n_ctx and batch % n_ctx):
        raise ConvkitError(f"--batch {batch}: give a multiple of --ctx {n_ctx} (chunks per pass) "
                           f"or a divisor of it (pieces of a chunk)")


def chunk_logits(model, tokens: list[int], plan: ChunkPlan, batch: int | None = None):
    """Evaluate the plan's chunks with `model`; yield ChunkLogits in order."""
    n_ctx, first = plan.n_ctx, plan.first
    batch = n_ctx if batch is None else batch
    _check_batch(batch, n_ctx)
    scored = slice(first, n_ctx - 1)
    if batch >= n_ctx:
        per_pass = batch // n_ctx
        for start in range(0, plan.n_chunks, per_pass):
            idx = range(start, min(start + per_pass, plan.n_chunks))
            ids = torch.tensor([plan.chunk(tokens, i) for i in idx], dtype=torch.long)
            logits = model(ids, logits_for=scored)
            for row, i in enumerate(idx):
                yield ChunkLogits(i, logits[row], torch.tensor(plan.targets(tokens, i), dtype=torch.long))
        return
    for i in range(plan.n_chunks):
        ids = torch.tensor(plan.chunk(tokens, i), dtype=torch.long)
        cache = model.new_cache(1, n_ctx)
        parts = []
        for s in range(0, n_ctx, batch):
            e = s + batch
            lo, hi = max(s, first), min(e, n_ctx - 1)
            want = slice(lo - s, hi - s) if lo < hi else slice(batch - 1, batch)
            out = model(ids[None, s:e], cache, logits_for=want)
            if lo < hi:
                parts.append(out[0])
        yield ChunkLogits(i, torch.cat(parts), torch.tensor(plan.targets(tokens, i), dtype=torch.long))


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[target] per row, float64 (llama.cpp: max + log(sum exp) - logit)."""
    logits = logits.float()
    lse = torch.empty(logits.shape[:-1], dtype=torch.float32, device=logits.device)
    for start in range(0, logits.shape[0], LSE_ROWS):  # a few rows at a time stay in cache
        lse[start:start + LSE_ROWS] = torch.logsumexp(logits[start:start + LSE_ROWS], dim=-1)
    picked = logits.gather(-1, targets.view(-1, 1).to(logits.device)).squeeze(-1)
    return (lse - picked).double().cpu()


@dataclass
class PerplexityAccumulator:
    """Running sums of NLL and NLL^2, and llama.cpp's estimate from them."""

    nll: float = 0.0
    nll2: float = 0.0
    count: int = 0
    running: list = field(default_factory=list)  # PPL after each chunk

    def add(self, nll: torch.Tensor) -> float:
        nll = nll.double()
        self.nll += float(nll.sum())
        self.nll2 += float((nll * nll).sum())
        self.count += nll.numel()
        self.running.append(self.ppl)
        return self.ppl

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.count) if self.count else float("nan")

    @property
    def uncertainty(self) -> float:
        """PPL * sqrt((E[nll^2] - E[nll]^2) / (count - 1)), as perplexity.cpp prints it."""
        if self.count < 2:
            return float("nan")
        mean = self.nll / self.count
        var = self.nll2 / self.count - mean * mean
        return math.sqrt(var / (self.count - 1)) * self.ppl if var > 0 else float("nan")


def perplexity_of_logits(chunks) -> PerplexityAccumulator:
    """PPL over an iterable of ChunkLogits (or (logits, targets) pairs)."""
    acc = PerplexityAccumulator()
    for c in chunks:
        logits, targets = (c.logits, c.targets) if isinstance(c, ChunkLogits) else c
        acc.add(token_nll(logits, targets))
    return acc
