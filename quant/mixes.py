"""File-type mixes: which block type every tensor of a model gets, as llama.cpp chooses.

A file type (Q4_K_M, Q8_0, ...) names a default block type plus per-tensor exceptions
that depend on the tensor's role, its layer and the model's shape. `plan_types`
reproduces llama.cpp's choice (llama-quant.cpp: `tensor_allows_quantization`,
`llama_tensor_get_type`, `llama_tensor_get_type_impl`, `tensor_type_fallback`) for the
file types this library can write, including the user overrides of `llama-quantize`
(`--tensor-type PATTERN=TYPE`, `--output-tensor-type`, `--token-embedding-type`,
`--pure`, `--leave-output-tensor`).

Shapes are numpy order: the last dimension is the row length (ggml's ne[0]).
"""
import re
from enum import IntEnum
from typing import Iterable, Mapping, Sequence

from .errors import QuantError

try:
    from .types import QuantType
except ImportError:  # the shared type registry is optional here; the ids are ggml's
    class QuantType(IntEnum):
        F32 = 0
        F16 = 1
        Q4_0 = 2
        Q4_1 = 3
        Q5_0 = 6
        Q5_1 = 7
        Q8_0 = 8
        Q2_K = 10
        Q3_K = 11
        Q4_K = 12
        Q5_K = 13
        Q6_K = 14
        IQ4_NL = 20
        BF16 = 30


class FileType(IntEnum):
    """llama.cpp's `llama_ftype` ids (the GGUF key general.file_type)."""
    ALL_F32 = 0
    MOSTLY_F16 = 1
    MOSTLY_Q4_0 = 2
    MOSTLY_Q4_1 = 3
    MOSTLY_Q8_0 = 7
    MOSTLY_Q5_0 = 8
    MOSTLY_Q5_1 = 9
    MOSTLY_Q2_K = 10
    MOSTLY_Q3_K_S = 11
    MOSTLY_Q3_K_M = 12
    MOSTLY_Q3_K_L = 13
    MOSTLY_Q4_K_S = 14
    MOSTLY_Q4_K_M = 15
    MOSTLY_Q5_K_S = 16
    MOSTLY_Q5_K_M = 17
    MOSTLY_Q6_K = 18
    MOSTLY_BF16 = 32


T = QuantType
F = FileType

# llama_ftype_get_default_type
DEFAULT_TYPE = {
    F.ALL_F32: T.F32, F.MOSTLY_F16: T.F16, F.MOSTLY_BF16: T.BF16,
    F.MOSTLY_Q4_0: T.Q4_0, F.MOSTLY_Q4_1: T.Q4_1, F.MOSTLY_Q5_0: T.Q5_0,
    F.MOSTLY_Q5_1: T.Q5_1, F.MOSTLY_Q8_0: T.Q8_0, F.MOSTLY_Q2_K: T.Q2_K,
    F.MOSTLY_Q3_K_S: T.Q3_K, F.MOSTLY_Q3_K_M: T.Q3_K, F.MOSTLY_Q3_K_L: T.Q3_K,
    F.MOSTLY_Q4_K_S: T.Q4_K, F.MOSTLY_Q4_K_M: T.Q4_K,
    F.MOSTLY_Q5_K_S: T.Q5_K, F.MOSTLY_Q5_K_M: T.Q5_K, F.MOSTLY_Q6_K: T.Q6_K,
}

# The names llama-quantize accepts for a file type (case-insensitive), with its aliases.
FILE_TYPE_NAMES = {
    "Q4_0": F.MOSTLY_Q4_0, "Q4_1": F.MOSTLY_Q4_1, "Q5_0": F.MOSTLY_Q5_0,
    "Q5_1": F.MOSTLY_Q5_1, "Q2_K": F.MOSTLY_Q2_K, "Q3_K": F.MOSTLY_Q3_K_M,
    "Q3_K_S": F.MOSTLY_Q3_K_S, "Q3_K_M": F.MOSTLY_Q3_K_M, "Q3_K_L": F.MOSTLY_Q3_K_L,
    "Q4_K": F.MOSTLY_Q4_K_M, "Q4_K_S": F.MOSTLY_Q4_K_S, "Q4_K_M": F.MOSTLY_Q4_K_M,
    "Q5_K": F.MOSTLY_Q5_K_M, "Q5_K_S": F.MOSTLY_Q5_K_S, "Q5_K_M": F.MOSTLY_Q5_K_M,
    "Q6_K": F.MOSTLY_Q6_K, "Q8_0": F.MOSTLY_Q8_0, "F16": F.MOSTLY_F16,
    "BF16": F.MOSTLY_BF16, "F32": F.ALL_F32,
}

# ggml_type_name spellings, which --tensor-type and friends accept case-insensitively
TYPE_NAMES = {
    "f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q4_0": T.Q4_0, "q4_1": T.Q4_1,
    "q5_0": T.Q5_0, "q5_1": T.Q5_1, "q8_0": T.Q8_0, "q2_k": T.Q2_K, "q3_k": T.Q3_K,
    "q4_k": T.Q4_K, "q5_k": T.Q5_K, "q6_k": T.Q6_K, "iq4_nl": T.IQ4_NL,
}

BLOCK_SIZE = {
    T.F32: 1, T.F16: 1, T.BF16: 1,
    T.Q4_0: 32, T.Q4_1: 32, T.Q5_0: 32, T.Q5_1: 32, T.Q8_0: 32, T.IQ4_NL: 32,
    T.Q2_K: 256, T.Q3_K: 256, T.Q4_K: 256, T.Q5_K: 256, T.Q6_K: 256,
}
_UNQUANTIZED = (T.F32, T.F16, T.BF16)

# tensor_type_fallback: a 256-block type whose row length does not divide goes here
_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}

# Substrings that keep a tensor unquantized (tensor_allows_quantization), whatever the arch.
_NEVER_QUANTIZED_PARTS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight",
    "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
    "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_",
    ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_NEVER_QUANTIZED_NAMES = ("position_embd.weight", "token_types.weight")

# arch -> layer count that makes llama.cpp call the model "70B" (attn_v gets more bits)
_LAYERS_70B = {"llama": 80, "qwen2": 80, "olmo": 80, "deci": 80, "jais2": 68}


# ---------------------------------------------------------------- parsing user strings

def parse_file_type(text) -> FileType:
    """A file type from llama-quantize's spelling ("q4_k_m", "Q8_0", "f16", "15", "MOSTLY_Q6_K")."""
    if isinstance(text, FileType):
        return text
    if isinstance(text, int):
        try:
            return FileType(text)
        except ValueError:
            raise QuantError(_unknown_file_type(str(text))) from None
    key = str(text).strip().upper()
    if key in FILE_TYPE_NAMES:
        return FILE_TYPE_NAMES[key]
    if key in FileType.__members__:
        return FileType[key]
    if key.lstrip("+-").isdigit():
        return parse_file_type(int(key))
    raise QuantError(_unknown_file_type(str(text)))


def _unknown_file_type(text):
    names = ", ".join(n.lower() for n in FILE_TYPE_NAMES)
    return f"unknown file type '{text}'; use one of: {names}"


def parse_type_name(text) -> QuantType:
    """A block type from its ggml name ("q8_0", "Q6_K", "f16"), case-insensitive."""
    if isinstance(text, QuantType):
        return text
    key = str(text).strip().lower()
    if key in TYPE_NAMES:
        return TYPE_NAMES[key]
    raise QuantError(f"unknown tensor type '{text}'; use one of: {', '.join(TYPE_NAMES)}")


def parse_tensor_type_option(text: str) -> tuple[str, QuantType]:
    """`PATTERN=TYPE` as --tensor-type takes it: the pattern is lower-cased, as llama-quantize does."""
    pattern, sep, type_name = text.partition("=")
    if not sep:
        raise QuantError(f"malformed tensor type '{text}'; write PATTERN=TYPE, e.g. attn_v=q8_0")
    if not pattern:
        raise QuantError(f"missing tensor name in '{text}'; write PATTERN=TYPE, e.g. attn_v=q8_0")
    if not type_name:
        raise QuantError(f"missing quantization type in '{text}'; write PATTERN=TYPE, e.g. attn_v=q8_0")
    pattern = pattern.lower()
    _compile(pattern)
    return pattern, parse_type_name(type_name)


def _compile(pattern):
    try:
        return re.compile(pattern)
    except re.error as err:
        raise QuantError(f"tensor type pattern '{pattern}' is not a valid regex ({err}); fix the pattern") from None


# ---------------------------------------------------------------- helpers mirroring llama.cpp

def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """The layers that Q4_K_M/Q5_K_M give more bits: the first and last eighth, and every third between."""
    eighth = _cdiv(n_layers, 8)
    return i_layer < eighth or i_layer >= _cdiv(7 * n_layers, 8) or _cmod(i_layer - eighth, 3) == 2


def _cdiv(a, b):
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _cmod(a, b):
    """C remainder (takes the sign of the dividend)."""
    return a - b * _cdiv(a, b)


_LAYER_PREFIX = re.compile(r"blk\.\s*([+-]?\d+)")


def layer_of(name: str):
    """The layer number as sscanf("blk.%d.") reads it, or None."""
    m = _LAYER_PREFIX.match(name)
    return int(m.group(1)) if m else None


def _order_key(name):
    """llama_model_loader's weight_name_comparer: by layer (-1 outside layers), then by name."""
    layer = layer_of(name)
    return (-1 if layer is None else layer, name.encode())


class _Category(IntEnum):
    """tensor_get_category: broad roles, found by substrings of the GGUF name."""
    TOKEN_EMBD = 0
    ATTN_Q = 1
    ATTN_V = 2
    ATTN_K = 3
    ATTN_QKV = 4
    ATTN_KV_B = 5
    ATTN_OUTPUT = 6
    FFN_UP = 7
    FFN_GATE = 8
    FFN_DOWN = 9
    OUTPUT = 10
    OTHER = 11


def _category(name):
    C = _Category
    if name == "output.weight":
        return C.OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return C.TOKEN_EMBD
    for part, cat in (("attn_qkv.weight", C.ATTN_QKV), ("attn_kv_b.weight", C.ATTN_KV_B),
                      ("attn_v.weight", C.ATTN_V), ("attn_k.weight", C.ATTN_K),
                      ("attn_q.weight", C.ATTN_Q), ("attn_output.weight", C.ATTN_OUTPUT),
                      ("ffn_up", C.FFN_UP), ("ffn_gate", C.FFN_GATE), ("ffn_down", C.FFN_DOWN)):
        if part in name:
            return cat
    return C.OTHER


def _is_attn_v(cat):
    return cat in (_Category.ATTN_V, _Category.ATTN_QKV, _Category.ATTN_KV_B)


def _n_dims(shape):
    """ggml_n_dims: trailing ggml dimensions of 1 (leading numpy ones) do not count."""
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return max(1, len(dims))


def allows_quantization(name: str, shape: Sequence[int], *, quantize_output: bool = True) -> bool:
    """Whether llama.cpp would quantize this tensor at all (2-D or 3-D weights, minus exceptions)."""
    if _n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    if not quantize_output and name == "output.weight":
        return False
    if name in _NEVER_QUANTIZED_NAMES:
        return False
    return not any(part in name for part in _NEVER_QUANTIZED_PARTS)


def fallback_type(row_length: int, qtype: QuantType, name: str = "tensor") -> QuantType:
    """tensor_type_fallback: a type whose block does not divide the row gets a 32-block type, else F16."""
    if row_length % BLOCK_SIZE[qtype] == 0:
        return qtype
    result = _FALLBACK.get(qtype, qtype)
    if BLOCK_SIZE[qtype] > 32 and result == qtype:
        raise QuantError(f"{name}: no fallback is defined for type {qtype.name}; choose another type")
    if row_length % BLOCK_SIZE[result]:
        result = T.F16
    return result


# ---------------------------------------------------------------- the planner

class _State:
    """quantize_state_impl: counters that walk the layers in the loader's order."""

    def __init__(self, n_attention_wv, n_layer):
        self.n_attention_wv = n_attention_wv
        self.n_ffn_down = self.n_ffn_gate = self.n_ffn_up = n_layer
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0


def plan_types(tensors: Iterable, ftype, *, n_layer: int | None = None,
               n_head: int = 1, n_head_kv: int = 1, n_expert: int = 0, arch: str = "llama",
               tied_output: bool | None = None,
               tensor_types: Sequence = (), output_type=None, token_embedding_type=None,
               pure: bool = False, quantize_output: bool = True,
               has_imatrix: bool = False) -> dict:
    """The block type of every tensor, as llama_model_quantize picks it for `ftype`.

    tensors: (name, shape) or (name, shape, source_type) items, shape in numpy order
      (row length last). Tensors llama.cpp leaves alone keep source_type (default F32; a
      ggml id this library has no QuantType for comes back as that int).
    ftype: a FileType or a name parse_file_type takes.
    n_layer: block count (default: one more than the highest blk.N); n_head / n_head_kv
      give the GQA ratio of layer 0; n_expert > 1 reads layers from the names (MoE).
    tied_output: whether token_embd doubles as the output (default: no output.weight).
    tensor_types: (pattern, type) pairs or "PATTERN=TYPE" strings, first match wins
      (--tensor-type); output_type / token_embedding_type as the flags of those names;
      pure: no mix rules (--pure); quantize_output=False: --leave-output-tensor;
      has_imatrix: an importance matrix is given (changes Q4_0/Q5_0 ffn_down).
    Returns {name: QuantType} in the order given.
    """
    ftype = parse_file_type(ftype)
    default = DEFAULT_TYPE[ftype]
    items = [_unpack(item) for item in tensors]
    names = [name for name, _, _ in items]
    if len(set(names)) != len(names):
        raise QuantError("tensor names repeat; each tensor of a model needs its own name")
    overrides = [parse_tensor_type_option(o) if isinstance(o, str) else (o[0], parse_type_name(o[1]))
                 for o in tensor_types]
    patterns = [(_compile(p), t) for p, t in overrides]
    output_type = None if output_type is None else parse_type_name(output_type)
    token_embedding_type = None if token_embedding_type is None else parse_type_name(token_embedding_type)

    if n_layer is None:
        layers = [layer_of(n) for n in names]
        n_layer = max((l for l in layers if l is not None), default=-1) + 1
    if tied_output is None:
        tied_output = "output.weight" not in names
    n_attention_wv = sum(1 for n in names if _is_attn_v(_category(n)))
    state = _State(n_attention_wv, n_layer)
    model = _Model(arch=arch, n_layer=n_layer, n_head=n_head, n_head_kv=n_head_kv,
                   n_expert=n_expert, tied=tied_output)

    chosen = {}
    for name, shape, source in sorted(items, key=lambda it: _order_key(it[0])):
        if not allows_quantization(name, shape, quantize_output=quantize_output):
            chosen[name] = source
            continue
        cat = _category(name)
        row = int(shape[-1])
        if token_embedding_type is not None and cat == _Category.TOKEN_EMBD:
            chosen[name] = _checked(name, row, token_embedding_type, "--token-embedding-type")
            continue
        if output_type is not None and cat == _Category.OUTPUT:
            chosen[name] = _checked(name, row, output_type, "--output-tensor-type")
            continue
        new_type = default
        if default in _UNQUANTIZED:
            chosen[name] = new_type
            continue
        manual = next((t for rx, t in patterns if rx.search(name)), None)
        if manual is not None:
            new_type = manual
        elif not pure:
            new_type = _mix_rule(state, model, new_type, name, shape, ftype, cat,
                                 output_type, has_imatrix)
        chosen[name] = fallback_type(row, new_type, name)
    return {name: chosen[name] for name in names}


def _unpack(item):
    if len(item) == 2:
        name, shape = item
        source = T.F32
    else:
        name, shape, source = item
        try:
            source = T(int(source))
        except ValueError:      # a type this library does not write (I32, IQ2_XS, ...) passes through
            source = int(source)
    shape = tuple(int(d) for d in shape)
    if not shape:
        raise QuantError(f"{name}: a tensor needs at least one dimension")
    return str(name), shape, source


def _checked(name, row, qtype, flag):
    # llama.cpp takes these types as given and aborts on a row the block does not divide
    if row % BLOCK_SIZE[qtype]:
        raise QuantError(f"{name}: rows of {row} values do not divide into {qtype.name} blocks of "
                         f"{BLOCK_SIZE[qtype]}; choose another type for {flag}")
    return qtype


class _Model:
    def __init__(self, *, arch, n_layer, n_head, n_head_kv, n_expert, tied):
        self.arch = arch
        self.n_layer = n_layer
        self.n_gqa = 0 if n_head_kv == 0 else n_head // n_head_kv
        self.n_expert = n_expert
        self.tied = tied
        if arch == "llama":
            self.is_70b = n_expert != 8 and n_layer == 80 and n_head != n_head_kv
        else:
            self.is_70b = _LAYERS_70B.get(arch) == n_layer


def _layer_info(model, counter, n, name):
    """MoE experts are not consecutive, so with experts the layer comes from the name."""
    if max(1, model.n_expert) > 1:
        layer = layer_of(name)
        if layer is None:
            raise QuantError(f"{name}: cannot find the layer number of an expert tensor; name it blk.N....")
        if not 0 <= layer < n:
            raise QuantError(f"{name}: layer {layer} is outside [0, {n}); check the layer count")
        return layer, n
    return counter, n


def _mix_rule(qs, model, new_type, name, shape, ftype, cat, output_type, has_imatrix):
    """llama_tensor_get_type_impl for the K-quant and legacy file types."""
    C = _Category
    falcon = model.arch == "falcon"
    n_expert = model.n_expert

    if cat == C.OUTPUT or (model.tied and cat == C.TOKEN_EMBD):
        if output_type is not None:
            return output_type
        if falcon or shape[-1] % BLOCK_SIZE[new_type]:
            return T.Q8_0
        return T.Q6_K if new_type != T.Q8_0 else new_type

    if cat == C.TOKEN_EMBD:
        return new_type

    if _is_attn_v(cat):
        if ftype == F.MOSTLY_Q2_K:
            new_type = T.Q4_K if model.n_gqa >= 4 else T.Q3_K
        elif ftype == F.MOSTLY_Q3_K_M:
            new_type = T.Q5_K if qs.i_attention_wv < 2 else T.Q4_K
        elif ftype == F.MOSTLY_Q3_K_L:
            new_type = T.Q5_K
        elif ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and use_more_bits(qs.i_attention_wv, qs.n_attention_wv):
            new_type = T.Q6_K
        elif ftype == F.MOSTLY_Q4_K_S and qs.i_attention_wv < 4:
            new_type = T.Q5_K
        if model.is_70b and new_type in (T.Q3_K, T.Q4_K):
            new_type = T.Q5_K
        if n_expert == 8:
            new_type = T.Q8_0
        qs.i_attention_wv += 1
    elif cat == C.ATTN_K:
        if n_expert == 8:
            new_type = T.Q8_0
    elif cat == C.FFN_DOWN:
        i_layer, n_layer = _layer_info(model, qs.i_ffn_down, qs.n_ffn_down, name)
        if ftype == F.MOSTLY_Q2_K:
            new_type = T.Q3_K
        elif ftype == F.MOSTLY_Q3_K_M:
            if i_layer < _cdiv(n_layer, 16):
                new_type = T.Q5_K
            elif not falcon or use_more_bits(i_layer, n_layer):
                new_type = T.Q4_K
            else:
                new_type = T.Q3_K
        elif ftype == F.MOSTLY_Q3_K_L:
            new_type = T.Q4_K if falcon else T.Q5_K
        elif ftype == F.MOSTLY_Q4_K_M:
            if falcon:
                new_type = (T.Q6_K if i_layer < _cdiv(n_layer, 16)
                            else T.Q5_K if use_more_bits(i_layer, n_layer) else T.Q4_K)
            elif use_more_bits(i_layer, n_layer):
                new_type = T.Q6_K
        elif ftype == F.MOSTLY_Q5_K_M and use_more_bits(i_layer, n_layer):
            new_type = T.Q6_K
        elif ftype == F.MOSTLY_Q4_K_S and not falcon and i_layer < _cdiv(n_layer, 8):
            new_type = T.Q5_K
        elif ftype in (F.MOSTLY_Q4_0, F.MOSTLY_Q5_0) and has_imatrix and i_layer < _cdiv(n_layer, 8):
            # llama.cpp guards the first ffn_down layers of Q4_0/Q5_0 only when an imatrix is given
            new_type = T.Q4_1 if ftype == F.MOSTLY_Q4_0 else T.Q5_1
        qs.i_ffn_down += 1
    elif cat == C.ATTN_OUTPUT:
        if not falcon:
            if n_expert == 8:
                if ftype in (F.MOSTLY_Q2_K, F.MOSTLY_Q3_K_S, F.MOSTLY_Q3_K_M,
                             F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M):
                    new_type = T.Q5_K
            elif ftype == F.MOSTLY_Q2_K:
                new_type = T.Q3_K
            elif ftype == F.MOSTLY_Q3_K_M:
                new_type = T.Q4_K
            elif ftype == F.MOSTLY_Q3_K_L:
                new_type = T.Q5_K
        elif ftype == F.MOSTLY_Q3_K_L:
            new_type = T.Q4_K
    elif cat == C.FFN_GATE:
        _layer_info(model, qs.i_ffn_gate, qs.n_ffn_gate, name)
        qs.i_ffn_gate += 1
    elif cat == C.FFN_UP:
        _layer_info(model, qs.i_ffn_up, qs.n_ffn_up, name)
        qs.i_ffn_up += 1
    # (llama.cpp's attn_qkv branch is unreachable: attn_qkv takes the attn_v branch above)
    return new_type


def tensor_type_counts(plan: Mapping) -> dict:
    """How many tensors get each type: a summary for reports."""
    counts = {}
    for qtype in plan.values():
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    return dict(sorted(counts.items()))
