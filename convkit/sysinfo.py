"""What convkit runs on: versions, compiled helpers, CPU features, torch's view of the machine.

`system_info()` gathers it into one dict for `convkit env` (llama.cpp prints the same kind
of line at start). Each part is its own small function and its own key, so another part of
convkit can read one part, or add a key, without the rest.
"""
import functools
import importlib
import importlib.metadata
import os
import platform
import subprocess
import sys

import convkit

# compiled helper -> what it runs when built; without it the numpy twin gives the same bytes
HELPERS = {
    "quant._kquants": "quantization (K-quants, Q4_0..Q8_0, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4) and f16/bf16 conversion",
    "tokenizers_impl._bpe": "BPE training, pre-tokenization and byte-level encoding",
    "tokenizers_impl._spm_train": "sentencepiece-style training (Unigram and spm-bpe)",
    "quant._qdot": "decoding (generate): products on quantized blocks, as ggml's CPU kernels",
    "tokenizers_impl._spm": "sentencepiece models: normalization, Unigram and BPE segmentation",
    "tokenizers_impl._wordpiece_train": "WordPiece training (merge loop and word count)",
}
# What the numpy twin costs (same bytes, more time), measured on an AMD EPYC with AVX-512,
# 2 cores: K-quants of the sample's FFN weights 5x (Q4_K) to 19x (Q6_K) slower; byte-level
# BPE training on the pydoc text 7x, encoding 300 KB of it 65x; sentencepiece-style training
# on the pydoc text 10x (spm-bpe) to 14x (Unigram), spm-bpe on 20 MB about 45x; encoding
# with sentencepiece models (1 MB of the docs) 60x (Unigram, one string) to 8x (BPE, line by line);
# WordPiece training on the pydoc text 7x (likelihood) to 12x (frequency), on 20 MB 9x to 20x.
MISSING_COST = {
    "quant._kquants": "quantizing 5-20x slower",
    "tokenizers_impl._bpe": "BPE training about 7x, encoding about 60x slower",
    "tokenizers_impl._spm_train": "Unigram and spm-bpe training about 10x (pydoc text) to 45x (20 MB) slower",
    "quant._qdot": "generate decodes through dequantized weights instead, several times slower",
    "tokenizers_impl._spm": "sentencepiece-model encoding 10-60x slower",
    "tokenizers_impl._wordpiece_train": "WordPiece training about 7-12x (pydoc text) to 9-20x (20 MB) slower",
}
# The helpers are built without -march, for the baseline instruction set (SSE2 on x86-64);
# the K-quant loops carry AVX2 and AVX-512 clones that the loader picks for the running CPU.
HELPERS_ISA = ("baseline instruction set, no -march; K-quant loops with AVX2/AVX-512 clones chosen at load time, "
               "block products with AVX2/AVX-512 VNNI paths chosen at run time")

PACKAGES = ("numpy", "torch", "gguf", "safetensors", "sentencepiece", "click", "matplotlib")

# The vector features our paths (torch's kernels, numpy, oneDNN) can use, as /proc/cpuinfo
# names them: x86 "flags", arm64 "Features" (shown under the usual names: asimd is NEON).
X86_FEATURES = {name: name for name in (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")}
ARM_FEATURES = {"neon": "asimd", "dotprod": "asimddp", "fp16": "fphp", "bf16": "bf16",
                "i8mm": "i8mm", "sve": "sve", "sve2": "sve2"}


def compiled_helpers() -> dict:
    """{helper module: True when it imports}. A missing one means its numpy twin runs."""
    found = {}
    for name in HELPERS:
        try:
            importlib.import_module(name)
            found[name] = True
        except ImportError:
            found[name] = False
    return found


def missing_helpers_note() -> str | None:
    """One line for a user whose install lacks a helper, or None when all are built."""
    missing = [name for name, built in compiled_helpers().items() if not built]
    if not missing:
        return None
    costs = ", ".join(f"{name} ({MISSING_COST[name]})" for name in missing)
    return (f"convkit: note: compiled helpers missing: {costs}; the numpy paths give the same "
            f"results. Reinstall with a C compiler to build them (`convkit env` lists them).")


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _linux_cpu() -> tuple[str | None, set]:
    model, flags = None, set()
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "model name" and model is None:
                model = value.strip()
            elif key in ("flags", "features") and not flags:  # x86 "flags", arm64 "Features"
                flags = set(value.split())
            if model and flags:
                break
    return model, flags


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


@functools.cache
def cpu_model_and_flags() -> tuple[str | None, frozenset]:
    """The CPU's model name and its feature flags as the OS names them, read once."""
    model, flags = None, set()
    if sys.platform.startswith("linux") and os.path.exists("/proc/cpuinfo"):
        model, flags = _linux_cpu()
    elif sys.platform == "darwin":
        model = _sysctl("machdep.cpu.brand_string")
        if platform.machine() == "arm64":
            flags = {"asimd", "fphp"}  # every Apple arm64 core has NEON and fp16 arithmetic
            flags |= {name for name, key in (("bf16", "FEAT_BF16"), ("i8mm", "FEAT_I8MM"))
                      if _sysctl(f"hw.optional.arm.{key}") == "1"}
        else:
            for key in ("machdep.cpu.features", "machdep.cpu.leaf7_features"):
                flags |= set((_sysctl(key) or "").lower().replace(".", "_").split())
    return model, frozenset(flags)


def cpu_info() -> dict:
    """CPU model and which vector features it has, read now (not at build time)."""
    model, flags = cpu_model_and_flags()
    known = ARM_FEATURES if platform.machine().lower() in ("arm64", "aarch64") else X86_FEATURES
    return {
        "model": model or platform.processor() or None,
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "features": {shown: flag in flags for shown, flag in known.items()} if flags else None,
    }


def torch_info() -> dict:
    """torch's version, which CPU kernels it dispatches to, its threads, and its devices."""
    try:
        import torch
    except ImportError:
        return {"version": None}
    info = {
        "version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "onednn": torch.backends.mkldnn.is_available(),
        "cuda_version": torch.version.cuda,
        "cuda_devices": [],
        "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["cuda_devices"].append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                                         "capability": f"{p.major}.{p.minor}"})
    return info


def system_info() -> dict:
    return {
        "convkit": convkit.__version__,
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable, "platform": platform.platform()},
        "packages": package_versions(),
        "helpers": {"built": compiled_helpers(), "isa": HELPERS_ISA, "speeds_up": dict(HELPERS),
                    "cost_if_missing": dict(MISSING_COST)},
        "cpu": cpu_info(),
        "torch": torch_info(),
        "cpu_path": _cpu_path(),
        "block_products": block_products(),
    }


def block_products() -> dict:
    """Which path quant._qdot's products (decoding, --numerics ggml) take on this CPU."""
    from quant import qdot

    return {"path": qdot.isa(), "forced": os.environ.get("CONVKIT_QDOT_ISA")}


def _cpu_path() -> dict | None:
    """Which kernel the runtime's bfloat16 products take on this CPU (convkit.runtime.cpu_paths)."""
    try:
        from convkit.runtime.cpu_paths import describe_cpu_path
    except ImportError:  # no torch
        return None
    return describe_cpu_path()
