"""SentencePiece models: our ids and decoded text equal sentencepiece's own, on models
that sentencepiece trains here (Unigram and BPE, byte fallback, every shipped normalizer,
user-defined and control pieces), on real text, scripts that fall back to bytes and
hypothesis-generated Unicode; tokenizer.model read and written byte for byte; damaged
files refused with one line."""
import random

import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realdata import python_docs_text
from spm_models import VARIANTS, spm_model
from tokenizers_impl import TokenizerError, formats
from tokenizers_impl.sentencepiece import SentencePiece

ASSIGNED = st.characters(blacklist_categories=("Cn", "Cs"))
HYPO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SCRIPTS = [
    "日本語のテキストです。漢字とかなカナ", "中文文本，繁體字與简体字", "한국어 텍스트 ᄒ\u1161\u11ab",
    "emoji 😀🎉👩‍👩‍👧 ✓ ✗ 🇫🇷", "Ελληνικά κείμενα και Привет мир", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 ﬁ ﬀ ㍿ ①½",
    "ｆｕｌｌｗｉｄｔｈ　ＡＢＣ", "e\u0301 A\u0301\u0301 n\u0303 Größe ŉ İ ẞ", "\ufeff\u200b zero\u200dwidth",
    "  leading  and   inner   spaces  ", "\t\ttabs\nand\nnewlines\r\n", "▁already▁escaped▁", "",
    "<s> </s> <unk> <0x41> <mask> :: <tool> <ctl>", "1234567890 3.14159 0x1F", "a" * 300,
]


@pytest.fixture(scope="module")
def lines():
    text = python_docs_text()
    return text[-120_000:].split("\n") + SCRIPTS


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request):
    path = spm_model(request.param)
    return spm.SentencePieceProcessor(model_file=str(path)), formats.load(path), path


def test_ids_equal_sentencepiece_on_lines(pair, lines):
    sp, ours, _ = pair
    assert isinstance(ours, SentencePiece)
    assert ours.encode_batch(lines) == sp.encode(lines)


def test_ids_equal_sentencepiece_on_one_long_string(pair):
    # 200 kB as one string: Unigram path scores pass 1e5 and are rebased as sentencepiece does
    sp, ours, _ = pair
    text = python_docs_text()[:200_000]
    assert ours.encode(text) == sp.encode(text)


def test_decode_equals_sentencepiece(pair, lines):
    sp, ours, _ = pair
    for ids in sp.encode(lines):
        assert ours.decode(ids) == sp.decode(ids)
    rnd = random.Random(0)  # any ids, byte pieces cut mid-character and control pieces included
    n = sp.get_piece_size()
    for _ in range(300):
        ids = [rnd.randrange(n) for _ in range(rnd.randrange(12))]
        assert ours.decode(ids) == sp.decode(ids), ids
    with pytest.raises(TokenizerError, match="not in the vocab"):
        ours.decode([n])


@pytest.mark.parametrize("name", ["unigram_bytes", "bpe_llama", "unigram_nfkc", "bpe_nfkc_cf"])
@HYPO
@given(text=st.text(ASSIGNED, max_size=40))
def test_hypothesis_text(name, text):
    path = spm_model(name)
    sp, ours = _cached(path)
    ids = ours.encode(text)
    assert ids == sp.encode(text)
    assert ours.decode(ids) == sp.decode(ids)


_CACHE = {}


def _cached(path):
    if path not in _CACHE:
        _CACHE[path] = (spm.SentencePieceProcessor(model_file=str(path)), formats.load(path))
    return _CACHE[path]


def test_byte_fallback_and_unknown_runs():
    sp, ours = _cached(spm_model("unigram_bytes"))
    text = "漢字 😀 ok"
    ids = ours.encode(text)
    assert ids == sp.encode(text)
    assert any(sp.is_byte(i) for i in ids)  # the test exercises byte fallback
    sp2, plain = _cached(spm_model("unigram"))
    ids2 = plain.encode("漢字😀 ok")
    assert ids2 == sp2.encode("漢字😀 ok") and ids2.count(sp2.unk_id()) == 1  # one unknown for the run


def test_model_file_round_trip(pair, tmp_path, lines):
    sp, ours, path = pair
    again = tmp_path / "tokenizer.model"
    formats.save(ours, again)
    assert again.read_bytes() == path.read_bytes()
    ck = tmp_path / "tok.convkit.json"
    formats.save(ours, ck)
    back = formats.load(ck)
    assert back.encode_batch(lines[:400]) == sp.encode(lines[:400])
    formats.save(back, tmp_path / "again.model")
    assert (tmp_path / "again.model").read_bytes() == path.read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "flipped", "other_proto", "empty_pieces", "text"])
def test_damaged_model_files_are_refused(tmp_path, damage):
    data = spm_model("bpe").read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        data = data[:1] + b"\xff" * 16 + data[17:]
    elif damage == "other_proto":  # a valid protobuf of another message: field 1 a varint
        data = b"\x08\x96\x01\x12\x04abcd"
    elif damage == "empty_pieces":
        data = b"\x12\x02\x20\x08"  # a trainer spec and no pieces
    else:
        data = b"hello world\n"
    path = tmp_path / "tokenizer.model"
    path.write_bytes(data)
    with pytest.raises(TokenizerError) as info:
        formats.load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize("name", ["unigram_nfkc", "bpe_llama", "unigram_bytes"])
def test_python_reference_equals_sentencepiece(name, lines):
    """The pure-Python path (what runs without the compiled helper) gives the same ids."""
    sp, ours = _cached(spm_model(name))
    assert [ours.encode_reference(s) for s in lines[-400:]] == sp.encode(lines[-400:])
    text = python_docs_text()[:100_000]
    assert ours.encode_reference(text) == sp.encode(text)


@pytest.mark.parametrize("name", ["unigram", "bpe_bytes", "unigram_nfkc", "bpe_nfkc_cf"])
def test_model_from_trainer_pieces(name, lines, tmp_path):
    """What a trainer hands over ([(piece, score, type)] and the options) becomes a model
    that encodes as sentencepiece's own, and a tokenizer.model that sentencepiece loads."""
    sp, trained = _cached(spm_model(name))
    options = VARIANTS[name]
    tok = SentencePiece.from_pieces(list(zip(trained.pieces, trained.scores, trained.types)),
                                    options["model_type"], byte_fallback=options.get("byte_fallback", False),
                                    normalization=options.get("normalization_rule_name", "nmt_nfkc"),
                                    add_dummy_prefix=options.get("add_dummy_prefix", True))
    assert tok.encode_batch(lines) == sp.encode(lines)
    path = tmp_path / "tokenizer.model"
    formats.save(tok, path)
    again = spm.SentencePieceProcessor(model_file=str(path))
    assert again.encode(lines) == sp.encode(lines)
