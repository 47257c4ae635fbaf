"""Tokenizer files: HF tokenizer.json both ways (HF tokenizers and transformers load what we
write, we load what HF writes), our own format, vocab.txt, GGUF vocab metadata, and
files that are truncated or of another kind."""
import json

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from realdata import minilm_dir, python_docs_text, smollm2_gguf
from tokenizers_impl import ByteLevelBPE, CharBPE, TokenizerError, WordPiece, formats


@pytest.fixture(scope="module")
def text():
    return python_docs_text()


@pytest.fixture(scope="module")
def sample(text):
    """Lines of the docs the tokenizers below were not trained on, plus awkward text."""
    return text[-60_000:].split("\n") + ["héllo WORLD [CLS] <|endoftext|> 中文 1234 ΟΔΟΣ  \t x", ""]


@pytest.fixture(scope="module")
def trained(text):
    corpus = text[:200_000].split("\n")
    return {
        "bytelevel": ByteLevelBPE.train(corpus, 800, special_tokens=["<|endoftext|>", "<pad>"]),
        "smollm": ByteLevelBPE.train(corpus, 600, special_tokens=["<|endoftext|>"], pretokenizer="smollm"),
        "llama3": ByteLevelBPE.train(corpus, 600, pretokenizer="llama3"),
        "bpe": CharBPE.train(corpus, 600, special_tokens=["[UNK]", "[PAD]"]),
        "wordpiece": WordPiece.train(corpus, 900),
    }


def _hf_ids(hf: Tokenizer, lines):
    return [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)]


# ---------------------------------------------------------------- HF tokenizer.json

@pytest.mark.parametrize("name", ["bytelevel", "smollm", "llama3", "bpe", "wordpiece"])
def test_hf_export_loads_in_tokenizers_with_same_ids(trained, sample, tmp_path, name):
    tok = trained[name]
    path = tmp_path / "tokenizer.json"
    formats.save(tok, path)
    assert _hf_ids(Tokenizer.from_file(str(path)), sample) == tok.encode_batch(sample)
    again = formats.load(path)
    assert type(again) is type(tok) and again.encode_batch(sample) == tok.encode_batch(sample)


@pytest.mark.parametrize("name", ["bytelevel", "wordpiece"])
def test_hf_export_loads_in_transformers(trained, sample, tmp_path, name):
    from transformers import PreTrainedTokenizerFast

    tok = trained[name]
    path = tmp_path / "tokenizer.json"
    formats.save(tok, path)
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path))
    lines = sample[:300]
    assert fast(lines, add_special_tokens=False)["input_ids"] == tok.encode_batch(lines)
    if name == "wordpiece":  # BERT's [CLS] ... [SEP] template travels with the file
        assert fast(lines[:50])["input_ids"] == [tok.encode(t, add_special_tokens=True) for t in lines[:50]]


def test_minilm_tokenizer_json_loads(text):
    d = minilm_dir()
    ours = formats.load(d / "tokenizer.json")
    assert isinstance(ours, WordPiece) and ours.normalizer.lowercase
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    hf.no_truncation()
    hf.no_padding()
    lines = text.split("\n\n")
    assert [ours.encode(t, add_special_tokens=True) for t in lines] == [e.ids for e in hf.encode_batch(lines)]


def _hf_train(kind, corpus):
    if kind == "bytelevel":
        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>"], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif kind == "bpe":
        hf = Tokenizer(models.BPE(unk_token="[UNK]"))
        hf.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["[UNK]"], show_progress=False)
    else:
        hf = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        hf.normalizer = normalizers.BertNormalizer(lowercase=False)
        hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=700, special_tokens=["[UNK]", "[CLS]", "[SEP]"],
                                            show_progress=False)
    hf.train_from_iterator(corpus, trainer)
    return hf


@pytest.mark.parametrize("kind", ["bytelevel", "bpe", "wordpiece"])
def test_we_load_what_hf_writes(text, sample, tmp_path, kind):
    hf = _hf_train(kind, text[:150_000].split("\n"))
    path = tmp_path / "hf.json"
    hf.save(str(path))
    ours = formats.load(path)
    assert formats.kind_of(ours) == kind
    assert ours.encode_batch(sample) == _hf_ids(hf, sample)


def test_smollm2_vocab_metadata_matches_its_gguf(tmp_path):
    """Reading SmolLM2's vocab out of its GGUF into a tokenizer.json and back gives the
    GGUF's own tokenizer keys."""
    import gguf

    reader = gguf.GGUFReader(str(smollm2_gguf()))

    def field(key):
        return reader.fields[key].contents()

    tokens, types, merges = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type"), \
        field("tokenizer.ggml.merges")
    specials = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3}
    tok = ByteLevelBPE({t: i for i, t in enumerate(tokens)}, [m.split(" ") for m in merges], "smollm", specials)
    meta = formats.gguf_vocab_metadata(formats.loads(formats.dumps(tok, "hf").encode()))
    assert meta["tokenizer.ggml.model"] == field("tokenizer.ggml.model")
    assert meta["tokenizer.ggml.pre"] == field("tokenizer.ggml.pre")
    assert meta["tokenizer.ggml.tokens"] == tokens
    assert meta["tokenizer.ggml.token_type"] == types
    assert meta["tokenizer.ggml.merges"] == merges
    assert meta["tokenizer.ggml.bos_token_id"] == field("tokenizer.ggml.bos_token_id")
    assert meta["tokenizer.ggml.eos_token_id"] == field("tokenizer.ggml.eos_token_id")


def test_bert_vocab_metadata_uses_llama_cpp_word_marks():
    meta = formats.gguf_vocab_metadata(formats.load(minilm_dir() / "vocab.txt"))
    tokens = meta["tokenizer.ggml.tokens"]
    assert meta["tokenizer.ggml.model"] == "bert" and len(tokens) == 30522
    assert tokens[101] == "[CLS]" and meta["tokenizer.ggml.token_type"][101] == 3
    assert tokens[7592] == "\u2581hello" and "ing" in tokens  # "##ing" loses its prefix
    assert meta["tokenizer.ggml.bos_token_id"] == 101 and meta["tokenizer.ggml.seperator_token_id"] == 102
    assert meta["tokenizer.ggml.unknown_token_id"] == 100 and meta["tokenizer.ggml.padding_token_id"] == 0
    with pytest.raises(TokenizerError, match="no llama.cpp tokenizer model"):
        formats.gguf_vocab_metadata(CharBPE({"[UNK]": 0, "a": 1}, []))


# ---------------------------------------------------------------- our format and vocab.txt

@pytest.mark.parametrize("name", ["bytelevel", "smollm", "llama3", "bpe", "wordpiece"])
def test_convkit_format_round_trip(trained, sample, tmp_path, name):
    tok = trained[name]
    path = tmp_path / "t.convkit.json"
    formats.save(tok, path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == "convkit-tokenizer" and doc["type"] == formats.kind_of(tok)
    again = formats.load(path)
    assert again.encode_batch(sample) == tok.encode_batch(sample)
    assert again.vocab == tok.vocab and again.special_tokens == tok.special_tokens
    assert formats.dumps(again, "convkit") == path.read_text(encoding="utf-8")  # same bytes


def test_vocab_txt_round_trip(trained, sample, tmp_path):
    tok = trained["wordpiece"]
    path = tmp_path / "vocab.txt"
    formats.save(tok, path)
    assert path.read_text(encoding="utf-8").split("\n")[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert formats.load(path).encode_batch(sample) == tok.encode_batch(sample)
    minilm = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8")
    assert formats.dumps(formats.loads(minilm.encode(), "vocab.txt"), "vocab.txt") == minilm
    with pytest.raises(TokenizerError, match="only WordPiece"):
        formats.dumps(trained["bytelevel"], "vocab.txt")


def test_format_from_name():
    assert formats.format_for_path("a.convkit.json") == "convkit"
    assert formats.format_for_path("tokenizer.json") == "hf"
    assert formats.format_for_path("vocab.txt") == "vocab.txt"
    assert formats.format_for_path("x.bin", "hf") == "hf"
    with pytest.raises(TokenizerError, match="cannot tell the format"):
        formats.format_for_path("x.bin")


# ---------------------------------------------------------------- bad files

def test_truncated_files_are_one_line_errors(trained, tmp_path):
    for fmt, name in (("hf", "t.json"), ("convkit", "t.convkit.json")):
        data = formats.dumps(trained["bytelevel"], fmt).encode()
        path = tmp_path / name
        path.write_bytes(data[:len(data) // 2])
        with pytest.raises(TokenizerError, match="truncated") as exc:
            formats.load(path)
        assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_files_of_another_kind(tmp_path):
    d = minilm_dir()
    cases = {
        "config.json": ((d / "config.json").read_bytes(), "not a tokenizer file"),
        "model.gguf": (b"GGUF\x03\x00\x00\x00" + bytes(64), "GGUF model file"),
        "weights.bin": (bytes(range(256)) * 4, "binary data"),
        "empty.json": (b"", "empty file"),
        "wordlevel.json": (json.dumps({"model": {"type": "WordLevel", "vocab": {"a": 0}}}).encode(),
                           "'WordLevel' is not supported"),
        "unigram.json": (json.dumps({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}).encode(),
                         "no unknown piece"),
        "notes.txt": (b"just some words\nnot a vocab\n", "no \\[UNK\\] line"),
        "list.json": (b"[1, 2, 3]", "JSON but not a tokenizer"),
        "badvocab.json": (json.dumps({"format": "convkit-tokenizer", "version": 1, "type": "wordpiece",
                                      "vocab": {"a": "x"}}).encode(), "integer ids"),
        "future.convkit.json": (json.dumps({"format": "convkit-tokenizer", "version": 99}).encode(), "version 99"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(TokenizerError, match=message) as exc:
            formats.load(path)
        assert "\n" not in str(exc.value), name
    with pytest.raises(TokenizerError, match="no such tokenizer file"):
        formats.load(tmp_path / "missing.json")


# ---------------------------------------------------------------- corpus reading

def test_corpus_chunks_rejoin_and_encode_like_the_whole(trained, tmp_path):
    """Chunks are cut only where no pre-tokenizer joins text across the cut, so encoding
    chunk by chunk gives the ids of encoding the whole file."""
    from tokenizers_impl.corpus import read_text_chunks

    text = python_docs_text()[:120_000] + "\n\n  indented\r\n\tx 𝄞€é\n"
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode("utf-8"))
    for size in (7, 1000, 1 << 20):
        assert "".join(read_text_chunks(path, size)) == text
    chunks = list(read_text_chunks(path, 4096))
    assert len(chunks) > 10
    for tok in trained.values():
        assert [i for c in chunks for i in tok.encode(c)] == tok.encode(text)


def test_corpus_not_utf8_offsets(tmp_path):
    from tokenizers_impl.corpus import read_text_chunks

    good = ("line one\n" * 50 + "€uro\n").encode("utf-8")
    for bad, where in ((b"\xff", len(good)), ("€".encode()[:2], len(good))):
        path = tmp_path / "bad.txt"
        path.write_bytes(good + bad + (b"\nmore" if bad == b"\xff" else b""))
        for size in (3, 64, 1 << 20):  # the bad byte at every position relative to a block
            with pytest.raises(TokenizerError, match=f"byte {where} \\(line 52") as exc:
                list(read_text_chunks(path, size))
            assert str(path) in str(exc.value)


# ---------------------------------------------------------------- GGUF vocab in llama.cpp

def _vocab_only_gguf(meta: dict, path, arch: str):
    """A GGUF with our tokenizer keys, placeholder hyperparameters and no tensors."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(512)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_layer_norm_eps(1e-12)
    w.add_tokenizer_model(meta["tokenizer.ggml.model"])
    w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    w.add_token_list(meta["tokenizer.ggml.tokens"])
    w.add_token_types(meta["tokenizer.ggml.token_type"])
    if "tokenizer.ggml.merges" in meta:
        w.add_token_merges(meta["tokenizer.ggml.merges"])
    for key, value in meta.items():
        if key.endswith("_token_id"):
            w.add_uint32(key, value)
        elif isinstance(value, bool):
            w.add_bool(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()


@pytest.mark.oracle
@pytest.mark.parametrize("name", ["bytelevel", "smollm", "llama3", "wordpiece"])
def test_gguf_vocab_metadata_tokenizes_alike_in_llama_cpp(trained, text, tmp_path, name):
    """llama.cpp, given only our tokenizer.ggml.* keys, encodes like our tokenizer."""
    import llama_cpp

    tok = trained[name]
    path = tmp_path / "vocab.gguf"
    _vocab_only_gguf(formats.gguf_vocab_metadata(tok), path, "bert" if name == "wordpiece" else "llama")
    model = llama_cpp.Llama(model_path=str(path), vocab_only=True, n_ctx=16, verbose=False)
    sample = text[-40_000:]
    if name == "wordpiece":  # llama.cpp's BERT vocab adds [CLS] ... [SEP] itself
        assert model.tokenize(sample.encode(), add_bos=True, special=True) == tok.encode(sample, True)
    else:
        assert model.tokenize(sample.encode(), add_bos=False, special=True) == tok.encode(sample)
