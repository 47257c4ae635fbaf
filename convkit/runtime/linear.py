"""Weights that stay quantized, and the one place where a matrix product happens.

A `QTensor` is a 2-D weight as it was stored: the raw ggml blocks (uint8
[rows, bytes_per_row]) and their type, or a plain float tensor for F32/F16/BF16
(safetensors checkpoints). `QuantLinear` holds one and computes `x @ W.T + b`;
`QuantEmbedding` looks rows up, dequantizing only the rows it needs.

The numerics hook
-----------------
`QuantLinear.forward(x)` does nothing itself: it returns `self.numerics.linear(self, x)`.
A numerics object decides how the product is computed; the model never knows which one
it runs with. The default, `FloatNumerics`, dequantizes the weight to the activation
dtype (float32 or bfloat16) and computes one dense product (`F.linear` in float32, the
GEMM transformers uses; for bfloat16 on CPU the kernel `cpu_paths` chose for this CPU);
a weight of more than `row_chunk` rows (the output head) is dequantized a slice of rows
at a time unless it is kept dense. Another strategy — such as llama.cpp's
CPU numerics, where activations are quantized to Q8_0/Q8_1/Q8_K before each product
with a quantized weight — subclasses `Numerics` and reads what it needs from the layer:

    layer.weight.data      raw blocks, uint8 [out_features, bytes_per_row] (or floats)
    layer.weight.qtype     gguf.GGMLQuantizationType of those blocks
    layer.dense_weight(dtype)  the dequantized weight [out_features, in_features]
    layer.bias             float bias in the compute dtype, or None

and is installed with `model.set_numerics(obj)` (all linears, attention included) or
`load_model(..., numerics=obj)`. `Numerics.attention` is the second hook: the default is
torch's scaled_dot_product_attention; a strategy can round K/V the way another runtime
stores its cache. Strategies are registered by name in `NUMERICS` (`register_numerics`)
so command-line options can pick them.

Fused projections: q/k/v (and gate/up) rows of the same type are concatenated into one
QuantLinear at load time — rows are independent, so this changes no result of any
numerics — and kept as a `ConcatLinear` of separate layers when their types differ.
"""
import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType

from . import cpu_paths
from .dequant_torch import FLOAT_TYPES, dequantize, row_length


@dataclass
class QTensor:
    """A 2-D weight as stored: ggml blocks (uint8 rows) or a float tensor, plus its type."""

    data: torch.Tensor
    qtype: GGMLQuantizationType

    @property
    def is_float(self) -> bool:
        return self.qtype in FLOAT_TYPES

    @property
    def shape(self) -> tuple[int, int]:
        rows, width = self.data.shape
        return rows, (width if self.is_float else row_length(self.qtype, width))

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight in `dtype`; a float weight already in that dtype is returned as is."""
        if self.is_float:
            return self.data if self.data.dtype == dtype else self.data.to(dtype)
        return dequantize(self.data, self.qtype, dtype)

    def row_range(self, start: int, stop: int) -> "QTensor":
        return QTensor(self.data[start:stop], self.qtype)

    def take_rows(self, index: torch.Tensor) -> "QTensor":
        """The selected rows (blocks never cross rows, so this is exact for every type)."""
        return QTensor(self.data.index_select(0, index), self.qtype)

    def to(self, device) -> "QTensor":
        return QTensor(self.data.to(device), self.qtype)

    @staticmethod
    def cat_rows(parts: list["QTensor"]) -> "QTensor | None":
        """Rows of several weights stacked into one, or None when their types differ."""
        if len({p.qtype for p in parts}) != 1 or len({p.data.dtype for p in parts}) != 1:
            return None
        return QTensor(torch.cat([p.data for p in parts]), parts[0].qtype)


def _onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """oneDNN's linear (what torch's CPU graph compiler emits): on 2 cores it runs these
    bfloat16 shapes faster than F.linear, and it takes a prepacked weight."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _fp32_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """bfloat16 operands upcast (exactly), one float32 GEMM, the result rounded once to
    bfloat16: what oneDNN's bfloat16 kernels compute, on CPUs that have none."""
    return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)


# how a bfloat16 product on CPU is computed, by cpu_paths' path name
BF16_PRODUCTS = {"prepacked": _onednn_product, "bf16": F.linear, "fp32": _fp32_product}
PACK_ROWS_HINT = 512  # activation rows oneDNN chooses the packed layout for (any count works)


def prepacked(weight: torch.Tensor) -> torch.Tensor:
    """A bfloat16 CPU weight that stays for many products, reordered once into oneDNN's
    blocked layout when the CPU's path is "prepacked": the same results bit for bit, 5 to
    10% faster at 512 rows and about twice as fast for one row (decoding), because no
    product repacks it again. Other weights, and every weight on other paths, are returned
    as they are."""
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16 or cpu_paths.current().name != "prepacked":
        return weight
    return torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS_HINT)


def kept_form(weight: torch.Tensor) -> torch.Tensor:
    """How --dequantize-all keeps a weight: on the CPU's "prepacked" path a bfloat16 weight is
    prepacked; on the "fp32" path it is upcast once to float32 (the same values, so the same
    products bit for bit, without converting it in every product: the speed of float32 for
    the memory of float32, which is what the option trades); otherwise as it is."""
    if weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and cpu_paths.current().name == "fp32":
        return weight.float()
    return prepacked(weight)


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias with the kernel the device supports (`weight` may be prepacked).
    float32 and GPU products are F.linear; bfloat16 on CPU follows cpu_paths."""
    if weight.is_mkldnn:  # packed under the prepacked path: only oneDNN reads this layout
        return _onednn_product(x, weight, bias)
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:
        return BF16_PRODUCTS[cpu_paths.current().name](x, weight, bias)
    return F.linear(x, weight, bias)


class Numerics:
    """How matrix products are computed. Subclass and override `linear` / `attention`."""

    name = "float"

    row_chunk = 8192  # a larger weight (the output head) is dequantized this many rows at a time

    def forward_context(self, rows: int, device):
        """A context the model's forward pass of `rows` activation rows runs in (none by default)."""
        return contextlib.nullcontext()

    def linear(self, layer: "QuantLinear", x: torch.Tensor) -> torch.Tensor:
        kept = layer.kept_weight(x.dtype)
        if kept is not None:
            return dense_linear(x, kept, layer.bias)
        if layer.out_features <= self.row_chunk:
            return dense_linear(x, layer.dense_weight(x.dtype), layer.bias)
        # per-layer mode, large weight: never hold all of it dense
        out = x.new_empty(*x.shape[:-1], layer.out_features)
        for start in range(0, layer.out_features, self.row_chunk):
            stop = min(start + self.row_chunk, layer.out_features)
            bias = layer.bias[start:stop] if layer.bias is not None else None
            out[..., start:stop] = dense_linear(x, layer.weight.row_range(start, stop).dequantize(x.dtype), bias)
        return out

    def attention(self, q, k, v, *, causal: bool, mask=None, scale: float | None = None,
                  softcap: float | None = None):
        """q [B, H, T, D], k/v [B, Hkv, S, D] -> [B, H, T, D]. `mask` (bool, True = attend)
        is given when the query positions do not start at key position 0 or a sliding window
        hides some keys. `softcap`: scores become softcap * tanh(scores / softcap) (Gemma 2)."""
        if softcap is not None:
            return softcapped_attention(q, k, v, causal=causal, mask=mask, scale=scale, softcap=softcap)
        # grouped_causal_attention's bfloat16 GEMMs are fast where oneDNN has bfloat16 kernels;
        # on the fp32 path (none) torch's portable bfloat16 bmm is about 20x slower than SDPA's
        # own kernel, which keeps scores and probabilities in float32
        if (q.dtype == torch.bfloat16 and q.device.type == "cpu" and causal and mask is None
                and q.shape[2] == k.shape[2] > 1 and cpu_paths.current().name != "fp32"):
            return grouped_causal_attention(q, k, v, scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                              scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def softcapped_attention(q, k, v, *, causal: bool, mask, scale, softcap):
    """Attention with soft-capped scores, in transformers' order: scaled scores, capped, the
    mask added, softmax in float32. SDPA has no cap, so the scores are formed here."""
    H, Hkv, T, S = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    if H != Hkv:  # query head h reads kv head h // (H / Hkv)
        k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    scores = torch.tanh(scores / softcap) * softcap
    if mask is None and causal and T > 1:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


QUERY_BLOCK = 128  # query positions per block in grouped_causal_attention
_BLOCK_MASK: dict = {}


def _block_mask(dtype, device) -> torch.Tensor:
    """Additive mask of a block of queries against its own positions [QUERY_BLOCK, QUERY_BLOCK]:
    0 where a query may look, -inf above the diagonal (a shorter block takes its top left)."""
    key = (dtype, device)
    if key not in _BLOCK_MASK:
        upper = torch.ones(QUERY_BLOCK, QUERY_BLOCK, dtype=torch.bool, device=device).triu(1)
        _BLOCK_MASK[key] = torch.zeros(QUERY_BLOCK, QUERY_BLOCK, dtype=dtype, device=device).masked_fill(
            upper, float("-inf"))
    return _BLOCK_MASK[key]


def grouped_causal_attention(q, k, v, scale):
    """Causal attention over a whole sequence as batched GEMMs per key/value head: the
    query heads sharing a kv head are stacked into one operand, and the queries go in
    blocks of QUERY_BLOCK positions, each against the keys up to its last position, so
    most of the masked half of the square is never computed; only the block's own keys
    need the mask. On CPU in bfloat16 this runs two to three times as fast as
    scaled_dot_product_attention's kernel."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    g = H // Hkv
    out = q.new_empty(B, T, H, D)  # laid out so that the caller's transpose back is free
    q_groups, out_groups = q.reshape(B, Hkv, g, T, D), out.view(B, T, Hkv, g, D)
    k, v = k.reshape(B * Hkv, T, D), v.reshape(B * Hkv, T, D)
    alpha = scale if scale is not None else D ** -0.5
    for s in range(0, T, QUERY_BLOCK):
        e = min(s + QUERY_BLOCK, T)
        n = e - s
        qb = q_groups[:, :, :, s:e].reshape(B * Hkv, g * n, D)
        scores = torch.baddbmm(qb.new_empty(()), qb, k[:, :e].transpose(1, 2), beta=0, alpha=alpha)
        scores.view(B * Hkv, g, n, e)[..., s:e] += _block_mask(q.dtype, q.device)[:n, :n]
        block = torch.bmm(scores.softmax(-1), v[:, :e])
        out_groups[:, s:e] = block.view(B, Hkv, g, n, D).permute(0, 3, 1, 2, 4)
    return out.transpose(1, 2)


class FloatNumerics(Numerics):
    """The reference: the weight dequantized to the activation dtype, one dense product."""


NUMERICS = {"float": FloatNumerics}


def register_numerics(name: str, factory) -> None:
    """Make a strategy selectable by name (`factory()` returns a Numerics)."""
    NUMERICS[name] = factory


class QuantLinear(torch.nn.Module):
    """y = x @ W.T + b with W kept as stored; the product is delegated to `self.numerics`."""

    def __init__(self, weight: QTensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.numerics: Numerics = FloatNumerics()
        self._dense: torch.Tensor | None = None  # set by keep_dense (dequantize-all mode)
        self._kept_for: torch.dtype | None = None  # the activation dtype _dense was kept for

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def kept_weight(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The weight kept by keep_dense for `dtype` activations (perhaps prepacked, or bfloat16
        values upcast to float32; see kept_form), or None."""
        return self._dense if self._dense is not None and self._kept_for == dtype else None

    def dense_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight dequantized to `dtype`, as a plain tensor."""
        kept = self.kept_weight(dtype)
        if kept is not None:
            plain = kept.to_dense() if kept.is_mkldnn else kept
            return plain.to(dtype)  # a bfloat16 weight kept upcast goes back exactly
        return self.weight.dequantize(dtype)

    def keep_dense(self, dtype: torch.dtype) -> None:
        """Dequantize once and keep the result (faster, costs the dense weight's memory)."""
        self._dense, self._kept_for = kept_form(self.weight.dequantize(dtype)), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.numerics.linear(self, x)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, type={self.weight.qtype.name}"


class ConcatLinear(torch.nn.Module):
    """Several linears on the same input whose outputs are concatenated (types differ)."""

    def __init__(self, parts: list[QuantLinear]):
        super().__init__()
        self.parts = torch.nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)


def fused_linear(weights: list[QTensor], biases: list[torch.Tensor | None]) -> torch.nn.Module:
    """One QuantLinear over the stacked rows when the types agree, else a ConcatLinear."""
    has_bias = [b is not None for b in biases]
    if any(has_bias) and not all(has_bias):
        raise ValueError("fused projections must all have a bias or none")
    stacked = QTensor.cat_rows(weights)
    if stacked is not None:
        return QuantLinear(stacked, torch.cat(biases) if all(has_bias) else None)
    return ConcatLinear([QuantLinear(w, b) for w, b in zip(weights, biases)])


class QuantEmbedding(torch.nn.Module):
    """Row lookup in a stored weight: only the rows asked for are dequantized."""

    def __init__(self, weight: QTensor, dtype: torch.dtype):
        super().__init__()
        self.weight = weight
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight.take_rows(ids.reshape(-1)).dequantize(self.dtype)
        return rows.reshape(*ids.shape, -1)
