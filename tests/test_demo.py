"""`convkit demo`, run as a user runs it: the whole chain on the embedded sample, with the
drift ordered as it must be (Q8_0 nearly lossless, Q2_K worst)."""
import json
import subprocess
import sys
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "tiny-llama"


def test_demo_end_to_end(tmp_path):
    work = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "convkit", "demo", "--workdir", str(work), "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = {r["type"]: r for r in report["types"]}
    assert list(rows) == ["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k"]

    # the tokenizer trained now is the one shipped with the sample, byte for byte
    assert (work / "tokenizer.json").read_bytes() == (SAMPLE / "tokenizer.json").read_bytes()

    # f16 of a bf16 model is lossless; Q8_0 nearly so; fewer bits, more drift; Q2_K worst
    assert rows["f16"]["kld"] < 1e-9 and rows["f16"]["same_top"] == 1.0
    assert abs(rows["f16"]["delta_ppl"]) < 1e-6 * report["base"]["ppl"]
    assert rows["q8_0"]["kld"] < 1e-3 and rows["q8_0"]["same_top"] > 0.98
    by_bits = sorted(rows.values(), key=lambda r: -r["bpw"])
    klds = [r["kld"] for r in by_bits]
    assert klds == sorted(klds), [(r["type"], r["kld"]) for r in by_bits]
    assert max(rows.values(), key=lambda r: r["kld"])["type"] == "q2_k"
    assert max(rows.values(), key=lambda r: abs(r["delta_ppl"]))["type"] == "q2_k"
    assert rows["q2_k"]["same_top"] < rows["q4_k_m"]["same_top"] < rows["q8_0"]["same_top"]

    # base PPL is the sample's held-out perplexity, far below a uniform model's (vocab 4096)
    assert report["base"]["ppl"] < 4096 / 20
    assert (work / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
