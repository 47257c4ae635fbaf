"""File-type mixes against llama.cpp: the type of every tensor equals what llama_model_quantize writes.

The oracle runs llama.cpp's own quantizer (llama-cpp-python 0.3.36) on the real SmolLM2 model
and on small synthetic GGUFs that exercise rules SmolLM2 does not reach (70B attn_v, GQA >= 4,
experts, falcon, tensors that are never quantized, odd row lengths), then reads the types it
wrote back with gguf.GGUFReader.
"""
import ctypes
import re

import gguf
import numpy as np
import pytest

from quant.errors import QuantError
from quant.mixes import (FileType, QuantType, allows_quantization, fallback_type,
                         parse_file_type, parse_tensor_type_option, parse_type_name,
                         plan_types, use_more_bits, MIXES)
from quant.types import FILE_TYPES
from realdata import smollm2_gguf

# every file type whose mix rules quant.mixes carries (whether or not all its types are written yet)
ALL_FILE_TYPES = [info.ftype for info in FILE_TYPES if info.ftype in MIXES]


# ---------------------------------------------------------------- the llama.cpp oracle

_log_sink = None          # the list llama.cpp's log lines go to while a dry run is read
_log_callback = None


def _quiet_llama():
    global _log_callback
    import llama_cpp

    if _log_callback is None:
        def collect(level, text, user):
            if _log_sink is not None:
                _log_sink.append(text.decode("utf-8", "replace"))

        _log_callback = llama_cpp.llama_log_callback(collect)
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p())
        llama_cpp.llama_backend_init()
    return llama_cpp


# one line per tensor in llama_model_quantize_impl's main loop (dry run):
# "[  12/ 272] blk.0.attn_v.weight  - [  576,   192,     1,     1], type =   q4_1, size = ... (q6_K)"
_DRY_RUN_LINE = re.compile(r"\[\s*\d+/\s*\d+\] (\S+)\s+- \[[^\]]*\], type =\s*(\S+), size =[^\n(]*(?:\((\S+)\))?\n")


def llama_quantize(src, dst, ftype, *, tensor_types=(), output_type=None, token_embedding_type=None,
                   pure=False, quantize_output=True, imatrix=None, dry_run=False):
    """Run llama_model_quantize; return {tensor name: ggml type id} of what it chose.

    With dry_run, llama.cpp computes the same per-tensor types but writes no file; they are
    read from the line it logs for each tensor (test_dry_run_log_equals_written_file checks
    that this reading equals the written file)."""
    global _log_sink
    llama_cpp = _quiet_llama()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = 2
    params.allow_requantize = True
    params.pure = pure
    params.quantize_output_tensor = quantize_output
    params.dry_run = dry_run
    keep = []
    if output_type is not None:
        params.output_tensor_type = int(output_type)
    if token_embedding_type is not None:
        params.token_embedding_type = int(token_embedding_type)
    if tensor_types:
        arr = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
        for slot, (pattern, qtype) in zip(arr, tensor_types):
            slot.pattern = pattern.encode()
            slot.type = int(qtype)
        arr[len(tensor_types)].pattern = None
        params.tt_overrides = arr
        keep.append(arr)
    if imatrix is not None:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for slot, (name, values) in zip(arr, imatrix.items()):
            values = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(values)
            slot.name = name.encode()
            slot.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            slot.size = values.size
        arr[len(imatrix)].name = None
        params.imatrix = arr
        keep.append(arr)
    _log_sink = [] if dry_run else None
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
        log = "".join(_log_sink or [])
    finally:
        _log_sink = None
    assert rc == 0, f"llama_model_quantize failed for ftype {ftype}"
    if dry_run:
        lines = _DRY_RUN_LINE.findall(log)
        assert lines, "llama.cpp logged no tensor lines in its dry run"
        return {name: int(gguf.GGMLQuantizationType[(new or old).upper()]) for name, old, new in lines}
    reader = gguf.GGUFReader(dst)
    types = {t.name: int(t.tensor_type) for t in reader.tensors}
    assert int(reader.fields["general.file_type"].contents()) == int(ftype)
    del reader
    dst.unlink()
    return types


def model_description(path):
    """Tensor (name, numpy shape, type) and hyperparameters, read from a GGUF."""
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()

    def key(name, default=None):
        field = reader.fields.get(f"{arch}.{name}")
        return default if field is None else field.contents()

    tensors = [(t.name, tuple(int(d) for d in reversed(t.shape)), int(t.tensor_type))
               for t in reader.tensors]
    hparams = dict(arch=arch, n_layer=int(key("block_count")),
                   n_head=int(key("attention.head_count")),
                   n_head_kv=int(key("attention.head_count_kv", key("attention.head_count"))),
                   n_expert=int(key("expert_count", 0)))
    return tensors, hparams


# file types llama.cpp refuses to write without an importance matrix (tensor_requires_imatrix),
# on some model at least: the oracle and ours are both given one for them
NEEDS_IMATRIX = {FileType.MOSTLY_Q2_K_S, FileType.MOSTLY_IQ3_XXS, FileType.MOSTLY_IQ3_XS,
                 FileType.MOSTLY_IQ2_XXS, FileType.MOSTLY_IQ2_XS, FileType.MOSTLY_IQ2_S,
                 FileType.MOSTLY_IQ2_M, FileType.MOSTLY_IQ1_S, FileType.MOSTLY_IQ1_M}


def ones_imatrix(tensors):
    """A neutral importance matrix: one entry per column (times the experts of a 3-D tensor)."""
    return {name: np.ones(shape[-1] * (shape[-3] if len(shape) == 3 else 1), np.float32)
            for name, shape, _ in tensors if allows_quantization(name, shape)}


def ours(tensors, hparams, ftype, **kw):
    if ftype in NEEDS_IMATRIX:
        kw.setdefault("has_imatrix", True)
    return {name: int(t) for name, t in plan_types(tensors, ftype, **hparams, **kw).items()}


def describe_diff(expected, got):
    bad = [f"{n}: llama.cpp {QuantType(expected[n]).name}, ours {QuantType(got[n]).name}"
           for n in expected if expected[n] != got.get(n)]
    return "\n".join(bad[:20])


# ---------------------------------------------------------------- SmolLM2, every file type

@pytest.fixture(scope="module")
def smollm2():
    return smollm2_gguf(), *model_description(smollm2_gguf())


# file types whose block no SmolLM2 row length holds and which llama.cpp has no fallback
# for: llama_model_quantize refuses them there (tested below), and so does plan_types
NO_FALLBACK = {f for f in ALL_FILE_TYPES if f.name == "MOSTLY_Q1_0"}
WITH_FALLBACK = [f for f in ALL_FILE_TYPES if f not in NO_FALLBACK]


@pytest.fixture(scope="module")
def smollm2_oracle(smollm2, tmp_path_factory):
    src, tensors, _ = smollm2
    out = tmp_path_factory.mktemp("mixes") / "out.gguf"
    return {ftype: llama_quantize(src, out, ftype, dry_run=True,
                                  imatrix=ones_imatrix(tensors) if ftype in NEEDS_IMATRIX else None)
            for ftype in WITH_FALLBACK}


@pytest.mark.parametrize("ftype", sorted(NO_FALLBACK), ids=lambda f: f.name)
def test_types_without_fallback_are_refused_like_llama_quantize(smollm2, tmp_path, ftype):
    """SmolLM2's 576-wide rows hold no 128-value block; llama.cpp throws, so do we. On a model
    whose rows all hold the block, the types equal llama_model_quantize's."""
    src, tensors, hparams = smollm2
    with pytest.raises(AssertionError, match="llama_model_quantize failed"):
        llama_quantize(src, tmp_path / "out.gguf", ftype, dry_run=True)
    with pytest.raises(QuantError, match="no fallback"):
        plan_types(tensors, ftype, **hparams)
    path = tmp_path / "wide.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    for key, value in (("block_count", 4), ("context_length", 64), ("embedding_length", 256),
                       ("feed_forward_length", 512), ("head_count", 4), ("head_count_kv", 1)):
        getattr(writer, f"add_{key}")(value)
    writer.add_layer_norm_rms_eps(1e-5)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (8, 256), "output_norm.weight": (256,), "output.weight": (8, 256)}
    for i in range(4):
        shapes.update({f"blk.{i}.attn_norm.weight": (256,), f"blk.{i}.attn_q.weight": (2, 256),
                       f"blk.{i}.attn_k.weight": (2, 256), f"blk.{i}.attn_v.weight": (2, 256),
                       f"blk.{i}.attn_output.weight": (2, 256), f"blk.{i}.ffn_norm.weight": (256,),
                       f"blk.{i}.ffn_gate.weight": (2, 256), f"blk.{i}.ffn_up.weight": (2, 256),
                       f"blk.{i}.ffn_down.weight": (2, 512)})
    for name, shape in shapes.items():
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    wide, wide_hparams = model_description(path)
    expected = llama_quantize(path, tmp_path / "out.gguf", ftype)
    got = ours(wide, wide_hparams, ftype)
    assert got == expected, describe_diff(expected, got)
    assert expected["blk.0.attn_q.weight"] == int(default_of(ftype))


def default_of(ftype):
    """The file type's default tensor type, from quant's table."""
    from quant.types import FILE_TYPE_BY_ID
    return FILE_TYPE_BY_ID[ftype].default


@pytest.mark.parametrize("ftype", WITH_FALLBACK, ids=lambda f: f.name)
def test_smollm2_types_match_llama_quantize(smollm2, smollm2_oracle, ftype):
    _, tensors, hparams = smollm2
    expected = smollm2_oracle[ftype]
    got = ours(tensors, hparams, ftype)
    assert got.keys() == expected.keys()
    assert got == expected, describe_diff(expected, got)


@pytest.mark.parametrize("ftype", [FileType.MOSTLY_IQ3_XXS, FileType.MOSTLY_IQ4_XS, FileType.MOSTLY_IQ4_NL],
                         ids=lambda f: f.name)
def test_smollm2_types_without_imatrix_match_llama_quantize(smollm2, tmp_path, ftype):
    """Mixes whose rules read whether an importance matrix is given (IQ3_XXS: attn_v and
    ffn_down), here without one: on SmolLM2 every tensor that would need one falls back."""
    src, tensors, hparams = smollm2
    expected = llama_quantize(src, tmp_path / "out.gguf", ftype, dry_run=True)
    got = {name: int(t) for name, t in plan_types(tensors, ftype, **hparams).items()}
    assert got == expected, describe_diff(expected, got)


@pytest.mark.parametrize("ftype", [FileType.MOSTLY_Q4_K_M, FileType.MOSTLY_Q3_K_M, FileType.MOSTLY_Q8_0],
                         ids=lambda f: f.name)
def test_dry_run_log_equals_written_file(smollm2, smollm2_oracle, tmp_path, ftype):
    """The dry run's per-tensor types are those a real run writes into the GGUF."""
    written = llama_quantize(smollm2[0], tmp_path / "out.gguf", ftype)
    assert written == smollm2_oracle[ftype]


def test_smollm2_q4_k_m_uses_the_documented_rules(smollm2, smollm2_oracle):
    """Spot checks that the oracle itself says what REFERENCE.md section 3 says."""
    expected = smollm2_oracle[FileType.MOSTLY_Q4_K_M]
    assert expected["token_embd.weight"] == QuantType.Q8_0          # tied, 576 wide
    assert expected["blk.0.attn_norm.weight"] == QuantType.F32
    assert expected["blk.0.ffn_down.weight"] == QuantType.Q6_K      # use_more_bits(0, 30)
    assert expected["blk.4.ffn_down.weight"] == QuantType.Q4_K      # 1536 wide, no fallback
    assert expected["blk.0.attn_v.weight"] == QuantType.Q8_0        # Q6_K falls back
    assert expected["blk.4.attn_q.weight"] == QuantType.Q5_0        # Q4_K falls back


# ---------------------------------------------------------------- SmolLM2 with user overrides

OVERRIDE_CASES = {
    # attn_v of layers 0-4 taken by hand: llama.cpp's attn_v counter then skips them
    "tensor-type-shifts-counters": dict(
        ftype=FileType.MOSTLY_Q4_K_M,
        tensor_types=[r"blk\.[0-4]\.attn_v=q5_1", r"ffn_down=q2_k", r"blk\.1[0-9]\.ffn_up=q6_k"],
        token_embedding_type="q5_0"),
    "output-type-on-tied-embeddings": dict(
        ftype=FileType.MOSTLY_Q5_K_M, tensor_types=["attn_q=Q4_K"], output_type="q4_0"),
    "regex-anchors-and-alternation": dict(
        ftype=FileType.MOSTLY_Q5_K_S,
        tensor_types=[r"^blk\.(0|29)\.ffn_(up|gate)=q8_0", r"attn_(k|v)\.weight$=q4_1",
                      r"blk\.2.\.ffn_down=Q3_K"]),
    "pure": dict(ftype=FileType.MOSTLY_Q3_K_S, pure=True, tensor_types=["attn_k=q8_0"]),
    "unquantized-default-ignores-patterns": dict(
        ftype=FileType.MOSTLY_F16, tensor_types=["attn_q=q8_0"], token_embedding_type="bf16"),
}


@pytest.mark.parametrize("case", OVERRIDE_CASES, ids=str)
def test_smollm2_overrides_match_llama_quantize(smollm2, tmp_path, case):
    src, tensors, hparams = smollm2
    spec = dict(OVERRIDE_CASES[case])
    ftype = spec.pop("ftype")
    options = [parse_tensor_type_option(text) for text in spec.get("tensor_types", [])]
    expected = llama_quantize(
        src, tmp_path / "out.gguf", ftype, tensor_types=options,
        output_type=spec.get("output_type") and parse_type_name(spec["output_type"]),
        token_embedding_type=spec.get("token_embedding_type") and parse_type_name(spec["token_embedding_type"]),
        pure=spec.get("pure", False), dry_run=True)
    got = ours(tensors, hparams, ftype, **spec)
    assert got == expected, describe_diff(expected, got)


def test_smollm2_imatrix_changes_q4_0_ffn_down(smollm2, tmp_path):
    """With an importance matrix, Q4_0 sends the first eighth of ffn_down to Q4_1."""
    src, tensors, hparams = smollm2
    imatrix = ones_imatrix(tensors)
    expected = llama_quantize(src, tmp_path / "out.gguf", FileType.MOSTLY_Q4_0, imatrix=imatrix,
                              dry_run=True)
    got = ours(tensors, hparams, FileType.MOSTLY_Q4_0, has_imatrix=True)
    assert got == expected, describe_diff(expected, got)
    assert got["blk.2.ffn_down.weight"] == QuantType.Q4_1
    assert got["blk.3.ffn_down.weight"] == QuantType.Q4_0


# ---------------------------------------------------------------- synthetic models for the other rules

def _synthetic_gguf(path, *, arch, n_layer, n_head, n_head_kv, n_expert=0, extra_layer_tensors=()):
    """A tiny GGUF that llama.cpp's quantizer loads: real names, small row counts."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(n_layer)
    writer.add_context_length(64)
    writer.add_embedding_length(256)
    writer.add_feed_forward_length(512)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_layer_norm_eps(1e-5)
    if n_expert:
        writer.add_expert_count(n_expert)
        writer.add_expert_used_count(2)
    rng = np.random.default_rng(0)

    def add(name, shape):
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32))

    add("token_embd.weight", (4, 256))
    add("position_embd.weight", (4, 256))
    add("token_types.weight", (2, 256))
    add("output_norm.weight", (256,))
    add("output.weight", (4, 96))
    for i in range(n_layer):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", (256,))
        add(p + "attn_q.weight", (2, 256))
        add(p + "attn_k.weight", (2, 256))
        add(p + "attn_v.weight", (2, 256))
        add(p + "attn_output.weight", (2, 256))
        add(p + "attn_q.bias", (2, 256))            # 2-D but not a weight
        add(p + "ffn_gate.weight", (2, 256))
        add(p + "ffn_up.weight", (2, 96))           # falls back from K types
        add(p + "ffn_down.weight", (2, 512))
        add(p + "ffn_norm.weight", (256,))
        add(p + "ssm_conv1d.weight", (2, 256))
        add(p + "attn_x.weight", (1, 256))          # 1-D for ggml: trailing 1 dropped
        add(p + "attn_z.weight", (2, 40))           # 40 fits no block: F16
        for name, shape in extra_layer_tensors:
            add(p + name, shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


SYNTHETIC = {
    "llama-70b-gqa8": dict(arch="llama", n_layer=80, n_head=64, n_head_kv=8),
    "llama-moe8": dict(arch="llama", n_layer=8, n_head=8, n_head_kv=8, n_expert=8,
                       extra_layer_tensors=[("ffn_gate_inp.weight", (8, 256)),
                                            ("ffn_down_exps.weight", (8, 2, 512)),
                                            ("ffn_up_exps.weight", (8, 2, 256))]),
    "qwen2-mha": dict(arch="qwen2", n_layer=12, n_head=4, n_head_kv=4,
                      extra_layer_tensors=[("attn_qkv.weight", (2, 256))]),
    "falcon": dict(arch="falcon", n_layer=16, n_head=8, n_head_kv=1),
}


@pytest.fixture(scope="module")
def synthetic_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    models = {}
    for label, spec in SYNTHETIC.items():
        path = root / f"{label}.gguf"
        _synthetic_gguf(path, **spec)
        models[label] = path
    return models


@pytest.mark.parametrize("label", SYNTHETIC, ids=str)
def test_synthetic_models_match_llama_quantize(synthetic_models, tmp_path, label):
    src = synthetic_models[label]
    tensors, hparams = model_description(src)
    failures = []
    for ftype in WITH_FALLBACK:
        imatrix = ones_imatrix(tensors) if ftype in NEEDS_IMATRIX else None
        expected = llama_quantize(src, tmp_path / "out.gguf", ftype, imatrix=imatrix)
        got = ours(tensors, hparams, ftype)
        if got != expected:
            failures.append(f"{ftype.name}:\n{describe_diff(expected, got)}")
    assert not failures, "\n".join(failures)


def test_synthetic_overrides_on_untied_output(synthetic_models, tmp_path):
    src = synthetic_models["qwen2-mha"]
    tensors, hparams = model_description(src)
    for ftype, kw in [(FileType.MOSTLY_Q4_K_M, dict(output_type="q8_0", token_embedding_type="q6_k")),
                      (FileType.MOSTLY_Q3_K_M, dict(tensor_types=["output=q4_1", "token_embd=q5_k"])),
                      (FileType.MOSTLY_Q6_K, dict(quantize_output=False))]:
        options = [parse_tensor_type_option(t) for t in kw.get("tensor_types", [])]
        expected = llama_quantize(
            src, tmp_path / "out.gguf", ftype, tensor_types=options,
            output_type=kw.get("output_type") and parse_type_name(kw["output_type"]),
            token_embedding_type=kw.get("token_embedding_type") and parse_type_name(kw["token_embedding_type"]),
            quantize_output=kw.get("quantize_output", True))
        got = ours(tensors, hparams, ftype, **kw)
        assert got == expected, describe_diff(expected, got)


# ---------------------------------------------------------------- parsing and documented rules

def test_parse_file_type_accepts_llama_quantize_names():
    assert parse_file_type("q4_k_m") == FileType.MOSTLY_Q4_K_M
    assert parse_file_type("Q4_K") == FileType.MOSTLY_Q4_K_M
    assert parse_file_type("q3_k") == FileType.MOSTLY_Q3_K_M
    assert parse_file_type("Q5_K") == FileType.MOSTLY_Q5_K_M
    assert parse_file_type("f16") == FileType.MOSTLY_F16
    assert parse_file_type("F32") == FileType.ALL_F32
    assert parse_file_type("15") == FileType.MOSTLY_Q4_K_M
    assert parse_file_type(7) == FileType.MOSTLY_Q8_0
    assert parse_file_type("MOSTLY_Q6_K") == FileType.MOSTLY_Q6_K
    for bad in ("q4_k_x", "nvfp4", "99", ""):   # nvfp4: known to llama.cpp, not written here
        with pytest.raises(QuantError):
            parse_file_type(bad)


def test_file_type_ids_are_ggufs():
    for ftype in FileType:
        assert gguf.LlamaFileType[ftype.name] == ftype


def test_parse_tensor_type_option():
    assert parse_tensor_type_option("Attn_V=Q8_0") == ("attn_v", QuantType.Q8_0)
    assert parse_tensor_type_option(r"blk\.1\.ffn=q4_k") == (r"blk\.1\.ffn", QuantType.Q4_K)
    for bad in ("attn_v", "=q8_0", "attn_v=", "attn_v=q9_9", "attn_v[=q8_0"):
        with pytest.raises(QuantError):
            parse_tensor_type_option(bad)


def test_explicit_type_that_does_not_fit_is_an_error():
    tensors = [("token_embd.weight", (10, 576)), ("output.weight", (10, 576))]
    with pytest.raises(QuantError, match="576"):
        plan_types(tensors, "q4_k_m", token_embedding_type="q4_k")
    with pytest.raises(QuantError, match="576"):
        plan_types(tensors, "q4_k_m", output_type="q6_k")


def test_fallback_and_use_more_bits():
    assert fallback_type(576, QuantType.Q2_K) == QuantType.Q4_0
    assert fallback_type(576, QuantType.Q4_K) == QuantType.Q5_0
    assert fallback_type(576, QuantType.Q5_K) == QuantType.Q5_1
    assert fallback_type(576, QuantType.Q6_K) == QuantType.Q8_0
    assert fallback_type(40, QuantType.Q6_K) == QuantType.F16
    assert fallback_type(40, QuantType.Q8_0) == QuantType.F16
    assert fallback_type(512, QuantType.Q3_K) == QuantType.Q3_K
    more = [i for i in range(30) if use_more_bits(i, 30)]
    assert more == [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]


def test_mix_that_needs_an_importance_matrix_is_refused_without_one(smollm2):
    """llama.cpp bails out of Q2_K_S without an imatrix; so does the plan, before any tensor is read."""
    _, tensors, hparams = smollm2
    with pytest.raises(QuantError, match="needs an importance matrix"):
        plan_types(tensors, FileType.MOSTLY_Q2_K_S, **hparams)
    assert plan_types(tensors, FileType.MOSTLY_Q2_K_S, **hparams, has_imatrix=True)
