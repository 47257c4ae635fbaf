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

from .bpe import CharBPE
from .bytelevel import ByteLevelBPE
from .errors import TokenizerError
from .normalize import BertNormalizer
from .wordpiece import BERT_SPECIAL_TOKENS, WordPiece, bert_template

FORMATS = ("convkit", "hf", "vocab.txt")
KINDS = {"bytelevel": ByteLevelBPE, "bpe": CharBPE, "wordpiece": WordPiece}
FORMAT_TAG = "convkit-tokenizer"
FORMAT_VERSION = 1

# HF's Split pattern of the Llama 3 pre-tokenizer (the `llama3` preset)
LLAMA3_PATTERN = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
                  " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
# llama.cpp's names for our pre-tokenizer presets (tokenizer.ggml.pre)
GGUF_PRE = {"gpt2": "gpt-2", "llama3": "llama-bpe", "smollm": "smollm"}


def kind_of(tok) -> str:
    for kind, cls in KINDS.items():
        if isinstance(tok, cls):
            return kind
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
    if name.endswith(".json"):
        return "hf"
    raise TokenizerError(f"{path}: cannot tell the format from the name: end it in .convkit.json (ours), "
                         f".json (HF tokenizer.json) or .txt (vocab.txt), or pass --format")


# ---------------------------------------------------------------------------- writing
def dumps(tok, fmt: str) -> str:
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
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _by_id(vocab: dict) -> dict:
    return dict(sorted(vocab.items(), key=lambda kv: kv[1]))


def to_convkit(tok) -> dict:
    kind = kind_of(tok)
    out = {"format": FORMAT_TAG, "version": FORMAT_VERSION, "type": kind,
           "special_tokens": _by_id(tok.special_tokens)}
    if kind == "bytelevel":
        out["pretokenizer"] = tok.pretokenizer
    if kind in ("bpe", "wordpiece"):
        out["unk_token"] = tok.unk_token
    if kind == "wordpiece":
        out["normalizer"] = tok.normalizer.to_dict() if tok.normalizer is not None else None
        out["continuing_subword_prefix"] = tok.prefix
        out["max_input_chars_per_word"] = tok.max_input_chars_per_word
        out["post_processor"] = tok.post_processor
    out["vocab"] = _by_id(tok.vocab)
    if kind != "wordpiece":
        out["merges"] = [list(m) for m in tok.merges]
    return out


def _added_tokens(tok) -> list:
    return [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for t, i in _by_id(tok.special_tokens).items()]


def _bpe_model(tok, unk_token) -> dict:
    vocab = dict(tok.vocab)
    for t, i in tok.special_tokens.items():
        vocab.setdefault(t, i)
    return {"type": "BPE", "dropout": None, "unk_token": unk_token, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": _by_id(vocab), "merges": [list(m) for m in tok.merges]}


def _byte_level(use_regex: bool, trim_offsets: bool = True) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": trim_offsets, "use_regex": use_regex}


def _hf_pretokenizer(preset: str) -> dict:
    if preset == "gpt2":
        return _byte_level(True)
    if preset == "llama3":
        split = {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False}
        return {"type": "Sequence", "pretokenizers": [split, _byte_level(False)]}
    if preset == "smollm":
        return {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                      _byte_level(True)]}
    raise TokenizerError(f"pre-tokenizer {preset!r} has no tokenizer.json form")


def to_hf(tok) -> dict:
    kind = kind_of(tok)
    out = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": _added_tokens(tok)}
    if kind == "bytelevel":
        out.update(normalizer=None, pre_tokenizer=_hf_pretokenizer(tok.pretokenizer),
                   post_processor=_byte_level(True, trim_offsets=False), decoder=_byte_level(True),
                   model=_bpe_model(tok, None))
    elif kind == "bpe":
        out.update(normalizer=None, pre_tokenizer={"type": "Whitespace"}, post_processor=None, decoder=None,
                   model=_bpe_model(tok, tok.unk_token))
    else:
        norm = tok.normalizer
        out.update(
            normalizer=None if norm is None else {"type": "BertNormalizer", **norm.to_dict()},
            pre_tokenizer={"type": "BertPreTokenizer"},
            post_processor=tok.post_processor,
            decoder={"type": "WordPiece", "prefix": tok.prefix, "cleanup": True},
            model={"type": "WordPiece", "unk_token": tok.unk_token,
                   "continuing_subword_prefix": tok.prefix,
                   "max_input_chars_per_word": tok.max_input_chars_per_word,
                   "vocab": _by_id(tok.vocab)})
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
                             f"pass a tokenizer.json, a .convkit.json or a vocab.txt")
    if b"\x00" in head:
        raise TokenizerError(f"{name}: not a tokenizer file (binary data at byte {head.index(0)}): "
                             f"pass a tokenizer.json, a .convkit.json or a vocab.txt")


def loads(data: bytes, name: str = "<tokenizer>", *, normalizer: BertNormalizer | None = None):
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

    Returns (model, vocab, specials, merges); raises TokenizerError naming the file."""
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise TokenizerError(f"{name}: JSON but not a tokenizer.json ('model' must be an object)")
    model = doc["model"]
    if not isinstance(model.get("type"), str):
        raise TokenizerError(f"{name}: model.type must be a string such as \"BPE\" or \"WordPiece\"")
    if model["type"] not in ("BPE", "WordPiece"):
        raise TokenizerError(f"{name}: tokenizer model {model['type']!r} is not supported: convkit reads BPE, "
                             f"byte-level BPE and WordPiece")
    vocab = _check_vocab(model.get("vocab"), name)
    specials = _added_specials(doc.get("added_tokens"), name)
    check_ids(vocab, specials, name)
    merges = _check_merges(model.get("merges"), name) if model["type"] == "BPE" else []
    return model, vocab, specials, merges


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
    if kind == "bytelevel":
        return ByteLevelBPE(vocab, doc["merges"], doc["pretokenizer"], specials)
    if kind == "bpe":
        return CharBPE(vocab, doc["merges"], doc["unk_token"], specials)
    norm = doc.get("normalizer")
    return WordPiece(vocab, doc["unk_token"], specials,
                     BertNormalizer.from_dict(norm) if norm is not None else None,
                     doc["continuing_subword_prefix"], doc["max_input_chars_per_word"], doc.get("post_processor"))


def _type(node) -> str | None:
    return node.get("type") if isinstance(node, dict) else None


def bytelevel_preset(pre, name: str) -> str | None:
    """Our preset for an HF byte-level pre-tokenizer, None if it is not byte-level."""
    def is_byte_level(node, use_regex):
        return (_type(node) == "ByteLevel" and not node.get("add_prefix_space", False)
                and node.get("use_regex", True) == use_regex)
    if _type(pre) == "ByteLevel":
        if is_byte_level(pre, True):
            return "gpt2"
    elif _type(pre) == "Sequence":
        steps = pre.get("pretokenizers") or []
        if len(steps) == 2 and _type(steps[0]) == "Digits" and steps[0].get("individual_digits") \
                and is_byte_level(steps[1], True):
            return "smollm"
        if len(steps) == 2 and _type(steps[0]) == "Split" and is_byte_level(steps[1], False) \
                and (steps[0].get("pattern") or {}).get("Regex") == LLAMA3_PATTERN \
                and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert"):
            return "llama3"
    else:
        return None
    raise TokenizerError(f"{name}: byte-level pre-tokenizer {json.dumps(pre)[:120]} is not one of ours "
                         f"(gpt2, llama3, smollm)")


def from_hf(doc: dict, name: str):
    # HF cuts every added token out of the text before anything else, as we do with specials
    model, vocab, specials, merges = check_hf_document(doc, name)
    mtype = model["type"]
    pre, norm = doc.get("pre_tokenizer"), doc.get("normalizer")
    if mtype == "WordPiece":
        if norm is not None and _type(norm) != "BertNormalizer":
            raise TokenizerError(f"{name}: WordPiece normalizer {_type(norm)!r} is not supported (only BertNormalizer)")
        if _type(pre) != "BertPreTokenizer":
            raise TokenizerError(f"{name}: WordPiece pre-tokenizer {_type(pre)!r} is not supported "
                                 f"(only BertPreTokenizer)")
        return WordPiece(vocab, model.get("unk_token", "[UNK]"), specials,
                         BertNormalizer.from_dict(norm) if norm is not None else None,
                         model.get("continuing_subword_prefix", "##"),
                         model.get("max_input_chars_per_word", 100), doc.get("post_processor"))
    if mtype == "BPE":
        unsupported = [k for k in ("continuing_subword_prefix", "end_of_word_suffix", "byte_fallback",
                                   "ignore_merges", "dropout") if model.get(k)]
        if unsupported:
            raise TokenizerError(f"{name}: BPE with {', '.join(unsupported)} is not supported "
                                 f"(it would encode differently)")
        if norm is not None:
            raise TokenizerError(f"{name}: BPE with normalizer {_type(norm)!r} is not supported")
        preset = bytelevel_preset(pre, name)
        if preset is not None:
            return ByteLevelBPE(vocab, merges, preset, specials)
        if _type(pre) == "Whitespace":
            return CharBPE(vocab, merges, model.get("unk_token"), specials)
        raise TokenizerError(f"{name}: BPE pre-tokenizer {_type(pre)!r} is not supported "
                             f"(ByteLevel presets or Whitespace)")
    raise TokenizerError(f"{name}: tokenizer model {mtype!r} is not supported: convkit reads BPE, "
                         f"byte-level BPE and WordPiece")


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
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_UNUSED = 1, 3, 5


def gguf_vocab_metadata(tok) -> dict:
    """The tokenizer.ggml.* keys llama.cpp reads, for a GGUF writer to store as they are."""
    kind = kind_of(tok)
    if kind == "bpe":
        raise TokenizerError("classic (character) BPE has no llama.cpp tokenizer model: "
                             "train --type bytelevel for a GGUF vocab")
    vocab = dict(tok.vocab)
    for t, i in tok.special_tokens.items():
        vocab.setdefault(t, i)
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [_TOKEN_UNUSED] * size
    for t, i in vocab.items():
        tokens[i] = t
        types[i] = _TOKEN_CONTROL if t in tok.special_tokens else _TOKEN_NORMAL
    meta = {}
    if kind == "bytelevel":
        meta["tokenizer.ggml.model"] = "gpt2"
        meta["tokenizer.ggml.pre"] = GGUF_PRE[tok.pretokenizer]
        ids = {
            "bos": ("<|begin_of_text|>", "<s>", "<|im_start|>", "<|endoftext|>"),
            "eos": ("<|end_of_text|>", "</s>", "<|im_end|>", "<|endoftext|>"),
            "unknown": ("<unk>", "<|unk|>"),
            "padding": ("<pad>", "<|pad|>"),
        }
    else:
        # llama.cpp's BERT vocab marks word starts with U+2581 and drops the ## prefix
        prefix = tok.prefix
        for i, t in enumerate(tokens):
            if types[i] == _TOKEN_NORMAL:
                tokens[i] = t[len(prefix):] if t.startswith(prefix) else "\u2581" + t
        meta["tokenizer.ggml.model"] = "bert"
        meta["tokenizer.ggml.pre"] = "default"
        # llama.cpp's BERT tokenizer starts with the bos id and ends with the separator
        ids = {"bos": ("[CLS]",), "eos": ("[SEP]",), "unknown": (tok.unk_token,), "seperator": ("[SEP]",),
               "padding": ("[PAD]",), "mask": ("[MASK]",)}
    meta["tokenizer.ggml.tokens"] = tokens
    meta["tokenizer.ggml.token_type"] = types
    if kind == "bytelevel":
        meta["tokenizer.ggml.merges"] = [f"{a} {b}" for a, b in tok.merges]
    for role, names in ids.items():
        hit = next((vocab[n] for n in names if n in vocab), None)
        if hit is not None:
            meta[f"tokenizer.ggml.{role}_token_id"] = hit
    if kind == "wordpiece":
        meta["tokenizer.ggml.add_bos_token"] = "tokenizer.ggml.bos_token_id" in meta
        meta["tokenizer.ggml.add_eos_token"] = "tokenizer.ggml.eos_token_id" in meta
    else:
        meta["tokenizer.ggml.add_bos_token"] = False
    return meta
