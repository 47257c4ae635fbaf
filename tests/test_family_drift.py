"""`convkit drift` on every family: its table, checked against transformers and llama.cpp.

For each family of family_fixtures, drift quantizes the checkpoint directory to Q8_0,
Q4_K_M and Q2_K and evaluates each file with llama.cpp's arithmetic (--numerics ggml).
Its numbers are recomputed from the peers on the same chunks:
- the base: the stored base log-probabilities equal transformers' float32 log-softmax
  (within the runtime's 1e-4 on logits plus the file's 16-bit resolution), and the base PPL
  equals transformers' PPL;
- each row: PPL, KLD against the stored base and the same-top-1 rate computed from
  llama.cpp's own logits (llama_cpp.Llama) on the very file drift wrote.
And the table orders the types as their bits do: KLD(q8_0) < KLD(q4_k_m) < KLD(q2_k).
"""
import json
import math
import os

import llama_cpp
import pytest
import torch
from click.testing import CliRunner

from convkit.commands.drift import drift as drift_command
from convkit.eval import drift as d
from convkit.eval.kld import KLDAccumulator, LogitsFile
from convkit.eval.perplexity import plan_chunks, tokenize_for_perplexity
from convkit.runtime.tokenizer import load_tokenizer
import gguf_lite
from family_fixtures import FAMILIES, family_checkpoint
from llama_peer import scored_logits
from realdata import python_docs_text

pytestmark = pytest.mark.oracle

TYPES = ("q8_0", "q4_k_m", "q2_k")
N_CTX, N_CHUNKS = 128, 2
# Measured on these fixtures (AMD EPYC, 2 cores): KLD within 4.5% of llama.cpp's (the MoE
# fixtures, whose routers meet near-ties that the two float orders break differently;
# 0.1% for the dense ones), PPL within 8e-4, same-top-1 within 0.02 (5 of 252 tokens over 4 chunks:
# a random model's top two are often close). KLD_ABS: Granite's logits, divided by 8, leave
# near-uniform distributions whose Q8_0 KLD is about 6e-8 nats, where the two float orders
# differ by up to 0.9e-8.
KLD_REL, KLD_ABS, PPL_REL, SAME_TOP_ABS = 0.10, 3e-8, 2e-3, 0.05
# Gemma's fixtures (initialization range 0.1, so that caps and windows matter) predict with
# confidence and their PPL moves with single rounding flips: measured 2.3e-3 (Gemma 2, Q2_K)
# and 1.1e-2 (Gemma 3, Q4_K_M) from llama.cpp's; test_family_checkpoints holds their Q4_K_M
# perplexity to llama.cpp's by SmolLM2's statistical criterion instead
PPL_REL_BY_FAMILY = {"gemma2": 5e-3, "gemma3": 2e-2}


def _run_drift(directory, text, cache):
    args = [str(directory), "--types", ",".join(TYPES), "--text", str(text), "--ctx", str(N_CTX),
            "--chunks", str(N_CHUNKS), "--cache", str(cache), "--numerics", "ggml", "--json", "--quiet"]
    result = CliRunner().invoke(drift_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _llama_cpp_row(path, tokens, plan, base):
    """PPL, KLD and same-top-1 of llama.cpp's logits on `path` against the stored base."""
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=N_CTX, logits_all=True, verbose=False, n_threads=2)
    try:
        acc = KLDAccumulator()
        for i, (logits, targets) in enumerate(scored_logits(llm, tokens, plan)):
            acc.add(logits, base.chunk(i), targets)
        return acc.summary()
    finally:
        llm.close()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_drift_table_agrees_with_the_peers(name, tmp_path):
    directory, model = family_checkpoint(name)
    text = tmp_path / "text.txt"
    text.write_text(python_docs_text()[:4000])
    cache = tmp_path / "cache"
    doc = _run_drift(directory, text, cache)

    tok = load_tokenizer(directory)
    tokens = tokenize_for_perplexity(tok, text.read_text())
    plan = plan_chunks(len(tokens), N_CTX, N_CHUNKS, tok.bos_id if tok.add_bos else None)
    assert doc["base"]["chunks"] == N_CHUNKS and doc["base"]["scored_tokens"] == N_CHUNKS * plan.scored_per_chunk

    # the base: transformers' log-probs, as stored, and its PPL
    (base_file,) = cache.glob("base-*.logits")
    base = LogitsFile(base_file)
    nll = []
    with torch.no_grad():
        for i in range(plan.n_chunks):
            logits = model(torch.tensor([plan.chunk(tokens, i)])).logits[0, plan.first:plan.n_ctx - 1]
            expected = torch.log_softmax(logits.double(), dim=-1)
            stored = base.chunk(i).double()
            resolution = float((stored.max(-1).values - stored.min(-1).values).max()) / 65535
            # the file keeps 16 nats below each row's top (kld.py): lower log-probs are stored at that floor
            floored = torch.maximum(expected, expected.max(-1, keepdim=True).values - 16)
            assert (stored - floored).abs().max().item() <= 2e-4 + resolution
            targets = torch.tensor(plan.targets(tokens, i)).view(-1, 1)
            nll.append(-expected.gather(1, targets))
    assert doc["base"]["ppl"] == pytest.approx(math.exp(torch.cat(nll).mean().item()), rel=1e-3)

    rows = {row["type"]: row for row in doc["types"]}
    assert list(rows) == list(TYPES)
    for qtype, row in rows.items():
        peer = _llama_cpp_row(row["file"], tokens, plan, base)
        assert row["kld"] == pytest.approx(peer["kld_mean"], rel=KLD_REL, abs=KLD_ABS), qtype
        assert row["ppl"] == pytest.approx(peer["ppl"], rel=PPL_REL_BY_FAMILY.get(name, PPL_REL)), qtype
        assert abs(row["same_top"] - peer["same_top"]) <= SAME_TOP_ABS, qtype
        assert row["delta_ppl"] == pytest.approx(row["ppl"] - doc["base"]["ppl"], rel=1e-9, abs=1e-9)
        size = os.path.getsize(row["file"])
        weights = sum(math.prod(shape) for _, shape, _ in gguf_lite.read(row["file"])[1].values())
        assert row["size_bytes"] == size and row["bpw"] == pytest.approx(8 * size / weights)
    kld, bpw = [rows[t]["kld"] for t in TYPES], [rows[t]["bpw"] for t in TYPES]
    assert 0 < kld[0] < kld[1] < kld[2] and bpw[0] > bpw[1] > bpw[2]

    # the table a user reads: a header, a rule, one line per type, the base's PPL
    table = d.text_table([d.DriftRow(**r) for r in doc["types"]], doc["base"]["ppl"], doc["base"]["ppl_err"])
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["type", "size", "bpw"] and set(lines[1].replace(" ", "")) == {"-"}
    assert [line.split()[0] for line in lines[2:-1]] == list(TYPES)
    assert lines[-1].startswith(f"base PPL = {doc['base']['ppl']:.4f}")
