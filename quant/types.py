"""Type facts, from one place: ggml's tensor types and llama.cpp's file types.

- `QuantType` is gguf-py's `GGMLQuantizationType` (ggml's ids and names) and
  `block_size` / `type_size` read gguf-py's `GGML_QUANT_SIZES`; nothing in quant/ spells
  an id or a block geometry again.
- `FILE_TYPES` is the one table of file types: the name llama-quantize takes, its
  `llama_ftype` id (gguf-py's `LlamaFileType`, the GGUF key general.file_type) and the
  tensor type it defaults to (llama.cpp's `llama_ftype_get_default_type`).

Which of these this library can write is decided elsewhere, from these facts: a tensor
type when a block module registers it (quant/registry.py), a file type when its mix rules
exist and its default type is registered (quant/mixes.py).
"""
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

QuantType = GGMLQuantizationType
FileType = LlamaFileType


def block_size(qtype) -> int:
    """Values per block (1 for F32/F16/BF16)."""
    return GGML_QUANT_SIZES[QuantType(int(qtype))][0]


def type_size(qtype) -> int:
    """Bytes per block."""
    return GGML_QUANT_SIZES[QuantType(int(qtype))][1]


def is_quantized(qtype) -> bool:
    """ggml_is_quantized: a block type, not a plain float or integer element."""
    return block_size(qtype) > 1


# ggml_quantize_requires_imatrix: ggml asserts an importance vector is given for these
REQUIRES_IMATRIX = frozenset({QuantType.IQ2_XXS, QuantType.IQ2_XS, QuantType.IQ1_S})


def requires_imatrix(qtype) -> bool:
    return QuantType(int(qtype)) in REQUIRES_IMATRIX


@dataclass(frozen=True)
class FileTypeInfo:
    name: str            # llama-quantize's spelling, lower case ("q4_k_m")
    ftype: FileType
    default: QuantType   # the type of every tensor the mix rules leave alone


def _file_types():
    T, F = QuantType, FileType
    table = [
        ("f32", F.ALL_F32, T.F32), ("f16", F.MOSTLY_F16, T.F16), ("bf16", F.MOSTLY_BF16, T.BF16),
        ("q8_0", F.MOSTLY_Q8_0, T.Q8_0), ("q4_0", F.MOSTLY_Q4_0, T.Q4_0), ("q4_1", F.MOSTLY_Q4_1, T.Q4_1),
        ("q5_0", F.MOSTLY_Q5_0, T.Q5_0), ("q5_1", F.MOSTLY_Q5_1, T.Q5_1),
        ("q2_k", F.MOSTLY_Q2_K, T.Q2_K), ("q2_k_s", F.MOSTLY_Q2_K_S, T.Q2_K),
        ("q3_k_s", F.MOSTLY_Q3_K_S, T.Q3_K), ("q3_k_m", F.MOSTLY_Q3_K_M, T.Q3_K),
        ("q3_k_l", F.MOSTLY_Q3_K_L, T.Q3_K),
        ("q4_k_s", F.MOSTLY_Q4_K_S, T.Q4_K), ("q4_k_m", F.MOSTLY_Q4_K_M, T.Q4_K),
        ("q5_k_s", F.MOSTLY_Q5_K_S, T.Q5_K), ("q5_k_m", F.MOSTLY_Q5_K_M, T.Q5_K),
        ("q6_k", F.MOSTLY_Q6_K, T.Q6_K),
        ("iq2_xxs", F.MOSTLY_IQ2_XXS, T.IQ2_XXS), ("iq2_xs", F.MOSTLY_IQ2_XS, T.IQ2_XS),
        ("iq2_s", F.MOSTLY_IQ2_S, T.IQ2_XS), ("iq2_m", F.MOSTLY_IQ2_M, T.IQ2_S),
        ("iq3_xxs", F.MOSTLY_IQ3_XXS, T.IQ3_XXS), ("iq3_xs", F.MOSTLY_IQ3_XS, T.IQ3_S),
        ("iq3_s", F.MOSTLY_IQ3_S, T.IQ3_S), ("iq3_m", F.MOSTLY_IQ3_M, T.IQ3_S),
        ("iq1_s", F.MOSTLY_IQ1_S, T.IQ1_S), ("iq1_m", F.MOSTLY_IQ1_M, T.IQ1_M),
        ("iq4_nl", F.MOSTLY_IQ4_NL, T.IQ4_NL), ("iq4_xs", F.MOSTLY_IQ4_XS, T.IQ4_XS),
        ("tq1_0", F.MOSTLY_TQ1_0, T.TQ1_0), ("tq2_0", F.MOSTLY_TQ2_0, T.TQ2_0),
        ("mxfp4_moe", F.MOSTLY_MXFP4_MOE, T.MXFP4),
    ]
    # gguf-py releases add file types over time; take the newer ones only where it has them
    for name, ftype, qtype in (("nvfp4", "MOSTLY_NVFP4", "NVFP4"), ("q1_0", "MOSTLY_Q1_0", "Q1_0"),
                               ("q2_0", "MOSTLY_Q2_0", "Q2_0")):
        if ftype in F.__members__ and qtype in T.__members__:
            table.append((name, F[ftype], T[qtype]))
    return tuple(FileTypeInfo(name, ftype, default) for name, ftype, default in table)


FILE_TYPES = _file_types()
FILE_TYPE_BY_NAME = {info.name: info for info in FILE_TYPES}
FILE_TYPE_BY_ID = {info.ftype: info for info in FILE_TYPES}
# llama-quantize's short names for the medium K mixes
FILE_TYPE_ALIASES = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m"}
