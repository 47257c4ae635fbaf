"""convkit drift: types, cache reuse, table/markdown/json, and a clear error for --plot without matplotlib."""
import json
import math
import os
import shutil

import pytest
from click.testing import CliRunner

from convkit.errors import ConvkitError
from convkit.eval import drift
from realdata import python_docs_text, smollm2_gguf


def test_types_are_checked():
    assert drift.parse_types("Q4_K_M, q8_0,q4_k_m") == ["q4_k_m", "q8_0"]
    with pytest.raises(ConvkitError, match="unknown type q9_x"):
        drift.parse_types("q8_0,q9_x")


def test_drift_takes_exactly_the_types_quantize_takes():
    """One list: every name `convkit quantize --type` takes (iq4_nl included) is a drift type, and a
    name llama.cpp knows but convkit does not write yet is refused by both."""
    from quant.errors import QuantError
    from quant.mixes import file_type_names, parse_file_type

    names = file_type_names()
    assert "iq4_nl" in names
    assert drift.parse_types(",".join(names)) == names
    for name in names:
        parse_file_type(name)
    with pytest.raises(ConvkitError, match="unknown type nvfp4"):
        drift.parse_types("q8_0,nvfp4")
    with pytest.raises(QuantError):
        parse_file_type("nvfp4")


def test_unknown_drift_type_stops_before_any_work(tmp_path, capsys):
    """The type is checked before the text is read or the base model runs (neither exists here)."""
    from convkit.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["drift", str(tmp_path / "missing.gguf"), "--types", "q8_0,q9_x", "--text", str(tmp_path / "none.txt")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "q9_x" in err and "missing" not in err


def test_drift_report_from_cached_files(tmp_path):
    """MODEL's 'quantized' file is already in the cache (a copy of MODEL itself), so the report
    must show zero drift: KLD 0 up to the 16-bit base storage, same top token everywhere.

    The bound on |KLD| comes from that storage, not from one CPU's run: each stored log-prob
    is a code of step scale = range/65535 <= 16/65535 nats, so it is off by at most half a
    step (0.52 with the float32 rounding of the code's computation) plus a few float32
    roundings of values below 32 in magnitude (each <= 2^-19; ten allowed: 2e-5). With every
    log p_i off by at most eps, the per-token KLD sum_i p_i (log p_i - log q_i) is at most
    eps * sum_i p_i <= eps * e^eps in magnitude, and so is its mean. (The stored values are
    not renormalized, so this first-order term does not vanish; which sign it takes depends
    on the last bits of the logits, hence on the CPU: 1.9e-5 on a Zen 3, less on a Zen 5.)"""
    from convkit.commands.drift import drift as drift_command

    model = tmp_path / "smollm2.gguf"
    shutil.copyfile(smollm2_gguf(), model)
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = drift.quantized_path(cache, model, "q4_1")
    shutil.copyfile(model, cached)
    os.utime(cached, (model.stat().st_mtime + 10, model.stat().st_mtime + 10))
    text = tmp_path / "t.txt"
    text.write_text(python_docs_text()[:6000])
    args = [str(model), "--types", "q4_1", "--text", str(text), "--ctx", "64", "--chunks", "2",
            "--cache", str(cache), "--dequantize-all"]
    res = CliRunner().invoke(drift_command, args + ["--json", "--quiet"], catch_exceptions=False)
    doc = json.loads(res.output)
    (row,) = doc["types"]
    assert row["type"] == "q4_1" and row["size_bytes"] == model.stat().st_size
    assert 4.5 < row["bpw"] < 6.5  # Q4_1 with a Q8_0 embedding
    eps = 0.52 * 16 / 65535 + 2e-5
    assert abs(row["kld"]) <= eps * math.exp(eps) and row["same_top"] == 1.0
    assert row["ppl"] == pytest.approx(doc["base"]["ppl"], rel=1e-3)
    assert doc["base"]["scored_tokens"] == 2 * (64 - 1 - 32)
    assert len(list(cache.glob("base-*.logits"))) == 1
    md = CliRunner().invoke(drift_command, args + ["--markdown"], catch_exceptions=False).output
    assert "\n| type | size | bpw | PPL | ΔPPL | KLD | same top-1 |\n|---|" in md


def test_plot_without_matplotlib_is_one_clear_error(tmp_path, monkeypatch, capsys):
    import builtins

    from convkit.cli import main

    real_import = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    text = tmp_path / "t.txt"
    text.write_text("x " * 3000)
    with pytest.raises(SystemExit) as exc:
        main(["drift", str(smollm2_gguf()), "--text", str(text), "--plot", str(tmp_path / "d.png")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matplotlib" in err[0]


@pytest.mark.parametrize("bad", ["q2_k_s", "q1_0"])
def test_type_this_model_cannot_take_stops_before_the_base_runs(tmp_path, capsys, monkeypatch, bad):
    """q2_k_s needs an importance matrix (drift takes none) for the sample's 256-wide rows;
    q1_0's 128-value blocks fit no row of a 64-wide model: both are found from the plan,
    before the base model is evaluated."""
    from pathlib import Path
    from convkit.cli import main
    from convkit.eval import drift as drift_service
    from test_bad_checkpoints import _tiny_model

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the base model must not run")

    monkeypatch.setattr(drift_service, "evaluate", no_evaluation)
    if bad == "q2_k_s":
        model = Path(__file__).resolve().parents[1] / "samples" / "tiny-llama"
    else:
        model_dir = tmp_path / "model"
        model_dir.mkdir()
        model = _tiny_model(model_dir)
    text = tmp_path / "text.txt"
    text.write_text("some text to score " * 50)
    with pytest.raises(SystemExit) as exit_:
        main(["drift", str(model), "--types", f"q8_0,{bad}", "--text", str(text), "--cache", str(tmp_path / "c")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ("importance matrix" in err or "fallback" in err), err


def test_calibrate_puts_llama_cpp_best_beside_ours(tmp_path):
    """drift --calibrate: per type, the file `quantize --imatrix` makes from an importance
    matrix of the calibration text (llama.cpp at its best) and the file `quantize
    --calibrate` makes, both scored on the same chunks; float types keep one row."""
    from pathlib import Path

    from convkit.cli import main
    from convkit.commands.drift import drift as drift_command
    from test_calibrate import SAMPLE

    pydoc = python_docs_text()
    calib, text = tmp_path / "calib.txt", tmp_path / "held-out.txt"
    calib.write_text(pydoc[:12000], encoding="utf-8")
    text.write_text(pydoc[-8000:], encoding="utf-8")
    cache = tmp_path / "cache"
    args = [str(SAMPLE), "--types", "f16,q4_k_m", "--text", str(text), "--ctx", "128", "--chunks", "3",
            "--calibrate", str(calib), "--cache", str(cache), "--json", "--quiet"]
    res = CliRunner().invoke(drift_command, args, catch_exceptions=False)
    doc = json.loads(res.output)
    assert [(r["type"], r["method"]) for r in doc["types"]] == [("f16", ""), ("q4_k_m", "imatrix"),
                                                                ("q4_k_m", "calibrated")]
    assert doc["base"]["calibration_text"] == str(calib)
    f16, llama_best, ours = doc["types"]
    assert llama_best["size_bytes"] == ours["size_bytes"]  # same types, same size
    assert 0 < llama_best["kld"] and 0 < ours["kld"] and f16["kld"] < min(llama_best["kld"], ours["kld"])
    # each row's file is what the quantize command makes with the same inputs
    (matrix,) = cache.glob("*.imatrix-*.gguf")
    for row, option in ((llama_best, ["--imatrix", str(matrix)]), (ours, ["--calibrate", str(calib)])):
        again = tmp_path / f"{row['method']}.gguf"
        with pytest.raises(SystemExit) as exit_:
            main(["quantize", str(SAMPLE), "--type", "q4_k_m", "-o", str(again), "--quiet", *option])
        assert exit_.value.code == 0
        assert again.read_bytes() == Path(row["file"]).read_bytes(), row["method"]
    table = CliRunner().invoke(drift_command, args[:-2] + ["--quiet"], catch_exceptions=False).output
    assert "q4_k_m imatrix" in table and "q4_k_m calibrated" in table  # from the cache, no new run


def test_iq_types_with_an_importance_matrix(tmp_path, capsys):
    """drift --types iq4_xs,iq3_m,iq2_m: iq2_m is refused without a matrix (as llama.cpp refuses
    it), and with --imatrix every type is quantized with it (the files `quantize --imatrix`
    makes) and scored; fewer bits, more drift."""
    from pathlib import Path

    from convkit.cli import main
    from convkit.commands.drift import drift as drift_command
    from test_calibrate import SAMPLE

    pydoc = python_docs_text()
    calib, text = tmp_path / "calib.txt", tmp_path / "held-out.txt"
    calib.write_text(pydoc[:12000], encoding="utf-8")
    text.write_text(pydoc[-8000:], encoding="utf-8")
    args = [str(SAMPLE), "--types", "iq4_xs,iq3_m,iq2_m", "--text", str(text), "--ctx", "128", "--chunks", "3",
            "--cache", str(tmp_path / "cache"), "--quiet"]
    with pytest.raises(SystemExit) as exit_:
        main(["drift", *args])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "importance matrix" in err, err
    assert not list((tmp_path / "cache").glob("base-*"))  # refused before the base model ran
    matrix = tmp_path / "imatrix.gguf"
    with pytest.raises(SystemExit) as exit_:
        main(["imatrix", str(SAMPLE), "--text", str(calib), "--ctx", "128", "-o", str(matrix), "--quiet"])
    assert exit_.value.code == 0
    res = CliRunner().invoke(drift_command, args + ["--imatrix", str(matrix), "--json"], catch_exceptions=False)
    doc = json.loads(res.output)
    rows = doc["types"]
    assert [(r["type"], r["method"]) for r in rows] == [("iq4_xs", "imatrix"), ("iq3_m", "imatrix"),
                                                        ("iq2_m", "imatrix")]
    assert rows[0]["kld"] < rows[1]["kld"] < rows[2]["kld"] and rows[0]["bpw"] > rows[1]["bpw"] > rows[2]["bpw"]
    again = tmp_path / "iq2_m.gguf"
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", str(SAMPLE), "--type", "iq2_m", "--imatrix", str(matrix), "-o", str(again), "--quiet"])
    assert exit_.value.code == 0
    assert again.read_bytes() == Path(rows[2]["file"]).read_bytes()
