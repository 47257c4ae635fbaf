"""Build a runtime Model from a GGUF file or a Hugging Face checkpoint directory.

Both paths produce the same thing: a ModelConfig and a mapping from GGUF tensor names
to weights (matrices as `QTensor`, kept exactly as stored; norms and biases as float
tensors in the compute dtype), on the target device.

- GGUF: metadata through convkit.gguf_check (checked completely first); each tensor's
  raw blocks are copied once (memory = the file's size). The file's general.architecture
  selects the convkit/arch module that describes the model's structure. Where that module
  says so (llama and its kin), the converter permuted the rows
  of attn_q/attn_k so that ggml's interleaved rotary applies; rows are independent in
  every block type, so those rows are put back in HF order here, on the raw bytes, and
  the model uses one rotary layout for every source.
- HF: config.json and model.safetensors (or its sharded index); HF names are renamed to
  GGUF names and gpt2's Conv1D matrices ([in, out]) transposed.
"""
import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType

from convkit.errors import ConvkitError

from . import cpu_paths
from .dequant_torch import FLOAT_TYPES, SUPPORTED
from .linear import NUMERICS, Numerics, QTensor
from .model import Model, ModelConfig

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
GGUF_MAGIC = b"GGUF"


# ---------------------------------------------------------------- entry point
def resolve_device(device: str) -> torch.device:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConvkitError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu")
    elif device != "cpu":
        raise ConvkitError(f"--device {device}: unknown device; use cpu or cuda")
    return torch.device(device)


def check_bf16(device: torch.device) -> None:
    """bfloat16 where the device cannot compute it is one line, not a traceback mid-run.
    On CPU every path runs somewhere (cpu_paths picks it); this only rejects a forced path
    the CPU lacks."""
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ConvkitError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                               f"use --precision fp32")
    else:
        cpu_paths.current()


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def load_model(path, device: str = "cpu", precision: str = "fp32", dequantize_all: bool = False,
               numerics: Numerics | str | None = None) -> Model:
    """A Model from a .gguf file or an HF directory (config.json + *.safetensors)."""
    path = Path(path)
    if precision not in PRECISIONS:
        raise ConvkitError(f"--precision {precision}: unknown; use one of {', '.join(PRECISIONS)}")
    dev, dtype = resolve_device(device), PRECISIONS[precision]
    if dtype == torch.bfloat16:
        check_bf16(dev)
    if not path.exists():
        raise ConvkitError(f"{path}: no such file or directory; give a .gguf file or an HF checkpoint directory")
    if is_gguf(path):
        config, weights = read_gguf(path, dtype, dev)
    elif path.is_dir():
        config, weights = read_hf(path, dtype, dev)
    else:
        raise ConvkitError(f"{path}: neither a GGUF file nor a directory with config.json; give one of those")
    try:
        model = Model(config, weights, dtype, dev)
    except KeyError as exc:
        raise ConvkitError(f"{path}: tensor {exc.args[0]} is missing; the checkpoint is incomplete") from None
    model.source = path
    _return_freed_memory()
    _keep_freed_buffers()
    if dequantize_all:
        model.dequantize_all()
    if numerics is not None:
        if isinstance(numerics, str):
            if numerics not in NUMERICS:
                raise ConvkitError(f"--numerics {numerics}: unknown; use one of {', '.join(sorted(NUMERICS))}")
            numerics = NUMERICS[numerics]()
        model.set_numerics(numerics)
    return model


def check_model(path) -> ModelConfig:
    """The model's config, once its architecture (and for GGUF its tensor types) are known to
    be supported; raises the same errors as load_model without loading weights."""
    path = Path(path)
    if not path.exists():
        raise ConvkitError(f"{path}: no such file or directory; give a .gguf file or an HF checkpoint directory")
    if is_gguf(path):
        return check_gguf(path)
    if path.is_dir():
        return _hf_config_file(path)
    raise ConvkitError(f"{path}: neither a GGUF file nor a directory with config.json; give one of those")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
KEEP_FREED = 256 << 20  # bytes of freed memory the allocator may keep for reuse


def _return_freed_memory() -> None:
    """Hand memory freed while parsing (the GGUF reader's many small arrays) back to the
    system, so resident memory after loading is the weights, not the allocator's leftovers."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _keep_freed_buffers() -> None:
    """Let the allocator reuse what the forward pass frees. By default glibc maps every
    buffer over 32 MiB (a chunk's logits are 50 MiB) afresh and unmaps it when freed, so
    each chunk pays a page fault per 4 KiB again (about 15 ms per 50 MiB here); reusing
    freed memory gives a few percent more tokens/s, and the peak is no higher (measured)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, KEEP_FREED)
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED)
    except (OSError, AttributeError):  # not glibc
        pass


def _matrix(data: torch.Tensor, qtype, device) -> QTensor:
    return QTensor(data.to(device), GGMLQuantizationType(qtype))


def unpermute_index(rows: int, n_head: int) -> torch.Tensor:
    """Row order that turns ggml's interleaved rotary pairs back into HF's two halves."""
    return torch.arange(rows).reshape(n_head, rows // n_head // 2, 2).transpose(1, 2).reshape(-1)


# ---------------------------------------------------------------------- GGUF
@dataclass
class GGUFTensor:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple  # ggml order: row length first
    offset: int  # of the data, from the start of the file
    n_bytes: int


@dataclass
class GGUFInfo:
    """What the runtime needs from a GGUF's header, as plain Python values."""

    fields: dict
    tensors: list

    def get(self, key, default=None):
        value = self.fields.get(key)
        return default if value is None else value


_INFO: dict = {}  # the last file read: (path, mtime, size) -> GGUFInfo


def gguf_info(path: Path) -> GGUFInfo:
    """The file's metadata and tensor directory as plain Python values, after the checks of
    gguf_check (layout) and gguf_model (metadata against tensors): nothing later reads a
    byte the header did not account for. The copy of the last file is kept for the next
    caller (tokenizer and model read the same file)."""
    from convkit import gguf_model
    from convkit.gguf_check import read_layout

    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _INFO:
        layout = read_layout(path)
        gguf_model.check_model(layout, path)
        tensors = [GGUFTensor(t.name, GGMLQuantizationType(t.qtype), t.shape, t.offset, t.nbytes)
                   for t in layout.tensors]
        _INFO.clear()
        _INFO[key] = GGUFInfo(layout.fields, tensors)
    return _INFO[key]


def _f32_value(x: float) -> float:
    """A float32 metadata value as its shortest decimal (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(x)))


def runtime_classes() -> dict:
    """GGUF architecture name -> architecture class, for those the runtime runs."""
    from convkit.arch import GGUF_REGISTRY

    return {name: cls for name, cls in GGUF_REGISTRY.items() if cls.structure is not None}


def gguf_config(info: GGUFInfo, path: Path) -> ModelConfig:
    arch = info.get("general.architecture")
    classes = runtime_classes()
    if arch not in classes:
        raise ConvkitError(f"{path}: architecture {arch!r} is not supported by the runtime; "
                           f"supported: {', '.join(sorted(classes))}")
    cls = classes[arch]
    structure = cls.structure

    def key(name, default=None):
        value = info.get(f"{arch}.{name}", default)
        if value is None:
            raise ConvkitError(f"{path}: metadata {arch}.{name} is missing; the file is incomplete")
        return value

    hidden, n_heads = int(key("embedding_length")), int(key("attention.head_count"))
    eps_key = "attention.layer_norm_rms_epsilon" if structure.norm == "rms" else "attention.layer_norm_epsilon"
    scaling = None
    scaling_type = info.get(f"{arch}.rope.scaling.type", "none")
    if scaling_type == "linear":
        scaling = {"rope_type": "linear", "factor": _f32_value(key("rope.scaling.factor"))}
    elif scaling_type == "yarn":
        scaling = gguf_yarn(info, arch, key, path)
    elif scaling_type != "none":
        raise ConvkitError(f"{path}: rope scaling {scaling_type!r} is not supported by the runtime; "
                           f"supported: linear, yarn, and llama3 through rope_freqs")
    shapes = {t.name: t.shape for t in info.tensors}
    if "token_embd.weight" not in shapes:
        raise ConvkitError(f"{path}: tensor token_embd.weight is missing; the file is incomplete")
    if "rope_factors_long.weight" in shapes or "rope_factors_short.weight" in shapes:
        if scaling is not None:
            raise ConvkitError(f"{path}: LongRoPE factors together with rope scaling {scaling_type!r}; "
                               "the file is inconsistent, convert it again")
        scaling = gguf_longrope(info, arch, key, shapes, path)
    eos = [info.get("tokenizer.ggml.eos_token_id"), info.get("tokenizer.ggml.eot_token_id")]
    scales = cls.gguf_scales(lambda name, default=None: info.get(f"{arch}.{name}", default))
    scales = {field: _f32_value(value) if isinstance(value, float) else value for field, value in scales.items()}
    return ModelConfig(
        arch=arch,
        structure=structure,
        vocab_size=int(info.get(f"{arch}.vocab_size") or shapes["token_embd.weight"][1]),
        hidden_size=hidden,
        n_layers=int(key("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(key("attention.head_count_kv", n_heads)),
        head_dim=int(key("attention.key_length", hidden // n_heads)),
        rope_dim=int(info.get(f"{arch}.rope.dimension_count") or key("attention.key_length", hidden // n_heads)),
        ffn_size=int(key("feed_forward_length")),
        max_positions=int(key("context_length")),
        norm_eps=_f32_value(key(eps_key)),
        rope_theta=_f32_value(key("rope.freq_base", 10000.0)) if structure.positions == "rope" else 10000.0,
        rope_scaling=scaling,
        tie_embeddings="output.weight" not in shapes,
        n_experts=int(info.get(f"{arch}.expert_count", 0)),
        n_experts_used=int(info.get(f"{arch}.expert_used_count", 0)),
        bos_token_id=info.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=sorted({int(i) for i in eos if i is not None}),
        **scales,
    )


def gguf_yarn(info: GGUFInfo, arch: str, key, path: Path) -> dict:
    """YaRN as llama.cpp runs it: its defaults for the optional values, and the attention
    scale always 0.1 ln(factor) + 1 (llama.cpp recomputes it and ignores the stored one)."""
    ext = info.get(f"{arch}.rope.scaling.yarn_ext_factor", 1.0)
    if _f32_value(ext) != 1.0 or info.get(f"{arch}.rope.scaling.yarn_log_multiplier") is not None \
            or info.get(f"{arch}.rope.scaling.attn_factor") is not None:
        raise ConvkitError(f"{path}: YaRN with an extrapolation factor, log multiplier or attention factor "
                           f"is not supported by the runtime")
    return {"rope_type": "yarn", "factor": _f32_value(key("rope.scaling.factor")),
            "original_max_position_embeddings": int(key("rope.scaling.original_context_length")),
            "beta_fast": _f32_value(info.get(f"{arch}.rope.scaling.yarn_beta_fast", 32.0)),
            "beta_slow": _f32_value(info.get(f"{arch}.rope.scaling.yarn_beta_slow", 1.0))}


def gguf_longrope(info: GGUFInfo, arch: str, key, shapes: dict, path: Path) -> dict:
    """LongRoPE as llama.cpp's phi3 stores it: both sets of divisors as tensors (read with
    the weights), the pretraining context and the cos/sin scale as metadata."""
    for kind in ("long", "short"):
        if f"rope_factors_{kind}.weight" not in shapes:
            raise ConvkitError(f"{path}: tensor rope_factors_{kind}.weight is missing beside its twin; "
                               "the file is incomplete")
    return {"rope_type": "longrope",
            "original_max_position_embeddings": int(info.get(f"{arch}.rope.scaling.original_context_length")
                                                    or key("context_length")),
            "attention_factor": _f32_value(info.get(f"{arch}.rope.scaling.attn_factor", 1.0))}


def _read_bytes(f, offset: int, size: int) -> torch.Tensor:
    """Tensor bytes read from the file into memory we own (not pages of a mapping)."""
    out = torch.empty(size, dtype=torch.uint8)
    f.seek(offset)
    if f.readinto(out.numpy()) != size:
        raise ConvkitError(f"{f.name}: the file ends inside tensor data; it is truncated, re-download it")
    return out


def check_gguf(path: Path) -> ModelConfig:
    """The file's config, after checking that the runtime supports its architecture and types."""
    info = gguf_info(path)
    config = gguf_config(info, path)
    for t in info.tensors:
        if t.qtype not in SUPPORTED:
            raise ConvkitError(f"{path}: tensor {t.name} has type {t.qtype.name}, which the runtime cannot "
                               f"dequantize; requantize the file to one of "
                               f"{', '.join(sorted(q.name for q in SUPPORTED))}")
    return config


def read_gguf(path: Path, dtype, device):
    config = check_gguf(path)
    heads = {"attn_q": config.n_heads, "attn_k": config.n_kv_heads}
    weights = {}
    with open(path, "rb") as f:
        for t in gguf_info(path).tensors:
            weights[t.name] = _gguf_tensor(f, t, config, heads, dtype, device)
    return config, weights


def _gguf_tensor(f, t: GGUFTensor, config, heads, dtype, device):
    data = _read_bytes(f, t.offset, t.n_bytes)
    if t.qtype in FLOAT_TYPES:
        data = data.view(FLOAT_TYPES[t.qtype])
    rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
    data = data.view(rows, -1)
    kind = t.name.split(".")[-2]
    if config.structure.rope_rows_permuted and kind in heads:  # undo the converter's rotary permutation (rows)
        if len(t.shape) == 1:
            data = data.view(-1, 1)
        data = data.index_select(0, unpermute_index(data.shape[0], heads[kind]))
    if len(t.shape) >= 2:
        return _matrix(data, t.qtype, device)
    rope_divisors = t.name.startswith(("rope_freqs.", "rope_factors_"))  # kept in float32, as ggml uses them
    return data.reshape(-1).to(device, torch.float32 if rope_divisors else dtype)


# ------------------------------------------------------------------------ HF
def hf_config(raw: dict, path: Path) -> ModelConfig:
    """The runtime's config from config.json, read by the same architecture class the
    converter uses (convkit/arch), so the two cannot read a checkpoint differently."""
    return _model_config(_runtime_architecture(raw, path))


def _runtime_architecture(raw: dict, path: Path):
    """The checkpoint's architecture, once the runtime is known to run it (named before any
    hyperparameter is read)."""
    from convkit.arch import REGISTRY, architecture_class

    name, cls = architecture_class(raw, path / "config.json")
    if cls.structure is None:
        runs = sorted(n for n, c in REGISTRY.items() if c.structure is not None)
        raise ConvkitError(f"{path / 'config.json'}: architecture {name} converts to GGUF but is not supported "
                           f"by the runtime; supported: {', '.join(runs)}")
    return cls(raw, path / "config.json", name)


def _model_config(arch) -> ModelConfig:
    return ModelConfig(**arch.runtime_hparams())


_FLOAT_QTYPES = {torch.float32: GGMLQuantizationType.F32, torch.float16: GGMLQuantizationType.F16,
                 torch.bfloat16: GGMLQuantizationType.BF16}


def _hf_architecture(path: Path):
    from convkit.hf_config import read_config_file

    config_file = path / "config.json"
    if not config_file.exists():
        raise ConvkitError(f"{path}: no config.json; give an HF checkpoint directory or a .gguf file")
    return _runtime_architecture(read_config_file(config_file), path)


def _hf_config_file(path: Path) -> ModelConfig:
    return _model_config(_hf_architecture(path))


_TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_hf(path: Path, dtype, device):
    """The checkpoint through convkit.checkpoint's reader (headers checked as for every other
    command) and checked against its architecture before any tensor is read."""
    from convkit.checkpoint import open_checkpoint

    arch = _hf_architecture(path)  # config.json first: its errors come before the weights'
    config = _model_config(arch)
    ckpt = open_checkpoint(path)
    weights = {}
    for target, name in arch.map_checkpoint(ckpt).items():  # the converter's names, checked
        entry = ckpt.tensors[name[0] if isinstance(name, tuple) else name]  # experts: all alike
        if entry.dtype not in _TORCH_DTYPES:
            raise ConvkitError(f"{entry.file}: tensor {name} has dtype {entry.dtype}; "
                               f"the runtime reads float32, float16 and bfloat16 checkpoints")
        tensor = torch.from_numpy(arch.read_source(ckpt, name, raw=True)).view(_TORCH_DTYPES[entry.dtype])
        if arch.transposes(target):  # gpt2's Conv1D
            tensor = tensor.t().contiguous()
        if tensor.dim() >= 2:  # experts [n_expert, rows, cols]: their rows one after another, as in a GGUF
            weights[target] = _matrix(tensor.reshape(-1, tensor.shape[-1]), _FLOAT_QTYPES[tensor.dtype], device)
        else:
            shift = arch.norm_shift(name) if isinstance(name, str) else 0.0
            if shift:  # Gemma's 1 + w, in float32 as transformers computes it
                tensor = tensor.float() + shift
            weights[target] = tensor.to(device, dtype)
    if "output.weight" in weights and config.tie_embeddings:
        config.tie_embeddings = False  # a stored head wins
    if "output.weight" not in weights and not config.tie_embeddings:
        raise ConvkitError(f"{path}: lm_head.weight is missing and the config does not tie embeddings")
    return config, weights
