"""SmolLM2 HF checkpoint -> GGUF: byte-identical tensors and the same metadata as llama.cpp
requantizing the original file, and logits from llama.cpp equal on both files."""
import functools

import numpy as np
import pytest

import gguf
import llama_cpp

from convkit.cli import main
from realdata import smollm2_gguf
from smollm2_fixture import NEWER_CONVERTER_KEYS, smollm2_checkpoint

FILE_TYPES = {"q4_0": 2, "q8_0": 7, "q4_k_m": 15, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30,
              "iq3_xxs": 23, "iq3_m": 27}
# descriptive keys convert_hf_to_gguf takes from the model card, which a checkpoint does not carry
CARD_KEYS = {"general.name", "general.organization", "general.finetune", "general.basename",
             "general.size_label", "general.license", "general.languages"}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    work = tmp_path_factory.mktemp("smollm2")
    ckpt = smollm2_checkpoint()
    files = {}
    for name, ftype in FILE_TYPES.items():
        theirs = work / f"llama-{name}.gguf"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.allow_requantize = True
        params.nthread = 2
        assert llama_cpp.llama_model_quantize(str(smollm2_gguf()).encode(), str(theirs).encode(), params) == 0
        ours = work / f"ours-{name}.gguf"
        with pytest.raises(SystemExit) as exit_:
            main(["quantize", str(ckpt), "--type", name, "-o", str(ours), "--threads", "2", "--quiet"])
        assert exit_.value.code == 0
        files[name] = (ours, theirs)
    return files


@functools.cache
def _reader(path):
    return gguf.GGUFReader(path)


def _fields(reader):
    """key -> its encoded type and value bytes (comparing encodings is exact and fast)."""
    return {k: b"".join(np.asarray(p).tobytes() for p in f.parts) for k, f in reader.fields.items()
            if not k.startswith("GGUF.")}


@pytest.mark.parametrize("name", sorted(FILE_TYPES))
def test_tensors_and_metadata_match_llama_cpp(outputs, name):
    ours, theirs = (_reader(p) for p in outputs[name])
    mine = {t.name: t for t in ours.tensors}
    assert sorted(mine) == sorted(t.name for t in theirs.tensors)
    for t in theirs.tensors:
        m = mine[t.name]
        assert m.tensor_type == t.tensor_type, t.name
        assert list(m.shape) == list(t.shape), t.name
        assert np.asarray(m.data).tobytes() == np.asarray(t.data).tobytes(), t.name
    a, b = _fields(ours), _fields(theirs)
    for key, value in b.items():
        if key in CARD_KEYS:
            continue
        assert key in a, key
        assert a[key] == value, key
    assert set(a) - set(b) <= {"general.name"} | set(NEWER_CONVERTER_KEYS)
    assert all(_field_value(ours, key) == value for key, value in NEWER_CONVERTER_KEYS.items())


def _field_value(reader, key):
    return reader.fields[key].contents()


def _logits(path, tokens):
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=64, n_threads=2, verbose=False, seed=0)
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    llm.close()
    return out


@pytest.mark.parametrize("name", ["q4_k_m", "q8_0"])
def test_llama_cpp_logits_equal(outputs, name):
    ours, theirs = outputs[name]
    tokens = [1, 504, 3458, 282, 4649, 314, 253, 2021, 30, 2]
    a, b = _logits(ours, tokens), _logits(theirs, tokens)
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_requantize_gguf_input_matches_llama_cpp(outputs, tmp_path):
    ours = tmp_path / "from-gguf.gguf"
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", str(smollm2_gguf()), "--type", "q4_0", "-o", str(ours), "--quiet"])
    assert exit_.value.code == 0
    a, b = gguf.GGUFReader(ours), _reader(outputs["q4_0"][1])
    theirs = {t.name: t for t in b.tensors}
    for t in a.tensors:
        assert np.asarray(t.data).tobytes() == np.asarray(theirs[t.name].data).tobytes(), t.name
    assert _fields(a) == _fields(b)


def test_imatrix_quantize_matches_llama_cpp(tmp_path):
    """`convkit quantize --imatrix F` on SmolLM2's GGUF: the same tensor bytes as
    llama_model_quantize given the vectors of the same file (params.imatrix), for a K-quant
    mix and a legacy type; the imatrix changes the bytes. And the IQ2_M/IQ1_M mixes, which
    llama.cpp (and convkit) make only with an imatrix."""
    import ctypes

    from quant.imatrix import from_statistics, load_importance, write_imatrix

    source = smollm2_gguf()
    reader = gguf.GGUFReader(source)
    rng = np.random.default_rng(11)
    # plausible statistics: heavy-tailed per-column sums of squares over 20 chunks of 512
    stats = {t.name: ((rng.gamma(0.5, 1.0, int(t.shape[0])) * 1e4).astype(np.float32), np.array([20 * 512]))
             for t in reader.tensors if len(t.shape) == 2 and t.name != "token_embd.weight"}
    del reader
    imatrix = tmp_path / "imatrix.gguf"
    write_imatrix(imatrix, from_statistics(stats, ["synthetic"], 20, 512))
    vectors = load_importance(imatrix)
    keep = [np.ascontiguousarray(v, np.float32) for v in vectors.values()]
    entries = (llama_cpp.llama_model_imatrix_data * (len(keep) + 1))()
    for slot, name, values in zip(entries, vectors, keep):
        slot.name, slot.size = name.encode(), values.size
        slot.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    entries[len(keep)].name = None

    # llama.cpp refuses these without one; IQ2_XXS and IQ1_S (their mixes' main types) are held to
    # ggml's bytes with importance vectors on SmolLM2's tensors in test_quant_iqgrid
    imatrix_only = {"iq2_m": 29, "iq1_m": 31}
    for name in ("q4_k_m", "q4_0", *imatrix_only):
        theirs, ours, plain = (tmp_path / f"{who}-{name}.gguf" for who in ("llama", "ours", "plain"))
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = {**FILE_TYPES, **imatrix_only}[name], True, 2
        params.imatrix = entries
        assert llama_cpp.llama_model_quantize(str(source).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
        for target, extra in ((ours, ["--imatrix", str(imatrix)]), (plain, [])):
            with pytest.raises(SystemExit) as exit_:
                main(["quantize", str(source), "--type", name, "-o", str(target), "--threads", "2", "--quiet", *extra])
            assert exit_.value.code == (2 if name in imatrix_only and not extra else 0), name
        data = {p: {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(p).tensors}
                for p in (theirs, ours, plain) if p.exists()}
        assert data[ours] == data[theirs], name
        if name in imatrix_only:
            assert not plain.exists(), name
        else:
            assert data[plain] != data[theirs], name
