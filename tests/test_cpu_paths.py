"""Every bfloat16 product path, forced in turn, on whatever CPU runs the tests.

convkit picks one of three kernels for bfloat16 products on CPU (convkit/runtime/cpu_paths.py):
oneDNN with prepacked weights (AVX-512 and newer x86), torch's bfloat16 F.linear, or
float32 products on bfloat16-stored weights (AVX2-only x86, ARM without BF16). Each test
here runs with CONVKIT_CPU_PATH forcing each path, so a machine of any kind exercises the
code an AVX2 or ARM user runs; `prepacked` is skipped, with its reason, where oneDNN has no
bfloat16 kernels. `ONEDNN_MAX_CPU_ISA=AVX2` makes oneDNN (and torch's own check) on an
AVX-512 machine behave as on an AVX2 one: the last tests run the CLI that way, which is how
the original crash reproduces here.

Tolerances (u16 = 2^-8, the unit roundoff of bfloat16; u32 = 2^-24, of float32):
- one product, any path: the operands are bfloat16, so each x_i*w_i is exact in float32
  (8+8 significant bits); the k-term float32 sum (plus the bias) is within
  gamma(k+1) * S of the exact sum, S = sum|x_i w_i| + |b|, gamma(n) = n u32 / (1 - n u32)
  (Higham, Accuracy and Stability, 3.1), in any order; the final rounding to bfloat16
  adds u16 of the result. So |y - exact| <= gamma S + u16 (|exact| + gamma S) for every path.
- whole model, each path against float32: every path rounds the same weights and
  activations to bfloat16 at the same places; the paths differ only in the order of the
  float32 sums inside a product (an output moves only where its sum sits on a bfloat16
  rounding boundary, by one step) and in attention (the fp32 path keeps scores and
  probabilities in float32, the others round them to bfloat16). So every path's logits are
  as far from float32 logits as the portable fp32 path's are, measured in the same test on
  the same machine; twice that distance is allowed for which roundings happen to flip. A path
  with an error of its own (a bfloat16 accumulator, a dropped bias, a stale packed weight)
  lands several times further away. (Two paths need not agree to better than one bfloat16
  step of a logit: the final rounding of one can go up where the other's goes down.)
- fp32 precision and --numerics ggml never take a bfloat16 path: bit-identical whatever
  is forced.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import torch

from convkit.errors import ConvkitError
from convkit.runtime import cpu_paths, ggml_numerics, load_model  # noqa: F401 (registers --numerics ggml)
from convkit.runtime.cpu_paths import ENV, PATHS, Capabilities, decide
from convkit.runtime.linear import dense_linear, kept_form
from test_runtime_model import FAMILIES, TOL, make_family, reference_logits, token_ids, write_gguf

U16, U32 = 2.0 ** -8, 2.0 ** -24
PREPACK_HERE = decide(cpu_paths.capabilities(), None).name == "prepacked"
ROOT = Path(__file__).resolve().parent.parent


def gamma(n: int) -> float:
    return n * U32 / (1 - n * U32)


@pytest.fixture(params=PATHS)
def forced(request, monkeypatch):
    """CONVKIT_CPU_PATH set to each path in turn (the name is returned)."""
    if request.param == "prepacked" and not PREPACK_HERE:
        pytest.skip("oneDNN has no bfloat16 kernels on this CPU: the prepacked path cannot run here")
    monkeypatch.setenv(ENV, request.param)
    monkeypatch.delenv("CONVKIT_NO_ONEDNN", raising=False)
    return request.param


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    return make_family(request.param, tmp_path_factory)


# ------------------------------------------------------------- the decision
ZEN3 = Capabilities("x86_64", onednn_bf16=False, reorder_op=True)  # AVX2 + FMA only
ZEN5 = Capabilities("x86_64", onednn_bf16=True, reorder_op=True)  # AVX-512 with BF16
NEOVERSE_V1 = Capabilities("aarch64", onednn_bf16=True, reorder_op=True)  # ARM with BF16
CORTEX_A72 = Capabilities("aarch64", onednn_bf16=False, reorder_op=False)  # ARM without


@pytest.mark.parametrize("caps, want", [(ZEN3, "fp32"), (ZEN5, "prepacked"), (NEOVERSE_V1, "bf16"),
                                        (CORTEX_A72, "fp32"),
                                        (Capabilities("AMD64", True, False), "bf16")],
                         ids=["avx2", "avx512-bf16", "arm-bf16", "arm", "no-onednn-ops"])
def test_automatic_choice(caps, want):
    path = decide(caps, None)
    assert path.name == want and not path.forced


def test_forcing_and_its_errors():
    assert decide(ZEN5, None, no_onednn=True).name == "bf16"
    for name in ("bf16", "fp32"):
        assert decide(ZEN3, name) == cpu_paths.CpuPath(name, True, f"forced by {ENV}")
    assert decide(ZEN5, "PrePacked ").name == "prepacked"
    with pytest.raises(ConvkitError, match="prepacked: oneDNN has no bfloat16 kernels"):
        decide(ZEN3, "prepacked")
    with pytest.raises(ConvkitError, match="unknown path"):
        decide(ZEN5, "avx512")


def test_description_of_a_bad_setting_does_not_raise(monkeypatch):
    monkeypatch.setenv(ENV, "avx512")
    d = cpu_paths.describe_cpu_path()
    assert d["path"] is None and f"{ENV}=avx512" in d["reason"]
    with pytest.raises(ConvkitError):
        cpu_paths.current()


def test_this_machine_asks_torch():
    """The automatic choice reads torch's own gate for oneDNN's bfloat16 kernels, and the
    description names the path, the CPU and its flags."""
    caps = cpu_paths.capabilities()
    assert caps.onednn_bf16 == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    d = cpu_paths.describe_cpu_path()
    assert d["path"] in PATHS and d["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert json.loads(json.dumps(d)) == d
    if sys.platform == "linux" and caps.machine == "x86_64":
        assert "sse4_2" in d["cpu_flags"]


# ------------------------------------------------------------- one product
@pytest.mark.parametrize("rows", [1, 7, 512])
@pytest.mark.parametrize("bias", [False, True])
def test_product_is_within_the_bfloat16_bound(forced, rows, bias):
    g = torch.Generator().manual_seed(rows)
    k, n = 576, 96
    x = torch.randn(rows, k, generator=g).bfloat16()
    w = torch.randn(n, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    exact = x.double() @ w.double().t() + (b.double() if bias else 0)
    size = (x.double().abs() @ w.double().abs().t()) + (b.double().abs() if bias else 0)
    bound = gamma(k + 1) * size + U16 * (exact.abs() + gamma(k + 1) * size)
    for weight in (w, kept_form(w)):  # plain, and as --dequantize-all keeps it on this path
        assert weight.is_mkldnn == (forced == "prepacked") or weight is w
        y = dense_linear(x, weight, b)
        assert y.dtype == torch.bfloat16 and y.shape == (rows, n)
        assert bool(((y.double() - exact).abs() <= bound).all()), float(((y.double() - exact).abs() - bound).max())


# ------------------------------------------------------------- whole models, every mode
def test_fp32_and_ggml_do_not_depend_on_the_path(family, forced, tmp_path, monkeypatch):
    """float32 products (and llama.cpp's arithmetic) never take a bfloat16 path: the same bits
    whatever is forced, and transformers' logits within the float32 tolerance."""
    name, directory, model = family
    ids = torch.cat([token_ids(seed=11), token_ids(seed=12)])  # batch of 2
    path = write_gguf(model, tmp_path / f"{name}.q8_0.gguf", gguf.GGMLQuantizationType.Q8_0)
    runs = {}
    for env in (forced, None):
        if env is None:
            monkeypatch.delenv(ENV)
        runs[env] = (load_model(directory)(ids), load_model(directory, dequantize_all=True)(ids),
                     load_model(path, numerics="ggml")(ids),
                     load_model(path, numerics="ggml", dequantize_all=True)(ids))
    for ours, auto in zip(runs[forced], runs[None]):
        assert torch.equal(ours, auto)
    assert (runs[forced][0] - reference_logits(model, ids)).abs().max().item() < TOL


def test_bf16_on_each_path(family, forced, monkeypatch):
    """bfloat16 per layer, with --dequantize-all, and a batch of two, on the forced path,
    against float32, with the portable fp32 path's distance as the scale (module doc)."""
    name, directory, model = family
    ids = torch.cat([token_ids(seed=13), token_ids(seed=14)])
    fp32 = load_model(directory)(ids)
    per_layer = load_model(directory, precision="bf16")
    kept = load_model(directory, precision="bf16", dequantize_all=True)
    ours, ours_kept, ours_row = per_layer(ids), kept(ids), per_layer(ids[1:])
    assert torch.equal(ours_kept, ours)  # kept weights go through the same kernel as per-layer ones
    down = kept.blocks[0].mlp.down
    assert down._dense.is_mkldnn == (forced == "prepacked")
    assert down._dense.dtype == (torch.float32 if forced == "fp32" else torch.bfloat16)  # kept upcast on fp32
    monkeypatch.setenv(ENV, "fp32")
    portable_net = load_model(directory, precision="bf16")
    portable, portable_row = portable_net(ids), portable_net(ids[1:])
    scale = (portable - fp32).abs().max().item()  # bfloat16's whole effect here (module doc)
    assert 0 < scale < 1
    for logits, want in ((ours, fp32), (ours_row, fp32[1:]), (portable_row, fp32[1:])):  # batch rows too
        assert (logits - want).abs().max().item() <= 2 * scale
    assert (ours.argmax(-1) == fp32.argmax(-1)).float().mean().item() > 0.9


def test_bf16_decoding_on_each_path(family, forced):
    """One token at a time through the KV cache (generate's path: products of one row)."""
    name, directory, model = family
    ids = token_ids(n=12, seed=15)
    net = load_model(directory, precision="bf16", dequantize_all=True)
    cache = net.new_cache(max_len=16)
    steps = torch.cat([net(ids[:, :4], cache)] + [net(ids[:, i:i + 1], cache) for i in range(4, 12)], dim=1)
    assert steps.dtype == torch.float32 and torch.isfinite(steps).all()
    fp32 = load_model(directory)(ids)
    assert (steps.argmax(-1) == fp32.argmax(-1)).float().mean().item() > 0.9


# ------------------------------------------------------------- the CLI as an AVX2 machine runs it
def _cli(args, env_extra, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "CONVKIT_NO_ONEDNN")}
    env.update(env_extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "convkit", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path)


@pytest.fixture(scope="module")
def sample_text(tmp_path_factory):
    from convkit.samples import split_pydoc_topics

    path = tmp_path_factory.mktemp("text") / "held_out.txt"
    path.write_text(split_pydoc_topics()[1][:12000], encoding="utf-8")
    return path


def test_avx2_machine_runs_bf16_perplexity(sample_text, tmp_path):
    """The reported crash: `--precision bf16 [--dequantize-all]` with oneDNN limited to AVX2.
    It must run, say it took the fp32 path, and give the PPL of the portable path here, as
    close as bfloat16's whole effect on the PPL (fp32 against bf16, same run)."""
    from convkit.samples import sample_model

    model = str(sample_model())
    base = ["perplexity", model, "--text", str(sample_text), "--ctx", "128", "--chunks", "3", "--json"]
    avx2 = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    results = {}
    for label, extra, env in [("avx2", ["--precision", "bf16", "--dequantize-all"], avx2),
                              ("avx2-layer", ["--precision", "bf16", "-v"], avx2),
                              ("here-fp32path", ["--precision", "bf16"], {ENV: "fp32"}),
                              ("here-float32", [], {})]:
        proc = _cli(base + extra, env, tmp_path)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        results[label] = json.loads(proc.stdout)
    assert results["avx2"]["cpu_path"]["path"] == "fp32" and not results["avx2"]["cpu_path"]["forced"]
    assert results["avx2"]["cpu_path"]["onednn_bf16"] is False
    assert "bfloat16 products on CPU: fp32" in _cli(base + ["--precision", "bf16", "-v"], avx2, tmp_path).stderr
    import math

    effect = abs(math.log(results["here-fp32path"]["ppl"] / results["here-float32"]["ppl"]))
    for label in ("avx2", "avx2-layer"):
        assert abs(math.log(results[label]["ppl"] / results["here-fp32path"]["ppl"])) <= max(effect, 1e-6)


def test_forcing_an_unavailable_path_is_one_line(sample_text, tmp_path):
    from convkit.samples import sample_model

    proc = _cli(["perplexity", str(sample_model()), "--text", str(sample_text), "--precision", "bf16"],
                {"ONEDNN_MAX_CPU_ISA": "AVX2", ENV: "prepacked"}, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("convkit: error:") and f"{ENV}=prepacked" in line


def test_bf16_on_a_gpu_without_bfloat16_is_one_line(capsys, monkeypatch):
    """A GPU torch sees, without bfloat16 (stood in for here): one line and exit 2."""
    from convkit.cli import main
    from convkit.samples import sample_model
    from test_runtime_cli import assert_one_line_error

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(sample_model()), "-p", "hi", "--device", "cuda", "--precision", "bf16"])
    assert_one_line_error(exit_info.value.code, capsys.readouterr().err, "Tesla T4", "--precision fp32")


def test_generate_reports_its_path(capsys, monkeypatch):
    """`generate --json` names the path (here a forced one); `--verbose` says it once on stderr."""
    from convkit.cli import main
    from convkit.samples import sample_model

    monkeypatch.setenv(ENV, "fp32")
    args = ["generate", str(sample_model()), "-p", "The", "-n", "2", "--greedy", "--precision", "bf16"]
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--json"])
    assert exit_info.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cpu_path"]["path"] == "fp32" and doc["cpu_path"]["forced"] and doc["n_tokens"] >= 1
    with pytest.raises(SystemExit):
        main(args + ["--verbose", "-q"])
    err = capsys.readouterr().err
    assert err.count("bfloat16 products on CPU: fp32") == 1 and f"forced by {ENV}" in err
