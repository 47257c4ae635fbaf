"""The K-quant mixes below Q4_K_M on every family: Q3_K_M and Q2_K equal llama.cpp's.

For every family of family_fixtures, `convkit quantize --type q3_k_m` and `--type q2_k`
on the checkpoint directory give the tensor types and bytes that llama_model_quantize
gives on llama.cpp's own float32 conversion of the same directory. These two mixes
take rules Q4_K_M does not: attn_v by the GQA ratio (Q2_K) and by position (Q3_K_M),
attn_output and ffn_down raised, and the 8-expert rules (attn_v, attn_k to Q8_0,
attn_output to Q5_K) for Mixtral. llama.cpp's conversion runs once per family.
"""
import numpy as np
import pytest
from gguf import LlamaFileType

import gguf_lite
from family_fixtures import FAMILIES, family_checkpoint
from test_families import llama_quantize_file, our_command, peer_convert

TYPES = {"q3_k_m": LlamaFileType.MOSTLY_Q3_K_M, "q2_k": LlamaFileType.MOSTLY_Q2_K}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_f32(request, tmp_path_factory):
    """(name, directory, llama.cpp's float32 GGUF of it)."""
    name = request.param
    directory, _ = family_checkpoint(name)
    target = tmp_path_factory.mktemp(name) / "theirs-f32.gguf"
    return name, directory, peer_convert(directory, "f32", target)


@pytest.mark.oracle
@pytest.mark.parametrize("qtype", list(TYPES))
def test_low_bit_mix_equals_llama_quantize(family_f32, qtype, tmp_path, capsys):
    name, directory, theirs_f32 = family_f32
    theirs = llama_quantize_file(theirs_f32, tmp_path / f"theirs-{qtype}.gguf", TYPES[qtype])
    ours = tmp_path / f"ours-{qtype}.gguf"
    our_command(["quantize", str(directory), "--type", qtype, "-o", str(ours)], capsys)
    (_, peer), (_, mine) = gguf_lite.read(theirs), gguf_lite.read(ours)
    assert {n: t[0] for n, t in mine.items()} == {n: t[0] for n, t in peer.items()}
    # the mix takes more than one type, or it would not test the rules
    assert len({t[0] for t in peer.values() if len(t[1]) >= 2}) >= 2
    for tensor, (_, shape, data) in peer.items():
        assert mine[tensor][1] == shape, tensor
        assert np.array_equal(mine[tensor][2], data), tensor


def _llama_quantize_with_imatrix(src, dst, ftype, vectors):
    """llama_model_quantize with importance vectors {name: flat float32}, as llama-quantize --imatrix passes them."""
    import ctypes

    from test_mixes import _quiet_llama

    llama = _quiet_llama()
    params = llama.llama_model_quantize_default_params()
    params.ftype, params.nthread = int(ftype), 2
    keep = [np.ascontiguousarray(v, np.float32).reshape(-1) for v in vectors.values()]
    slots = (llama.llama_model_imatrix_data * (len(keep) + 1))()
    for slot, name, values in zip(slots, vectors, keep):
        slot.name, slot.size = name.encode(), values.size
        slot.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    slots[len(keep)].name = None
    params.imatrix = slots
    assert llama.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    return dst


@pytest.mark.oracle
@pytest.mark.parametrize("name", ["qwen3moe", "mixtral"])
def test_expert_importance_vectors_equal_llama_quantize(name, tmp_path, capsys):
    """An imatrix holds one vector per expert of a stacked tensor; each expert is quantized
    with its own, from the checkpoint (experts read one by one) and from a float32 GGUF
    (the stack streamed a slice at a time)."""
    from quant.imatrix import from_statistics, load_importance, write_imatrix

    directory, _ = family_checkpoint(name)
    theirs_f32 = peer_convert(directory, "f32", tmp_path / "theirs-f32.gguf")
    (_, peer_f32) = gguf_lite.read(theirs_f32)
    rng = np.random.default_rng(3)
    stats = {}
    for tensor, (_, shape, _) in peer_f32.items():   # ggml order: (ne0, ne1[, n_expert])
        if len(shape) >= 2 and tensor.startswith("blk."):
            n_mat = shape[2] if len(shape) == 3 else 1
            stats[tensor] = ((rng.random((n_mat, shape[0]), dtype=np.float32) ** 4) * 500,
                             rng.integers(100, 500, n_mat))
    assert any(v[0].shape[0] > 1 for v in stats.values())
    imatrix = tmp_path / "imatrix.gguf"
    write_imatrix(imatrix, from_statistics(stats, ["synthetic"], 4, 128))
    vectors = load_importance(imatrix)
    theirs = _llama_quantize_with_imatrix(theirs_f32, tmp_path / "theirs.gguf", LlamaFileType.MOSTLY_Q4_K_M, vectors)
    (_, peer) = gguf_lite.read(theirs)
    for source in (directory, theirs_f32):
        ours = tmp_path / "ours.gguf"
        our_command(["quantize", str(source), "--type", "q4_k_m", "--imatrix", str(imatrix), "-o", str(ours)], capsys)
        (_, mine) = gguf_lite.read(ours)
        for tensor, (qtype, _, data) in peer.items():
            assert mine[tensor][0] == qtype and np.array_equal(mine[tensor][2], data), (source, tensor)


# one expert tensor of each MoE layout, as transformers saves it
_EXPERT = {"qwen3moe": "model.layers.{layer}.mlp.experts.{e}.{kind}.weight",
           "mixtral": "model.layers.{layer}.block_sparse_moe.experts.{e}.{kind}.weight"}
_KINDS = {"qwen3moe": ("up_proj", "down_proj"), "mixtral": ("w3", "w2")}


def _broken(name, how, tmp_path):
    """A copy of a MoE fixture whose experts are damaged: one missing, one of another shape,
    one numbered beyond the config's expert count, or one of another dtype."""
    import shutil

    from safetensors.numpy import load_file, save_file

    directory = tmp_path / name
    shutil.copytree(family_checkpoint(name)[0], directory)
    tensors = load_file(directory / "model.safetensors")
    first, second = _KINDS[name]
    if how == "missing":
        tensors.pop(_EXPERT[name].format(layer=1, e=2, kind=first))
    elif how == "shape":
        key = _EXPERT[name].format(layer=0, e=3, kind=second)
        tensors[key] = tensors[key][:, :128].copy()
    elif how == "beyond":
        n_expert = FAMILIES[name][2].get("num_experts") or FAMILIES[name][2]["num_local_experts"]
        tensors[_EXPERT[name].format(layer=0, e=n_expert, kind=first)] = \
            tensors[_EXPERT[name].format(layer=0, e=0, kind=first)].copy()
    else:
        key = _EXPERT[name].format(layer=0, e=1, kind=first)
        tensors[key] = tensors[key].astype(np.float16)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


@pytest.mark.parametrize("how,needle", [("missing", "expert 2 is missing"), ("shape", "the experts must match"),
                                        ("beyond", "is beyond"), ("dtype", "the experts must match")])
@pytest.mark.parametrize("name", ["qwen3moe", "mixtral"])
@pytest.mark.parametrize("command", ["quantize", "convert"])
def test_damaged_experts_are_one_line_and_write_nothing(command, name, how, needle, tmp_path, capsys):
    from convkit.cli import main

    directory = _broken(name, how, tmp_path)
    target = tmp_path / "out" / "model.gguf"
    target.parent.mkdir()
    argv = {"quantize": ["quantize", str(directory), "--type", "q4_k_m", "-o", str(target)],
            "convert": ["convert", str(directory), "--outtype", "f16", "-o", str(target)]}[command]
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--quiet"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and needle in err, err
    assert str(directory) in err   # names the file
    assert list(target.parent.iterdir()) == []   # nothing written, not even a temporary file
