"""KL divergence of a model from a base model, with llama.cpp's statistics (`--kl-divergence`).

Per scored token (the positions perplexity.py scores), with p the base distribution and q
the evaluated one:
  KLD = sum_i p_i (log p_i - log q_i)        same top = argmax p == argmax q
  dp  = q[correct] - p[correct]              NLL and NLL_base for PPL(Q), PPL(base)
Summaries and uncertainties follow perplexity.cpp's `kl_divergence`: mean +/- sqrt(var /
(n - 1)), the covariance of the two NLLs for ln(PPL(Q)/PPL(base)) and PPL(Q)-PPL(base),
RMS dp with its propagated error, same-top rate with sqrt(p (1 - p) / (n - 1)), and the
same percentile interpolation.

Base log-probabilities on disk: llama.cpp's own `--kl-divergence-base` file, so files are
interchangeable with `llama-perplexity`. Layout (little endian):
  "_logits_" | u32 n_ctx | i32 n_vocab | i32 n_chunk | i32 tokens[n_chunk * n_ctx]
  then per chunk, per scored position (n_ctx - 1 - n_ctx/2 of them) one record of
  nv = 2 * ceil(n_vocab / 2) + 4 uint16: f32 scale, f32 min_log_prob, then n_vocab codes
  (padded to even). log p_i = scale * code_i + min_log_prob. The range covers the 16 nats
  below the largest logit (scale = range / 65535, about 2.4e-4 nats); anything lower is
  code 0 and is left out of the KLD sum as llama.cpp does (p < e^-16). That is 2 bytes per
  vocabulary entry, half of float16 logits with a uniform 2.4e-4-nat step.
"""
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from convkit.errors import ConvkitError

MAGIC = b"_logits_"
LOG_PROB_FLOOR = -16.0  # base log-probs at or below are not summed (perplexity.cpp)


def record_width(n_vocab: int) -> int:
    """uint16 per stored position: 4 for the two floats, n_vocab codes padded to even."""
    return 2 * ((n_vocab + 1) // 2) + 4


# ----------------------------------------------------------------- encoding
def encode_log_probs(logits: torch.Tensor) -> np.ndarray:
    """float32 logits [N, V] -> uint16 records [N, record_width(V)] (perplexity.cpp's log_softmax)."""
    x = logits.detach().float().cpu()
    n, v = x.shape
    max_logit = x.max(dim=-1, keepdim=True).values
    min_logit = torch.maximum(x.min(dim=-1, keepdim=True).values, max_logit - 16)
    log_sum_exp = torch.exp((x - max_logit).double()).sum(-1, keepdim=True).log().float()
    min_log_prob = min_logit - max_logit - log_sum_exp
    scale = (max_logit - min_logit) / 65535.0
    inv = torch.where(scale > 0, 1.0 / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(scale))
    codes = torch.round(inv * (x - min_logit))  # nearest, ties to even like ggml's nearest_int
    codes = torch.where(x > min_logit, codes, torch.zeros_like(codes)).clamp_(0, 65535)
    out = np.zeros((n, record_width(v)), dtype=np.uint16)
    head = torch.cat([scale, min_log_prob], dim=-1).numpy().astype(np.float32)
    out[:, :4] = head.view(np.uint16).reshape(n, 4)
    out[:, 4:4 + v] = codes.numpy().astype(np.uint16)
    return out


def decode_log_probs(records: np.ndarray, n_vocab: int) -> torch.Tensor:
    """uint16 records [N, nv] -> float32 log-probs [N, n_vocab]."""
    head = np.ascontiguousarray(records[:, :4]).view(np.float32)  # [N, 2]
    scale = torch.from_numpy(head[:, :1].copy())
    low = torch.from_numpy(head[:, 1:2].copy())
    codes = torch.from_numpy(records[:, 4:4 + n_vocab].astype(np.float32))
    return scale * codes + low


class LogitsWriter:
    """Streams a base-logits file: header and tokens first, then one chunk at a time."""

    def __init__(self, f, n_ctx: int, n_vocab: int, n_chunks: int, tokens: list[int]):
        self.f, self.n_vocab = f, n_vocab
        f.write(MAGIC + struct.pack("<Iii", n_ctx, n_vocab, n_chunks))
        f.write(np.asarray(tokens[:n_chunks * n_ctx], dtype="<i4").tobytes())

    def add(self, logits: torch.Tensor) -> None:
        self.f.write(encode_log_probs(logits).tobytes())


class LogitsFile:
    """A base-logits file opened for reading: header, tokens and per-chunk log-probs."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                head = f.read(20)
        except OSError as exc:
            raise ConvkitError(f"{self.path}: cannot read ({exc.strerror}); give a file written by "
                               f"--save-logits or llama-perplexity --kl-divergence-base") from None
        if len(head) < 20 or head[:8] != MAGIC:
            raise ConvkitError(f"{self.path}: not a base-logits file (no '_logits_' header); write one with "
                               f"--save-logits")
        self.n_ctx, self.n_vocab, self.n_chunks = struct.unpack("<Iii", head[8:20])
        if self.n_ctx < 4 or self.n_vocab < 1 or self.n_chunks < 1:
            raise ConvkitError(f"{self.path}: damaged header (n_ctx {self.n_ctx}, n_vocab {self.n_vocab}, "
                               f"n_chunk {self.n_chunks}); write it again with --save-logits")
        self.nv = record_width(self.n_vocab)
        self.first = self.n_ctx // 2
        self.rows = self.n_ctx - 1 - self.first
        self.tokens_at = 20
        self.data_at = 20 + 4 * self.n_ctx * self.n_chunks
        expected = self.data_at + 2 * self.nv * self.rows * self.n_chunks
        size = self.path.stat().st_size
        if size != expected:
            raise ConvkitError(f"{self.path}: {size} bytes where the header promises {expected}; the file is "
                               f"truncated or damaged, write it again with --save-logits")

    def tokens(self) -> list[int]:
        return np.fromfile(self.path, dtype="<i4", count=self.n_ctx * self.n_chunks,
                           offset=self.tokens_at).tolist()

    def chunk(self, i: int) -> torch.Tensor:
        """float32 base log-probs [rows, n_vocab] of chunk i."""
        offset = self.data_at + 2 * self.nv * self.rows * i
        records = np.fromfile(self.path, dtype="<u2", count=self.nv * self.rows, offset=offset)
        return decode_log_probs(records.reshape(self.rows, self.nv), self.n_vocab)


# -------------------------------------------------------------- statistics
@dataclass
class KLDAccumulator:
    """perplexity.cpp's kl_divergence_result plus the per-token KLD and dp values."""

    sum_nll: float = 0.0
    sum_nll2: float = 0.0
    sum_nll_base: float = 0.0
    sum_nll_base2: float = 0.0
    sum_nll_nll_base: float = 0.0
    sum_kld: float = 0.0
    sum_kld2: float = 0.0
    sum_p_diff: float = 0.0
    sum_p_diff2: float = 0.0
    sum_p_diff4: float = 0.0
    n_same_top: int = 0
    count: int = 0
    kld_values: list = field(default_factory=list)
    p_diff_values: list = field(default_factory=list)

    def add(self, logits: torch.Tensor, base_log_probs: torch.Tensor, targets: torch.Tensor,
            floor: float | None = LOG_PROB_FLOOR, nll_base: torch.Tensor | None = None) -> None:
        """One chunk: our logits [N, V], the base's log-probs [N, V], the correct tokens [N].

        `floor`: base log-probs at or below it are left out of the KLD sum (stored files
        cannot represent them); None sums every entry. `nll_base`: the base's exact NLL of
        the correct tokens [N] when the caller kept them; otherwise they are read from the
        stored log-probs, which clip a correct token more than 16 nats below the top one
        (llama.cpp does the same, so a weak base model's PPL(base) comes out low)."""
        x = logits.detach().float().cpu()
        base = base_log_probs.detach().float().cpu()
        t = targets.view(-1, 1).cpu()
        log_q = torch.log_softmax(x, dim=-1)
        nll = -log_q.gather(1, t).squeeze(1).double()
        if nll_base is None:
            nll_base = -base.gather(1, t).squeeze(1).double()
        else:
            nll_base = nll_base.detach().double().cpu()
        terms = base.exp() * (base - log_q)
        if floor is not None:
            terms = torch.where(base > floor, terms, torch.zeros_like(terms))
        kld = terms.double().sum(-1)
        same = (x.argmax(-1) == base.argmax(-1)).sum()
        p_diff = torch.exp(-nll) - torch.exp(-nll_base)
        self.sum_nll += float(nll.sum())
        self.sum_nll2 += float((nll * nll).sum())
        self.sum_nll_base += float(nll_base.sum())
        self.sum_nll_base2 += float((nll_base * nll_base).sum())
        self.sum_nll_nll_base += float((nll * nll_base).sum())
        self.sum_kld += float(kld.sum())
        self.sum_kld2 += float((kld * kld).sum())
        self.sum_p_diff += float(p_diff.sum())
        d2 = p_diff * p_diff
        self.sum_p_diff2 += float(d2.sum())
        self.sum_p_diff4 += float((d2 * d2).sum())
        self.n_same_top += int(same)
        self.count += x.shape[0]
        self.kld_values.extend(kld.float().tolist())
        self.p_diff_values.extend(p_diff.float().tolist())

    # perplexity.cpp's helpers
    def _mean_unc(self, s: float, s2: float) -> tuple[float, float]:
        n = self.count
        if n < 1:
            return 0.0, 0.0
        f = s / n
        df = s2 / n - f * f
        return f, (math.sqrt(df / (n - 1)) if df > 0 and n > 10 else 0.0)

    def _cov(self, a: float, b: float, ab: float) -> float:
        n = self.count
        if n < 10:
            return 0.0
        return (ab / n - (a / n) * (b / n)) / (n - 1)

    def summary(self) -> dict:
        """Every figure llama.cpp prints at the end of --kl-divergence, as a flat dict."""
        log_ppl, log_ppl_unc = self._mean_unc(self.sum_nll, self.sum_nll2)
        log_base, log_base_unc = self._mean_unc(self.sum_nll_base, self.sum_nll_base2)
        cov = self._cov(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base)
        ppl, ppl_base = math.exp(log_ppl), math.exp(log_base)
        ppl_unc, ppl_base_unc = ppl * log_ppl_unc, ppl_base * log_base_unc
        ratio = log_ppl - log_base
        ratio_unc = math.sqrt(max(log_ppl_unc ** 2 + log_base_unc ** 2 - 2 * cov, 0.0))
        diff_unc = math.sqrt(max(ppl_unc ** 2 + ppl_base_unc ** 2 - 2 * ppl * ppl_base * cov, 0.0))
        kld, kld_unc = self._mean_unc(self.sum_kld, self.sum_kld2)
        dp, dp_unc = self._mean_unc(self.sum_p_diff, self.sum_p_diff2)
        mse, mse_unc = self._mean_unc(self.sum_p_diff2, self.sum_p_diff4)
        rms = math.sqrt(mse)
        same = self.n_same_top / self.count if self.count else float("nan")
        same_unc = math.sqrt(same * (1 - same) / (self.count - 1)) if self.count > 1 else float("nan")
        corr = cov / (log_ppl_unc * log_base_unc) if log_ppl_unc and log_base_unc else float("nan")
        out = {
            "tokens": self.count,
            "ppl": ppl, "ppl_err": ppl_unc, "ppl_base": ppl_base, "ppl_base_err": ppl_base_unc,
            "ln_ppl_correlation": corr,
            "ln_ppl_ratio": ratio, "ln_ppl_ratio_err": ratio_unc,
            "ppl_ratio": math.exp(ratio), "ppl_ratio_err": math.exp(ratio) * ratio_unc,
            "delta_ppl": ppl - ppl_base, "delta_ppl_err": diff_unc,
            "kld_mean": kld, "kld_mean_err": kld_unc,
            "delta_p_mean": dp, "delta_p_mean_err": dp_unc,
            "delta_p_rms": rms, "delta_p_rms_err": 0.5 / rms * mse_unc if rms > 0 else 0.0,
            "same_top": same, "same_top_err": same_unc,
        }
        out.update(_percentiles("kld", self.kld_values, (0.999, 0.99, 0.95, 0.90, 0.10, 0.05, 0.01, 0.001)))
        out.update(_percentiles("delta_p", self.p_diff_values,
                                (0.999, 0.99, 0.95, 0.90, 0.75, 0.25, 0.10, 0.05, 0.01, 0.001)))
        return out


def _percentiles(name: str, values: list, fractions) -> dict:
    """Max, min, median and percentiles with perplexity.cpp's linear interpolation."""
    if not values:
        return {}
    v = np.sort(np.asarray(values, dtype=np.float32))
    n = len(v)
    median = 0.5 * (float(v[n // 2]) + float(v[n // 2 - 1])) if n % 2 == 0 else float(v[n // 2])
    out = {f"{name}_max": float(v[-1]), f"{name}_median": median, f"{name}_min": float(v[0])}
    for frac in fractions:
        p = np.float32(frac) * np.float32(n - 1)
        ip = int(p)
        p = float(p - ip)
        out[f"{name}_p{frac * 100:g}"] = (1 - p) * float(v[ip]) + p * float(v[min(ip + 1, n - 1)])
    return out


def format_summary(s: dict) -> str:
    """The summary as perplexity.cpp lays it out (three blocks)."""
    pct = lambda x: 100.0 * x  # noqa: E731
    lines = [
        "====== Perplexity statistics ======",
        f"Mean PPL(Q)                   : {s['ppl']:10.6f} ± {s['ppl_err']:10.6f}",
        f"Mean PPL(base)                : {s['ppl_base']:10.6f} ± {s['ppl_base_err']:10.6f}",
        f"Cor(ln(PPL(Q)), ln(PPL(base))): {pct(s['ln_ppl_correlation']):6.2f}%",
        f"Mean ln(PPL(Q)/PPL(base))     : {s['ln_ppl_ratio']:10.6f} ± {s['ln_ppl_ratio_err']:10.6f}",
        f"Mean PPL(Q)/PPL(base)         : {s['ppl_ratio']:10.6f} ± {s['ppl_ratio_err']:10.6f}",
        f"Mean PPL(Q)-PPL(base)         : {s['delta_ppl']:10.6f} ± {s['delta_ppl_err']:10.6f}",
        "",
        "====== KL divergence statistics ======",
        f"Mean    KLD: {s['kld_mean']:10.6f} ± {s['kld_mean_err']:10.6f}",
        f"Maximum KLD: {s['kld_max']:10.6f}",
    ]
    for f in ("99.9", "99", "95", "90"):
        lines.append(f"{float(f):4.1f}%   KLD: {s[f'kld_p{f}']:10.6f}")
    lines.append(f"Median  KLD: {s['kld_median']:10.6f}")
    for f in ("10", "5", "1", "0.1"):
        lines.append(f"{float(f):4.1f}%   KLD: {s[f'kld_p{f}']:10.6f}")
    lines += [f"Minimum KLD: {s['kld_min']:10.6f}", "", "====== Token probability statistics ======",
              f"Mean    Δp: {pct(s['delta_p_mean']):6.3f} ± {pct(s['delta_p_mean_err']):5.3f} %",
              f"Maximum Δp: {pct(s['delta_p_max']):6.3f}%"]
    for f in ("99.9", "99", "95", "90", "75"):
        lines.append(f"{float(f):4.1f}%   Δp: {pct(s[f'delta_p_p{f}']):6.3f}%")
    lines.append(f"Median  Δp: {pct(s['delta_p_median']):6.3f}%")
    for f in ("25", "10", "5", "1", "0.1"):
        lines.append(f"{float(f):4.1f}%   Δp: {pct(s[f'delta_p_p{f}']):6.3f}%")
    lines += [f"Minimum Δp: {pct(s['delta_p_min']):6.3f}%",
              f"RMS Δp    : {pct(s['delta_p_rms']):6.3f} ± {pct(s['delta_p_rms_err']):5.3f} %",
              f"Same top p: {pct(s['same_top']):6.3f} ± {pct(s['same_top_err']):5.3f} %"]
    return "\n".join(lines)
