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
    "quant._qdot": "quant/_qdot.c",
}
# Baseline instruction set only (no -march=native: the wheel runs on any x86-64 or ARM CPU);
# wider vectors are chosen at run time inside the helpers. No fused multiply-add contraction:
# the float arithmetic must be the same on every path and every CPU.
COMPILE_ARGS = ["-O3", "-std=c11", "-ffp-contract=off"]


class OptionalBuildExt(build_ext):
    """A helper that fails to compile is skipped, not fatal."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "use numpy"
            print(f"convkit: skipping optional helper {ext.name}: {exc}")


extensions = [
    Extension(name, [source], depends=sorted(str(h) for h in Path(source).parent.glob("*.h")),
              extra_compile_args=COMPILE_ARGS)
    for name, source in HELPERS.items()
    if Path(source).exists()
]

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
