"""`--numerics ggml`: compute what llama.cpp's CPU backend computes, so PPLs agree.

ggml does not multiply a quantized weight by float activations. For a weight of type T
it first converts each activation row to vec_dot_type(T) (ggml-cpu.c, type_traits_cpu):

    Q4_0 Q5_0 Q8_0 IQ4_NL -> Q8_0   (32 values: fp16 d = amax/127, int8 q = round(x*127/amax))
    Q4_1 Q5_1             -> Q8_1   (as Q8_0, plus fp16 s = d * sum(q) for the weight's min term)
    Q2_K .. Q6_K          -> Q8_K   (256 values: f32 d = max/-127 for the signed extreme, int8 q)
    F16 / BF16            -> F16 / BF16 (the activations are rounded to the weight's float type)
    F32                   -> F32

and then sums integer dot products block by block, each scaled by the two block scales
(sum_b d_w[b] d_x[b] sum_i q_w[b,i] q_x[b,i], plus min terms). Written out, that is exactly
the product of the two dequantized operands: (d_x q_x) . (d_w q_w + m_w) summed over the
blocks. So this module quantizes the activations the way ggml does (bit-exact q and d;
tests/test_numerics_ggml.py compares the bytes with ggml's own quantize_row_q8_*), turns
them back into floats, and does one float32 GEMM with the dequantized weight: the integer
sums are exact in float32 (|sum| < 2^24), so only the order of float additions differs
from ggml, far below what a PPL can see. The one term that is not a plain product is
Q8_1's min term: ggml multiplies the weight's block min by the activation block's stored
fp16 s, not by d * sum(q); a small [T, blocks] x [blocks, N] product adds that difference.

For few activation rows (a decoding step or a short prompt: up to quantized_products.MAX_ROWS
rows, MAX_TILED_ROWS for the types with a tiled product) and the types quant.qdot compiles
(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL and Q2_K..Q6_K), the product is not
emulated but computed as ggml computes it: activations quantized, integer sums per block,
read from the quantized weight in place, with ggml's generic order of float additions.
That is both llama.cpp's arithmetic and the fast way to decode on a CPU (see
quantized_products.py); many rows (a prompt, a perplexity chunk) take the GEMM above.

Attention (llama.cpp without flash attention, as llama_cpp.Llama runs by default): the K
and V caches hold fp16, the K.Q product converts Q to fp16 (vec_dot_type of F16), the
softmax runs in float32 and its probabilities are converted to fp16 before the product
with V; accumulation is float32. Norms, RoPE, SiLU, residuals and the embedding lookup are
float32 in ggml too, which is what the runtime does in fp32.
"""
import torch
from gguf import GGMLQuantizationType as T

from . import quantized_products
from .linear import Numerics, dense_linear

Q8_0, Q8_1, Q8_K = "q8_0", "q8_1", "q8_k"

VEC_DOT_TYPE = {
    T.Q4_0: Q8_0, T.Q5_0: Q8_0, T.Q8_0: Q8_0, T.IQ4_NL: Q8_0, T.MXFP4: Q8_0, T.NVFP4: Q8_0, T.Q1_0: Q8_0,
    T.Q4_1: Q8_1, T.Q5_1: Q8_1,
    T.Q2_K: Q8_K, T.Q3_K: Q8_K, T.Q4_K: Q8_K, T.Q5_K: Q8_K, T.Q6_K: Q8_K,
    T.IQ4_XS: Q8_K, T.TQ1_0: Q8_K, T.TQ2_0: Q8_K,
    T.IQ3_XXS: Q8_K, T.IQ3_S: Q8_K, T.IQ2_XXS: Q8_K, T.IQ2_XS: Q8_K, T.IQ2_S: Q8_K, T.IQ1_S: Q8_K, T.IQ1_M: Q8_K,
    T.F16: torch.float16, T.BF16: torch.bfloat16, T.F32: None,
}
_BLOCK = {Q8_0: 32, Q8_1: 32, Q8_K: 256}
_MIN_AT = {T.Q4_1: (20, 2), T.Q5_1: (24, 2)}  # bytes per block, offset of the fp16 block min


def activation_format(qtype):
    """What ggml's CPU backend converts activations to before a product with `qtype`."""
    try:
        return VEC_DOT_TYPE[T(qtype)]
    except (KeyError, ValueError):
        raise ValueError(f"ggml numerics: no CPU dot product known for weight type {qtype}") from None


def _div(a: float, t: torch.Tensor) -> torch.Tensor:
    """a / t elementwise as IEEE float32 division. (torch computes `scalar / tensor` and
    `tensor / scalar` through a reciprocal, which rounds differently and moves values that
    sit on a rounding boundary of the quantizer to the other side.)"""
    return torch.div(torch.full_like(t, a), t)


def _over(t: torch.Tensor, b: float) -> torch.Tensor:
    return torch.div(t, torch.full_like(t, b))


def quantize_q8_0(x: torch.Tensor):
    """ggml-cpu's quantize_row_q8_0 (x86): per 32 values q = round_half_even(x * 127/amax),
    d = fp16(amax / 127). Returns int8-valued float32 q [..., n/32, 32] and fp16 d [..., n/32, 1]."""
    b = x.float().unflatten(-1, (-1, 32))
    amax = b.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, _div(127.0, torch.where(amax > 0, amax, 1.0)), 0.0)
    q = torch.round(b * inv)
    d = _over(amax, 127.0)
    return q, d.to(torch.float16), d


def quantize_q8_1(x: torch.Tensor):
    """quantize_row_q8_1: as Q8_0, plus s = fp16(d * sum(q)) with d before its fp16 rounding."""
    q, d16, d32 = quantize_q8_0(x)
    s = (d32 * q.sum(-1, keepdim=True)).to(torch.float16)
    return q, d16, s


def quantize_q8_k(x: torch.Tensor):
    """quantize_row_q8_K: per 256 values, the value of largest magnitude (first one) maps to
    -127: iscale = -127/max, q = min(127, nearest_int(iscale * x)), d = 1/iscale (float32)."""
    b = x.float().unflatten(-1, (-1, 256))
    idx = b.abs().argmax(-1, keepdim=True)
    extreme = b.gather(-1, idx)
    nonzero = extreme != 0
    iscale = torch.where(nonzero, _div(-127.0, torch.where(nonzero, extreme, 1.0)), 0.0)
    q = torch.round(iscale * b).clamp_(max=127)
    d = torch.where(nonzero, _div(1.0, torch.where(nonzero, iscale, 1.0)), 0.0)
    return q, d


def ggml_activations(x: torch.Tensor, fmt) -> torch.Tensor:
    """x as the float values ggml's dot products see after converting it to `fmt`."""
    if fmt is None:
        return x.float()
    if isinstance(fmt, torch.dtype):
        return x.to(fmt).float()
    if fmt == Q8_K:
        q, d = quantize_q8_k(x)
        return (q * d).flatten(-2)
    q, d16, _ = quantize_q8_0(x)
    return (q * d16.float()).flatten(-2)


def block_mins(layer) -> torch.Tensor:
    """float32 [out_features, blocks] fp16 block mins of a Q4_1/Q5_1 weight (kept on the layer)."""
    mins = getattr(layer, "_ggml_block_mins", None)
    if mins is None:
        size, at = _MIN_AT[layer.weight.qtype]
        data = layer.weight.data
        blocks = data.view(data.shape[0], -1, size)[:, :, at:at + 2].contiguous()
        mins = blocks.view(torch.float16).squeeze(-1).float()
        layer._ggml_block_mins = mins
    return mins


class GgmlNumerics(Numerics):
    """llama.cpp's CPU arithmetic: quantized activations, fp16 attention (see module doc)."""

    name = "ggml"

    def forward_context(self, rows: int, device):
        if rows <= quantized_products.few_rows_limit() and torch.device(device).type == "cpu":
            return quantized_products.few_rows()
        return super().forward_context(rows, device)

    def linear(self, layer, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            raise ValueError("ggml numerics computes in float32; load the model with precision fp32")
        fmt = activation_format(layer.weight.qtype)
        if quantized_products.usable(layer, x):  # few rows (decoding): ggml's own block products
            return quantized_products.block_product(layer, x)
        with quantized_products.all_threads():
            return self._emulated_linear(layer, x, fmt)

    def _emulated_linear(self, layer, x: torch.Tensor, fmt) -> torch.Tensor:
        if x.shape[-2:-1] == (0,) or x.numel() == 0:
            return dense_linear(x, layer.dense_weight(torch.float32), layer.bias)
        if fmt == Q8_1:
            q, d16, s16 = quantize_q8_1(x)
            xa = (q * d16.float()).flatten(-2)
            y = dense_linear(xa, layer.dense_weight(torch.float32), layer.bias)
            # ggml's min term uses the stored s, not d * sum(q): add the difference
            delta = (s16.float() - d16.float() * q.sum(-1, keepdim=True)).squeeze(-1)
            return y + delta @ block_mins(layer).t()
        return dense_linear(ggml_activations(x, fmt), layer.dense_weight(torch.float32), layer.bias)

    def attention(self, q, k, v, *, causal: bool, mask=None, scale: float | None = None,
                  softcap: float | None = None):
        H, Hkv = q.shape[1], k.shape[1]
        T_, S = q.shape[2], k.shape[2]
        q16, k16, v16 = (t.to(torch.float16).float() for t in (q, k, v))
        if H != Hkv:  # query head h reads kv head h // (H / Hkv), as ggml's broadcast
            k16 = k16.repeat_interleave(H // Hkv, dim=1)
            v16 = v16.repeat_interleave(H // Hkv, dim=1)
        scores = torch.matmul(q16, k16.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
        if softcap is not None:  # llama.cpp caps the scores before the mask and softmax
            scores = torch.tanh(scores / softcap) * softcap
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        elif causal and T_ > 1:
            future = torch.ones(T_, S, dtype=torch.bool, device=q.device).triu(S - T_ + 1)
            scores = scores.masked_fill(future, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(torch.float16).float()
        return torch.matmul(probs, v16)


def register() -> None:
    from .linear import register_numerics

    register_numerics("ggml", GgmlNumerics)


register()
