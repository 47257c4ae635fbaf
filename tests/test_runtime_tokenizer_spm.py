"""The runtime's tokenizer for sentencepiece models (tokenizer.ggml.model = llama): ids and
text equal to llama.cpp's (llama_cpp.Llama(vocab_only=True).tokenize / detokenize) on the
GGUF convkit writes, and the same ids from the model's HF directory."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convkit.cli import main
from convkit.eval.perplexity import tokenize_for_perplexity
from convkit.runtime.tokenizer import load_tokenizer
from realdata import python_docs_text
from test_gguf_sentencepiece import LLAMA2_CONFIG, _llama_dir
from test_mixes import _quiet_llama

# Llama 2's layout with added and special tokens; Unigram and BPE models with byte fallback
CASES = {"llama2": ("bpe_llama", LLAMA2_CONFIG), "unigram_bytes": ("unigram_bytes", None),
         "bpe_bytes": ("bpe_bytes", None),
         # a model that asks for EOS after the text and no space prefix
         "eos_no_prefix": ("bpe_llama", {**LLAMA2_CONFIG, "add_eos_token": True, "add_prefix_space": False}),
         # llama.cpp strips the spaces after most special tokens of a model named Phi-3
         "phi3": ("bpe_llama", {**LLAMA2_CONFIG, "added_tokens_decoder": {
             **LLAMA2_CONFIG["added_tokens_decoder"], "1202": {"content": "<|endoftext|>", "special": True}}})}

LINES = ["日本語 😀 emoji ✓", "  two  spaces", "tabs\tand é", "", " ", "<s>hello</s> world", "a<|im_end|>b",
         "x <tool> y▁tool▁call z", "<unk> <0x41> ▁▁", "Привет мир 한국어 ½ ① ｆｕｌｌ", "line\nbreak\r\n",
         "🤖🦙\u200d"]


@pytest.fixture(scope="module", params=sorted(CASES))
def model(request, tmp_path_factory):
    """(HF directory, converted GGUF, llama_cpp.Llama on that GGUF)."""
    name, tcfg = CASES[request.param]
    base = tmp_path_factory.mktemp(request.param)
    (base / "case").write_text(request.param)
    directory = _llama_dir(base / ("Phi-3-tiny" if request.param == "phi3" else "hf"), name,
                           vocab_extra=3 if tcfg else 0, tokenizer_config=tcfg,
                           added_tokens={"<extra>": 1202} if tcfg and request.param != "phi3" else None)
    gguf_path = base / "model.gguf"
    with pytest.raises(SystemExit) as exit_:
        main(["convert", str(directory), "--outtype", "f16", "-o", str(gguf_path), "--quiet"])
    assert exit_.value.code == 0
    llama_cpp = _quiet_llama()
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=16, verbose=False, vocab_only=True)
    yield directory, gguf_path, llm
    llm.close()


def request_case(gguf_path):
    return (gguf_path.parent / "case").read_text()


def _text():
    return python_docs_text()[-40_000:].split("\n") + LINES


def _check(tok, llm, line):
    data = line.encode()
    assert tok.encode(line, add_bos=False) == llm.tokenize(data, add_bos=False, special=True), line
    assert tok.bpe.encode_ordinary(line) == llm.tokenize(data, add_bos=False, special=False), line
    ids = tok.encode(line)
    assert ids == llm.tokenize(data, add_bos=True, special=True), line
    assert tokenize_for_perplexity(tok, line) == llm.tokenize(data, add_bos=True, special=False), line
    want = llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
    assert tok.decode(ids) == want, line
    assert tok.decode(ids[1:]) == llm.detokenize(ids[1:], special=True).decode("utf-8", errors="replace"), line


def test_gguf_ids_and_text_equal_llama_cpp(model):
    _, gguf_path, llm = model
    tok = load_tokenizer(gguf_path)
    assert tok.add_bos and tok.bos_id == llm.token_bos() and llm.token_eos() in tok.eos_ids
    assert (tok.eos_suffix is not None) == (request_case(gguf_path) == "eos_no_prefix")
    assert bool(tok.bpe.spm.rstrip) == (request_case(gguf_path) == "phi3")
    for line in _text():
        _check(tok, llm, line)
    whole = "\n".join(_text()[:400])  # one long text: the merge queue, not line by line
    assert tok.encode(whole) == llm.tokenize(whole.encode(), add_bos=True, special=True)


def test_spm_leading_space_after_bos_dropped_in_decode(model):
    _, gguf_path, llm = model
    tok = load_tokenizer(gguf_path)
    spm = tok.bpe.spm
    ids = tok.encode("hello world")
    # llama-cpp-python's detokenize without special pieces drops the prefix space after BOS
    assert spm.decode_bytes(ids, special=False, bos_id=tok.bos_id) == llm.detokenize(ids, special=False)
    assert spm.decode_bytes(ids, special=False, bos_id=tok.bos_id) == b"hello world"


def test_hf_directory_gives_the_gguf_ids(model):
    directory, gguf_path, _ = model
    from_gguf, from_hf = load_tokenizer(gguf_path), load_tokenizer(directory)
    assert (from_hf.bos_id, from_hf.eos_ids, from_hf.add_bos) == (from_gguf.bos_id, from_gguf.eos_ids,
                                                                   from_gguf.add_bos)
    for line in _text()[-300:]:
        assert from_hf.encode(line) == from_gguf.encode(line), line
        ids = from_gguf.encode(line)
        assert from_hf.decode(ids) == from_gguf.decode(ids)


def test_stream_decoder_joins_bytes_of_one_character(model):
    _, gguf_path, llm = model
    tok = load_tokenizer(gguf_path)
    for line in LINES + _text()[-50:]:
        ids = tok.encode(line, add_bos=False)
        stream = tok.stream()
        parts = [stream.push(i) for i in ids] + [stream.flush()]
        assert "".join(parts) == llm.detokenize(ids, special=True).decode("utf-8", errors="replace"), line
        assert "\ufffd" not in "".join(parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_hypothesis_text(model, text):
    _, gguf_path, llm = model
    tok = load_tokenizer(gguf_path)
    _check(tok, llm, text)


_PARTS = ["<s>", "</s>", "<unk>", "<|im_end|>", " tool call", "<extra>", "<tool>", " ", "  ", "\u2581", "\n", "\t",
          "日本", "😀", "é", "a", "the", "<0x41>", "<"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.one_of(st.sampled_from(_PARTS), st.text(max_size=5)), max_size=12))
def test_hypothesis_text_with_special_tokens(model, parts):
    _, gguf_path, llm = model
    _check(load_tokenizer(gguf_path), llm, "".join(parts))


def test_unsupported_gguf_tokenizer_model(model, tmp_path, capsys):
    """A GGUF whose tokenizer.ggml.model the runtime does not know: one line, exit 2."""
    import struct

    _, gguf_path, _ = model
    data = gguf_path.read_bytes()
    key = b"tokenizer.ggml.model"
    value = key + struct.pack("<IQ", 8, 5) + b"llama"  # GGUF string: type 8, length, bytes
    assert data.count(value) == 1
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(data.replace(value, key + struct.pack("<IQ", 8, 5) + b"bogus"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["generate", str(bad), "--prompt", "hello", "--max-tokens", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and "'bogus'" in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("name,with_bos", [("bpe_llama", True), ("bpe_llama", False), ("bpe_bytes", False)])
def test_hf_tokenizer_json_without_tokenizer_model(tmp_path, name, with_bos):
    """A Llama-layout tokenizer.json alone (transformers' conversion of the model): ids and
    text as HF tokenizers gives them (the runtime's rule for tokenizer.json)."""
    import shutil

    from tokenizers import Tokenizer as HFTokenizer

    from test_sentencepiece_hf import transformers_file

    directory = _llama_dir(tmp_path / "hf", name)
    if with_bos:  # transformers' own save, with its BOS template
        from transformers import LlamaTokenizer

        LlamaTokenizer.from_pretrained(str(directory), add_bos_token=True).save_pretrained(str(directory))
    else:
        shutil.copy(transformers_file(name, "LlamaTokenizer"), directory / "tokenizer.json")
    (directory / "tokenizer.model").unlink()
    hf = HFTokenizer.from_file(str(directory / "tokenizer.json"))
    tok = load_tokenizer(directory, n_vocab=hf.get_vocab_size())
    assert tok.add_bos == with_bos == (hf.encode("a").ids[:1] == [1])
    assert tok.bos_id == 1 and tok.eos_ids == [2]
    for line in _text()[-300:] + ["</s> x <s>", "日本語 😀"]:
        want = hf.encode(line).ids
        assert tok.encode(line) == want, line
        assert tok.decode(want) == hf.decode(want, skip_special_tokens=False), line
        stream = tok.stream()
        streamed = "".join([stream.push(i) for i in want] + [stream.flush()])
        # pieces one by one keep the first one's leading space, which HF's Strip decoder drops
        text = hf.decode(want, skip_special_tokens=False)
        assert streamed in (text, " " + text) or (with_bos and streamed == "<s>" + " " + text[3:]), line
