"""Which kernel computes a bfloat16 matrix product on this CPU: decided once, by capability.

Three paths compute the same arithmetic (bfloat16 operands, exact products, float32
sums, one rounding of each output to bfloat16); they differ in speed and in what the
CPU must support:

    prepacked  oneDNN's bfloat16 linear; weights kept by --dequantize-all are reordered
               once into oneDNN's blocked layout. Needs oneDNN's bfloat16 kernels
               (x86-64 with AVX512BW+VL+DQ, AVX-NE-CONVERT or AMX).
    bf16       torch's F.linear on bfloat16 tensors: torch picks its own kernel (oneDNN's
               GEMM where the CPU has bfloat16 support, its portable C++ loops elsewhere).
               Runs on every CPU.
    fp32       float32 products on bfloat16-stored weights: operands upcast per product
               (exactly: every bfloat16 value is a float32 value), one float32 GEMM, the
               result rounded to bfloat16. Runs on every CPU with the float32 GEMM's speed;
               --dequantize-all keeps the upcast weights (float32's memory, no conversion
               per product).

The automatic choice asks torch the question it asks itself before calling oneDNN's
bfloat16 kernels (`torch.ops.mkldnn._is_mkldnn_bf16_supported`, which also honours
oneDNN's ONEDNN_MAX_CPU_ISA limit) instead of trying a product and catching the crash:

    oneDNN bfloat16 supported, x86-64, reorder op present   -> prepacked
    oneDNN bfloat16 supported otherwise (aarch64 with BF16) -> bf16
    no bfloat16 kernels (AVX2-only x86, older ARM)          -> fp32

On an AVX2-only CPU oneDNN refuses both the reorder ("bf16 path needs the cpu support
avx_ne_convert or avx512bw, avx512vl and avx512dq") and the bfloat16 inner product ("could
not create a primitive descriptor"), so fp32 is the path there.

CONVKIT_CPU_PATH=prepacked|bf16|fp32 forces a path (tests run each one on any machine;
`ONEDNN_MAX_CPU_ISA=AVX2` makes an AVX-512 machine's oneDNN behave as an AVX2 one's).
CONVKIT_NO_ONEDNN=1, the older switch, means "not prepacked" and picks bf16.
float32 activations never take any of these paths: they always use F.linear, the GEMM
transformers uses. `describe_cpu_path()` reports the choice for `--json`, `--verbose`
and `convkit env`.
"""
import functools
import os
import platform
from dataclasses import dataclass

import torch

from convkit import sysinfo
from convkit.errors import ConvkitError

ENV = "CONVKIT_CPU_PATH"
PATHS = ("prepacked", "bf16", "fp32")
DESCRIPTIONS = {
    "prepacked": "oneDNN bfloat16 products, kept weights prepacked",
    "bf16": "torch's bfloat16 F.linear",
    "fp32": "float32 products on bfloat16-stored weights",
}
# /proc/cpuinfo flags that decide or explain the choice (x86 "flags", aarch64 "Features")
REPORTED_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
                  "avx512_vnni", "avx_vnni", "avx512_bf16", "avx_ne_convert", "amx_bf16", "amx_tile",
                  "asimd", "asimddp", "bf16", "i8mm", "sve", "sve2")


@dataclass(frozen=True)
class Capabilities:
    """What the decision reads; tests build these by hand to cover other CPUs."""

    machine: str  # platform.machine(): x86_64, AMD64, aarch64, arm64, ...
    onednn_bf16: bool  # oneDNN can run bfloat16 kernels here (torch's own check)
    reorder_op: bool  # this torch build has oneDNN's linear ops (reorder + linear_pointwise)


@dataclass(frozen=True)
class CpuPath:
    name: str | None  # one of PATHS
    forced: bool
    reason: str


def _onednn_ops_present() -> bool:
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and mkldnn is not None
            and hasattr(mkldnn, "_reorder_linear_weight") and hasattr(mkldnn, "_linear_pointwise"))


def _onednn_bf16() -> bool:
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if check is None or not torch.backends.mkldnn.is_available():
        return False
    return bool(check())


@functools.cache
def capabilities() -> Capabilities:
    """This machine's, read once per process."""
    return Capabilities(machine=platform.machine(), onednn_bf16=_onednn_bf16(), reorder_op=_onednn_ops_present())


def decide(caps: Capabilities, forced: str | None, no_onednn: bool = False) -> CpuPath:
    """The path for `caps`; `forced` is CONVKIT_CPU_PATH's value (None or "" when unset)."""
    x86 = caps.machine.lower() in ("x86_64", "amd64", "x64")
    prepack_ok = caps.onednn_bf16 and caps.reorder_op and x86
    if forced:
        name = forced.strip().lower()
        if name not in PATHS:
            raise ConvkitError(f"{ENV}={forced}: unknown path; use one of {', '.join(PATHS)} or unset it")
        if name == "prepacked" and not prepack_ok:
            raise ConvkitError(f"{ENV}=prepacked: oneDNN has no bfloat16 kernels for this CPU or torch build "
                               f"({caps.machine}); use {ENV}=bf16 or fp32, or unset it")
        return CpuPath(name, True, f"forced by {ENV}")
    if prepack_ok and not no_onednn:
        return CpuPath("prepacked", False, "oneDNN has bfloat16 kernels for this CPU")
    if caps.onednn_bf16:
        why = "CONVKIT_NO_ONEDNN is set" if no_onednn else "oneDNN's prepacking is not used on this platform"
        return CpuPath("bf16", False, f"the CPU has bfloat16 support; {why}")
    return CpuPath("fp32", False, "oneDNN has no bfloat16 kernels for this CPU (needs AVX512BW/VL/DQ, "
                                  "AVX-NE-CONVERT, AMX or ARM BF16)")


@functools.lru_cache(maxsize=8)
def _current(forced: str, no_onednn: bool) -> CpuPath:
    return decide(capabilities(), forced or None, no_onednn)


def current() -> CpuPath:
    """The path bfloat16 products take now (re-read only when the environment changes)."""
    return _current(os.environ.get(ENV, ""), bool(os.environ.get("CONVKIT_NO_ONEDNN")))


def cpu_model() -> str:
    return sysinfo.cpu_model_and_flags()[0] or platform.processor() or platform.machine()


def cpu_flags() -> frozenset:
    """The CPU's feature flags (empty where the OS does not say, e.g. some containers)."""
    return sysinfo.cpu_model_and_flags()[1]


def describe_cpu_path() -> dict:
    """The bfloat16 product path and what it was chosen from, as plain JSON values. Never
    raises: a CONVKIT_CPU_PATH this machine cannot run gives path None and its message as
    the reason (loading a bf16 model is what refuses it)."""
    caps, flags = capabilities(), cpu_flags()
    try:
        path = current()
    except ConvkitError as exc:
        path = CpuPath(None, True, str(exc))
    return {
        "path": path.name,
        "description": DESCRIPTIONS.get(path.name, "none: the forced path cannot run here"),
        "forced": path.forced,
        "reason": path.reason,
        "cpu": cpu_model(),
        "machine": caps.machine,
        "cpu_flags": [f for f in REPORTED_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_bf16": caps.onednn_bf16,
    }


def summary_line() -> str:
    """One line for --verbose: the path, why, and the CPU."""
    d = describe_cpu_path()
    flags = " ".join(d["cpu_flags"]) or "no flags readable"
    return (f"bfloat16 products on CPU: {d['path']} ({d['description']}; {d['reason']}); "
            f"{d['cpu']}, torch {d['torch_cpu_capability']}, {flags}")
