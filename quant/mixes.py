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
from .types import (FILE_TYPE_ALIASES, FILE_TYPE_BY_ID, FILE_TYPE_BY_NAME, FILE_TYPES, FileType,
                    QuantType, block_size, is_quantized)

T = QuantType
F = FileType

# The file types whose mix rules _mix_rule carries (llama_tensor_get_type_impl's branches
# for them). A file type is offered when it is here and its default type is registered.
MIXES = frozenset({
    F.ALL_F32, F.MOSTLY_F16, F.MOSTLY_BF16, F.MOSTLY_Q4_0, F.MOSTLY_Q4_1, F.MOSTLY_Q5_0,
    F.MOSTLY_Q5_1, F.MOSTLY_Q8_0, F.MOSTLY_Q2_K, F.MOSTLY_Q2_K_S, F.MOSTLY_Q3_K_S,
    F.MOSTLY_Q3_K_M, F.MOSTLY_Q3_K_L, F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_S,
    F.MOSTLY_Q5_K_M, F.MOSTLY_Q6_K, F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS, F.MOSTLY_TQ1_0,
    F.MOSTLY_TQ2_0, F.MOSTLY_MXFP4_MOE,
    F.MOSTLY_IQ3_XXS, F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_S, F.MOSTLY_IQ3_M,
    F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M,
} | {getattr(F, n) for n in ("MOSTLY_Q1_0",) if n in F.__members__})
# the IQ1/IQ2 file types share one branch of llama.cpp's rules
_IQ12 = frozenset(getattr(F, n) for n in ("MOSTLY_IQ2_XXS", "MOSTLY_IQ2_XS", "MOSTLY_IQ1_S",
                                          "MOSTLY_IQ2_S", "MOSTLY_IQ2_M", "MOSTLY_IQ1_M"))
# and these give the output (or tied embedding) Q5_K
_Q5K_OUTPUT = _IQ12 | {F.MOSTLY_IQ3_XXS}
_TERNARY = frozenset(getattr(F, n) for n in ("MOSTLY_TQ1_0", "MOSTLY_TQ2_0", "MOSTLY_Q2_0")
                     if n in F.__members__)

# tensor_type_fallback: a type of more than 32 values per block whose row length does not
# divide goes here (types on the left hold 256, those on the right 32)
_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0,
             T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
             T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL,
             T.IQ2_S: T.IQ4_NL, T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL}
if "Q2_0" in T.__members__:
    _FALLBACK[T.Q2_0] = T.Q4_0

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

def writable_file_types() -> list:
    """The file types convkit writes: their mix rules are here and their default type is
    registered with quant (so every tensor of the mix can be quantized), in table order."""
    from . import type_info

    found = []
    for info in FILE_TYPES:
        if info.ftype not in MIXES:
            continue
        try:
            type_info(info.default)
        except QuantError:
            continue
        found.append(info)
    return found


def file_type_names() -> list:
    """llama-quantize's names of the file types convkit writes (what --type takes)."""
    return [info.name for info in writable_file_types()]


def parse_file_type(text, writable: bool = True) -> FileType:
    """A file type from llama-quantize's spelling ("q4_k_m", "Q8_0", "f16", "15", "MOSTLY_Q6_K").

    One line naming the valid ones for a name that is unknown, or known to llama.cpp but not
    written by convkit (with writable=False: whose mix rules are here, whether or not every
    type of the mix can be quantized yet)."""
    if isinstance(text, FileType):
        ftype = text
    else:
        key = str(text).strip().lower()
        key = FILE_TYPE_ALIASES.get(key, key)
        if key.lstrip("+-").isdigit():
            found = FILE_TYPE_BY_ID.get(int(key))
            ftype = found and found.ftype
        elif key in FILE_TYPE_BY_NAME:
            ftype = FILE_TYPE_BY_NAME[key].ftype
        else:
            ftype = FileType.__members__.get(key.upper())
        if ftype is None or ftype not in FILE_TYPE_BY_ID:
            raise QuantError(f"unknown file type '{text}'; use one of: {', '.join(file_type_names())}")
    allowed = {info.ftype for info in writable_file_types()} if writable else MIXES
    if ftype not in allowed:
        name = FILE_TYPE_BY_ID[ftype].name if ftype in FILE_TYPE_BY_ID else ftype.name
        raise QuantError(f"file type '{name}' is not written by convkit yet; use one of: "
                         f"{', '.join(file_type_names())}")
    return ftype


def default_type(ftype) -> QuantType:
    """llama_ftype_get_default_type."""
    return FILE_TYPE_BY_ID[parse_file_type(ftype)].default


def parse_type_name(text) -> QuantType:
    """A tensor type convkit can write, from its ggml name ("q8_0", "Q6_K", "f16"), case-insensitive."""
    from . import type_info

    if isinstance(text, QuantType):
        return type_info(text).qtype
    return type_info(str(text).strip().lower()).qtype


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
    if row_length % block_size(qtype) == 0:
        return qtype
    result = _FALLBACK.get(qtype, qtype)
    if block_size(qtype) > 32 and result == qtype:
        raise QuantError(f"{name}: no fallback is defined for type {qtype.name}; choose another type")
    if row_length % block_size(result):
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
    Returns {name: QuantType} in the order given. Without has_imatrix, a mix that
    llama.cpp refuses to make without an importance matrix (tensor_requires_imatrix) is
    refused here too, before any tensor is read.
    """
    ftype = parse_file_type(ftype, writable=False)
    default = FILE_TYPE_BY_ID[ftype].default
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
        if not is_quantized(default):
            chosen[name] = new_type
            continue
        manual = next((t for rx, t in patterns if rx.search(name)), None)
        if manual is not None:
            new_type = manual
        elif not pure:
            new_type = _mix_rule(state, model, new_type, name, shape, ftype, cat,
                                 output_type, has_imatrix)
        chosen[name] = fallback_type(row, new_type, name)
        if not has_imatrix and requires_imatrix(name, chosen[name], ftype):
            raise QuantError(f"{FILE_TYPE_BY_ID[ftype].name} needs an importance matrix ({name} gets "
                             f"{chosen[name].name.lower()}, which is garbage without one); give --imatrix FILE "
                             f"(`convkit imatrix` makes one) or choose another type")
    return {name: chosen[name] for name in names}


# types whose ggml quantizer gives garbage without importance weights
_NEEDS_IMATRIX = frozenset(getattr(T, n) for n in ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S"))


def requires_imatrix(name: str, qtype, ftype) -> bool:
    """tensor_requires_imatrix: whether llama.cpp refuses this tensor's type without an imatrix."""
    if name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
        return False
    return qtype in _NEEDS_IMATRIX or (qtype == T.Q2_K and ftype == F.MOSTLY_Q2_K_S)


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
    if row % block_size(qtype):
        raise QuantError(f"{name}: rows of {row} values do not divide into {qtype.name} blocks of "
                         f"{block_size(qtype)}; choose another type for {flag}")
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
    """llama_tensor_get_type_impl for the file types in MIXES."""
    C = _Category
    falcon = model.arch == "falcon"
    n_expert = model.n_expert

    if cat == C.OUTPUT or (model.tied and cat == C.TOKEN_EMBD):
        if output_type is not None:
            return output_type
        if ftype == F.MOSTLY_MXFP4_MOE or falcon or shape[-1] % block_size(new_type):
            return T.Q8_0
        if ftype in _Q5K_OUTPUT:
            return T.Q5_K
        return T.Q6_K if new_type != T.Q8_0 else new_type

    if ftype == F.MOSTLY_MXFP4_MOE:
        # experts (3-D, ne[2] > 1) in MXFP4, everything else Q8_0
        experts = len(shape) >= 3 and shape[-3] > 1
        if model.arch == "bailingmoe3":
            experts = experts and cat in (C.FFN_UP, C.FFN_GATE, C.FFN_DOWN)
        return T.MXFP4 if experts else T.Q8_0

    if cat == C.TOKEN_EMBD:
        if ftype in _TERNARY:
            return T.Q4_K
        if ftype in (F.MOSTLY_IQ2_XXS, F.MOSTLY_IQ2_XS, F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
            return T.Q2_K
        if ftype in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M, F.MOSTLY_IQ3_XXS):
            return T.IQ3_S
        return new_type

    if ftype in _IQ12:
        return _iq12_rule(qs, model, new_type, ftype, cat)

    if _is_attn_v(cat):
        if ftype == F.MOSTLY_Q2_K:
            new_type = T.Q4_K if model.n_gqa >= 4 else T.Q3_K
        elif ftype == F.MOSTLY_Q2_K_S and model.n_gqa >= 4:
            new_type = T.Q4_K
        elif ftype == F.MOSTLY_IQ3_XXS:
            new_type = T.Q4_K if model.n_gqa >= 4 else T.IQ3_XXS if has_imatrix else T.IQ3_S
        elif ftype in (F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_S) and model.n_gqa >= 4:
            new_type = T.Q4_K
        elif ftype == F.MOSTLY_IQ3_M:
            new_type = T.Q4_K
        elif ftype == F.MOSTLY_Q3_K_M:
            new_type = T.Q5_K if qs.i_attention_wv < 2 else T.Q4_K
        elif ftype == F.MOSTLY_Q3_K_L:
            new_type = T.Q5_K
        elif ftype in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS) and model.n_gqa >= 4:
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
        elif ftype == F.MOSTLY_IQ3_XS:
            new_type = T.IQ3_XXS
        elif ftype == F.MOSTLY_IQ3_XXS:
            new_type = T.IQ2_S
    elif cat == C.ATTN_Q:
        if ftype == F.MOSTLY_IQ3_XS:
            new_type = T.IQ3_XXS
        elif ftype == F.MOSTLY_IQ3_XXS:
            new_type = T.IQ2_S
    elif cat == C.FFN_DOWN:
        i_layer, n_layer = _layer_info(model, qs.i_ffn_down, qs.n_ffn_down, name)
        if ftype == F.MOSTLY_Q2_K:
            new_type = T.Q3_K
        elif ftype == F.MOSTLY_Q2_K_S:
            if i_layer < _cdiv(n_layer, 8):
                new_type = T.Q4_K
        elif ftype == F.MOSTLY_IQ3_XXS and not has_imatrix:
            new_type = T.Q4_K if i_layer < _cdiv(n_layer, 8) else T.Q3_K
        elif ftype == F.MOSTLY_Q3_K_M:
            if i_layer < _cdiv(n_layer, 16):
                new_type = T.Q5_K
            elif not falcon or use_more_bits(i_layer, n_layer):
                new_type = T.Q4_K
            else:
                new_type = T.Q3_K
        elif ftype == F.MOSTLY_IQ3_M and (i_layer < _cdiv(n_layer, 8)
                                          or (n_expert == 8 and use_more_bits(i_layer, n_layer))):
            new_type = T.Q4_K
        elif ftype == F.MOSTLY_Q3_K_L:
            new_type = T.Q4_K if falcon else T.Q5_K
        elif ftype == F.MOSTLY_Q4_K_M:
            if falcon:
                new_type = (T.Q6_K if i_layer < _cdiv(n_layer, 16)
                            else T.Q5_K if use_more_bits(i_layer, n_layer) else T.Q4_K)
            elif use_more_bits(i_layer, n_layer):
                new_type = T.Q6_K
        elif (i_layer < _cdiv(n_layer, 8) and ftype in (F.MOSTLY_IQ4_NL, F.MOSTLY_IQ4_XS)
              and not has_imatrix):
            new_type = T.Q5_K
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
                if ftype in (F.MOSTLY_Q2_K, F.MOSTLY_IQ3_XS, F.MOSTLY_IQ3_XXS, F.MOSTLY_Q3_K_S,
                             F.MOSTLY_Q3_K_M, F.MOSTLY_IQ4_NL, F.MOSTLY_Q4_K_S, F.MOSTLY_Q4_K_M,
                             F.MOSTLY_IQ3_S, F.MOSTLY_IQ3_M, F.MOSTLY_IQ4_XS):
                    new_type = T.Q5_K
            elif ftype == F.MOSTLY_Q2_K:
                new_type = T.Q3_K
            elif ftype == F.MOSTLY_IQ3_XXS:
                new_type = T.IQ3_S
            elif ftype == F.MOSTLY_Q3_K_M:
                new_type = T.Q4_K
            elif ftype == F.MOSTLY_Q3_K_L:
                new_type = T.Q5_K
            elif ftype == F.MOSTLY_IQ3_M:
                new_type = T.Q4_K
        elif ftype == F.MOSTLY_Q3_K_L:
            new_type = T.Q4_K
    elif cat in (C.FFN_GATE, C.FFN_UP):
        gate = cat == C.FFN_GATE
        i_layer, n_layer = _layer_info(model, qs.i_ffn_gate if gate else qs.i_ffn_up,
                                       qs.n_ffn_gate if gate else qs.n_ffn_up, name)
        if ftype == F.MOSTLY_IQ3_XS and _cdiv(n_layer, 8) <= i_layer < _cdiv(7 * n_layer, 8):
            new_type = T.IQ3_XXS
        if gate:
            qs.i_ffn_gate += 1
        else:
            qs.i_ffn_up += 1
    # (llama.cpp's attn_qkv branch is unreachable: attn_qkv takes the attn_v branch above)
    return new_type


def _iq12_rule(qs, model, new_type, ftype, cat):
    """llama_tensor_get_type_impl's branch for the IQ1/IQ2 file types (past output and embedding)."""
    C = _Category
    wide = ftype in (F.MOSTLY_IQ2_S, F.MOSTLY_IQ2_M)      # these keep more bits where the others take Q2_K
    if _is_attn_v(cat):
        if model.n_gqa >= 4 or model.n_expert >= 4:
            new_type = T.Q4_K
        else:
            new_type = T.IQ3_S if wide else T.Q2_K
        qs.i_attention_wv += 1
    elif model.n_expert == 8 and cat == C.ATTN_K:
        new_type = T.Q4_K
    elif cat == C.FFN_DOWN:
        # the counter, not the layer of the name, even with experts
        if qs.i_ffn_down < _cdiv(qs.n_ffn_down, 8):
            new_type = T.IQ3_S if wide else T.Q2_K
        qs.i_ffn_down += 1
    elif cat == C.ATTN_OUTPUT:
        if model.n_expert == 8:
            new_type = T.Q5_K
        elif ftype in (F.MOSTLY_IQ1_S, F.MOSTLY_IQ1_M):
            new_type = T.IQ2_XXS
        elif wide:
            new_type = T.IQ3_S
    return new_type


def tensor_type_counts(plan: Mapping) -> dict:
    """How many tensors get each type: a summary for reports."""
    counts = {}
    for qtype in plan.values():
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    return dict(sorted(counts.items()))
