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
