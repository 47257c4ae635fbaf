"""`convkit imatrix`: what llama-imatrix collects, from the runtime's products.

Ground truths: transformers' own modules (hooks on the HF projections) for the collection
logic in float32; llama.cpp's activations read through its graph callback and summed as
tools/imatrix/imatrix.cpp sums them (tests/llama_imatrix.py) for the real thing."""
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from convkit.cli import main
from convkit.eval.perplexity import plan_chunks, tokenize_for_perplexity
from convkit.runtime import ggml_numerics  # noqa: F401  (registers numerics "ggml")
from convkit.runtime import load_model
from convkit.runtime.imatrix import collect, linear_names
from convkit.runtime.linear import FloatNumerics
from convkit.runtime.tokenizer import load_tokenizer
from quant.imatrix import from_statistics, load_importance, read_imatrix, write_imatrix
from realdata import python_docs_text, smollm2_gguf
from test_runtime_cli import assert_one_line_error, run

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "tiny-llama"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text(python_docs_text()[:60000], encoding="utf-8")
    return path


def sample_plan(path, n_ctx=64, n_chunks=3):
    tok = load_tokenizer(path)
    tokens = tokenize_for_perplexity(tok, python_docs_text()[:60000])
    return tokens, plan_chunks(len(tokens), n_ctx, n_chunks, tok.bos_id if tok.add_bos else None)


# ---------------------------------------------------------------- the collection, against transformers
def test_sums_equal_transformers_projection_inputs():
    """Per HF projection, the inputs' squares summed over the same chunks (float32 both)."""
    from transformers import AutoModelForCausalLM

    tokens, plan = sample_plan(SAMPLE)
    ours = collect(load_model(SAMPLE), tokens, plan, chunks_per_pass=2, process_output=True)
    hf = AutoModelForCausalLM.from_pretrained(SAMPLE, torch_dtype=torch.float32).eval()
    theirs, handles = {}, []
    gguf_name = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                 "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    for name, module in hf.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in gguf_name or name == "lm_head":
            key = "output.weight" if name == "lm_head" else f"blk.{name.split('.')[2]}.{gguf_name[leaf]}.weight"

            def hook(_m, args, key=key):
                x = args[0].double().reshape(-1, args[0].shape[-1])
                s, n = theirs.get(key, (0, 0))
                theirs[key] = (s + (x * x).sum(0), n + x.shape[0])
            handles.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for i in range(plan.n_chunks):
            hf(torch.tensor([plan.chunk(tokens, i)]))
    assert set(ours) == set(theirs)  # every blk product, and the (untied) head with process_output
    for name, (sums, count) in ours.items():
        want, n = theirs[name]
        assert count == n == plan.n_chunks * plan.n_ctx
        assert np.allclose(sums, want.numpy(), rtol=2e-5, atol=0), name


def test_fused_products_recorded_under_each_name():
    model = load_model(SAMPLE)
    names = dict((n[0], layer) for layer, n in linear_names(model) if len(n) == 1)
    fused = [n for _, n in linear_names(model) if len(n) > 1]
    assert ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"] in fused
    assert ["blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"] in fused
    assert "output.weight" in names  # the sample's head is untied (SmolLM2's is tied: token_embd)
    tokens, plan = sample_plan(SAMPLE, 32, 2)
    stats = collect(model, tokens, plan)
    assert np.array_equal(stats["blk.1.attn_q.weight"][0], stats["blk.1.attn_v.weight"][0])
    assert np.array_equal(stats["blk.1.ffn_gate.weight"][0], stats["blk.1.ffn_up.weight"][0])
    assert not np.array_equal(stats["blk.1.attn_q.weight"][0], stats["blk.1.ffn_up.weight"][0])
    assert "output.weight" not in stats  # only with process_output


def test_products_under_16_tokens_are_skipped():
    tokens, plan = sample_plan(SAMPLE, 8, 4)
    model = load_model(SAMPLE)
    assert collect(model, tokens, plan, chunks_per_pass=1) == {}  # 8 rows per product
    assert len(collect(model, tokens, plan, chunks_per_pass=2)) > 0  # 16 rows


def test_collection_leaves_no_hook_behind():
    model = load_model(SAMPLE)
    tokens, plan = sample_plan(SAMPLE, 32, 2)
    collect(model, tokens, plan)
    assert all(not layer._forward_pre_hooks for layer, _ in linear_names(model))


# ---------------------------------------------------------------- the command
def test_cli_writes_gguf_and_dat(capsys, tmp_path, text_file):
    out = tmp_path / "imatrix.gguf"
    code, stdout, _ = run(capsys, "imatrix", str(SAMPLE), "--text", str(text_file), "-o", str(out),
                          "--ctx", "64", "--chunks", "3", "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["chunks"] == 3 and summary["chunk_count"] == 3 and summary["tokens"] == 192
    m = read_imatrix(out)
    assert m.chunk_size == 64 and m.chunk_count == 3 and m.datasets == [str(text_file)]
    assert all(name.startswith("blk.") for name in m.names()) and len(m.names()) == summary["tensors"]
    assert all(int(c[0]) == 192 for c in m.counts.values())
    reader = gguf.GGUFReader(out)  # gguf-py reads it as well
    assert reader.fields["general.type"].contents() == "imatrix"

    dat = tmp_path / "imatrix.dat"
    code, _, _ = run(capsys, "imatrix", str(SAMPLE), "--text", str(text_file), "-o", str(dat),
                     "--ctx", "64", "--chunks", "3", "--output-format", "dat", "--quiet")
    assert code == 0
    legacy = read_imatrix(dat)
    assert legacy.legacy and legacy.chunk_count == 3
    a, b = load_importance(out), load_importance(dat)
    assert set(a) == set(b) and all(np.allclose(a[n], b[n], rtol=1e-6) for n in a)

    # what `convkit quantize --imatrix` takes: the matrix changes the bytes
    q = {}
    for label, extra in (("with", ["--imatrix", str(out)]), ("without", [])):
        q[label] = tmp_path / f"{label}.gguf"
        code, _, err = run(capsys, "quantize", str(SAMPLE), "--type", "q4_0", "-o", str(q[label]), "--quiet", *extra)
        assert code == 0, err
    assert q["with"].read_bytes() != q["without"].read_bytes()


def test_cli_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, text_file):
    out = tmp_path / "m.gguf"
    short = tmp_path / "short.txt"
    short.write_text("def f(): pass\n" * 5)
    code, _, err = run(capsys, "imatrix", str(SAMPLE), "--text", str(short), "-o", str(out))
    assert_one_line_error(code, err, "short.txt", "--ctx")
    code, _, err = run(capsys, "imatrix", str(SAMPLE), "--text", str(tmp_path / "none.txt"), "-o", str(out))
    assert_one_line_error(code, err, "none.txt")
    code, _, err = run(capsys, "imatrix", str(tmp_path / "nomodel"), "--text", str(text_file), "-o", str(out))
    assert_one_line_error(code, err, "nomodel")
    code, _, err = run(capsys, "imatrix", str(SAMPLE), "--text", str(text_file), "-o", str(out), "--ctx", "100000")
    assert_one_line_error(code, err, "--ctx")
    code, _, err = run(capsys, "imatrix", str(SAMPLE), "--text", str(text_file), "-o", str(tmp_path / "x" / "m.gguf"),
                       "--ctx", "64", "--chunks", "2")
    assert_one_line_error(code, err, "does not exist")
    assert list(tmp_path.iterdir()) == [short]


# ---------------------------------------------------------------- against llama.cpp
CTX, CHUNKS = 128, 4


@pytest.fixture(scope="module")
def smollm2_plan():
    tok = load_tokenizer(smollm2_gguf())
    tokens = tokenize_for_perplexity(tok, python_docs_text()[:40000])
    return tokens, plan_chunks(len(tokens), CTX, CHUNKS, tok.bos_id if tok.add_bos else None)


@pytest.fixture(scope="module")
def f32_pair(tmp_path_factory, smollm2_plan):
    """SmolLM2's float32 checkpoint: (HF directory, the same as an F32 GGUF, llama.cpp's statistics)."""
    from llama_imatrix import llama_imatrix
    from smollm2_fixture import smollm2_checkpoint

    ckpt = smollm2_checkpoint()
    f32 = tmp_path_factory.mktemp("f32") / "smollm2-f32.gguf"
    with pytest.raises(SystemExit) as done:
        main(["convert", str(ckpt), "--outtype", "f32", "-o", str(f32), "--quiet"])
    assert done.value.code == 0
    tokens, plan = smollm2_plan
    return ckpt, f32, llama_imatrix(f32, tokens, plan)


def relative_errors(ours, theirs):
    """{name: (max, median) relative error of the sums}, after checking names and counts."""
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)
    out = {}
    for name, (want, count) in theirs.items():
        got, n = ours[name]
        assert n == count == CTX * CHUNKS, name
        rel = np.abs(got.astype(np.float64) - want) / np.abs(want)
        out[name] = (float(rel.max()), float(np.median(rel)))
    return out


def test_f32_checkpoint_equals_llama_cpp(f32_pair, smollm2_plan):
    """Our runtime on the HF float32 checkpoint, llama.cpp on the same weights as F32 GGUF.

    Not 1e-4 everywhere: llama.cpp keeps K and V in fp16 and rounds the attention
    probabilities to fp16; a score that differs from ours by float32 rounding (another
    GEMM order) lands on the other side of an fp16 rounding now and then, and that
    difference travels down the layers. Measured with 4 chunks of 128 (AMD EPYC, AVX-512):
    `--numerics ggml` (fp16 cache as llama.cpp) max 4.1e-3 (blk.26.ffn_down), worst
    per-tensor median 3.2e-4; layer 0: attn_q 2e-6, ffn_up 7e-6, ffn_down 6.5e-5;
    `--numerics fp` max 4.7e-3, worst median 3.2e-4, layer 0 attn_output 5.5e-4."""
    ckpt, _, theirs = f32_pair
    tokens, plan = smollm2_plan
    model = load_model(ckpt, dequantize_all=True, numerics="ggml")
    ggml = relative_errors(collect(model, tokens, plan), theirs)
    model.set_numerics(FloatNumerics())
    fp = relative_errors(collect(model, tokens, plan), theirs)
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"):  # before any fp16
        assert ggml[name][0] < 1e-5 and fp[name][0] < 1e-5, name
    assert max(m for m, _ in ggml.values()) < 2e-2
    assert max(med for _, med in ggml.values()) < 1e-3
    assert all(ggml[n][0] < 2e-4 for n in ggml if n.startswith("blk.0."))
    # the fp16 cache is what separates the two numerics in the first layer
    assert ggml["blk.0.attn_output.weight"][0] * 5 < fp["blk.0.attn_output.weight"][0]


def test_q4_1_gguf_against_llama_cpp(smollm2_plan):
    """SmolLM2's own Q4_1 file. llama.cpp quantizes each product's activations to Q8_1
    first; a value that rounds to the other Q8 step moves that product's output by a
    quantization step, so the inputs of later layers part ways quickly (see
    test_numerics_ggml). Measured (4 chunks of 128, AMD EPYC): `--numerics ggml` worst
    per-tensor median 1.0e-2, median of medians 2.8e-3; `--numerics fp` 3.0e-2 and 4.2e-3.
    Equal names and counts; layer 0's first input equal to float32 rounding."""
    from llama_imatrix import llama_imatrix

    tokens, plan = smollm2_plan
    theirs = llama_imatrix(smollm2_gguf(), tokens, plan)
    model = load_model(smollm2_gguf(), dequantize_all=True, numerics="ggml")
    ggml = relative_errors(collect(model, tokens, plan), theirs)
    model.set_numerics(FloatNumerics())
    fp = relative_errors(collect(model, tokens, plan), theirs)
    assert ggml["blk.0.attn_q.weight"][0] < 1e-5
    assert max(med for _, med in ggml.values()) < 3e-2
    assert np.median([med for _, med in ggml.values()]) < np.median([med for _, med in fp.values()])


def test_quantized_with_our_matrix_equals_llama_cpp_matrix(tmp_path, f32_pair, smollm2_plan):
    """Q4_K_M of SmolLM2 with our matrix and with llama.cpp's: identical bytes on most rows.

    Not the 99% one would like, and not reachable this way: the quantizers' scale searches
    (make_qx_quants, make_qkx3_quants) meet near-ties that a change in the last bit of an
    importance value decides. Measured (4 chunks of 128, AMD EPYC): ours 96.54% of rows
    (Q4_K 96.3%, Q5_0 96.9%, Q6_K 89.9%, Q8_0 100%); llama.cpp's own matrix with every sum
    moved by a random 1e-6 relative (float32 summation-order noise) gives 97.63%, by 1e-4
    96.19%. So our matrix quantizes as llama.cpp's would up to rounding-level noise."""
    ckpt, _, theirs = f32_pair
    tokens, plan = smollm2_plan
    ours = collect(load_model(ckpt, dequantize_all=True, numerics="ggml"), tokens, plan)
    files = {}
    for label, stats in (("ours", ours), ("theirs", theirs)):
        matrix = tmp_path / f"{label}.imatrix.gguf"
        write_imatrix(matrix, from_statistics({n: (s, [c]) for n, (s, c) in stats.items()}, ["t"], CHUNKS, CTX))
        files[label] = tmp_path / f"{label}.gguf"
        with pytest.raises(SystemExit) as done:
            main(["quantize", str(ckpt), "--type", "q4_k_m", "--imatrix", str(matrix), "-o", str(files[label]),
                  "--threads", "2", "--quiet"])
        assert done.value.code == 0
    a, b = (gguf.GGUFReader(files[k]) for k in ("ours", "theirs"))
    same = total = 0
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.name == tb.name and ta.tensor_type == tb.tensor_type
        if ta.name not in theirs:
            continue
        rows = int(np.prod(ta.shape[1:]))
        ra, rb = np.asarray(ta.data).reshape(rows, -1), np.asarray(tb.data).reshape(rows, -1)
        same += int((ra == rb).all(axis=1).sum())
        total += rows
    print(f"identical rows: {same}/{total} = {same / total:.4%}")
    assert same / total >= 0.95
