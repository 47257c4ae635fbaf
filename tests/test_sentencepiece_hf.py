"""tokenizer.json of the sentencepiece families: files that transformers makes from
sentencepiece models (the Llama, Gemma and T5 layouts) and files we write, encoded by us
exactly as HF `tokenizers` encodes them, and (where HF agrees with sentencepiece)
as sentencepiece does; decoding as HF's decoders do."""
import json
import shutil

import pytest
import sentencepiece as spm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from realdata import CACHE, python_docs_text
from spm_models import VARIANTS, spm_model
from test_sentencepiece import SCRIPTS
from tokenizers_impl import TokenizerError, formats
from tokenizers_impl.sentencepiece import SentencePiece

ASSIGNED = st.characters(blacklist_categories=("Cn", "Cs"))
HYPO = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def lines():
    return python_docs_text()[-60_000:].split("\n") + SCRIPTS


def doc_lines():
    return [s for s in python_docs_text()[-60_000:].split("\n") if s.strip()]


def transformers_file(name: str, tokenizer_class: str) -> str:
    """tokenizer.json as transformers converts the sentencepiece model (cached)."""
    import transformers

    model = spm_model(name)
    target = CACHE / "spm-models" / f"{model.stem}-{tokenizer_class}-{transformers.__version__}.json"
    if not target.is_file():
        work = target.with_suffix(".dir")
        work.mkdir(exist_ok=True)
        shutil.copy(model, work / "tokenizer.model")
        cls = getattr(transformers, tokenizer_class)
        tok = cls.from_pretrained(str(work), **({"extra_ids": 0} if tokenizer_class == "T5Tokenizer" else {}))
        tok.backend_tokenizer.save(str(target) + ".part")
        (target.parent / (target.name + ".part")).replace(target)
        shutil.rmtree(work)
    return str(target)


CONVERTED = [("bpe_llama", "LlamaTokenizer"), ("bpe_bytes", "LlamaTokenizer"), ("bpe", "LlamaTokenizer"),
             ("bpe_llama", "GemmaTokenizer"), ("unigram_t5", "T5Tokenizer")]


@pytest.mark.parametrize("name,cls", CONVERTED)
def test_transformers_files_encode_as_hf(name, cls, lines):
    path = transformers_file(name, cls)
    hf, ours = Tokenizer.from_file(path), formats.load(path)
    assert isinstance(ours, SentencePiece) and ours.hf is not None
    assert [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)] == ours.encode_batch(lines)
    for e in hf.encode_batch(lines, add_special_tokens=False):
        assert ours.decode(e.ids) == hf.decode(e.ids, skip_special_tokens=False)


@pytest.mark.parametrize("name", ["bpe_llama"])
def test_llama_layout_agrees_with_sentencepiece_on_text(name):
    # the Llama layout (identity normalization, whitespace kept): on text that starts
    # with no space HF's file and sentencepiece agree
    sp = spm.SentencePieceProcessor(model_file=str(spm_model(name)))
    ours = formats.load(transformers_file(name, "LlamaTokenizer"))
    text = [s.strip() for s in doc_lines()]
    assert ours.encode_batch(text) == sp.encode(text)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_written_tokenizer_json_loads_in_hf_with_our_ids(name, lines, tmp_path):
    model = spm_model(name)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    path = tmp_path / "tokenizer.json"
    formats.save(formats.load(model), path)
    hf, back = Tokenizer.from_file(str(path)), formats.load(path)
    hf_ids = [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)]
    assert hf_ids == back.encode_batch(lines)
    # and sentencepiece's ids on the documentation text: all of them for BPE; HF's Unigram
    # sums scores in double precision where sentencepiece uses float32 (exact ties such as
    # runs of "-" resolve differently) and HF cuts user-defined pieces out of the raw text
    text = doc_lines()
    same = sum(a == b for a, b in zip(back.encode_batch(text), sp.encode(text)))
    assert same == len(text) if VARIANTS[name]["model_type"] == "bpe" else same >= 0.98 * len(text)


def test_written_tokenizer_json_loads_in_transformers(tmp_path):
    from transformers import PreTrainedTokenizerFast

    model = spm_model("bpe_llama")
    path = tmp_path / "tokenizer.json"
    formats.save(formats.load(model), path)
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path))
    sp = spm.SentencePieceProcessor(model_file=str(model))
    for s in doc_lines()[:300]:
        assert fast.encode(s, add_special_tokens=False) == sp.encode(s)


@pytest.mark.parametrize("name,cls", [("bpe_llama", "LlamaTokenizer"), ("unigram_t5", "T5Tokenizer"),
                                      ("bpe_llama", "GemmaTokenizer")])
@HYPO
@given(text=st.text(ASSIGNED, max_size=30))
def test_hypothesis_against_hf(name, cls, text):
    hf, ours = _cached(transformers_file(name, cls))
    ids = hf.encode(text, add_special_tokens=False).ids
    assert ours.encode(text) == ids
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False)


_CACHE = {}


def _cached(path):
    if path not in _CACHE:
        _CACHE[path] = (Tokenizer.from_file(path), formats.load(path))
    return _CACHE[path]


def test_convert_between_model_and_json(tmp_path):
    """.model -> tokenizer.json -> .model: the Llama layout comes back as the same pieces."""
    model = spm_model("bpe_llama")
    tok = formats.load(model)
    formats.save(tok, tmp_path / "tokenizer.json")
    back = formats.load(tmp_path / "tokenizer.json")
    formats.save(back, tmp_path / "tokenizer.model")
    again = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    original = spm.SentencePieceProcessor(model_file=str(model))
    text = [s.strip() for s in doc_lines()]
    assert again.encode(text) == original.encode(text)


@pytest.mark.parametrize("change,match", [
    (lambda d: d["model"].update(dropout=0.1), "dropout"),
    (lambda d: d.update(normalizer={"type": "NFD"}), "normalizer"),
    (lambda d: d.update(pre_tokenizer={"type": "Punctuation"}), "pre-tokenizer"),
    (lambda d: d["model"].update(type="WordLevel"), "not supported"),
])
def test_unsupported_tokenizer_json_is_refused(tmp_path, change, match):
    doc = json.loads(open(transformers_file("bpe_llama", "LlamaTokenizer"), encoding="utf-8").read())
    change(doc)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(TokenizerError, match=match) as info:
        formats.load(path)
    assert str(path) in str(info.value)


def test_unigram_scores_in_double_precision(tmp_path, lines):
    """HF adds a tokenizer.json's scores as doubles: scores that float32 cannot hold (as
    HF's own trainers write them) give HF's ids, not those of the rounded scores."""
    doc = json.loads(open(transformers_file("unigram_t5", "T5Tokenizer"), encoding="utf-8").read())
    for k, entry in enumerate(doc["model"]["vocab"]):
        entry[1] = entry[1] * (1 + 1e-9 * (k % 7)) + 1e-12 * k
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    hf, ours = Tokenizer.from_file(str(path)), formats.load(path)
    assert [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)] == ours.encode_batch(lines)
