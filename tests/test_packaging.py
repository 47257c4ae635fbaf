"""The packages users install. The sdist holds what a build needs; a wheel built from that
sdist with no C compiler (CC=false) still builds, carries the sample model and no tests,
and, installed on its own and run from another directory, finds the sample, runs on the
numpy paths with the same results as the compiled helpers and says so once.
Also `convkit --version` and `convkit env`."""
import json
import os
import re
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import convkit
from convkit import sysinfo

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "tiny-llama"
PACKAGES = ("convkit", "quant", "tokenizers_impl")
BUILD_INPUTS = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", *PACKAGES, "samples"]
HELPERS = tuple(sysinfo.HELPERS)  # every compiled helper setup.py builds
BUILD_HOOK = "import sys; from setuptools import build_meta as b; print(b.{}(sys.argv[1]))"


def _c_sources():
    return sorted(p.relative_to(ROOT).as_posix() for pkg in PACKAGES
                  for p in (ROOT / pkg).glob("*.[ch]"))


def _run(args, **kw):
    proc = subprocess.run(args, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """sdist from a clean copy of the tree, then the wheel from that sdist with CC=false
    (as `python -m build` does it, minus the isolated environment)."""
    tmp = tmp_path_factory.mktemp("pkg")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "build", "*.egg-info")
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, src / name)
    sdist_name = _run([sys.executable, "-c", BUILD_HOOK.format("build_sdist"), str(tmp / "dist")],
                      cwd=src).stdout.strip().splitlines()[-1]
    sdist = tmp / "dist" / sdist_name
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    unpacked = tmp / "unpacked" / sdist_name.removesuffix(".tar.gz")
    env = {**os.environ, "CC": "false"}  # a compiler that fails: what a machine without one gets
    proc = _run([sys.executable, "-c", BUILD_HOOK.format("build_wheel"), str(tmp / "dist")],
                cwd=unpacked, env=env)
    wheel = tmp / "dist" / proc.stdout.strip().splitlines()[-1]
    return {"tmp": tmp, "sdist": sdist, "wheel": wheel, "log": proc.stdout + proc.stderr}


@pytest.fixture(scope="module")
def installed(built):
    """The wheel installed alone, run from another directory by a venv of its own. That venv
    takes the dependencies (numpy, torch, ...) from this environment through a .pth line, but
    not this environment's convkit: an editable install's import hook would hand out the
    source tree's compiled helpers and sample."""
    tmp = built["tmp"]
    target = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
          "--target", str(target), str(built["wheel"])])
    _run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")])
    python = str(tmp / "venv" / "bin" / "python")
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (purelib / "deps.pth").write_text("\n".join([str(target), *site.getsitepackages()]) + "\n")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args):
        return subprocess.run([python, *args], capture_output=True, text=True, cwd=elsewhere, env=env)
    return {"site": target, "run": run}


def test_sdist_holds_what_a_build_needs(built):
    with tarfile.open(built["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    needed = {"pyproject.toml", "setup.py", "README.md", "samples/__init__.py", *_c_sources(),
              *(f"samples/tiny-llama/{p.name}" for p in SAMPLE.iterdir())}
    assert needed <= names, sorted(needed - names)
    assert not any(n.endswith((".so", ".pyc")) for n in names)
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_wheel_without_compiler_carries_the_sample_and_no_tests(built):
    for helper in HELPERS:  # CC=false really reached the compiler, and the build went on
        assert f"skipping optional helper {helper}" in built["log"], built["log"][-3000:]
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = set(whl.namelist())
        for p in SAMPLE.iterdir():
            assert whl.read(f"convkit_samples/tiny-llama/{p.name}") == p.read_bytes(), p.name
    assert not [n for n in names if n.endswith((".so", ".pyd", ".c", ".h"))]
    assert not [n for n in names if n.split("/")[0] in ("tests", "benchmarks", "samples")]
    assert "convkit_samples/make_sample.py" not in names
    # every module of the source tree made it (a subpackage left out of setup.py would not)
    modules = {p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    with zipfile.ZipFile(built["wheel"]) as whl:
        assert f"\nVersion: {convkit.__version__}\n" in whl.read(metadata).decode()


def test_installed_wheel_finds_its_sample(installed):
    proc = installed["run"]("-c", "from convkit.samples import sample_model; print(sample_model())")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).parent == installed["site"] / "convkit_samples"


def test_installed_wheel_reports_missing_helpers(installed):
    proc = installed["run"]("-m", "convkit", "env", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["helpers"]["built"] == {h: False for h in HELPERS}
    assert info["convkit"] == convkit.__version__
    assert "MISSING" in installed["run"]("-m", "convkit", "env").stdout


def test_installed_wheel_runs_on_numpy_paths_with_one_note(installed, tmp_path):
    """Same ids and same GGUF bytes as the compiled helpers (this test environment's build);
    the note that they are missing comes once, in one line, on stderr."""
    tokenizer = str(SAMPLE / "tokenizer.json")
    text = "def main(argv=None):\n    return sorted(set(argv)) # cafe\u0301"
    numpy_ids = installed["run"]("-m", "convkit", "tokenize", "encode", "-t", tokenizer, "--json", text)
    assert numpy_ids.returncode == 0, numpy_ids.stderr
    notes = [line for line in numpy_ids.stderr.splitlines() if "compiled helpers missing" in line]
    assert len(notes) == 1 and all(h in notes[0] for h in HELPERS), numpy_ids.stderr
    assert re.search(r"\d+x slower", notes[0])

    pytest.importorskip("quant._kquants", reason="compare with the compiled helper: build it first")
    pytest.importorskip("tokenizers_impl._bpe", reason="compare with the compiled helper: build it first")
    compiled_ids = _run([sys.executable, "-m", "convkit", "tokenize", "encode", "-t", tokenizer, "--json", text],
                        cwd=ROOT)
    assert json.loads(numpy_ids.stdout) == json.loads(compiled_ids.stdout)
    assert "compiled helpers missing" not in compiled_ids.stderr

    outputs = {}
    for label, runner in (("numpy", installed["run"]),
                          ("compiled", lambda *a: subprocess.run([sys.executable, *a], capture_output=True,
                                                                 text=True, cwd=ROOT))):
        out = tmp_path / f"{label}.gguf"
        proc = runner("-m", "convkit", "quantize", str(SAMPLE), "--type", "q4_k_m", "-o", str(out), "--quiet")
        assert proc.returncode == 0, proc.stderr
        outputs[label] = out.read_bytes()
    assert outputs["numpy"] == outputs["compiled"]


def test_version_and_env(tmp_path):
    version = subprocess.run([sys.executable, "-m", "convkit", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and convkit.__version__ in version.stdout, version.stderr
    proc = subprocess.run([sys.executable, "-m", "convkit", "env", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    import numpy
    import torch

    assert info["packages"]["numpy"] == numpy.__version__
    assert info["torch"]["version"] == torch.__version__
    assert info["torch"]["threads"] == torch.get_num_threads()
    assert info["torch"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert len(info["torch"]["cuda_devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    features = info["cpu"]["features"]
    if sys.platform.startswith("linux"):
        # torch detects the CPU on its own: the kernels it picked need the features we read
        capability = info["torch"]["cpu_capability"]
        if capability.startswith("AVX512"):
            assert features["avx512f"] and features["avx2"]
        elif capability == "AVX2":
            assert features["avx2"] and features["fma"]
        lscpu = shutil.which("lscpu")
        if lscpu and os.uname().machine == "x86_64":  # there our names are lscpu's
            flags = subprocess.run([lscpu], capture_output=True, text=True).stdout
            line = next((ln for ln in flags.splitlines() if ln.startswith("Flags:")), None)
            if line:
                got = {name for name, has in features.items() if has}
                assert got == set(line.split()[1:]) & set(features), line
    from quant import qdot

    # the block products' path agrees with the CPU features read above
    assert info["block_products"] == {"path": qdot.isa(), "forced": None}
    if qdot.isa() == "avx512vnni":
        assert features["avx512_vnni"] and features["avx512bw"] and features["avx512vl"]
    forced = subprocess.run([sys.executable, "-m", "convkit", "env", "--json"], capture_output=True, text=True,
                            env={**os.environ, "CONVKIT_QDOT_ISA": "scalar"})
    assert json.loads(forced.stdout)["block_products"] == {"path": "scalar" if qdot.compiled_types() else "numpy",
                                                         "forced": "scalar"}
    text = subprocess.run([sys.executable, "-m", "convkit", "env"], capture_output=True, text=True)
    assert text.returncode == 0 and text.stdout.startswith(f"convkit {convkit.__version__}\n")
    assert "compiled helpers missing" not in text.stderr  # env says it itself, not twice
