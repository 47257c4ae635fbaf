"""Builds the optional compiled helpers; everything else is in pyproject.toml.

Each helper has a pure-numpy twin that stays the readable reference; if a compiler
is missing, the build still succeeds and the numpy path is used.
"""
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HELPERS = {
    "tokenizers_impl._bpe": "tokenizers_impl/_bpe.c",
    "quant._kquants": "quant/_kquants.c",
}


class OptionalBuildExt(build_ext):
    """A helper that fails to compile is skipped, not fatal."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "use numpy"
            print(f"convkit: skipping optional helper {ext.name}: {exc}")


# Built for the baseline instruction set of the target (never -march=native: a wheel runs on
# other CPUs); the K-quant lane loops carry AVX2/AVX-512 clones picked at load time
# (target_clones, quant/_kquants_k.h). -ffp-contract=off: no fused multiply-add in any
# clone or compiler (clang contracts by default, and FMA is baseline on aarch64), because
# a*b+c fused rounds differently from ggml.
extensions = [
    Extension(name, [source], depends=sorted(str(h) for h in Path(source).parent.glob("*.h")),
              extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off"])
    for name, source in HELPERS.items()
    if Path(source).exists()
]

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
