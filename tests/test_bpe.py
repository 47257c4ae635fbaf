"""Character BPE against HF tokenizers' BPE model with the Whitespace pre-tokenizer."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from realdata import python_docs_text
from tokenizers_impl import CharBPE, TokenizerError
from tokenizers_impl import merges
from tokenizers_impl.pretokenize import pretokenize, pretokenize_reference

SPECIALS = ["[PAD]", "[UNK]"]
ASSIGNED = st.characters(blacklist_categories=("Cn", "Cs"))
HYPO = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _hf_train(lines, vocab_size, min_frequency):
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=SPECIALS)
    tok.train_from_iterator(lines, trainer)
    return tok


@pytest.fixture(scope="module")
def doc_lines():
    return python_docs_text().splitlines(keepends=True)


@pytest.fixture(scope="module")
def pair(doc_lines):
    hf = _hf_train(doc_lines, 3000, 2)
    ours = CharBPE.train(iter(doc_lines), 3000, 2, SPECIALS)
    return ours, hf


def test_training_matches_hf_bpe_trainer(pair):
    ours, hf = pair
    model = json.loads(hf.to_str())["model"]
    assert ours.merges == [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    assert ours.vocab == model["vocab"]
    assert ours.special_tokens == {"[PAD]": 0, "[UNK]": 1}


def test_ids_match_hf_on_python_docs(pair):
    ours, hf = pair
    text = python_docs_text()[:300_000]
    ids = ours.encode(text)
    assert ids == hf.encode(text).ids
    assert ours.decode(ids[:500]) == hf.decode(ids[:500], skip_special_tokens=False)


@HYPO
@given(text=st.text(ASSIGNED, max_size=200))
def test_ids_match_hf_on_unicode(pair, text):
    ours, hf = pair
    assert ours.encode(text) == hf.encode(text).ids


@HYPO
@given(text=st.text(ASSIGNED, max_size=200))
def test_whitespace_pretokenizer_matches_hf(text):
    pieces = pretokenize(text, "whitespace")
    assert pieces == pretokenize_reference(text, "whitespace")
    assert pieces == [p for p, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.text(st.sampled_from(list("aab bc\n1'\u00e9\u65e5")), min_size=1, max_size=12),
                      min_size=1, max_size=40),
       vocab_size=st.integers(12, 60), min_frequency=st.integers(0, 3))
def test_training_matches_hf_on_small_corpora(lines, vocab_size, min_frequency):
    """Small corpora over few characters are full of ties: the tie rule must be HF's."""
    if not "".join(lines).split() or len(set("".join(lines).replace(" ", "").replace("\n", ""))) + 2 > vocab_size:
        return  # nothing to train on, or fewer ids than characters (an error, tested below)
    model = json.loads(_hf_train(lines, vocab_size, min_frequency).to_str())["model"]
    ours = CharBPE.train(lines, vocab_size, min_frequency, SPECIALS)
    assert ours.merges == [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    assert ours.vocab == model["vocab"]


def test_unknown_characters_fall_back_to_unk(pair):
    ours, hf = pair
    text = "the \u2603 snowman [PAD] x\u4e00y"
    ids = ours.encode(text)
    assert ids == hf.encode(text).ids
    assert ours.token_to_id("[UNK]") in ids and ids.count(0) == 1


def test_compiled_trainer_matches_reference(doc_lines):
    words = {}
    for line in doc_lines[:2000]:
        for w in pretokenize(line, "whitespace"):
            words[w] = words.get(w, 0) + 1
    start = SPECIALS + sorted({c for w in words for c in w})
    results = []
    for train in (merges.train_merges, merges.train_merges_reference):
        id_to_token = list(start)
        token_to_id = {t: i for i, t in enumerate(id_to_token)}
        flat = merges.flatten_words([[token_to_id[c] for c in w] for w in words], list(words.values()))
        results.append((train(*flat, id_to_token, token_to_id, len(start) + 600), id_to_token))
    assert results[0] == results[1] and len(results[0][0]) == 600


def test_training_is_deterministic(doc_lines):
    a = CharBPE.train(doc_lines, 800)
    b = CharBPE.train(list(reversed(doc_lines)), 800)
    assert a.merges == b.merges and a.vocab == b.vocab
    assert a.token_to_id("[UNK]") == 0  # added when not among the special tokens


@pytest.mark.parametrize("call,message", [
    (lambda: CharBPE.train([], 100), "empty corpus"),
    (lambda: CharBPE.train(["   \n "], 100), "empty corpus"),
    (lambda: CharBPE.train(["abcdefgh"], 5), "at least 9"),
    (lambda: CharBPE.train(["abc"], 100, pretokenizer="gpt2"), "ByteLevelBPE"),
    (lambda: CharBPE({"a": 0}, []), "unknown token"),
    (lambda: CharBPE({"a": 0, "[UNK]": 1}, [("a", "b")]), "missing from the vocab"),
])
def test_bad_input_is_one_line_error(call, message):
    with pytest.raises(TokenizerError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
