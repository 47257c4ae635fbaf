"""Perplexity and KL divergence: hand-computed values, llama.cpp's chunking and BOS, bad input."""
import math
import shutil

import numpy as np
import pytest
import torch

from convkit.errors import ConvkitError
from convkit.eval import kld
from convkit.eval.perplexity import (ChunkPlan, chunk_logits, plan_chunks,
                                     perplexity_of_logits, tokenize_for_perplexity, token_nll)
from realdata import python_docs_text, smollm2_gguf


# ------------------------------------------------------------------ by hand
def test_perplexity_of_known_logits_matches_hand_computation():
    # vocab of 3; logits (0, ln 2, ln 3) give p = (1/6, 2/6, 3/6)
    row = torch.tensor([0.0, math.log(2), math.log(3)])
    logits = row.repeat(4, 1)
    targets = torch.tensor([2, 1, 0, 2])  # probabilities 1/2, 1/3, 1/6, 1/2
    nll = [math.log(2), math.log(3), math.log(6), math.log(2)]
    acc = perplexity_of_logits([(logits[:2], targets[:2]), (logits[2:], targets[2:])])
    mean = sum(nll) / 4
    assert acc.count == 4
    assert acc.ppl == pytest.approx(math.exp(mean), rel=1e-6)
    assert acc.running[0] == pytest.approx(math.exp((nll[0] + nll[1]) / 2), rel=1e-6)
    var = sum(x * x for x in nll) / 4 - mean * mean  # perplexity.cpp: sqrt(var / (count - 1)) * ppl
    assert acc.uncertainty == pytest.approx(math.sqrt(var / 3) * math.exp(mean), rel=1e-6)
    assert token_nll(logits, targets).tolist() == pytest.approx(nll, rel=1e-6)


def test_chunk_plan_follows_perplexity_cpp_on_odd_length():
    n_ctx, n_tokens = 16, 16 * 3 + 7  # odd length: the 7-token tail is never scored
    tokens = list(range(100, 100 + n_tokens))
    plan = plan_chunks(n_tokens, n_ctx)
    assert plan.n_chunks == n_tokens // n_ctx == 3
    assert plan.first == 8 and plan.scored_per_chunk == n_ctx - 1 - n_ctx // 2 == 7
    # positions first .. n_ctx-2 predict tokens first+1 .. n_ctx-1 of each chunk
    assert plan.targets(tokens, 1) == tokens[16 + 9:32]
    assert plan.chunk(tokens, 2) == tokens[32:48]
    with_bos = ChunkPlan(n_ctx, 3, bos_id=7)
    assert with_bos.chunk(tokens, 1) == [7] + tokens[17:32]
    assert with_bos.targets(tokens, 1) == tokens[25:32]  # the swap never changes what is scored
    assert plan_chunks(n_tokens, n_ctx, n_chunks=2).n_chunks == 2
    assert plan_chunks(n_tokens, n_ctx, n_chunks=9).n_chunks == 3


def test_too_short_text_is_refused():
    with pytest.raises(ConvkitError, match="needs at least 32"):
        plan_chunks(31, 16)
    plan_chunks(32, 16)


class _Echo(torch.nn.Module):
    """A 'model' whose logits at each position are a function of the token there and the
    positions before it (causal), so chunking and cache paths can be compared exactly."""

    vocab = 11

    def __init__(self):
        super().__init__()
        self.seen = []

    def new_cache(self, batch, n_ctx):
        return {"ids": torch.empty(batch, 0, dtype=torch.long), "length": 0}

    def forward(self, ids, cache=None, logits_for=None):
        self.seen.append(ids.clone())
        if cache is not None:
            cache["ids"] = torch.cat([cache["ids"], ids], dim=1)
            full = cache["ids"]
        else:
            full = ids
        csum = full.cumsum(1)[:, -ids.shape[1]:].float()
        logits = torch.stack([torch.sin(csum * (k + 1)) for k in range(self.vocab)], dim=-1)
        return logits[:, logits_for] if logits_for is not None else logits


def test_batch_and_pieces_give_the_same_scores():
    tokens = [int(x) for x in torch.randint(0, 11, (16 * 4 + 3,), generator=torch.Generator().manual_seed(0))]
    plan = plan_chunks(len(tokens), 16, bos_id=1)
    runs = {}
    for batch in (16, 32, 64, 4, 8):
        model = _Echo()
        out = list(chunk_logits(model, tokens, plan, batch))
        runs[batch] = torch.cat([c.logits for c in out])
        assert [c.index for c in out] == [0, 1, 2, 3]
        first_pass = model.seen[0]
        assert int(first_pass[0, 0]) == 1  # BOS replaces the first token of every chunk
    for batch, logits in runs.items():
        assert torch.allclose(logits, runs[16], atol=1e-6), batch
    with pytest.raises(ConvkitError, match="--batch 24"):
        list(chunk_logits(_Echo(), tokens, plan, 24))


# ---------------------------------------------------------------------- KLD
def test_kld_of_a_model_with_itself_is_zero():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 500, generator=g) * 4
    targets = torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(1)  # as text would
    acc = kld.KLDAccumulator()
    acc.add(logits, torch.log_softmax(logits, -1), targets, floor=None)
    s = acc.summary()
    assert s["kld_mean"] == 0.0 and s["kld_max"] == 0.0
    assert s["same_top"] == 1.0 and s["delta_ppl"] == 0.0 and s["delta_p_rms"] == 0.0
    # through llama.cpp's 16-bit storage: zero up to its 2.4e-4-nat step
    records = kld.encode_log_probs(logits)
    assert records.shape == (300, kld.record_width(500)) and records.dtype == np.uint16
    stored = kld.decode_log_probs(records, 500)
    acc = kld.KLDAccumulator()
    acc.add(logits, stored, targets)
    s = acc.summary()
    assert abs(s["kld_mean"]) < 1e-5 and s["same_top"] == 1.0
    assert abs(s["delta_ppl"]) < 1e-3 * s["ppl"]


def test_kld_statistics_match_hand_computation():
    base = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.6, 0.3]]))
    ours = torch.log(torch.tensor([[0.25, 0.5, 0.25], [0.2, 0.5, 0.3]]))
    targets = torch.tensor([0, 1])
    acc = kld.KLDAccumulator()
    acc.add(ours, base, targets, floor=None)
    k0 = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    k1 = 0.1 * math.log(0.5) + 0.6 * math.log(0.6 / 0.5)
    s = acc.summary()
    assert s["kld_mean"] == pytest.approx((k0 + k1) / 2, rel=1e-5)
    assert s["same_top"] == 0.5  # row 0: argmax moves from 0 to 1; row 1 stays at 1
    assert s["delta_p_mean"] == pytest.approx(((0.25 - 0.5) + (0.5 - 0.6)) / 2, rel=1e-5)
    assert s["ppl"] == pytest.approx(math.exp((math.log(4) + math.log(2)) / 2), rel=1e-5)
    assert s["ppl_base"] == pytest.approx(math.exp((math.log(2) + math.log(1 / 0.6)) / 2), rel=1e-5)


def test_logits_file_round_trip(tmp_path):
    g = torch.Generator().manual_seed(2)
    n_ctx, n_vocab, n_chunks = 8, 7, 2  # odd vocab: records are padded to even
    tokens = list(range(n_ctx * n_chunks))
    chunks = [torch.randn(3, n_vocab, generator=g) * 3 for _ in range(n_chunks)]
    path = tmp_path / "base.logits"
    with open(path, "wb") as f:
        w = kld.LogitsWriter(f, n_ctx, n_vocab, n_chunks, tokens)
        for c in chunks:
            w.add(c)
    assert path.stat().st_size == 20 + 4 * 16 + 2 * 2 * 3 * (8 + 4)
    lf = kld.LogitsFile(path)
    assert (lf.n_ctx, lf.n_vocab, lf.n_chunks, lf.rows) == (8, 7, 2, 3)
    assert lf.tokens() == tokens
    for i, c in enumerate(chunks):
        assert torch.allclose(lf.chunk(i), torch.log_softmax(c, -1), atol=2.5e-4)
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ConvkitError, match="truncated"):
        kld.LogitsFile(path)


# ------------------------------------------------------ against llama.cpp
def _gguf_with_add_bos(tmp_path):
    """SmolLM2 with tokenizer.ggml.add_bos_token = true (llama.cpp then adds BOS and swaps it in)."""
    import gguf

    target = tmp_path / "smollm2-bos.gguf"
    shutil.copyfile(smollm2_gguf(), target)
    reader = gguf.GGUFReader(target, "r+")
    field = reader.fields["tokenizer.ggml.add_bos_token"]
    field.parts[field.data[0]][0] = True
    del reader
    return target


@pytest.mark.oracle
def test_tokens_chunks_and_bos_match_llama_cpp(tmp_path):
    import llama_cpp

    from convkit.runtime import load_model
    from convkit.runtime.tokenizer import load_tokenizer

    model_path = _gguf_with_add_bos(tmp_path)
    text = python_docs_text()[:9001]  # odd length, about 2.5 chunks of 128
    n_ctx = 128
    tok = load_tokenizer(model_path)
    ours = tokenize_for_perplexity(tok, text)
    llm = llama_cpp.Llama(model_path=str(model_path), logits_all=True, n_ctx=n_ctx, n_threads=2, verbose=False)
    theirs = llm.tokenize(text.encode(), add_bos=True, special=False)  # common_tokenize(text, true)
    assert ours == theirs and ours[0] == tok.bos_id
    plan = plan_chunks(len(ours), n_ctx, bos_id=tok.bos_id)
    # what perplexity.cpp evaluates: n_chunk = n_tokens / n_ctx, BOS in slot 0, positions n_ctx/2..n_ctx-2
    assert plan.n_chunks == len(theirs) // n_ctx
    plan = plan_chunks(len(ours), n_ctx, 3, bos_id=tok.bos_id)  # evaluate three of them (test time)
    ref_chunks = []  # llama.cpp first: torch's idle OpenMP threads would slow its threads down
    for i in range(plan.n_chunks):
        fed = list(theirs[i * n_ctx:(i + 1) * n_ctx])
        fed[0] = llm.token_bos()
        assert plan.chunk(ours, i) == fed
        llm.reset()
        llm.eval(fed)
        scores = torch.from_numpy(np.array(llm.scores[:n_ctx], dtype=np.float32))
        want = torch.tensor(theirs[i * n_ctx + n_ctx // 2 + 1:(i + 1) * n_ctx])
        ref_chunks.append((scores[n_ctx // 2:n_ctx - 1], want))
    del llm
    model = load_model(model_path, dequantize_all=True)
    our_chunks = list(chunk_logits(model, ours, plan))
    for (ref_logits, want), chunk in zip(ref_chunks, our_chunks):
        assert chunk.targets.tolist() == want.tolist()
        # same tokens in the same slots: the logits agree up to the Q8 noise llama.cpp adds
        assert (chunk.logits - ref_logits).abs().max() < 2.0
    ppl_ref = perplexity_of_logits(ref_chunks).ppl
    ppl_ours = perplexity_of_logits(our_chunks).ppl
    assert ppl_ours == pytest.approx(ppl_ref, rel=0.03)


# ------------------------------------------------------------- bad input
def _run(args):
    from convkit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code


@pytest.mark.parametrize("case", ["short", "ctx", "cuda", "arch", "batch"])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    model = str(smollm2_gguf())
    text = tmp_path / "t.txt"
    text.write_text(python_docs_text()[:20000] if case != "short" else "too short " * 40)
    args = {"short": [model, "--text", str(text)],
            "ctx": [model, "--text", str(text), "--ctx", "100000"],
            "cuda": [model, "--text", str(text), "--device", "cuda"],
            "arch": [str(tmp_path / "bert.gguf"), "--text", str(text)],
            "batch": [model, "--text", str(text), "--ctx", "64", "--batch", "48"]}[case]
    if case == "arch":
        import gguf

        w = gguf.GGUFWriter(tmp_path / "bert.gguf", "bert")
        w.add_block_count(1)
        w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert _run(["perplexity"] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convkit: error:")
