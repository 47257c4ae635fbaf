"""Builds the optional compiled helpers and says which packages the wheel holds; the
rest is in pyproject.toml.

Each helper has a pure-numpy twin that stays the readable reference; if a compiler
is missing, the build still succeeds and the numpy path is used.

The sample model stays in samples/ (one copy in the repository) and is installed as the
package `convkit_samples`, so `convkit demo` runs from a wheel as from the source tree.
"""
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HELPERS = {
    "tokenizers_impl._bpe": "tokenizers_impl/_bpe.c",
    "tokenizers_impl._spm": "tokenizers_impl/_spm.c",
    "tokenizers_impl._spm_train": "tokenizers_impl/_spm_train.c",
    "tokenizers_impl._wordpiece_train": "tokenizers_impl/_wordpiece_train.c",
    "quant._kquants": "quant/_kquants.c",
    "quant._qdot": "quant/_qdot.c",
}
SAMPLES_PACKAGE = "convkit_samples"


class OptionalBuildExt(build_ext):
    """A helper that fails to compile is skipped, not fatal."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means "use numpy"
            print(f"convkit: skipping optional helper {ext.name}: {exc}")


class SampleOnlyBuildPy(build_py):
    """convkit_samples ships the model and its __init__; make_sample.py (which trains the
    model and needs transformers) stays in the source tree and the sdist."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package == SAMPLES_PACKAGE:
            modules = [m for m in modules if m[1] == "__init__"]
        return modules


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

setup(
    packages=find_packages(include=["convkit", "convkit.*", "quant", "quant.*",
                                    "tokenizers_impl", "tokenizers_impl.*"]) + [SAMPLES_PACKAGE],
    package_dir={SAMPLES_PACKAGE: "samples"},
    package_data={SAMPLES_PACKAGE: ["tiny-llama/*"]},
    exclude_package_data={"": ["*.c", "*.h"]},  # the sdist carries the C sources; wheels need only the .so
    ext_modules=extensions,
    cmdclass={"build_ext": OptionalBuildExt, "build_py": SampleOnlyBuildPy},
)
