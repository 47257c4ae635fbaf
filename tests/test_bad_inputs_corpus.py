"""Minimized inputs that once crashed convkit or made it write a wrong file (issue 17).

Each case is one small change to the sample model (or to a GGUF made from it) and the
command that failed on it; each must now be one line on stderr naming the problem, exit
code 2, no traceback, and no output file. Cases found by the fuzzer (tests/test_fuzz.py,
benchmarks/fuzz_campaign.py) are added here once minimized.
"""
import json
import os
import signal
import struct
import subprocess
import sys

import pytest

import fuzzing
from convkit.atomic import PART_SUFFIX, atomic_path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return fuzzing.Inputs(tmp_path_factory.mktemp("corpus"))


def _gguf_patch(inputs, patch):
    data = bytearray(inputs.gguf)
    patch(data, inputs.gguf_map)
    return {"model.gguf": bytes(data)}


def _tensor_dims(m, name):
    return m.ti[name]["dims"]


def _put(data, at, fmt, value):
    data[at:at + struct.calcsize(fmt)] = struct.pack(fmt, value)


def _swap_attn_k(data, m):
    a, b = _tensor_dims(m, "blk.0.attn_k.weight")
    data[a:a + 8], data[b:b + 8] = data[b:b + 8], data[a:a + 8]


def _same_offset(data, m):
    first = struct.unpack_from("<Q", data, m.ti["blk.0.attn_q.weight"]["offset"])[0]
    _put(data, m.ti["blk.0.attn_k.weight"]["offset"], "<Q", first)


def _not_utf8(data, m):
    _, start, _ = m.kv["general.architecture"]
    data[start + 8:start + 13] = bytes.fromhex("fffefdfcfb")


def _st_header(inputs, change, length_delta=0):
    header = json.loads(json.dumps(inputs.st_header))
    change(header)
    return {"model.safetensors": inputs.st_bytes(header, length_delta)}


def _tokenizer(inputs, change):
    doc = json.loads(inputs.files["tokenizer.json"])
    change(doc)
    return {"tokenizer.json": json.dumps(doc).encode()}


def _first_tensor(h):
    return sorted(k for k in h if k != "__metadata__")[0]


def _set_vocab_id(doc, value):
    doc["model"]["vocab"]["a"] = value


CASES = {
    # GGUF
    "gguf-architecture-not-utf8": (lambda i: _gguf_patch(i, _not_utf8), ["inspect", "quantize", "perplexity"],
                                   "not UTF-8"),
    "gguf-dimension-zero": (lambda i: _gguf_patch(i, lambda d, m: _put(d, _tensor_dims(m, "output_norm.weight")[0],
                                                                       "<Q", 0)),
                            ["inspect", "quantize", "perplexity"], "dimension of 0"),
    "gguf-attn-k-dims-swapped": (lambda i: _gguf_patch(i, _swap_attn_k), ["quantize", "perplexity"],
                                 "blk.0.attn_k.weight has shape"),
    "gguf-offset-wraps-around": (lambda i: _gguf_patch(i, lambda d, m: _put(d, m.ti["output_norm.weight"]["offset"],
                                                                            "<Q", 2**64 - 32)),
                                 ["inspect", "quantize", "perplexity"], "outside"),
    "gguf-two-tensors-one-offset": (lambda i: _gguf_patch(i, _same_offset), ["inspect", "quantize", "perplexity"],
                                    "overlap"),
    "gguf-offset-misaligned": (lambda i: _gguf_patch(i, lambda d, m: _put(
        d, m.ti["output_norm.weight"]["offset"], "<Q", struct.unpack_from("<Q", d, m.ti["output_norm.weight"]["offset"])[0] + 2)),
        ["inspect", "quantize"], "alignment"),
    "gguf-unknown-tensor-type": (lambda i: _gguf_patch(i, lambda d, m: _put(d, m.ti["output_norm.weight"]["type"],
                                                                            "<I", 99)),
                                 ["inspect", "quantize"], "unknown type"),
    "gguf-block-count-beyond-layers": (lambda i: _gguf_patch(i, lambda d, m: _put(d, m.kv["llama.block_count"][1],
                                                                                  "<I", 2**31 - 1)),
                                       ["quantize", "perplexity"], "block_count"),
    "gguf-token-id-beyond-vocab": (lambda i: _gguf_patch(i, lambda d, m: _put(
        d, m.kv["tokenizer.ggml.bos_token_id"][1], "<I", 10**6)), ["quantize", "perplexity"], "bos_token_id"),
    "gguf-head-count-3": (lambda i: _gguf_patch(i, lambda d, m: _put(d, m.kv["llama.attention.head_count"][1],
                                                                     "<I", 3)), ["quantize", "perplexity"],
                          "head_count"),
    # safetensors
    "st-empty-header": (lambda i: {"model.safetensors": i.st_bytes({})}, ["quantize", "perplexity"], "cover"),
    "st-one-tensor-missing": (lambda i: _st_header(i, lambda h: h.pop("model.norm.weight")),
                              ["quantize", "perplexity"], "the header and the data disagree"),
    "st-header-length-one-short": (lambda i: {"model.safetensors": i.st_bytes(
        i.st_header, -1, raw=json.dumps(i.st_header).encode() + b" ")}, ["inspect", "quantize", "perplexity"],
        "cover"),
    "st-dtype-list": (lambda i: _st_header(i, lambda h: h[_first_tensor(h)].update(dtype=["BF16"])),
                      ["inspect", "quantize", "perplexity"], "dtype"),
    "st-dtype-f8": (lambda i: _st_header(i, lambda h: h[_first_tensor(h)].update(dtype="F8_E4M3")),
                    ["perplexity"], "does not know"),
    "st-truncated": (lambda i: {"model.safetensors": i.files["model.safetensors"][:-1000]}, ["perplexity"],
                     "outside the file"),
    "st-huge-header": (lambda i: {"model.safetensors": struct.pack("<Q", 2**62) + i.files["model.safetensors"][8:]},
                       ["perplexity"], "absurd"),
    "st-nan-weight": (lambda i: {"model.safetensors": (lambda b: b[:-2] + struct.pack("<H", 0x7FC0))(
        i.files["model.safetensors"])}, ["quantize"], "NaN"),
    # tokenizer.json
    "tok-vocab-id-string": (lambda i: _tokenizer(i, lambda d: _set_vocab_id(d, "5")), ["encode", "quantize", "perplexity"],
                            "integer ids"),
    "tok-vocab-id-negative": (lambda i: _tokenizer(i, lambda d: _set_vocab_id(d, -1)), ["encode", "quantize", "perplexity"],
                              "integer ids >= 0"),
    "tok-model-list": (lambda i: _tokenizer(i, lambda d: d.update(model=[d["model"]])), ["encode", "quantize", "perplexity"],
                       "not a tokenizer"),
    "tok-added-token-without-content": (lambda i: _tokenizer(i, lambda d: d.update(added_tokens=[{"id": 5}])),
                                        ["encode", "quantize", "perplexity"], "content"),
    "tok-added-tokens-string": (lambda i: _tokenizer(i, lambda d: d.update(added_tokens="<|endoftext|>")),
                                ["encode", "quantize", "perplexity"], "added_tokens must be a list"),
    "tok-added-token-id-1e9": (lambda i: _tokenizer(i, lambda d: d.update(added_tokens=[
        {"id": 10**9, "content": "<x>", "special": True}])), ["encode", "quantize", "perplexity"], "outside 0.."),
    "tok-post-processor-bos-beyond-vocab": (lambda i: _tokenizer(i, lambda d: d.update(post_processor={
        "type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "x"}}],
        "special_tokens": {"x": {"ids": [10**9]}}})), ["perplexity"], "outside the vocabulary"),
    "tok-added-token-beyond-embedding": (lambda i: _tokenizer(i, lambda d: d.update(added_tokens=[
        {"id": 4096, "content": "<x>", "special": True}])), ["quantize"], "beyond the model's vocabulary"),
    "vocab-txt-binary": (lambda i: {"vocab.txt": bytes(range(256))}, ["encode"], "binary"),
}

# config.json: the converter and runtime read it with plain lookups until the typed reader lands
CONFIG_CASES = {
    "config-head-dim-list": ({"head_dim": [256]}, ["quantize", "perplexity"]),
    "config-heads-empty-string": ({"num_attention_heads": ""}, ["quantize", "perplexity"]),
    "config-max-positions-negative": ({"max_position_embeddings": -1}, ["quantize", "perplexity"]),
    "config-eps-1e300": ({"rms_norm_eps": 1e300}, ["quantize", "perplexity"]),
    "config-rope-linear-without-factor": ({"rope_scaling": {"type": "linear"}}, ["quantize", "perplexity"]),
    "config-bos-object": ({"bos_token_id": {}}, ["quantize", "perplexity"]),
    "config-binary": (b"\xff\xfe\xfd binary", ["quantize", "perplexity"]),
    "config-layers-2-63": ({"num_hidden_layers": 2**63}, ["quantize", "perplexity"]),
    "config-layers-negative": ({"num_hidden_layers": -256}, ["quantize", "perplexity"]),
    "config-heads-3": ({"num_attention_heads": 3}, ["quantize", "perplexity"]),
    "config-head-dim-negative": ({"head_dim": -1}, ["quantize", "perplexity"]),
}
# which of them still fail on this branch, and how
def _run_case(inputs, tmp_path, files, commands, needle=None):
    """Problems of each command."""
    mutation = fuzzing.Mutation("corpus", files, commands)
    paths = fuzzing.materialize(inputs, mutation, tmp_path / "run")
    problems = []
    for command in commands:
        outdir = tmp_path / f"out-{command}"
        outdir.mkdir()
        out = outdir / "out.gguf"
        code, stderr, warned = fuzzing.run_cli(fuzzing.command_args(command, mutation, paths, out, inputs.text),
                                               max_seconds=60)
        line = stderr.strip()
        if code != 2 or not line.startswith("convkit: error:") or "\n" in line or warned \
                or (needle and needle not in line) or list(outdir.iterdir()):
            problems.append(f"{command}: exit {code!r}, stderr {line[:300]!r}, warnings {warned[:2]}, "
                            f"left {[p.name for p in outdir.iterdir()]}")
    return problems


@pytest.mark.parametrize("case", sorted(CASES))
def test_corpus(inputs, tmp_path, case):
    make, commands, needle = CASES[case]
    problems = _run_case(inputs, tmp_path, make(inputs), commands, needle)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_corpus(inputs, tmp_path, case):
    change, commands = CONFIG_CASES[case]
    if isinstance(change, bytes):
        data = change
    else:
        doc = json.loads(inputs.files["config.json"])
        doc.update(change)
        data = json.dumps(doc).encode()
    problems = _run_case(inputs, tmp_path, {"config.json": data}, commands)
    assert not problems, "\n".join(problems)


def test_tokenizer_and_model_vocab_disagree(inputs, tmp_path):
    """A tokenizer with more ids than the model's embedding rows would index past them."""
    doc = json.loads(inputs.files["tokenizer.json"])
    doc["added_tokens"] = doc.get("added_tokens", []) + [{"id": 4096, "content": "<extra>", "special": True}]
    problems = _run_case(inputs, tmp_path, {"tokenizer.json": json.dumps(doc).encode()}, ["perplexity"],
                         "the model's vocabulary holds 4096")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ signals
WRITER = """
import sys, time
from convkit.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    open(tmp, "w").write("partial")
    print(tmp, flush=True)
    time.sleep(60)
"""


def _writer(target):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                            cwd=fuzzing.ROOT, env={**os.environ, "PYTHONPATH": str(fuzzing.ROOT)})
    part = proc.stdout.readline().strip()
    assert part and os.path.exists(part), "the writer did not start"
    return proc, part


def test_sigterm_removes_the_temporary_file(tmp_path):
    target = tmp_path / "out.gguf"
    proc, part = _writer(target)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not os.path.exists(part) and not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_stale_part_from_sigkill_is_removed_by_the_next_run(tmp_path):
    target = tmp_path / "out.gguf"
    proc, part = _writer(target)
    proc.kill()
    proc.wait(timeout=60)
    assert os.path.exists(part) and part.endswith(PART_SUFFIX) and not target.exists()
    assert os.path.basename(part).startswith(".out.gguf.")  # hidden, named after its target: never output
    with atomic_path(target) as tmp:
        assert not os.path.exists(part)
        tmp.write_text("complete")
    assert target.read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


def test_previous_sigterm_handler_is_restored(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with atomic_path(tmp_path / "x") as tmp:
        tmp.write_text("x")
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
