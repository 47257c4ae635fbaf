"""`convkit quantize --target-bpw / --target-size`: per-tensor types chosen by measured loss
within a size budget (convkit/allocate.py), written as standard files llama.cpp runs."""
import json
from pathlib import Path

import gguf
import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "tiny-llama"
STANDARD = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F32"}


def _texts(tmp):
    from convkit.samples import split_pydoc_topics

    train, held_out = split_pydoc_topics()
    calib = tmp / "calib.txt"
    calib.write_text(train[:30000], encoding="utf-8")
    return calib, held_out


def _run(args, capsys):
    from convkit.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(args)
    return exit_.value.code, capsys.readouterr()


def _tensor_bits(path):
    r = gguf.GGUFReader(path)
    return sum(int(t.n_bytes) for t in r.tensors), sum(int(t.n_elements) for t in r.tensors)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The sample's calibrated Q4_K_M and Q2_K mixes, and files searched to their bpw and size."""
    from convkit.cli import main

    tmp = tmp_path_factory.mktemp("bpw")
    calib, held_out = _texts(tmp)
    out = {"calib": calib, "held_out": held_out}

    def quantize(name, *args):
        path = tmp / f"{name}.gguf"
        with pytest.raises(SystemExit) as exit_:
            main(["quantize", str(SAMPLE), "--calibrate", str(calib), "--quiet", "-o", str(path), *args])
        assert exit_.value.code == 0
        out[name] = path

    for ftype in ("q4_k_m", "q2_k"):
        quantize(f"{ftype}-mix", "--type", ftype)
        nbytes, n = _tensor_bits(out[f"{ftype}-mix"])
        out[f"{ftype}-budget"] = nbytes
        quantize(f"{ftype}-bpw", "--type", ftype, "--target-bpw", repr(nbytes * 8 / n))
    quantize("size", "--type", "q4_k_m", "--target-size", str(out["q2_k-mix"].stat().st_size))
    return out


@pytest.mark.parametrize("ftype", ["q4_k_m", "q2_k"])
def test_bpw_budget_is_met_within_one_percent_never_over(files, ftype):
    nbytes, _ = _tensor_bits(files[f"{ftype}-bpw"])
    budget = files[f"{ftype}-budget"]
    assert 0.99 * budget <= nbytes <= budget, (nbytes, budget)
    types = {t.tensor_type.name for t in gguf.GGUFReader(files[f"{ftype}-bpw"]).tensors}
    assert types <= STANDARD, types
    mix = {t.name: t.tensor_type for t in gguf.GGUFReader(files[f"{ftype}-mix"]).tensors}
    got = {t.name: t.tensor_type for t in gguf.GGUFReader(files[f"{ftype}-bpw"]).tensors}
    assert got.keys() == mix.keys() and got != mix  # the same tensors, other types
    r = gguf.GGUFReader(files[f"{ftype}-bpw"])
    assert int(r.fields["general.file_type"].parts[-1][0]) == int(
        gguf.GGUFReader(files[f"{ftype}-mix"]).fields["general.file_type"].parts[-1][0])


def test_target_size_counts_the_whole_file(files):
    size, budget = files["size"].stat().st_size, files["q2_k-mix"].stat().st_size
    assert 0.99 * budget <= size <= budget, (size, budget)


def _kld(base, peer):
    lb = base - np.logaddexp.reduce(base, axis=1, keepdims=True)
    lq = peer - np.logaddexp.reduce(peer, axis=1, keepdims=True)
    return float((np.exp(lb) * (lb - lq)).sum(1).mean())


def test_llama_cpp_runs_the_file_and_the_search_beats_the_mix(files):
    """llama.cpp loads each searched file; our runtime (llama.cpp's numerics) gives its logits
    as closely as on the mix of the same size; and on held-out text, llama.cpp's own logits of
    the searched file are closer to the unquantized model (transformers) than the mix's."""
    import llama_cpp
    import torch
    import transformers

    from convkit.runtime import load_model
    from convkit.runtime.tokenizer import load_tokenizer

    tokens = load_tokenizer(SAMPLE).encode(files["held_out"][:4000])[:200]
    hf = transformers.AutoModelForCausalLM.from_pretrained(SAMPLE, dtype=torch.float32)
    with torch.no_grad():
        base = hf(torch.tensor([tokens])).logits[0].numpy()
    for ftype in ("q4_k_m", "q2_k"):
        kld, distance = {}, {}
        for kind in ("mix", "bpw"):
            path = files[f"{ftype}-{kind}"]
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2)
            llm.eval(tokens)
            peer = np.array(llm.scores[:len(tokens)], dtype=np.float32)
            llm.close()
            model = load_model(path, numerics="ggml")
            with torch.no_grad():
                mine = model(torch.tensor([tokens]))[0].numpy()
            assert (mine.argmax(1) == peer.argmax(1)).mean() >= 0.95
            distance[kind] = np.abs(mine - peer).max() / np.abs(peer).max()
            kld[kind] = _kld(base, peer)
        print(ftype, distance, kld)
        assert distance["bpw"] <= max(2 * distance["mix"], 1e-3), distance
        assert kld["bpw"] < kld["mix"], kld


def test_dry_run_json_reports_the_chosen_types(files, capsys):
    nbytes, n = _tensor_bits(files["q4_k_m-mix"])
    code, captured = _run(["quantize", str(SAMPLE), "--type", "q4_k_m", "--calibrate", str(files["calib"]),
                           "--target-bpw", repr(nbytes * 8 / n), "--dry-run", "--json"], capsys)
    assert code == 0
    report = json.loads(captured.out)
    chosen = {t["name"]: t["type"] for t in report["tensors"]}
    assert chosen == {t.name: t.tensor_type.name for t in gguf.GGUFReader(files["q4_k_m-bpw"]).tensors}
    a = report["allocation"]
    assert set(a["types"]) <= set(chosen) and all(chosen[k] == v for k, v in a["types"].items())
    assert a["predicted_loss"] < a["mix_predicted_loss"]


@pytest.mark.parametrize("args, words", [
    (["--type", "q4_k_m", "--calibrate", "{calib}", "--target-bpw", "1.0"], "below the smallest"),
    (["--type", "q4_k_m", "--calibrate", "{calib}", "--target-size", "100K"], "below the smallest"),
    (["--calibrate", "{calib}", "--target-bpw", "4.5"], "give --type"),
    (["--type", "q4_k_m", "--target-bpw", "4.5"], "--calibrate"),
    (["--type", "q4_k_m", "--calibrate", "{calib}", "--target-bpw", "4.5", "--target-size", "3M"], "not both"),
    (["--type", "q4_k_m", "--calibrate", "{calib}", "--target-size", "three"], "--target-size"),
], ids=["bpw-too-small", "size-too-small", "no-type", "no-calibration", "both", "bad-size"])
def test_bad_targets_are_one_line(tmp_path, capsys, args, words):
    calib, _ = _texts(tmp_path)
    out = tmp_path / "out.gguf"
    code, captured = _run(["quantize", str(SAMPLE), *[a.format(calib=calib) for a in args], "-o", str(out)],
                          capsys)
    err = captured.err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert sorted(tmp_path.iterdir()) == [calib]


def test_imatrix_gives_the_diagonal_loss(files, tmp_path, capsys):
    """With --imatrix (llama-imatrix's statistics) instead of --calibrate: the file meets a
    --target-size budget and its predicted loss at the mix's size is at most the mix's."""
    imatrix = tmp_path / "imatrix.gguf"
    code, _ = _run(["imatrix", str(SAMPLE), "--text", str(files["calib"]), "--ctx", "256", "-o", str(imatrix),
                    "--quiet"], capsys)
    assert code == 0
    size = files["q4_k_m-mix"].stat().st_size
    out = tmp_path / "out.gguf"
    code, captured = _run(["quantize", str(SAMPLE), "--type", "q4_k_m", "--imatrix", str(imatrix), "--target-size",
                           str(size), "-o", str(out), "--json", "--quiet"], capsys)
    assert code == 0
    report = json.loads(captured.out)["allocation"]
    assert 0.99 * size <= out.stat().st_size <= size
    assert report["predicted_loss"] <= report["mix_predicted_loss"]


def test_candidates_follow_llama_cpp_row_fallbacks():
    """A 576-wide row (SmolLM2) is offered only the 32-value types llama.cpp falls back to;
    a weight moves down to Q3_K, and to Q2_K only from Q3_K."""
    import gguf as g

    from convkit.allocate import candidate_types

    T = g.GGMLQuantizationType
    names = lambda ts: [t.name for t in ts]  # noqa: E731
    assert names(candidate_types(576, T.Q4_K)) == ["Q4_0", "Q5_0", "Q5_1", "Q8_0"]
    assert all(576 % g.GGML_QUANT_SIZES[T[n]][0] == 0 for n in names(candidate_types(576, T.Q8_0)))
    assert names(candidate_types(256, T.Q4_K)) == ["Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]
    assert names(candidate_types(256, T.Q3_K)) == ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]
    assert names(candidate_types(256, T.Q6_K))[0] == "Q3_K"
