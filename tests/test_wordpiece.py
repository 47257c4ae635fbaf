"""WordPiece and BERT normalization against HF tokenizers: MiniLM's real vocab, every
code point, hypothesis text, and training against HF's WordPieceTrainer."""
import os
import random
import subprocess
import sys
import sysconfig
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from realdata import minilm_dir, python_docs_text
from tokenizers_impl import TokenizerError, WordPiece, wordpiece
from tokenizers_impl.formats import read_vocab_txt
from tokenizers_impl.normalize import BertNormalizer, bert_pretokenize
from tokenizers_impl.wordpiece import BERT_SPECIAL_TOKENS, count_words

HYPO = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# every code point a Python str can hold in UTF-8 (surrogates excluded)
ALL_CHARS = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
TRICKY = ["[CLS]", "[SEP]", "[UNK]", "[MASK]", "\u03a3", "\u0130", "\u00c9", "e\u0301", "\u0301\u0316",
          "\u4e2d\u6587", "\uf900", "\u3000", "\t", "\n", "\x00", "\ufffd", "\u200b", "\u00ad", "x" * 101,
          "\U00011938", "\u1734", "\u166d", "\ua7cb", "caf\u00e9", " ", "don't", "1.5", "\U0001f600",
          "\u0085", "\x1c", "\ue000", "\u0378", "##", "unaffable", "HELLO"]
mixed_text = st.text(max_size=200) | st.lists(
    st.sampled_from(TRICKY) | st.text(max_size=5), max_size=30).map("".join)


@pytest.fixture(scope="module")
def minilm():
    """Our WordPiece from MiniLM's vocab.txt (uncased, as its tokenizer.json says) and HF's
    tokenizer from its tokenizer.json, truncation and padding off."""
    d = minilm_dir()
    ours = read_vocab_txt((d / "vocab.txt").read_text(encoding="utf-8"), normalizer=BertNormalizer(lowercase=True))
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    hf.no_truncation()
    hf.no_padding()
    return ours, hf


# ---------------------------------------------------------------- normalizer and pre-tokenizer

@pytest.mark.parametrize("options", [
    dict(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True),
    dict(clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=False),
    dict(clean_text=False, handle_chinese_chars=False, strip_accents=False, lowercase=True),
])
def test_normalizer_matches_hf_on_every_code_point(options):
    """Each code point between two letters (so no two marks are reordered together)."""
    text = "a".join(ALL_CHARS)
    assert BertNormalizer(**options).normalize(text) == normalizers.BertNormalizer(**options).normalize_str(text)


def test_pretokenizer_matches_hf_on_every_code_point():
    text = "a".join(ALL_CHARS)
    assert bert_pretokenize(text) == [w for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(text)]


def test_lowercase_has_no_final_sigma():
    """Rust lowercases character by character: a final capital sigma becomes σ, not ς."""
    assert BertNormalizer(strip_accents=False).normalize("ΟΔΟΣ Σ") == "οδοσ σ"


# ---------------------------------------------------------------- MiniLM's vocab

def test_minilm_python_docs_lines_and_paragraphs(minilm):
    ours, hf = minilm
    text = python_docs_text()
    for pieces in (text.split("\n"), text.split("\n\n")):
        expected = [e.ids for e in hf.encode_batch(pieces, add_special_tokens=False)]
        assert ours.encode_batch(pieces) == expected


def test_minilm_whole_text_with_cls_sep(minilm):
    ours, hf = minilm
    text = python_docs_text()[:200_000]
    assert ours.encode(text, add_special_tokens=True) == hf.encode(text).ids


@HYPO
@given(mixed_text)
def test_minilm_hypothesis_text(minilm, text):
    ours, hf = minilm
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids


def test_minilm_decode_matches_hf(minilm):
    ours, hf = minilm
    lines = [line for line in python_docs_text().split("\n") if line.strip()][:3000]
    for enc in hf.encode_batch(lines):
        assert ours.decode(enc.ids, skip_special_tokens=True) == hf.decode(enc.ids)
    ids = hf.encode("[CLS] Hello, world! [SEP]", add_special_tokens=False).ids
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)


def test_long_word_is_unknown_like_bert(minilm):
    ours, hf = minilm
    for n in (99, 100, 101, 250):
        text = "ab" * (n // 2) + "c" * (n % 2)
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids
    assert ours.encode("a" * 101) == [ours.unk_id]


# ---------------------------------------------------------------- training

def _corpus_lines(limit=None):
    text = python_docs_text()
    return (text[:limit] if limit else text).split("\n")


def _hf_wordpiece_train(lines, vocab_size):
    hf = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer()
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.train_from_iterator(lines, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(BERT_SPECIAL_TOKENS), show_progress=False))
    return [t for t, _ in sorted(hf.get_vocab().items(), key=lambda kv: kv[1])]


def _replay(word_counts: Counter, merged_tokens, prefix="##"):
    """Naive WordPiece merging: yields, before each merge of merged_tokens, the count of
    the pair that produces it (the most frequent such pair) and the highest pair count."""
    words = {w: [w[0]] + [prefix + c for c in w[1:]] for w in word_counts}
    for token in merged_tokens:
        pairs = Counter()
        for w, syms in words.items():
            for a, b in zip(syms, syms[1:]):
                pairs[a, b] += word_counts[w]
        def joined(a, b):
            return a + (b[len(prefix):] if b.startswith(prefix) else b)
        best = max(((c, p) for p, c in pairs.items() if joined(*p) == token), default=(0, None))
        yield best[0], max(pairs.values())
        a, b = best[1]
        for w, syms in words.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(token)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out


def test_frequency_training_matches_hf_wordpiece_trainer_up_to_ties():
    """HF's WordPieceTrainer is a BPE trainer (merge the most frequent pair) with the ##
    prefix. It breaks ties between equally frequent pairs by token id, and the ids of
    its ## symbols follow a hash map's iteration order, so two HF runs on the same corpus
    can differ after the first tie. We number ## symbols by code point instead.
    Difference documented here: from the first merge where our order and HF's differ,
    both must be merging pairs of the same, highest count (a tie), and up to there the
    merges are identical."""
    lines = _corpus_lines(150_000)
    vocab_size = 700
    ours = WordPiece.train(lines, vocab_size, scoring="frequency")
    our_tokens = [t for t, _ in sorted(ours.vocab.items(), key=lambda kv: kv[1])]
    hf_tokens = _hf_wordpiece_train(lines, vocab_size)
    counts = count_words(lines, BertNormalizer(), BERT_SPECIAL_TOKENS)
    n_alpha = (len(BERT_SPECIAL_TOKENS) + len({c for w in counts for c in w})
               + len({c for w in counts for c in w[1:]}))
    assert len(our_tokens) == len(hf_tokens) == vocab_size
    assert our_tokens[:len(BERT_SPECIAL_TOKENS)] == hf_tokens[:len(BERT_SPECIAL_TOKENS)]
    assert set(our_tokens[:n_alpha]) == set(hf_tokens[:n_alpha])
    ours_merged, hf_merged = our_tokens[n_alpha:], hf_tokens[n_alpha:]
    first = next((i for i, (a, b) in enumerate(zip(ours_merged, hf_merged)) if a != b), None)
    if first is None:
        return
    # replay the shared prefix, then both candidates at the divergence
    replay = _replay(counts, ours_merged[:first + 1])
    for _ in range(first):
        next(replay)
    our_count, top = next(replay)
    hf_count, top_hf = next(_replay_from(counts, ours_merged[:first], hf_merged[first]))
    assert our_count == top == hf_count == top_hf, f"merge {first}: not a tie"


def _replay_from(counts, shared, token):
    """The (count, top) before merging token after the shared merges."""
    gen = _replay(counts, [*shared, token])
    for _ in shared:
        next(gen)
    yield next(gen)


@pytest.mark.parametrize("scoring", ["likelihood", "frequency"])
def test_training_matches_a_naive_implementation(scoring):
    """Each merge maximises freq(ab) / (freq(a) * freq(b)) (likelihood) or freq(ab)
    (frequency), ties to the higher count, then the smaller (left id, right id):
    recomputed from scratch at every step."""
    lines = _corpus_lines(30_000)
    model = WordPiece.train(lines, 400, scoring=scoring)
    tokens = [t for t, _ in sorted(model.vocab.items(), key=lambda kv: kv[1])]
    counts = count_words(lines, BertNormalizer(), BERT_SPECIAL_TOKENS)
    ids = {t: i for i, t in enumerate(tokens)}
    n_alpha = (len(BERT_SPECIAL_TOKENS) + len({c for w in counts for c in w})
               + len({c for w in counts for c in w[1:]}))
    words = {w: [w[0]] + ["##" + c for c in w[1:]] for w in counts}
    for token in tokens[n_alpha:]:
        pairs, freq = Counter(), Counter()
        for w, syms in words.items():
            for s in syms:
                freq[s] += counts[w]
            for p in zip(syms, syms[1:]):
                pairs[p] += counts[w]
        def key(p):
            score = pairs[p] / (float(freq[p[0]]) * freq[p[1]]) if scoring == "likelihood" else pairs[p]
            return (-score, -pairs[p], ids[p[0]], ids[p[1]])
        a, b = min(pairs, key=key)
        assert a + b.removeprefix("##") == token
        for w, syms in words.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(token)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out


def test_trained_vocab_encodes_like_hf_wordpiece():
    """What we train, HF's WordPiece model encodes to the same ids."""
    lines = _corpus_lines(100_000)
    ours = WordPiece.train(lines, 1500)
    hf = Tokenizer(models.WordPiece(ours.vocab, unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer()
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    test_lines = _corpus_lines()[-3000:]
    assert ours.encode_batch(test_lines) == [e.ids for e in hf.encode_batch(test_lines)]


_TRAIN_SNIPPET = """
import hashlib, json, sys
sys.path.insert(0, "tests")
from realdata import python_docs_text
from tokenizers_impl import WordPiece
lines = python_docs_text()[:60000].split("\\n")
for scoring in ("likelihood", "frequency"):
    wp = WordPiece.train(lines, 600, scoring=scoring)
    print(hashlib.sha256(json.dumps(sorted(wp.vocab.items(), key=lambda kv: kv[1])).encode()).hexdigest())
"""


def test_training_is_deterministic_across_hash_seeds():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    outputs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", _TRAIN_SNIPPET], cwd=root, env=env, capture_output=True,
                             text=True, check=True).stdout
        outputs.add(out)
    assert len(outputs) == 1
    # chunking the corpus differently changes nothing either
    lines = _corpus_lines(60_000)
    assert WordPiece.train(lines, 600).vocab == WordPiece.train(["\n".join(lines)], 600).vocab


def test_special_tokens_are_never_split_or_counted():
    lines = ["[CLS] hello [SEP] world [MASK]"] * 5
    model = WordPiece.train(lines, 60)
    assert model.encode("[CLS] hello [SEP]")[0] == model.special_tokens["[CLS]"]
    assert not any(t in model.vocab for t in ("cls", "sep", "mask"))


def test_training_bad_input():
    with pytest.raises(TokenizerError, match="empty corpus"):
        WordPiece.train(["", "   \n"], 100)
    with pytest.raises(TokenizerError, match="smaller than the corpus alphabet"):
        WordPiece.train(["hello world"], 10)
    with pytest.raises(TokenizerError, match="scoring"):
        WordPiece.train(["hello"], 100, scoring="magic")
    with pytest.raises(TokenizerError, match="not in the WordPiece vocab"):
        WordPiece({"a": 0})
    with pytest.raises(TokenizerError, match="token id 99"):
        WordPiece({"[UNK]": 0, "a": 1}).decode([99])


# ---------------------------------------------------------------- compiled trainer and its Python reference

compiled = pytest.mark.skipif(wordpiece._wordpiece_train is None, reason="compiled helper not built")


def _multilingual_lines():
    """Real documentation lines, the CJK sample texts that ship with Python's own tests (when
    installed), and lines mixing the tricky characters above with real words."""
    lines = _corpus_lines(80_000)
    cjk = Path(sysconfig.get_paths()["stdlib"]) / "test" / "cjkencodings"
    for path in sorted(cjk.glob("*-utf8.txt")):
        lines += path.read_text(encoding="utf-8", errors="replace").split("\n")
    rng = random.Random(0)
    words = " ".join(lines).split()[:5000]
    for _ in range(3000):
        lines.append("".join(rng.choice(TRICKY) if rng.random() < 0.3 else rng.choice(words) + " "
                             for _ in range(rng.randrange(1, 12))))
    return lines


def _train_both(monkeypatch, lines, *args, **kwargs):
    """(compiled, Python) results of WordPiece.train with the same arguments, and the
    progress calls of each."""
    out = []
    for helper in (wordpiece._wordpiece_train, None):
        calls = []
        with monkeypatch.context() as m:
            m.setattr(wordpiece, "_wordpiece_train", helper)
            model = WordPiece.train(lines, *args, progress=calls.append, **kwargs)
        out.append((model.vocab, model.special_tokens, model.post_processor, calls))
    return out


@compiled
@pytest.mark.parametrize("scoring", ["likelihood", "frequency"])
@pytest.mark.parametrize("vocab_size, min_frequency, specials", [
    (1200, 0, BERT_SPECIAL_TOKENS),
    (4000, 0, BERT_SPECIAL_TOKENS),
    (3000, 3, ("[UNK]", "<s>", "</s>", "the", "##ing")),  # specials that are also words or merges
    (30000, 2, ()),  # more than the corpus gives: the merges run out
])
def test_compiled_trainer_matches_the_python_one(monkeypatch, scoring, vocab_size, min_frequency, specials):
    """Same vocab, same ids, same special tokens, same progress calls."""
    lines = _multilingual_lines()
    ours, reference = _train_both(monkeypatch, lines, vocab_size, min_frequency=min_frequency,
                                  special_tokens=specials, scoring=scoring)
    assert ours == reference


@compiled
@HYPO
@given(lines=st.lists(st.text(alphabet="abcA\u00e9\u4e2d.' \n", max_size=12), min_size=1, max_size=12),
       extra=st.integers(0, 40), min_frequency=st.integers(0, 3),
       scoring=st.sampled_from(["likelihood", "frequency"]))
def test_compiled_trainer_matches_the_python_one_on_tiny_corpora(lines, extra, min_frequency, scoring):
    """Tiny corpora over a few characters: many pairs tie, so every tie rule is exercised."""
    counts = count_words(lines, BertNormalizer(), BERT_SPECIAL_TOKENS)
    if not counts:
        return
    n_alpha = (len(BERT_SPECIAL_TOKENS) + len({c for w in counts for c in w})
               + len({c for w in counts for c in w[1:]}))
    with pytest.MonkeyPatch.context() as m:
        ours, reference = _train_both(m, lines, n_alpha + extra, min_frequency=min_frequency, scoring=scoring)
    assert ours == reference


@compiled
@pytest.mark.parametrize("normalizer", [
    BertNormalizer(), None, BertNormalizer(lowercase=False),
    BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=False)])
def test_compiled_word_count_matches_the_python_one(monkeypatch, normalizer):
    """Control characters, odd ASCII whitespace (\\x0b, \\x1c) and punctuation included."""
    lines = _multilingual_lines() + ["a\x0bb\x1cc\x7fd\x00E\tF\r.G", "[CLS]x\x01y[SEP]", "\x1f\x1e,,"]
    for specials in (BERT_SPECIAL_TOKENS, (), ("a\nb",)):
        ours = count_words(lines, normalizer, specials)
        monkeypatch.setattr(wordpiece, "_wordpiece_train", None)
        reference = count_words(lines, normalizer, specials)
        monkeypatch.undo()
        assert ours == reference


class _ReusingTrainer(wordpiece._Trainer):
    """Names every fourth merge with an existing symbol that occurs in the words, so that a
    merge raises the frequency of a symbol that already has pairs (real corpora reuse a
    token only when two merges spell the same string), the others with a new name of
    their own; records the merges."""

    def _new_token(self, a, b):
        self.merges.append((a, b))
        if len(self.merges) % 4 == 0:
            return next(i for i in range(self.first, len(self.id_to_token)) if i not in (a, b))
        self.id_to_token.append(f"<merge {len(self.merges)}>")
        return len(self.id_to_token) - 1


@compiled
@pytest.mark.parametrize("scoring", ["likelihood", "frequency"])
def test_compiled_merge_loop_matches_the_python_one_when_tokens_are_reused(monkeypatch, scoring):
    counts = count_words(_corpus_lines(40_000), BertNormalizer(), BERT_SPECIAL_TOKENS)
    runs = []
    for helper in (wordpiece._wordpiece_train, None):
        monkeypatch.setattr(wordpiece, "_wordpiece_train", helper)
        trainer = _ReusingTrainer(counts, list(BERT_SPECIAL_TOKENS), "##")
        trainer.merges, trainer.first = [], len(BERT_SPECIAL_TOKENS)
        trainer.run(1500, 0, scoring, None)
        runs.append((trainer.merges, trainer.id_to_token))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) > 1000
