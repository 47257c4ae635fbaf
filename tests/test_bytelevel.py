"""Byte-level BPE against HF tokenizers: SmolLM2's real vocab, training, pre-tokenizers."""
import json
import random
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

from realdata import python_docs_text
from smollm2_fixture import smollm2_tokenizer_json
from tokenizers_impl import ByteLevelBPE, TokenizerError
from tokenizers_impl import bytelevel, merges, pretokenize
from tokenizers_impl.bytelevel import bytes_to_unicode

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<pad>"]

# Characters assigned in this Python's Unicode database: HF tokenizers' regex engine
# knows a newer Unicode, where some code points unassigned here are letters.
ASSIGNED = st.characters(blacklist_categories=("Cn", "Cs"))
unicode_text = st.text(ASSIGNED, max_size=200) | st.text(
    st.sampled_from(list("ab 1\n\t'sS") + ["\u00e9", "\u3000", "\u0661", "\U0001F600", "\u00a0", "\r"]),
    max_size=60)
HYPO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_compiled_helper_is_built():
    """Both paths are tested against each other only if the helper exists."""
    assert bytelevel._bpe is not None and merges._bpe is not None


# ---------------------------------------------------------------- SmolLM2's vocab

@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_tokenizer_json()
    spec = json.loads(path.read_text(encoding="utf-8"))
    merge_list = [m.split(" ", 1) if isinstance(m, str) else m for m in spec["model"]["merges"]]
    specials = {t["content"]: t["id"] for t in spec["added_tokens"] if t["special"]}
    ours = ByteLevelBPE(spec["model"]["vocab"], merge_list, pretokenizer="smollm", special_tokens=specials)
    return ours, Tokenizer.from_file(str(path))


@pytest.mark.realdata
def test_smollm2_ids_match_hf_on_python_docs(smollm2):
    ours, hf = smollm2
    text = python_docs_text()
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids
    head = text[:40_000]
    assert ours.encode_reference(head) == hf.encode(head, add_special_tokens=False).ids


@pytest.mark.realdata
@HYPO
@given(text=unicode_text)
def test_smollm2_ids_match_hf_on_unicode(smollm2, text):
    ours, hf = smollm2
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids
    # the pure-Python path treats special tokens as plain text, as encode_ordinary does
    # (hypothesis draws the test file's own strings too, "<|im_start|>" among them)
    assert ours.encode_reference(text) == ours.encode_ordinary(text)


@pytest.mark.realdata
def test_special_tokens_are_matched_first(smollm2):
    ours, hf = smollm2
    text = "<|im_start|>user\nhi<|im_end|><|im_end|>x<|endoftext|> <|im_start|"
    ids = ours.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert ids.count(ours.token_to_id("<|im_end|>")) == 2
    assert ours.decode(ids) == text
    assert ours.id_to_token(ours.token_to_id("<|im_start|>")) == "<|im_start|>"


@pytest.mark.realdata
def test_long_pieces_match_hf(smollm2):
    """Pieces past a few hundred bytes take the compiled helper's heap-based path."""
    ours, hf = smollm2
    text = ("日本語のテキストを書きます" * 300 + " " * 3000 + "x" * 4000 + " " + "ab" * 2000
            + "\u00e9" * 700 + "!?" * 900 + "\n" * 500)
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids


# ---------------------------------------------------------------- pre-tokenizers

def _hf_pieces(pretok, text):
    return [piece for piece, _ in pretok.pre_tokenize_str(text)]


def _byte_form(pieces):
    b2u = bytes_to_unicode()
    return ["".join(b2u[b] for b in p.encode("utf-8")) for p in pieces]


HF_PRETOKENIZERS = {
    "gpt2": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
    "llama3": pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated"),
}


@HYPO
@given(text=unicode_text, preset=st.sampled_from(sorted(HF_PRETOKENIZERS)))
def test_pretokenizers_match_hf(text, preset):
    ours = pretokenize.pretokenize(text, preset)
    assert ours == pretokenize.pretokenize_reference(text, preset)
    assert "".join(ours) == text
    expected = _hf_pieces(HF_PRETOKENIZERS[preset], text)
    assert (ours if preset == "llama3" else _byte_form(ours)) == expected


def test_pretokenizers_on_every_assigned_character():
    chars = "".join(chr(c) for c in range(0x30000)
                    if unicodedata.category(chr(c)) not in ("Cn", "Cs"))
    text = " ".join(chars[i:i + 7] for i in range(0, len(chars), 7)) + "  x'S 'll 123456\r\n\n  y "
    for preset, pretok in HF_PRETOKENIZERS.items():
        ours = pretokenize.pretokenize(text, preset)
        assert ours == pretokenize.pretokenize_reference(text, preset)
        assert (ours if preset == "llama3" else _byte_form(ours)) == _hf_pieces(pretok, text)


# ---------------------------------------------------------------- training

def _hf_train(lines, vocab_size, min_frequency, preset):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = HF_PRETOKENIZERS[preset]
    if preset == "llama3":  # the split pieces still need the byte-to-unicode form
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            HF_PRETOKENIZERS[preset], pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]


@pytest.fixture(scope="module")
def doc_lines():
    return python_docs_text().splitlines(keepends=True)


@pytest.mark.parametrize("preset,vocab_size,min_frequency", [("gpt2", 6000, 0), ("smollm", 3000, 3)])
def test_training_matches_hf_bpe_trainer(doc_lines, preset, vocab_size, min_frequency):
    hf_vocab, hf_merges = _hf_train(doc_lines, vocab_size, min_frequency, preset)
    ours = ByteLevelBPE.train(iter(doc_lines), vocab_size, min_frequency, SPECIALS, preset)
    assert ours.merges == hf_merges
    assert ours.vocab == hf_vocab
    assert ours.special_tokens == {"<|endoftext|>": 0, "<pad>": 1}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.text(st.sampled_from(list("aab bc\n1'\u00e9\u65e5")), min_size=1, max_size=12),
                      min_size=1, max_size=40),
       vocab_size=st.integers(258, 330), min_frequency=st.integers(0, 3),
       preset=st.sampled_from(["gpt2", "smollm", "llama3"]))
def test_training_matches_hf_on_small_corpora(lines, vocab_size, min_frequency, preset):
    """Small corpora over few characters are full of ties: the tie rule must be HF's."""
    hf_vocab, hf_merges = _hf_train(lines, vocab_size, min_frequency, preset)
    ours = ByteLevelBPE.train(lines, vocab_size, min_frequency, SPECIALS, preset)
    assert ours.merges == hf_merges
    assert ours.vocab == hf_vocab


def test_training_stops_at_min_frequency(doc_lines):
    hf_vocab, hf_merges = _hf_train(doc_lines[:300], 5000, 40, "gpt2")
    ours = ByteLevelBPE.train(doc_lines[:300], 5000, 40, SPECIALS)
    assert len(ours.vocab) < 5000 and ours.merges == hf_merges


def test_training_is_deterministic(doc_lines):
    first = ByteLevelBPE.train(doc_lines, 1500, special_tokens=SPECIALS)
    shuffled = doc_lines[:]
    random.Random(0).shuffle(shuffled)
    again = ByteLevelBPE.train(shuffled, 1500, special_tokens=SPECIALS)
    assert first.merges == again.merges and first.vocab == again.vocab


def test_compiled_trainer_matches_reference(doc_lines):
    counts = bytelevel.count_words(doc_lines[:1500], "gpt2")
    start = SPECIALS + bytelevel.byte_alphabet()
    results = []
    for train in (merges.train_merges, merges.train_merges_reference):
        id_to_token = list(start)
        token_to_id = {t: i for i, t in enumerate(id_to_token)}
        symbols, starts, word_counts = bytelevel._byte_words(counts, token_to_id)
        results.append((train(symbols, starts, word_counts, id_to_token, token_to_id, 900), id_to_token))
    assert results[0] == results[1]
    assert len(results[0][0]) == 900 - len(start)


def test_special_tokens_are_never_merged():
    text = "a<pad>b<pad>c " * 50
    tok = ByteLevelBPE.train([text], 400, special_tokens=["<pad>"])
    assert not any("pad" in left + right for left, right in tok.merges)
    assert tok.encode("x<pad>y").count(tok.token_to_id("<pad>")) == 1


def test_progress_is_reported(doc_lines):
    seen = []
    ByteLevelBPE.train(doc_lines[:2000], 1000, progress=seen.append)
    assert seen and seen == sorted(seen)


# ---------------------------------------------------------------- round trip

@pytest.fixture(scope="module")
def trained(doc_lines):
    return {p: ByteLevelBPE.train(doc_lines[:3000], 700, special_tokens=SPECIALS, pretokenizer=p)
            for p in ("gpt2", "llama3", "smollm")}


@HYPO
@given(text=st.text(max_size=300), preset=st.sampled_from(["gpt2", "llama3", "smollm"]))
def test_decode_encode_round_trip(trained, text, preset):
    tok = trained[preset]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode_reference(text) == tok.encode_ordinary(text)


def test_encode_batch_and_lookups(trained):
    tok = trained["gpt2"]
    assert tok.encode_batch(["a b", "<pad>"]) == [tok.encode("a b"), [1]]
    assert tok.id_to_token(tok.token_to_id("Ġthe")) == "Ġthe"
    assert tok.pretokenizer == "gpt2"


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call,message", [
    (lambda: ByteLevelBPE.train([], 1000), "empty corpus"),
    (lambda: ByteLevelBPE.train(["", ""], 1000), "empty corpus"),
    (lambda: ByteLevelBPE.train(["some text"], 257, special_tokens=["<s>", "</s>"]), "at least 258"),
    (lambda: ByteLevelBPE.train(["some text"], 1000, pretokenizer="gpt5"), "unknown pre-tokenizer"),
    (lambda: ByteLevelBPE({"a": 0}, []), "not a byte-level BPE vocab"),
    (lambda: ByteLevelBPE({c: i for i, c in enumerate(bytelevel.byte_alphabet())}, [("a", "b")]),
     "missing from the vocab"),
    (lambda: ByteLevelBPE({c: i for i, c in enumerate(bytelevel.byte_alphabet())}, ["a b c"]),
     "not a pair of tokens"),
])
def test_bad_input_is_one_line_error(call, message):
    with pytest.raises(TokenizerError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_decode_unknown_id_is_an_error(trained):
    with pytest.raises(TokenizerError, match="not in the vocab"):
        trained["gpt2"].decode([10**6])


def test_pure_python_path_without_helper(doc_lines, monkeypatch):
    """With no compiled helper the package still works, and gives the same results."""
    text = "".join(doc_lines[:400])
    fast = ByteLevelBPE.train(doc_lines[:400], 500, special_tokens=SPECIALS, pretokenizer="smollm")
    for module in (bytelevel, merges, pretokenize):
        monkeypatch.setattr(module, "_bpe", None)
    slow = ByteLevelBPE.train(doc_lines[:400], 500, special_tokens=SPECIALS, pretokenizer="smollm")
    assert slow._encoder is None
    assert slow.merges == fast.merges and slow.vocab == fast.vocab
    assert slow.encode(text + "<pad>") == fast.encode(text + "<pad>")
