"""`convkit convert`, `convkit quantize --dry-run`, the default output path and `convkit
inspect` on SmolLM2, against llama.cpp's own files (llama_model_quantize)."""
import json
import shutil

import gguf
import llama_cpp
import numpy as np
import pytest

import gguf_lite
from convkit.cli import main
from realdata import smollm2_gguf
from smollm2_fixture import NEWER_CONVERTER_KEYS, smollm2_checkpoint

CARD_KEYS = {"general.name", "general.organization", "general.finetune", "general.basename",
             "general.size_label", "general.license", "general.languages"}
OUTTYPES = {"f16": 1, "bf16": 32}  # convkit --outtype -> llama file type


def run(capsys, *args):
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    assert exit_.value.code == 0, captured.err
    return captured.out


def llama_quantize(out, ftype):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = 2
    assert llama_cpp.llama_model_quantize(str(smollm2_gguf()).encode(), str(out).encode(), params) == 0


@pytest.mark.parametrize("outtype", sorted(OUTTYPES))
def test_convert_matches_llama_cpp(tmp_path, capsys, outtype):
    theirs, ours = tmp_path / "theirs.gguf", tmp_path / "ours.gguf"
    llama_quantize(theirs, OUTTYPES[outtype])
    run(capsys, "convert", smollm2_checkpoint(), "--outtype", outtype, "-o", ours, "--quiet", "--threads", "2")
    (fa, mine), (fb, theirs_t) = gguf_lite.read(ours), gguf_lite.read(theirs)
    assert sorted(mine) == sorted(theirs_t)
    for name, (qtype, shape, data) in theirs_t.items():
        assert mine[name][:2] == (qtype, shape), name
        assert np.array_equal(mine[name][2], data), name
    assert {k: v for k, v in fa.items() if k not in CARD_KEYS} == \
        {**{k: v for k, v in fb.items() if k not in CARD_KEYS}, **NEWER_CONVERTER_KEYS}


def test_dry_run_plan_matches_llama_cpp_sizes(tmp_path, capsys):
    theirs = tmp_path / "theirs.gguf"
    llama_quantize(theirs, 15)  # Q4_K_M
    plan = json.loads(run(capsys, "quantize", smollm2_checkpoint(), "--type", "q4_k_m", "--dry-run", "--json"))
    _, tensors = gguf_lite.read(theirs)
    assert {t["name"]: (t["type"], t["bytes"]) for t in plan["tensors"]} == \
        {name: (gguf.GGMLQuantizationType(q).name, len(data)) for name, (q, _, data) in tensors.items()}
    assert plan["total_bytes"] == sum(len(data) for _, _, data in tensors.values())
    assert not list(tmp_path.glob("*Q4_K_M*"))


def test_default_output_is_beside_the_input(tmp_path, capsys):
    ckpt = tmp_path / "SmolLM2-ckpt"
    shutil.copytree(smollm2_checkpoint(), ckpt)
    out = run(capsys, "quantize", ckpt, "--type", "q8_0", "--threads", "2", "--quiet")
    target = ckpt / "SmolLM2-ckpt-Q8_0.gguf"
    assert target.is_file() and str(target) in out
    assert [p.name for p in ckpt.iterdir() if p.suffix == ".gguf"] == [target.name]
    info = json.loads(run(capsys, "inspect", target, "--json"))
    assert info["metadata"]["general.file_type"] == 7
    assert info["types"]["Q8_0"] == 211 and info["types"]["F32"] == 61
    assert info["total_bytes"] == sum(t["bytes"] for t in info["tensors"])
