"""One decoder for every family the runtime runs, in the spirit of nanoGPT's model.py.

Families differ in a few places, all stated by their architecture module
(convkit/arch, `Structure`) and carried here in `ModelConfig.structure`:
- the norm: RMSNorm, or LayerNorm with bias; before each sublayer, or after it (OLMo 2);
- RMSNorm of q and k per head (Qwen3) or over all heads (OLMo 2);
- the MLP: gated (act(gate) * up) or plain, and its activation; or a router's top k
  of n gated experts (Qwen3-MoE, Mixtral; from the expert count);
- positions: rotary (halves layout, "NEOX", on all or the first `rope_dim` dimensions of a
  head; some layers without, SmolLM3) or learned; LongRoPE's short and long divisors (Phi-3);
- multipliers of the embedding, the residual branches, the attention scores and the
  logits (Granite, Gemma's embedding scale);
- norms before and after each sublayer (Gemma 2/3), soft-capped attention scores and
  logits (Gemma 2), sliding-window attention in some layers or all (Gemma 2/3, Mistral),
  with the sliding layers' own RoPE base (Gemma 3).
Biases are added where the checkpoint holds them; gpt2's and Phi-3's qkv are stored fused,
as is Phi-3's gate and up (one ffn_up of twice the width, gate rows first).

Weights come as a mapping from GGUF tensor names (`token_embd.weight`,
`blk.N.attn_q.weight`, ...) to `QTensor` (matrices, kept as stored) or float tensors
(norms, biases); load.py builds that mapping from a GGUF or an HF checkpoint. Every
matrix product goes through `QuantLinear`, so a layer's weight is dequantized only when
the forward pass reaches it (see linear.py for the numerics hook).
"""
import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from convkit.arch.structure import Structure

from .linear import FloatNumerics, Numerics, QuantEmbedding, QuantLinear, fused_linear


@dataclass
class ModelConfig:
    arch: str  # the GGUF architecture name, for messages
    structure: Structure
    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_size: int
    max_positions: int
    norm_eps: float
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # HF form: {"rope_type": "linear"|"llama3", "factor": ...}
    tie_embeddings: bool = False
    sliding_window: int | None = None  # a sliding layer's query sees this many positions: itself and the
                                       # window - 1 before it (transformers' and llama.cpp's convention)
    swa_layers: tuple | None = None    # which layers slide (config.json's layer_types); None: the structure says
    swa_rope_theta: float | None = None  # the sliding layers' own RoPE base, unscaled (Gemma 3); None: as the others
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    embedding_scale: float = 1.0   # Granite's multipliers; 1 (None for attention) means none
    residual_scale: float = 1.0
    attention_scale: float | None = None  # None: 1/sqrt(head_dim)
    logit_scale: float = 1.0              # logits are divided by it
    n_experts: int = 0                    # > 0: every layer a mixture of experts
    n_experts_used: int = 0
    rope_dim: int | None = None           # rotated dimensions per head; None: all of head_dim
    attn_softcap: float | None = None     # Gemma 2: scores become cap * tanh(scores / cap) before the softmax
    final_softcap: float | None = None    # and the logits likewise

    @property
    def context_limit(self) -> int:
        """Positions the runtime evaluates exactly."""
        return self.max_positions

    def window(self, layer: int) -> int | None:
        """The layer's sliding window, or None where it attends to the whole past."""
        if self.sliding_window is None:
            return None
        slides = self.swa_layers[layer] if self.swa_layers is not None else self.structure.slides(layer)
        return self.sliding_window if slides else None

    @property
    def uses_rope(self) -> bool:
        return self.structure.positions == "rope"


def rope_inv_freq(config: ModelConfig, freq_factors: torch.Tensor | None = None) -> torch.Tensor:
    """Rotation frequencies per pair of dimensions (float32), with the config's scaling,
    computed as transformers computes them.

    `freq_factors` is GGUF's `rope_freqs.weight`: per-frequency divisors that encode a
    scaling (llama3) the way ggml applies it."""
    dim = config.rope_dim or config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "longrope":  # the divisors come with the call (short or long), as transformers applies them
        shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        return 1.0 / (freq_factors.float().cpu() * config.rope_theta ** shape)
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_context = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_context / high) & ~(wavelen > old_context / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    elif kind == "yarn":
        inv_freq = yarn_inv_freq(config, scaling)
    elif kind not in ("default", "dynamic"):  # dynamic NTK changes nothing within the context length
        raise ValueError(f"unsupported rope scaling {kind!r}")
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.float().cpu()
    return inv_freq


def yarn_inv_freq(config: ModelConfig, scaling: dict) -> torch.Tensor:
    """YaRN: interpolated low frequencies, extrapolated high ones, a linear ramp between
    (the correction range rounded outwards, as transformers and ggml round it)."""
    dim, base, factor = config.head_dim, config.rope_theta, scaling["factor"]
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1
    old_context = scaling["original_max_position_embeddings"]

    def correction_dim(rotations):
        return dim * math.log(old_context / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(math.floor(correction_dim(beta_fast)), 0), min(math.ceil(correction_dim(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = (1 - ramp) * scaling.get("extrapolation_factor", 1.0)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    return (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate


def rope_attention_factor(config: ModelConfig) -> float:
    """YaRN and LongRoPE scale cos and sin (so both q and k) by this; 1 for every other kind."""
    scaling = config.rope_scaling or {}
    if scaling.get("rope_type") == "longrope":
        return float(scaling.get("attention_factor", 1.0))
    if scaling.get("rope_type") != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    return 0.1 * math.log(scaling["factor"]) + 1.0 if scaling["factor"] > 1 else 1.0


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of each head's first R dimensions: x [B, T, H, D], cos/sin
    [T, 1, R/2]; dimensions beyond R (partial rotary) pass unchanged."""
    rotated = 2 * cos.shape[-1]
    if rotated < x.shape[-1]:
        return torch.cat([apply_rope(x[..., :rotated], cos, sin), x[..., rotated:]], dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def padded_mask(mask, keys, start: int, T: int, causal: bool):
    """The attention mask [B, 1, T, K] with padding keys (`keys` [B, K] False) excluded. A
    query row whose every key is padding (a padding query at the left) keeps its own key,
    so that the softmax stays finite; its output is never used."""
    K = keys.shape[1]
    query_pos = torch.arange(start, start + T, device=keys.device)[:, None]
    key_pos = torch.arange(start + T - K, start + T, device=keys.device)[None, :]
    if mask is None:
        mask = key_pos <= query_pos if causal else torch.ones(T, K, dtype=torch.bool, device=keys.device)
    return ((mask[None] & keys[:, None, :]) | (key_pos == query_pos)[None])[:, None]


def longrope_factors(scaling: dict, w: dict, kind: str) -> torch.Tensor:
    """LongRoPE's short or long divisors: from config.json, or a GGUF's rope_factors_* tensor."""
    if scaling.get(f"{kind}_factor") is not None:
        return torch.tensor(scaling[f"{kind}_factor"], dtype=torch.float32)
    return w[f"rope_factors_{kind}.weight"]


class KVCache:
    """Keys and values of every layer for positions 0..length-1, preallocated."""

    def __init__(self, config: ModelConfig, batch: int, max_len: int, dtype, device):
        shape = (batch, config.n_kv_heads, max_len, config.head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.max_len = max_len
        self.length = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int):
        """Store k/v [B, Hkv, T, D] at positions start.. and return all keys/values so far."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} needed")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Norm(torch.nn.Module):
    def __init__(self, config: ModelConfig, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight, self.bias, self.eps = weight, bias, config.norm_eps
        self.rms = config.structure.norm == "rms"

    def forward(self, x):
        if not self.rms:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)  # statistics in float32 for bf16 too


class Attention(torch.nn.Module):
    def __init__(self, config: ModelConfig, w, prefix: str):
        super().__init__()
        self.config = config
        self.fused_qkv = f"{prefix}attn_qkv.weight" in w  # gpt2: stored fused
        if self.fused_qkv:
            self.qkv = QuantLinear(w[f"{prefix}attn_qkv.weight"], w.get(f"{prefix}attn_qkv.bias"))
        else:
            names = [f"{prefix}attn_{p}" for p in "qkv"]
            self.qkv = fused_linear([w[f"{n}.weight"] for n in names], [w.get(f"{n}.bias") for n in names])
        self.out = QuantLinear(w[f"{prefix}attn_output.weight"], w.get(f"{prefix}attn_output.bias"))
        self.qk_norm = config.structure.qk_norm
        if self.qk_norm is not None:
            self.q_norm = Norm(config, w[f"{prefix}attn_q_norm.weight"])
            self.k_norm = Norm(config, w[f"{prefix}attn_k_norm.weight"])
        self.scale = config.attention_scale or 1.0 / math.sqrt(config.head_dim)
        self.softcap = config.attn_softcap
        self.window = None  # set by the block: the layer's sliding window
        self.numerics: Numerics = FloatNumerics()

    def norm_qk(self, qk: torch.Tensor) -> torch.Tensor:
        """q and k [B, T, H + Hkv, D] through their RMSNorms: per head, or over all heads."""
        c = self.config
        q, k = qk[:, :, : c.n_heads], qk[:, :, c.n_heads:]
        if self.qk_norm == "all":
            B, T = qk.shape[:2]
            q = self.q_norm(q.reshape(B, T, -1)).view(q.shape)
            k = self.k_norm(k.reshape(B, T, -1)).view(k.shape)
        else:
            q, k = self.q_norm(q), self.k_norm(k)
        return torch.cat([q, k], dim=2)

    def forward(self, x, rope, cache: KVCache | None, layer: int, start: int, keys=None):
        """`keys` [B, start + T] bool: False for padding, which no query attends to."""
        c = self.config
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, c.n_heads + 2 * c.n_kv_heads, c.head_dim)
        qk, v = qkv[:, :, : c.n_heads + c.n_kv_heads], qkv[:, :, c.n_heads + c.n_kv_heads:]
        if self.qk_norm is not None:
            qk = self.norm_qk(qk)
        if rope is not None:
            qk = apply_rope(qk, *rope)  # q and k rotated together
        q, k = qk[:, :, : c.n_heads].transpose(1, 2), qk[:, :, c.n_heads:].transpose(1, 2)
        v = v.transpose(1, 2)
        if cache is not None:
            k, v = cache.append(layer, k, v, start)
        first = 0  # the first key position k and v hold
        if self.window is not None and T == 1 and start + 1 > self.window:  # decoding: only the window's keys
            first = start + 1 - self.window
            k, v = k[:, :, first:], v[:, :, first:]
        mask = None
        if (start > 0 and T > 1) or (self.window is not None and first == 0 and start + T > self.window):
            # new queries see the past and their own prefix; in a sliding layer only the last `window`
            # positions (query - key < window)
            query_pos = torch.arange(start, start + T, device=x.device)[:, None]
            key_pos = torch.arange(first, start + T, device=x.device)[None, :]
            mask = key_pos <= query_pos
            if self.window is not None:
                mask = mask & (query_pos - key_pos < self.window)
        if keys is not None:
            mask = padded_mask(mask, keys[:, first:start + T], start, T, causal=start == 0 or T > 1)
        y = self.numerics.attention(q, k, v, causal=start == 0 or T > 1, mask=mask,
                                    scale=self.scale, softcap=self.softcap)
        return self.out(y.transpose(1, 2).reshape(B, T, c.n_heads * c.head_dim))


ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


class MLP(torch.nn.Module):
    def __init__(self, config: ModelConfig, w, prefix: str):
        super().__init__()
        self.gated = config.structure.mlp == "gated"
        self.act = ACTIVATIONS[config.structure.activation]
        if self.gated and f"{prefix}ffn_gate.weight" not in w:  # stored fused (Phi-3): gate rows, then up
            self.up = QuantLinear(w[f"{prefix}ffn_up.weight"], w.get(f"{prefix}ffn_up.bias"))
        elif self.gated:  # gate and up in one product, split after
            names = [f"{prefix}ffn_gate", f"{prefix}ffn_up"]
            self.up = fused_linear([w[f"{n}.weight"] for n in names], [w.get(f"{n}.bias") for n in names])
        else:
            self.up = QuantLinear(w[f"{prefix}ffn_up.weight"], w.get(f"{prefix}ffn_up.bias"))
        self.down = QuantLinear(w[f"{prefix}ffn_down.weight"], w.get(f"{prefix}ffn_down.bias"))

    def forward(self, x):
        h = self.up(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.down(h)


class Experts(torch.nn.Module):
    """Mixture of experts: the router's softmax over experts, the top k per token with their
    weights renormalized to sum 1, and each chosen expert's gated MLP on its tokens.
    The stacked GGUF matrices (expert e's rows after expert e-1's) are cut per expert."""

    def __init__(self, config: ModelConfig, w, prefix: str):
        super().__init__()
        self.k = config.n_experts_used
        self.router = QuantLinear(w[f"{prefix}ffn_gate_inp.weight"])
        gate, up, down = (w[f"{prefix}ffn_{n}_exps.weight"] for n in ("gate", "up", "down"))
        n = config.n_experts
        ff, h = gate.shape[0] // n, down.shape[0] // n

        def cut(q, rows, e):
            return q.row_range(e * rows, (e + 1) * rows)

        self.up = torch.nn.ModuleList(fused_linear([cut(gate, ff, e), cut(up, ff, e)], [None, None]) for e in range(n))
        self.down = torch.nn.ModuleList(QuantLinear(cut(down, h, e)) for e in range(n))
        self.act = ACTIVATIONS[config.structure.activation]

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = torch.softmax(self.router(x).float(), dim=-1)
        weights, chosen = probs.topk(self.k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        for e in chosen.unique().tolist():
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            gate, up = self.up[e](x[rows]).chunk(2, dim=-1)
            out.index_add_(0, rows, self.down[e](self.act(gate) * up) * weights[rows, slot, None])
        return out.view(shape)


class Block(torch.nn.Module):
    def __init__(self, config: ModelConfig, w, layer: int):
        super().__init__()
        p = f"blk.{layer}."
        self.layer = layer
        self.post_norms = config.structure.post_norms
        self.uses_rope = config.structure.uses_rope(layer)
        self.residual_scale = config.residual_scale
        norms = ("post_attention_norm", "post_ffw_norm") if self.post_norms else ("attn_norm", "ffn_norm")
        self.attn_norm, self.ffn_norm = (Norm(config, w[f"{p}{n}.weight"], w.get(f"{p}{n}.bias")) for n in norms)
        self.sandwich = config.structure.sandwich_norms
        if self.sandwich:  # Gemma: the sublayers' outputs normed too
            self.attn_post_norm, self.ffn_post_norm = (Norm(config, w[f"{p}{n}.weight"])
                                                       for n in ("post_attention_norm", "post_ffw_norm"))
        self.attn = Attention(config, w, p)
        self.attn.window = config.window(layer)
        self.local_rope = self.attn.window is not None and config.swa_rope_theta is not None
        self.mlp = Experts(config, w, p) if config.n_experts else MLP(config, w, p)

    def forward(self, x, ropes, cache, start, keys=None):
        rope = (ropes[1] if self.local_rope else ropes[0]) if self.uses_rope else None

        def attn(h):
            return self.attn(h, rope, cache, self.layer, start, keys)

        if self.sandwich:
            x = x + self.attn_post_norm(attn(self.attn_norm(x)))
            return x + self.ffn_post_norm(self.mlp(self.ffn_norm(x)))
        if self.post_norms:  # OLMo 2: each sublayer's output is normed, its input is not
            x = x + self.attn_norm(attn(x))
            return x + self.ffn_norm(self.mlp(x))
        if self.residual_scale != 1.0:
            x = x + attn(self.attn_norm(x)) * self.residual_scale
            return x + self.mlp(self.ffn_norm(x)) * self.residual_scale
        x = x + attn(self.attn_norm(x))
        return x + self.mlp(self.ffn_norm(x))


class Model(torch.nn.Module):
    """Decoder-only transformer. `w` maps GGUF tensor names to QTensor / float tensors,
    already on the target device; float tensors already in the compute dtype."""

    def __init__(self, config: ModelConfig, w: dict, dtype: torch.dtype, device):
        super().__init__()
        self.config, self.dtype, self.device = config, dtype, torch.device(device)
        self.tok_embd = QuantEmbedding(w["token_embd.weight"], dtype)
        self.pos_embd = QuantEmbedding(w["position_embd.weight"], dtype) if "position_embd.weight" in w else None
        self.blocks = torch.nn.ModuleList(Block(config, w, i) for i in range(config.n_layers))
        self.norm = Norm(config, w["output_norm.weight"], w.get("output_norm.bias"))
        head = w["output.weight"] if "output.weight" in w else w["token_embd.weight"]  # tied: same rows
        self.lm_head = QuantLinear(head, w.get("output.bias"))
        self.inv_freq = self.inv_freq_long = None
        scaling = config.rope_scaling or {}
        if config.uses_rope and scaling.get("rope_type") == "longrope":
            short, long = (longrope_factors(scaling, w, kind) for kind in ("short", "long"))
            self.inv_freq, self.inv_freq_long = rope_inv_freq(config, short), rope_inv_freq(config, long)
            self.long_beyond = scaling["original_max_position_embeddings"]
        elif config.uses_rope:
            self.inv_freq = rope_inv_freq(config, w.get("rope_freqs.weight"))
        self.rope_scale = rope_attention_factor(config)
        self.inv_freq_local = None  # Gemma 3's sliding layers: their own base, no scaling
        if config.uses_rope and config.swa_rope_theta is not None:
            self.inv_freq_local = rope_inv_freq(dataclasses.replace(config, rope_theta=config.swa_rope_theta,
                                                                    rope_scaling=None))

    # ------------------------------------------------------------------ setup
    def set_numerics(self, numerics: Numerics) -> None:
        for m in self.modules():
            if isinstance(m, (QuantLinear, Attention)):
                m.numerics = numerics

    def dequantize_all(self) -> None:
        """Keep every matrix dequantized in the compute dtype (memory for speed)."""
        for m in self.modules():
            if isinstance(m, QuantLinear):
                m.keep_dense(self.dtype)

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        return KVCache(self.config, batch, max_len or self.config.max_positions, self.dtype, self.device)

    # ---------------------------------------------------------------- forward
    def rope(self, start: int, length: int, inv_freq=None, scale=None, positions=None):
        """cos and sin [T, 1, R/2] for positions start.., or [B, T, 1, R/2] for `positions` [B, T]."""
        pos = torch.arange(start, start + length, dtype=torch.float32) if positions is None else positions.float().cpu()
        if inv_freq is None:
            inv_freq = self.inv_freq
            if self.inv_freq_long is not None and int(pos.max()) + 1 > self.long_beyond:
                inv_freq = self.inv_freq_long  # transformers' rule: the pass's last position decides, for all of it
        angles = (pos[..., None] * inv_freq)[..., None, :]  # [(B,) T, 1, R/2]
        cos, sin = angles.cos(), angles.sin()
        scale = self.rope_scale if scale is None else scale
        if scale != 1.0:
            cos, sin = cos * scale, sin * scale
        return (cos.to(self.device, self.dtype), sin.to(self.device, self.dtype))

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache: KVCache | None = None,
                logits_for: slice | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, T] -> float32 logits [B, T', vocab] for positions `logits_for` (all by default).

        With a cache, ids continue the sequence at position cache.length and their keys
        and values are appended. `attention_mask` [B, cache.length + T] (1: token, 0: padding,
        as transformers takes it) pads a batch of sequences of different lengths on either
        side: padding is never attended to, and each token's position counts only the tokens
        before it (transformers' generate's position ids). Padding rows' logits are meaningless."""
        if ids.dim() == 1:
            ids = ids[None]
        ids = ids.to(self.device)
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.max_positions:
            raise ValueError(f"{start + T} positions exceed the model's context of {self.config.max_positions}")
        keys = positions = None
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (B, start + T):
                raise ValueError(f"attention_mask of shape {tuple(attention_mask.shape)}; "
                                 f"[{B}, {start + T}] expected (the cached positions and these)")
            keys = attention_mask.to(self.device).bool()
            positions = (keys.long().cumsum(-1) - 1).clamp(min=0)[:, start:]
        with self.lm_head.numerics.forward_context(B * T, self.device):
            x = self.tok_embd(ids)
            if self.config.embedding_scale != 1.0:
                x = x * self.config.embedding_scale
            if self.pos_embd is not None and positions is None:
                x = x + self.pos_embd(torch.arange(start, start + T, device=self.device))
            elif self.pos_embd is not None:
                x = x + self.pos_embd(positions.reshape(-1)).view(x.shape)
            rope = self.rope(start, T, positions=positions) if self.inv_freq is not None else None
            local = (self.rope(start, T, self.inv_freq_local, 1.0, positions) if self.inv_freq_local is not None
                     else rope)
            for block in self.blocks:
                x = block(x, (rope, local), cache, start, keys)
            if cache is not None:
                cache.length = start + T
            if logits_for is not None:
                x = x[:, logits_for]
            logits = self.lm_head(self.norm(x))
            if self.config.logit_scale != 1.0:
                logits = logits / self.config.logit_scale
            if self.config.final_softcap is not None:
                logits = torch.tanh(logits / self.config.final_softcap) * self.config.final_softcap
            return logits.float()
