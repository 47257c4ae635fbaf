"""MiniLM (BERT) converts to a GGUF whose every tensor equals the safetensors input."""
import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from convkit.cli import main
from realdata import minilm_dir


def test_minilm_round_trip(tmp_path, capsys):
    out = tmp_path / "minilm.gguf"
    with pytest.raises(SystemExit) as exit_:
        main(["convert", str(minilm_dir()), "--outtype", "f32", "-o", str(out), "--quiet"])
    assert exit_.value.code == 0
    inputs = load_file(str(minilm_dir() / "model.safetensors"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, 6)
    reader = gguf.GGUFReader(out)
    got = {t.name: np.asarray(t.data).reshape([int(d) for d in reversed(list(t.shape))]) for t in reader.tensors}
    checked = 0
    for hf_name, value in inputs.items():
        if hf_name.startswith("pooler.") or hf_name.endswith("position_ids"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name in got, hf_name
        np.testing.assert_array_equal(got[name].reshape(value.shape), value.astype(np.float32))
        checked += 1
    assert checked == len(got)
    fields = reader.fields
    assert fields["general.architecture"].contents() == "bert"
    assert fields["tokenizer.ggml.model"].contents() == "bert"
    assert len(fields["tokenizer.ggml.tokens"].contents()) == 30522
    assert fields["bert.block_count"].contents() == 6


def test_inspect_json(tmp_path, capsys):
    import json
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", str(minilm_dir() / "model.safetensors"), "--json"])
    assert exit_.value.code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["types"] == {"F32": len(result["tensors"]) - 1, "I64": 1}  # position_ids is int64
    assert any(t["name"] == "embeddings.word_embeddings.weight" and t["shape"] == [30522, 384]
               for t in result["tensors"])
