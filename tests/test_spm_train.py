"""The sentencepiece trainers (spm-bpe and Unigram) against sentencepiece itself.

Both sides read the same file with the same settings; ours normalizes with
sentencepiece's own nmt_nfkc normalizer (SentencePieceNormalizer), so the comparison is
of the training algorithms. spm-bpe must give the identical vocabulary (pieces, scores,
types, ids). Unigram must give the same pieces, and on held-out text of another source
(Python's own source code, while training reads its documentation), segmenting with our
pieces and scores gives within 1% of the tokens that sentencepiece's model gives, at no
lower average log-probability per token. The compiled helper and the Python reference
must agree.
"""
import inspect
import random

import numpy as np
import pytest
import sentencepiece as spm

import spm_oracle
from realdata import python_docs_text
from tokenizers_impl import TokenizerError, spm_bpe_train, spm_lattice, spm_train_input, unigram_train
from tokenizers_impl.spm_bpe_train import train_spm_bpe
from tokenizers_impl.spm_train_input import (BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, SpmTrainOptions,
                                             load_corpus, piece_validator)
from tokenizers_impl.unigram_train import train_unigram

NORMALIZE = spm.SentencePieceNormalizer(rule_name="nmt_nfkc").normalize


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "docs.txt"
    path.write_text(python_docs_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Text in several scripts, with digits, marks and ties of frequency: made here from
    syllables, deterministic."""
    rng = random.Random(12)
    syllables = (["ka", "to", "ri", "ne", "su", "mo", "la", "pe", "qu", "zi"]
                 + ["да", "не", "ко", "ми", "ра", "то"] + ["日", "本", "語", "漢", "字", "の", "テ", "キ", "ス", "ト"]
                 + ["12", "7", "0x", "é", "ö", "x̃", "١٢", "ß", "!", "...", "(", ")"])
    lines = []
    for _ in range(3000):
        words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(rng.randint(1, 9))]
        lines.append(" ".join(words))
    path = tmp_path_factory.mktemp("spm") / "mixed.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _ours(train, path, **kwargs):
    opts = SpmTrainOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    with open(path, encoding="utf-8") as f:
        return train(f, opts, normalize=NORMALIZE)


BPE_CASES = [
    ("docs", dict(vocab_size=2000)),
    ("docs", dict(vocab_size=5000, byte_fallback=True, user_defined_symbols=["<tool>", "def"],
                  control_symbols=["<ctl>"])),
    ("mixed", dict(vocab_size=600)),
    ("mixed", dict(vocab_size=600, split_digits=True, character_coverage=0.999)),
    ("mixed", dict(vocab_size=500, split_by_unicode_script=False, split_by_number=False)),
    # beyond the pairs that still occur: sentencepiece takes pairs that are gone, to the last one
    ("mixed", dict(vocab_size=2110)),
]


@pytest.mark.parametrize("corpus,kwargs", BPE_CASES)
def test_spm_bpe_vocabulary_is_sentencepieces(corpus, kwargs, request):
    path = request.getfixturevalue(corpus)
    theirs = spm_oracle.pieces(spm_oracle.train(path, "bpe", **kwargs))
    ours = _ours(train_spm_bpe, path, **kwargs)
    assert len(ours) == len(theirs)
    diffs = [(i, a, b) for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert not diffs, diffs[:5]


def test_spm_bpe_reserved_pieces_come_first(docs):
    vocab = _ours(train_spm_bpe, docs, vocab_size=1000, byte_fallback=True, user_defined_symbols=["<tool>"])
    assert vocab[:4] == [("<unk>", 0.0, UNKNOWN), ("<s>", 0.0, CONTROL), ("</s>", 0.0, CONTROL),
                         ("<tool>", 0.0, USER_DEFINED)]
    assert vocab[4:260] == [(f"<0x{b:02X}>", 0.0, BYTE) for b in range(256)]
    assert [s for _, s, _ in vocab[260:]] == [-float(i) for i in range(len(vocab) - 260)]


def _held_out() -> list[str]:
    import argparse
    import difflib
    import textwrap
    return "\n".join(inspect.getsource(m) for m in (argparse, difflib, textwrap)).split("\n")


UNIGRAM_CASES = [
    ("docs", dict(vocab_size=2000)),
    ("docs", dict(vocab_size=4000, byte_fallback=True, user_defined_symbols=["<tool>"])),
    ("mixed", dict(vocab_size=300)),
]


@pytest.mark.parametrize("corpus,kwargs", UNIGRAM_CASES)
def test_unigram_matches_sentencepiece_on_held_out_text(corpus, kwargs, request):
    path = request.getfixturevalue(corpus)
    model = spm_oracle.train(path, "unigram", **kwargs)
    theirs = spm_oracle.pieces(model)
    ours = _ours(train_unigram, path, **kwargs)
    assert len(ours) == len(theirs)
    assert [(p, t) for p, _, t in ours if t != NORMAL] == [(p, t) for p, _, t in theirs if t != NORMAL]
    ours_pieces, their_pieces = {p for p, _, _ in ours}, {p for p, _, _ in theirs}
    if corpus == "docs":
        assert ours_pieces == their_pieces
        score = {p: s for p, s, _ in theirs}
        assert max(abs(s - score[p]) for p, s, _ in ours) < 1e-3  # float32 sums in another order
    else:
        # words made of independent syllables put a piece's score within float32 rounding of
        # its parts' sum, where sentencepiece's float32 arithmetic and ours can choose apart
        assert len(ours_pieces ^ their_pieces) <= 0.01 * len(ours)
    held = _held_out() if corpus == "docs" else [line[::-1] for line in path.read_text().split("\n")[:500]]
    n_theirs, ll_theirs = spm_oracle.token_stats(model, held)
    n_ours, ll_ours = spm_oracle.token_stats(spm_oracle.with_pieces(model, ours), held)
    assert n_ours <= 1.01 * n_theirs
    assert ll_ours >= ll_theirs - 0.01 * abs(ll_theirs)


def test_trainers_are_deterministic(mixed):
    assert _ours(train_unigram, mixed, vocab_size=150) == _ours(train_unigram, mixed, vocab_size=150)
    assert _ours(train_spm_bpe, mixed, vocab_size=400) == _ours(train_spm_bpe, mixed, vocab_size=400)


@pytest.mark.skipif(spm_lattice._spm_train is None, reason="compiled helper not built")
@pytest.mark.parametrize("corpus", ["docs", "mixed"])
def test_compiled_helper_matches_python_reference(corpus, request, monkeypatch):
    path = request.getfixturevalue(corpus)
    lines = path.read_text(encoding="utf-8").split("\n")[:1500]
    size = 800 if corpus == "docs" else 150
    compiled = (train_spm_bpe(lines, SpmTrainOptions(vocab_size=size), NORMALIZE),
                train_unigram(lines, SpmTrainOptions(vocab_size=size), NORMALIZE))
    monkeypatch.setattr(spm_lattice, "_spm_train", None)
    monkeypatch.setattr(spm_bpe_train, "_spm_train", None)
    monkeypatch.setattr(spm_train_input, "_spm_train", None)
    python = (train_spm_bpe(lines, SpmTrainOptions(vocab_size=size), NORMALIZE),
              train_unigram(lines, SpmTrainOptions(vocab_size=size), NORMALIZE))
    assert compiled[0] == python[0]
    big = 1647 if corpus == "mixed" else None  # its largest; pairs run out at 1162 merges
    if big:  # into the pairs that are gone
        monkeypatch.undo()
        compiled_big = train_spm_bpe(lines, SpmTrainOptions(vocab_size=big), NORMALIZE)
        monkeypatch.setattr(spm_bpe_train, "_spm_train", None)
        assert compiled_big == train_spm_bpe(lines, SpmTrainOptions(vocab_size=big), NORMALIZE)
    assert [p for p, _, _ in compiled[1]] == [p for p, _, _ in python[1]]
    np.testing.assert_allclose([s for _, s, _ in compiled[1]], [s for _, s, _ in python[1]], atol=1e-5)


@pytest.mark.skipif(spm_lattice._spm_train is None, reason="compiled helper not built")
def test_lattice_passes_agree_with_reference(docs, monkeypatch):
    """Each compiled pass on one training state where a third of the pieces (some
    characters among them) are gone, so unknown nodes occur."""
    opts = SpmTrainOptions(vocab_size=2000)
    corpus = load_corpus(docs.read_text(encoding="utf-8").split("\n")[:2000], opts, NORMALIZE)
    seeds = unigram_train.seed_pieces(corpus, opts, piece_validator(opts))
    words = corpus.word_counts()
    index = {p: i for i, (p, _) in enumerate(seeds)}
    lattices = spm_lattice.build([w for w, _ in words], index, 16)
    own = spm_lattice.build([p for p, _ in seeds], index, 16)
    rng = np.random.default_rng(0)
    cur = np.sort(rng.choice(len(seeds), len(seeds) * 2 // 3, replace=False))
    scores = np.array([seeds[i][1] for i in cur])
    active = unigram_train._active(cur, len(seeds))
    freq = np.array([n for _, n in words], np.float64)
    unk = float(scores.min()) - 10

    def passes():
        return (spm_lattice.expected_counts(lattices, active, scores, freq, unk, 0),
                spm_lattice.viterbi_counts(lattices, active, scores, freq, unk, 0),
                spm_lattice.second_best(own, active, scores, unk, 0),
                unigram_train.seed_pieces(corpus, opts, piece_validator(opts)))

    (exp_c, logz_c), vit_c, (kinds_c, alts_c), seeds_c = passes()
    monkeypatch.setattr(spm_lattice, "_spm_train", None)
    python_lattices = spm_lattice.build([w for w, _ in words], index, 16)
    for field in ("word_len", "offsets", "pos", "length", "piece"):
        assert np.array_equal(getattr(python_lattices, field), getattr(lattices, field))
    (exp_p, logz_p), vit_p, (kinds_p, alts_p), seeds_p = passes()
    np.testing.assert_allclose(exp_c, exp_p, rtol=1e-9, atol=1e-9)
    assert logz_c == pytest.approx(logz_p, rel=1e-12)
    assert np.array_equal(vit_c, vit_p)
    assert np.array_equal(kinds_c, kinds_p) and alts_c == alts_p
    assert set(kinds_p.tolist()) == {0, 1, 2}
    assert seeds_c == seeds_p


@pytest.mark.parametrize("train", [train_spm_bpe, train_unigram])
def test_bad_input_says_what_is_wrong(train):
    with pytest.raises(TokenizerError, match="no text"):
        train(["", "   "], SpmTrainOptions(vocab_size=100))
    with pytest.raises(TokenizerError, match="smaller than the alphabet"):
        train(["abcdefghij klmnop"], SpmTrainOptions(vocab_size=10))
    with pytest.raises(TokenizerError, match="too large for this corpus"):
        train(["abcdefghij klmnop"] * 3, SpmTrainOptions(vocab_size=500))


def test_spm_bpe_largest_vocab_is_sentencepieces(mixed):
    """sentencepiece refuses one piece more than the corpus gives; so do we, saying how many."""
    with pytest.raises(RuntimeError, match="<= 2110"):
        spm_oracle.train(mixed, "bpe", 2111)
    with pytest.raises(TokenizerError, match="at most 2110 pieces"):
        _ours(train_spm_bpe, mixed, vocab_size=2111)


@pytest.mark.skipif(spm_lattice._spm_train is None, reason="compiled helper not built")
def test_word_counts_agree_with_reference(mixed, monkeypatch):
    text = "".join(NORMALIZE(line) + "\n" for line in mixed.read_text(encoding="utf-8").split("\n") if line)
    text += "no▁prefix▁▁double▁\n▁\n▁▁\nx\n"
    counts = spm_train_input._WordCounts()
    counts.add(text)
    compiled = counts.result()
    monkeypatch.setattr(spm_train_input, "_spm_train", None)
    counts = spm_train_input._WordCounts()
    counts.add(text)
    words, ends = counts.result()
    assert compiled == (words, ends)
    assert words["no"] == 1 and words["▁"] >= 3 and ends["x"] == 1
    assert sum(ends.values()) == text.count("\n")


def test_basic_normalizer_is_nmt_nfkc_on_real_text(docs):
    """The stand-in normalizer against sentencepiece's nmt_nfkc (which knows Unicode
    versions newer than Python 3.11's: only characters they add can differ)."""
    from tokenizers_impl.spm_train_input import basic_nmt_nfkc

    lines = docs.read_text(encoding="utf-8").split("\n") + _held_out()
    lines += ["\tTab\x0bvt\x01ctl\u200bzw\ufeffbom \ufffd\u2581 ～ ﬁ ① Ｈｅｌｌｏ\u3000x  ", "   ", ""]
    assert [basic_nmt_nfkc(line) for line in lines] == [NORMALIZE(line) for line in lines]


def test_corpus_lines_are_sentencepieces_lines(tmp_path):
    from tokenizers_impl.spm_train_input import corpus_lines

    text = "first line\r\nsecond\u2028same line\n\n" + "x" * 5000 + " long\nlast without newline"
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode("utf-8"))
    assert list(corpus_lines([path], chunk_bytes=64)) == text.split("\n")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(TokenizerError, match="not UTF-8"):
        list(corpus_lines([bad]))
