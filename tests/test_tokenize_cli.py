"""`convkit tokenize ...` as a user runs it (subprocess), checked against HF tokenizers."""
import json
import subprocess
import sys

import pytest
from tokenizers import Tokenizer

from realdata import minilm_dir, python_docs_text


def run_cli(*args, input=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "convkit", "tokenize", *map(str, args)], capture_output=True,
                          text=isinstance(input, str) or input is None, input=input, cwd=cwd)


def assert_user_error(result, *fragments):
    """Exit 2, one line on stderr that says what went wrong, no traceback."""
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    text = python_docs_text()
    (d / "a.txt").write_text(text[:150_000], encoding="utf-8")
    (d / "b.txt").write_text(text[150_000:300_000], encoding="utf-8")
    return d


def test_readme_quickstart_pydoc_bytelevel(tmp_path):
    result = run_cli("train", "--type", "bytelevel", "--vocab-size", 4096, "-o", "pydoc.tokenizer.json", "--pydoc",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "pydoc.tokenizer.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pydoc.tokenizer.json"]
    hf = Tokenizer.from_file(str(out))
    assert hf.get_vocab_size() == 4096
    sample = "def main():\n    return 'héllo wörld' + str(12345)  # <|endoftext|>"
    enc = run_cli("encode", "-t", out, sample, "--json")
    assert json.loads(enc.stdout)["ids"] == hf.encode(sample).ids
    dec = run_cli("decode", "-t", out, " ".join(map(str, hf.encode(sample).ids)))
    assert dec.stdout == sample + "\n"


def test_train_wordpiece_from_files_and_stdin(corpus, tmp_path):
    out = tmp_path / "wp.convkit.json"
    stdin_text = (corpus / "b.txt").read_text(encoding="utf-8")
    result = run_cli("train", "--type", "wordpiece", "--vocab-size", 1500, "--min-frequency", 2, "-o", out,
                     corpus / "a.txt", "-", "--json", input=stdin_text)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["vocab_size"] == 1500 and summary["format"] == "convkit"
    assert summary["special_tokens"] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # same vocab as training in-process on the same text: stdin and files read alike
    from tokenizers_impl import WordPiece, formats
    direct = WordPiece.train([(corpus / "a.txt").read_text(encoding="utf-8"), stdin_text], 1500, min_frequency=2)
    assert formats.load(out).vocab == direct.vocab

    # convert to tokenizer.json and vocab.txt: HF encodes like our encode command
    hf_path, txt_path = tmp_path / "wp.json", tmp_path / "vocab.txt"
    assert run_cli("convert", out, "-o", hf_path).returncode == 0
    assert run_cli("convert", hf_path, "-o", txt_path, "--json").returncode == 0
    hf = Tokenizer.from_file(str(hf_path))
    sample = python_docs_text()[-5000:]
    expected = hf.encode(sample, add_special_tokens=False).ids
    for path in (out, hf_path, txt_path):
        enc = run_cli("encode", "-t", path, "--json", "-i", "-", input=sample)
        assert json.loads(enc.stdout)["ids"] == expected, path

    # stats count what HF's tokenization of the same text gives
    stats = json.loads(run_cli("stats", "-t", hf_path, "--json", "--text", sample).stdout)
    assert stats["tokens"] == len(expected)
    assert stats["unknown_tokens"] == expected.count(hf.token_to_id("[UNK]"))
    assert stats["vocab_used"] == len(set(expected))
    assert stats["words"] == len(sample.split()) and stats["bytes"] == len(sample.encode())


def test_encode_decode_with_minilm(tmp_path):
    vocab = minilm_dir() / "vocab.txt"
    hf = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    hf.no_padding()
    hf.no_truncation()
    text = "Héllo, WORLD! [MASK] unaffable 中文"
    enc = run_cli("encode", "-t", vocab, text, "--add-special-tokens", "--tokens", "--json")
    result = json.loads(enc.stdout)
    assert result["ids"] == hf.encode(text).ids
    assert result["tokens"] == hf.encode(text).tokens
    dec = run_cli("decode", "-t", vocab, "--skip-special-tokens", "--json", json.dumps(result["ids"]))
    assert json.loads(dec.stdout)["text"] == hf.decode(result["ids"])
    cased = run_cli("encode", "-t", vocab, "--no-lowercase", "Hello", "--json")
    assert json.loads(cased.stdout)["ids"] == [100]  # no "Hello" in an uncased vocab


def test_train_bpe_and_stats_on_pydoc(tmp_path):
    out = tmp_path / "bpe.json"
    assert run_cli("train", "--type", "bpe", "--vocab-size", 800, "-o", out, "--pydoc", "-q").returncode == 0
    hf = Tokenizer.from_file(str(out))
    stats = json.loads(run_cli("stats", "-t", out, "--pydoc", "--json").stdout)
    from pydoc_data.topics import topics
    expected = sum(len(hf.encode(topics[k] + "\n\n").ids) for k in sorted(topics))
    assert stats["tokens"] == expected and stats["unknown_rate"] == 0


# ---------------------------------------------------------------- bad input

def test_empty_corpus(tmp_path):
    empty, blank = tmp_path / "empty.txt", tmp_path / "blank.txt"
    empty.write_bytes(b"")
    blank.write_text("  \n\n", encoding="utf-8")  # no words for the word-based kinds
    for kind, path in [("bytelevel", empty), ("bpe", empty), ("wordpiece", empty), ("bpe", blank),
                       ("wordpiece", blank)]:
        result = run_cli("train", "--type", kind, "--vocab-size", 1000, "-o", tmp_path / "out.json", path)
        assert_user_error(result, "empty corpus")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.txt", "empty.txt"]


def test_vocab_smaller_than_alphabet(corpus, tmp_path):
    for kind in ("bytelevel", "bpe", "wordpiece"):
        result = run_cli("train", "--type", kind, "--vocab-size", 50, "-o", tmp_path / "out.json", corpus / "a.txt")
        assert_user_error(result, "vocab size 50 is smaller than")
    assert list(tmp_path.iterdir()) == []


def test_corpus_not_utf8_says_where(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("first line\nsecond line\ncaf\u00e9 au lait\n".encode("latin-1"))
    result = run_cli("train", "--type", "wordpiece", "--vocab-size", 500, "-o", tmp_path / "out.json", bad)
    assert_user_error(result, str(bad), "byte 26", "line 3")
    piped = run_cli("train", "--type", "bytelevel", "--vocab-size", 500, "-o", tmp_path / "out.json", "-",
                    input=b"ok\n\xff\xfe")
    assert_user_error(piped, "<stdin>", "byte 3", "line 2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.txt"]


def test_tokenizer_file_truncated_or_of_another_kind(tmp_path):
    good = (minilm_dir() / "tokenizer.json").read_bytes()
    truncated = tmp_path / "tokenizer.json"
    truncated.write_bytes(good[:len(good) // 3])
    assert_user_error(run_cli("encode", "-t", truncated, "hello"), str(truncated), "truncated")
    assert_user_error(run_cli("convert", truncated, "-o", tmp_path / "out.convkit.json"), "truncated")
    assert_user_error(run_cli("encode", "-t", minilm_dir() / "config.json", "hello"), "not a tokenizer file")
    assert_user_error(run_cli("stats", "-t", minilm_dir() / "model.safetensors", "--text", "x"), "not a tokenizer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]


def test_other_usage_errors(corpus, tmp_path):
    assert_user_error(run_cli("train", "--type", "wordpiece", "--vocab-size", 500, "-o", tmp_path / "x.json"),
                      "no corpus")
    assert_user_error(run_cli("train", "--type", "bpe", "--vocab-size", 500, "-o", tmp_path / "x.json",
                              tmp_path / "missing.txt"), "no such corpus file")
    assert_user_error(run_cli("train", "--type", "bytelevel", "--vocab-size", 500, "-o", tmp_path / "vocab.txt",
                              corpus / "a.txt"), "only WordPiece")
    assert_user_error(run_cli("train", "--type", "bytelevel", "--vocab-size", 500, "-o", tmp_path / "x.bin",
                              corpus / "a.txt"), "cannot tell the format")
    assert_user_error(run_cli("train", "--type", "bpe", "--vocab-size", 500, "-o", tmp_path / "no" / "x.json",
                              corpus / "a.txt"), "does not exist")
    assert_user_error(run_cli("decode", "-t", minilm_dir() / "vocab.txt", "1", "x2"), "not a token id")
    assert_user_error(run_cli("decode", "-t", minilm_dir() / "vocab.txt", "999999"), "token id 999999")
    assert list(tmp_path.iterdir()) == []
