"""`convkit tokenize` on sentencepiece models as a user runs it: encode/decode/stats on a
tokenizer.model, convert between tokenizer.model, tokenizer.json and our format, and
damaged or unsupported files refused with one line, exit 2 and no output file."""
import json
import random

import sentencepiece as spm
from tokenizers import Tokenizer

from realdata import python_docs_text
from spm_models import spm_model
from test_tokenize_cli import assert_user_error, run_cli
from tokenizers_impl import TokenizerError, formats

TEXT = "Größe 日本語 emoji 😀 and\tsome  code: x = f(3)"


def test_encode_decode_stats_on_a_model_file():
    model = spm_model("bpe_llama")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    result = run_cli("encode", "-t", model, "--json", TEXT)
    assert result.returncode == 0, result.stderr
    ids = json.loads(result.stdout)["ids"]
    assert ids == sp.encode(TEXT)
    result = run_cli("decode", "-t", model, "--json", *ids)
    assert json.loads(result.stdout)["text"] == sp.decode(ids)
    result = run_cli("stats", "-t", model, "--json", "--text", TEXT)
    stats = json.loads(result.stdout)
    expected = sum(sp.is_byte(i) for i in ids)
    assert expected > 0 and stats["byte_fallback_tokens"] == expected and stats["tokens"] == len(ids)
    plain = spm_model("unigram")
    stats = json.loads(run_cli("stats", "-t", plain, "--json", "--text", TEXT).stdout)
    unk = spm.SentencePieceProcessor(model_file=str(plain)).unk_id()
    assert stats["unknown_tokens"] == spm.SentencePieceProcessor(model_file=str(plain)).encode(TEXT).count(unk) > 0


def test_convert_model_json_convkit(tmp_path):
    model = spm_model("unigram_bytes")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    lines = python_docs_text()[-20_000:].split("\n")
    hf_path, ck_path, back = tmp_path / "tokenizer.json", tmp_path / "tok.convkit.json", tmp_path / "back.model"
    assert run_cli("convert", model, "-o", hf_path).returncode == 0
    assert run_cli("convert", model, "-o", ck_path).returncode == 0
    assert run_cli("convert", ck_path, "-o", back).returncode == 0
    assert back.read_bytes() == model.read_bytes()
    hf = Tokenizer.from_file(str(hf_path))
    assert [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)] == formats.load(hf_path).encode_batch(lines)
    assert formats.load(ck_path).encode_batch(lines) == sp.encode(lines)


def test_bad_model_files_exit_2_without_output(tmp_path):
    data = spm_model("bpe").read_bytes()
    for name, content in (("truncated.model", data[:5000]), ("other.model", b"\x08\x01\x10\x02"),
                          ("text.model", b"not a model\n")):
        path = tmp_path / name
        path.write_bytes(content)
        out = tmp_path / (name + ".json")
        assert_user_error(run_cli("convert", path, "-o", out), str(path))
        assert not out.exists()
        assert_user_error(run_cli("encode", "-t", path, "hello"), str(path))
    doc = json.loads(formats.dumps(formats.load(spm_model("bpe_llama")), "hf"))
    doc["model"]["type"] = "WordLevel"
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    assert_user_error(run_cli("convert", bad, "-o", tmp_path / "x.model"), str(bad), "WordLevel")
    assert not (tmp_path / "x.model").exists()
    wordpiece = tmp_path / "w.convkit.json"
    assert run_cli("train", "--type", "wordpiece", "--vocab-size", 300, "-o", wordpiece, "--pydoc").returncode == 0
    assert_user_error(run_cli("convert", wordpiece, "-o", tmp_path / "w.model"), "tokenizer.model holds only")


def test_mutated_model_files_never_crash(tmp_path):
    """Random damage to a tokenizer.model: loaded, or refused with TokenizerError naming it."""
    data = bytearray(spm_model("unigram_nfkc").read_bytes())
    rnd = random.Random(7)
    path = tmp_path / "tokenizer.model"
    for _ in range(120):
        mutated = bytearray(data)
        for _ in range(rnd.randrange(1, 6)):
            at = rnd.randrange(len(mutated))
            choice = rnd.random()
            if choice < 0.5:
                mutated[at] = rnd.randrange(256)
            elif choice < 0.8:
                del mutated[at:at + rnd.randrange(1, 64)]
            else:
                mutated = mutated[:at]
        path.write_bytes(bytes(mutated))
        try:
            tok = formats.load(path)
        except TokenizerError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            continue
        tok.decode(tok.encode(TEXT))


def test_train_unigram_and_spm_bpe_write_models_sentencepiece_loads(tmp_path):
    """`tokenize train --type unigram|spm-bpe`: the trainers' pieces with the nmt_nfkc rules,
    written as a tokenizer.model that sentencepiece encodes with our ids, and as a
    tokenizer.json that HF encodes with ours."""
    lines = python_docs_text()[-30_000:].split("\n")
    for kind in ("unigram", "spm-bpe"):
        out = tmp_path / f"{kind}.model"
        result = run_cli("train", "--type", kind, "--vocab-size", 1200, "--byte-fallback", "--special-tokens",
                         "<|im_start|>", "-o", out, "--pydoc", "--quiet", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["vocab_size"] == 1200
        sp = spm.SentencePieceProcessor(model_file=str(out))
        ours = formats.load(out)
        assert ours.encode_batch(lines) == sp.encode(lines)
        assert sp.piece_to_id("<|im_start|>") in sp.encode("a <|im_start|> b")
        hf_out = tmp_path / f"{kind}.json"
        assert run_cli("convert", out, "-o", hf_out).returncode == 0
        hf = Tokenizer.from_file(str(hf_out))
        assert [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)] == formats.load(hf_out).encode_batch(lines)
    assert_user_error(run_cli("train", "--type", "bpe", "--vocab-size", 500, "--byte-fallback", "-o",
                              tmp_path / "x.json", "--pydoc"), "--byte-fallback")
