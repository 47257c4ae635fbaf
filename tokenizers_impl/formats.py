"""Tokenizer files: our own format, HF tokenizer.json, BERT's vocab.txt, GGUF metadata.

- convkit (`*.convkit.json`): {"format": "convkit-tokenizer", "version": 1, "type": ...}
  with exactly what our classes need, nothing else.
- HF (`*.json`): a tokenizer.json that `tokenizers.Tokenizer.from_file` and transformers'
  `PreTrainedTokenizerFast(tokenizer_file=...)` load with the same ids; we read theirs
  for the kinds we implement (BPE with a byte-level or whitespace pre-tokenizer,
  WordPiece with BERT's normalizer and pre-tokenizer).
- vocab.txt (`*.txt`): one WordPiece token per line, the id is the line number.

Writers return text (the CLI writes it atomically); `load` detects the format from the
content. Anything unreadable raises TokenizerError with the file name and the fix.
HF options that would change the ids and that we do not implement (ignore_merges,
byte_fallback, other normalizers or pre-tokenizers) are refused, not approximated.
HF added tokens all become our special tokens, matched in the raw text (HF matches
those marked "normalized" in the normalized text instead).
"""
import json
from pathlib import Path

from . import bpe, bytelevel, sentencepiece, wordpiece  # noqa: F401  (each registers its kind)
from .base import KINDS, Tokenizer
from .errors import TokenizerError
from .normalize import BertNormalizer
from .serial import GGUF_PRE, LLAMA3_PATTERN, added_tokens, by_id, BPE_OPTIONS, bytelevel_preset, hf_type  # noqa: F401
from .wordpiece import BERT_SPECIAL_TOKENS, WordPiece, bert_template

FORMATS = ("convkit", "hf", "vocab.txt", "sentencepiece")
FORMAT_TAG = "convkit-tokenizer"
FORMAT_VERSION = 1


def kind_of(tok) -> str:
    if isinstance(tok, Tokenizer) and tok.kind in KINDS:
        return tok.kind
    raise TypeError(f"not a tokenizer: {type(tok).__name__}")


def format_for_path(path, fmt: str | None = None) -> str:
    """The output format: --format if given, else from the name (*.convkit.json, *.txt, *.json)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise TokenizerError(f"unknown tokenizer format {fmt!r}: use one of {', '.join(FORMATS)}")
        return fmt
    name = Path(path).name.lower()
    if name.endswith(".convkit.json") or name.endswith(".convkit"):
        return "convkit"
    if name.endswith(".txt"):
        return "vocab.txt"
    if name.endswith(".model"):
        return "sentencepiece"
    if name.endswith(".json"):
        return "hf"
    raise TokenizerError(f"{path}: cannot tell the format from the name: end it in .convkit.json (ours), "
                         f".json (HF tokenizer.json), .txt (vocab.txt) or .model (sentencepiece), or pass --format")


# ---------------------------------------------------------------------------- writing
def dumps(tok, fmt: str) -> str | bytes:
    """The file's content: text, or bytes for a sentencepiece tokenizer.model."""
    if fmt == "sentencepiece":
        if not hasattr(tok, "to_model_bytes"):
            raise TokenizerError(f"tokenizer.model holds only sentencepiece models, not {kind_of(tok)}: "
                                 f"write .json or .convkit.json instead")
        return tok.to_model_bytes()
    if fmt == "convkit":
        return json.dumps(to_convkit(tok), ensure_ascii=False, indent=1) + "\n"
    if fmt == "hf":
        return json.dumps(to_hf(tok), ensure_ascii=False, indent=1) + "\n"
    if fmt == "vocab.txt":
        return vocab_txt(tok)
    raise TokenizerError(f"unknown tokenizer format {fmt!r}: use one of {', '.join(FORMATS)}")


def save(tok, path, fmt: str | None = None) -> None:
    """Write tok to path (format from the name unless given), through a temporary file."""
    import os
    import tempfile

    path = Path(path)
    text = dumps(tok, format_for_path(path, fmt))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with (os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", encoding="utf-8")) as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_by_id = by_id


def to_convkit(tok) -> dict:
    kind = kind_of(tok)
    out = {"format": FORMAT_TAG, "version": FORMAT_VERSION, "type": kind,
           "special_tokens": by_id(tok.special_tokens)}
    out.update(tok.convkit_fields())
    out["vocab"] = by_id(tok.vocab)
    out.update(tok.convkit_tail())
    return out


def to_hf(tok) -> dict:
    kind_of(tok)
    out = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens(tok)}
    out.update(tok.to_hf())  # a kind may give its own added tokens
    return out


def vocab_txt(tok) -> str:
    if not isinstance(tok, WordPiece):
        raise TokenizerError(f"vocab.txt holds only WordPiece vocabularies, not {kind_of(tok)}: "
                             f"write .json or .convkit.json instead")
    vocab = dict(tok.vocab)
    for t, i in tok.special_tokens.items():
        vocab.setdefault(t, i)
    tokens = list(_by_id(vocab))
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise TokenizerError("vocab ids are not 0..n-1 without gaps, which vocab.txt cannot express: "
                             "write .json or .convkit.json instead")
    bad = next((t for t in tokens if "\n" in t or "\r" in t or t == ""), None)
    if bad is not None:
        raise TokenizerError(f"token {bad!r} cannot be a line of vocab.txt: write .json or .convkit.json instead")
    return "".join(t + "\n" for t in tokens)


# ---------------------------------------------------------------------------- reading
def load(path, *, normalizer: BertNormalizer | None = None):
    """A tokenizer from any of our formats, detected from the content.

    normalizer applies to vocab.txt only (which does not say how to normalize); the
    default is BERT's uncased normalizer."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
        if not _is_model_proto(head, str(path)):
            _refuse_binary(head, str(path))  # before reading a whole model file
        data = path.read_bytes()
    except FileNotFoundError:
        raise TokenizerError(f"{path}: no such tokenizer file") from None
    except IsADirectoryError:
        raise TokenizerError(f"{path}: is a directory; pass the tokenizer file inside it") from None
    except OSError as exc:
        raise TokenizerError(f"{path}: cannot read ({exc.strerror})") from None
    return loads(data, str(path), normalizer=normalizer)


def _refuse_binary(head: bytes, name: str) -> None:
    if head.startswith(b"GGUF"):
        raise TokenizerError(f"{name}: is a GGUF model file, not a tokenizer file: "
                             f"pass a tokenizer.json, a tokenizer.model, a .convkit.json or a vocab.txt")
    if b"\x00" in head:
        raise TokenizerError(f"{name}: not a tokenizer file (binary data at byte {head.index(0)}): "
                             f"pass a tokenizer.json, a tokenizer.model, a .convkit.json or a vocab.txt")


def _is_model_proto(head: bytes, name: str) -> bool:
    """A sentencepiece tokenizer.model: named so, or binary data that opens with a piece
    (ModelProto field 1), which no text tokenizer file does."""
    if name.lower().endswith(".model"):
        return True
    if not head.startswith(b"\n"):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.end < len(head) - 4  # not merely a character cut by the 4096-byte window
    return b"\x00" in head


def loads(data: bytes, name: str = "<tokenizer>", *, normalizer: BertNormalizer | None = None):
    if _is_model_proto(data[:4096], name):
        if data[:4] == b"GGUF":
            _refuse_binary(data[:4096], name)
        return sentencepiece.SentencePiece.from_model_bytes(data, name)
    _refuse_binary(data[:4096], name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"{name}: not a tokenizer file (binary data at byte {exc.start}): "
                             f"pass a tokenizer.json, a .convkit.json or a vocab.txt") from None
    if not text.strip():
        raise TokenizerError(f"{name}: empty file, not a tokenizer")
    if text.lstrip().startswith("{") or name.lower().endswith(".json"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TokenizerError(f"{name}: truncated or invalid JSON (line {exc.lineno}, column {exc.colno}: "
                                 f"{exc.msg}); write the tokenizer again") from None
        try:
            return from_document(doc, name)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            if isinstance(exc, TokenizerError):
                raise
            raise TokenizerError(f"{name}: malformed tokenizer file ({type(exc).__name__}: {exc}); "
                                 f"write the tokenizer again") from None
    return read_vocab_txt(text, name, normalizer=normalizer)


def from_document(doc, name: str = "<tokenizer>"):
    if not isinstance(doc, dict):
        raise TokenizerError(f"{name}: JSON but not a tokenizer (expected an object with 'model' or 'format')")
    if doc.get("format") == FORMAT_TAG:
        return from_convkit(doc, name)
    if "model" in doc and isinstance(doc["model"], dict):
        return from_hf(doc, name)
    raise TokenizerError(f"{name}: JSON but not a tokenizer file (no 'model' or 'format' key): "
                         f"pass a tokenizer.json, a .convkit.json or a vocab.txt")


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_vocab(vocab, name):
    if not isinstance(vocab, dict) or not vocab:
        raise TokenizerError(f"{name}: the vocab is missing or empty; write the tokenizer again")
    if not all(isinstance(t, str) and _is_id(i) for t, i in vocab.items()):
        bad = next((t, i) for t, i in vocab.items() if not (isinstance(t, str) and _is_id(i)))
        raise TokenizerError(f"{name}: the vocab must map token strings to integer ids >= 0 (found {bad[0]!r}: "
                             f"{str(bad[1])[:40]!r}); write the tokenizer again")
    return vocab


def check_ids(vocab: dict, specials: dict, name: str) -> None:
    """Ids inside the vocabulary: no id beyond the number of tokens the file defines, so
    that no id (say 10**9) makes a reader allocate or loop beyond what the file holds."""
    count = len(set(vocab.values()) | set(specials.values()))
    for table in (vocab, specials):
        for token, i in table.items():
            if not _is_id(i) or i >= count:
                raise TokenizerError(f"{name}: token {token[:40]!r} has id {str(i)[:40]}, outside 0..{count - 1} "
                                     f"(the file defines {count} ids); write the tokenizer again")


def _added_specials(added, name: str) -> dict:
    """HF's added_tokens list as {content: id}, each entry checked."""
    if added is None:
        return {}
    if not isinstance(added, list):
        raise TokenizerError(f"{name}: added_tokens must be a list of objects, not {type(added).__name__}")
    specials = {}
    for entry in added:
        if not (isinstance(entry, dict) and isinstance(entry.get("content"), str) and entry["content"]
                and _is_id(entry.get("id"))):
            raise TokenizerError(f"{name}: added token {str(entry)[:60]} needs a non-empty 'content' and an "
                                 f"'id' >= 0; write the tokenizer again")
        specials[entry["content"]] = entry["id"]
    return specials


def _check_merges(merges, name: str) -> list:
    if merges is None:
        return []
    if not isinstance(merges, list):
        raise TokenizerError(f"{name}: merges must be a list, not {type(merges).__name__}")
    for m in merges:
        ok = (isinstance(m, str) and m.find(" ", 1) > 0) or (
            isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) and x for x in m))
        if not ok:
            raise TokenizerError(f"{name}: merge {str(m)[:60]} is not two tokens (\"a b\" or [\"a\", \"b\"]); "
                                 f"write the tokenizer again")
    return merges


def check_hf_document(doc, name: str) -> tuple:
    """A tokenizer.json's model, vocab, added tokens and merges, checked for type and range.

    Returns (model, vocab, specials, merges); raises TokenizerError naming the file. A
    Unigram model's vocab (a list of [piece, score]) comes back as {piece: id}."""
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise TokenizerError(f"{name}: JSON but not a tokenizer.json ('model' must be an object)")
    model = doc["model"]
    if not isinstance(model.get("type"), str):
        raise TokenizerError(f"{name}: model.type must be a string such as \"BPE\" or \"WordPiece\"")
    if model["type"] not in ("BPE", "WordPiece", "Unigram"):
        raise TokenizerError(f"{name}: tokenizer model {model['type']!r} is not supported: convkit reads BPE, "
                             f"byte-level BPE, WordPiece and Unigram")
    if model["type"] == "Unigram":
        vocab = _unigram_vocab(model.get("vocab"), name)
    else:
        vocab = _check_vocab(model.get("vocab"), name)
    specials = _added_specials(doc.get("added_tokens"), name)
    check_ids(vocab, specials, name)
    merges = _check_merges(model.get("merges"), name) if model["type"] == "BPE" else []
    return model, vocab, specials, merges


def _unigram_vocab(entries, name) -> dict:
    if not isinstance(entries, list) or not entries:
        raise TokenizerError(f"{name}: the Unigram vocab is missing or empty; write the tokenizer again")
    vocab = {}
    for i, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], (int, float)) and not isinstance(entry[1], bool)):
            raise TokenizerError(f"{name}: Unigram vocab entry {i} ({str(entry)[:40]}) is not [piece, score]; "
                                 f"write the tokenizer again")
        vocab.setdefault(entry[0], i)
    return vocab


def from_convkit(doc: dict, name: str):
    version = doc.get("version")
    if version != FORMAT_VERSION:
        raise TokenizerError(f"{name}: convkit tokenizer format version {version!r} is not {FORMAT_VERSION}: "
                             f"upgrade convkit or write the tokenizer again")
    kind = doc.get("type")
    if kind not in KINDS:
        raise TokenizerError(f"{name}: unknown tokenizer type {kind!r}: expected one of {', '.join(KINDS)}")
    vocab = _check_vocab(doc["vocab"], name)
    specials = dict(doc.get("special_tokens") or {})
    check_ids(vocab, specials, name)
    _check_merges(doc.get("merges"), name)
    return KINDS[kind].from_convkit(doc, vocab, specials, name)


def from_hf(doc: dict, name: str):
    """The first registered kind that claims the file (HF cuts every added token out of
    the text before anything else, as our special tokens are)."""
    model, vocab, specials, merges = check_hf_document(doc, name)
    for cls in KINDS.values():
        if model["type"] in cls.hf_models:
            tok = cls.from_hf(doc, model, vocab, specials, merges, name)
            if tok is not None:
                return tok
    if model["type"] == "BPE":
        _refuse_bpe(doc, model, name)
    raise TokenizerError(f"{name}: tokenizer model {model['type']!r} is not supported: convkit reads "
                         f"{', '.join(sorted({m for c in KINDS.values() for m in c.hf_models}))}")


def _refuse_bpe(doc, model, name):
    """Why no kind took a BPE tokenizer.json: the first option we do not implement."""
    unsupported = [k for k in BPE_OPTIONS if model.get(k)]
    if unsupported:
        raise TokenizerError(f"{name}: BPE with {', '.join(unsupported)} is not supported "
                             f"(it would encode differently)")
    norm = doc.get("normalizer")
    if norm is not None:
        raise TokenizerError(f"{name}: BPE with normalizer {hf_type(norm)!r} is not supported")
    raise TokenizerError(f"{name}: BPE pre-tokenizer {hf_type(doc.get('pre_tokenizer'))!r} is not supported "
                         f"(ByteLevel presets or Whitespace)")


def read_vocab_txt(text: str, name: str = "vocab.txt", *, normalizer: BertNormalizer | None = None) -> WordPiece:
    """A WordPiece tokenizer from BERT's vocab.txt (one token per line, id = line number)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    tokens = [t[:-1] if t.endswith("\r") else t for t in lines]
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # BERT's loader keeps the first line of a repeated token
    if "[UNK]" not in vocab:
        raise TokenizerError(f"{name}: no [UNK] line, so not a WordPiece vocab.txt: pass a BERT vocab.txt, "
                             f"a tokenizer.json or a .convkit.json")
    specials = {t: vocab[t] for t in BERT_SPECIAL_TOKENS if t in vocab}
    template = bert_template(vocab["[CLS]"], vocab["[SEP]"]) if "[CLS]" in vocab and "[SEP]" in vocab else None
    return WordPiece(vocab, "[UNK]", specials, normalizer if normalizer is not None else BertNormalizer(),
                     post_processor=template)


# ---------------------------------------------------------------------------- GGUF
def gguf_vocab_metadata(tok) -> dict:
    """The tokenizer.ggml.* keys llama.cpp reads, for a GGUF writer to store as they are."""
    kind_of(tok)
    return tok.gguf_metadata()
