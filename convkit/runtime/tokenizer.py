"""Text <-> ids for the runtime, from a GGUF's vocabulary or an HF checkpoint directory.

Two kinds: byte-level BPE (tokenizer.ggml.model = gpt2, or an HF tokenizer.json; our own
tokenizers_impl.ByteLevelBPE) and llama.cpp's SPM tokenizer (tokenizer.ggml.model = llama,
or an HF directory with a sentencepiece tokenizer.model; llama_spm.LlamaSpm). This module
finds the vocabulary and special tokens in the model's files and adds what a runtime needs
on top: BOS handling and streaming decode (bytes of one character can arrive in
different tokens).
"""
import codecs
import json
from pathlib import Path

from convkit.errors import ConvkitError
from convkit.json_files import checked_token_id, read_json_object

# tokenizer.ggml.pre -> our pre-tokenizer preset
GGUF_PRETOKENIZERS = {"smollm": "smollm", "gpt-2": "gpt2", "gpt2": "gpt2", "default": "gpt2",
                      "llama-bpe": "llama3", "llama3": "llama3"}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types that are matched as whole specials


class Tokenizer:
    def __init__(self, bpe, bos_id: int | None, eos_ids: list[int], add_bos: bool, eos_suffix: int | None = None):
        self.bpe = bpe  # the encoder: ByteLevelBPE, _SpmRuntime or _HfSentencePiece
        self.bos_id, self.eos_ids, self.add_bos = bos_id, list(eos_ids), add_bos
        self.eos_suffix = eos_suffix  # EOS appended with the specials (a GGUF's add_eos_token)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Ids of text; special tokens written in the text are recognised. add_bos=False
        adds no special token at all (llama.cpp's add_special = false)."""
        return self.with_specials(self.bpe.encode(text), add_bos)

    def with_specials(self, ids: list[int], add_bos: bool | None = None) -> list[int]:
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        if add_bos is not False and self.eos_suffix is not None:
            ids = ids + [self.eos_suffix]
        return ids

    def decode(self, ids) -> str:
        """Text of ids; special tokens print as their text (bytes that are not valid UTF-8
        become U+FFFD). SPM: a space right after a leading BOS is dropped, as llama.cpp's
        detokenize does."""
        return self.bpe.decode_bytes(list(ids)).decode("utf-8", errors="replace")

    def stream(self) -> "StreamDecoder":
        return StreamDecoder(self.bpe)


class StreamDecoder:
    """Decode one token at a time, holding back bytes of an unfinished character."""

    def __init__(self, bpe):
        self.bpe = bpe
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        # one token's bytes as printed alone: no leading-space removal of a whole decode
        piece = getattr(self.bpe, "piece_bytes", None)
        return self.utf8.decode(piece(token_id) if piece else self.bpe.decode_bytes([token_id]))

    def flush(self) -> str:
        return self.utf8.decode(b"", final=True)


class _SpmRuntime:
    """llama.cpp's SPM tokenizer with the calls the runtime makes of an encoder."""

    def __init__(self, spm, bos_id: int | None, source: Path):
        self.spm, self.bos_id, self.source = spm, bos_id, source

    @property
    def vocab_size(self) -> int:
        return self.spm.vocab_size

    def _encode(self, text: str, parse_special: bool) -> list[int]:
        from .llama_spm import UnknownByte

        try:
            return self.spm.encode(text, parse_special)
        except UnknownByte as exc:
            raise ConvkitError(f"{self.source}: the text has byte 0x{exc.args[0]:02X}, which the vocabulary "
                               f"has no <0x{exc.args[0]:02X}> token for (a model without byte fallback); "
                               "remove that character from the text") from None

    def encode(self, text: str) -> list[int]:
        return self._encode(text, True)

    def encode_ordinary(self, text: str) -> list[int]:
        return self._encode(text, False)

    def piece_bytes(self, token_id: int) -> bytes:
        return self.decode_bytes([token_id], bos_id=None)

    def decode_bytes(self, ids, bos_id: int | None | str = "model") -> bytes:
        try:
            return self.spm.decode_bytes(ids, special=True, bos_id=self.bos_id if bos_id == "model" else bos_id)
        except IndexError as exc:
            raise ConvkitError(f"token id {exc.args[0]} is outside the vocabulary of {self.source} "
                               f"({self.spm.vocab_size} tokens)") from None


class _HfSentencePiece:
    """A sentencepiece-family tokenizer.json (the Llama 2 / Mistral layout) without a
    tokenizer.model beside it. The ground truth here is HF `tokenizers` on that file (the
    runtime's rule for tokenizer.json), as for byte-level BPE: added tokens in the text are
    matched, decode is HF's decoders (byte fallback, ▁ as space, leading space stripped)."""

    def __init__(self, tok):
        self.tok = tok

    @property
    def vocab_size(self) -> int:
        return self.tok.vocab_size

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def encode_ordinary(self, text: str) -> list[int]:
        return self.tok.encode_ordinary(text)

    def piece_bytes(self, token_id: int) -> bytes:
        b = self.tok.byte_value(token_id)
        if b is not None and self.tok.byte_fallback:
            return bytes([b])
        token = self.tok.id_to_token(token_id)
        if token is None:
            raise self.tok._bad_id(token_id)
        return token.replace("\u2581", " ").encode("utf-8")

    def decode_bytes(self, ids) -> bytes:
        return self.tok.decode(list(ids)).encode("utf-8")


def _spm_tokenizer(source: Path, field) -> Tokenizer:
    """A Tokenizer from tokenizer.ggml.* values (`field(key, default)`), with llama.cpp's
    defaults for a "llama" vocabulary: BOS 1, EOS 2, add_bos and add_space_prefix on."""
    from .llama_spm import LlamaSpm

    tokens = field("tokenizer.ggml.tokens")
    if not tokens:
        raise ConvkitError(f"{source}: tokenizer.ggml.tokens is missing or empty; convert the file again")
    n = len(tokens)
    scores, types = field("tokenizer.ggml.scores"), field("tokenizer.ggml.token_type")
    for key, values in (("scores", scores), ("token_type", types)):
        if values is not None and len(values) < n:
            raise ConvkitError(f"{source}: tokenizer.ggml.{key} has {len(values)} entries for {n} tokens; "
                               "convert the file again")
    spm = LlamaSpm(tokens, scores, types, add_space_prefix=bool(field("tokenizer.ggml.add_space_prefix", True)),
                   model_name=field("general.name", "") or "")

    def token_id(key, default):
        value = field(key, default)
        if value is not None and not 0 <= int(value) < n:
            value = default  # llama.cpp warns and keeps its default for an id outside the vocabulary
        return None if value is None or not 0 <= int(value) < n else int(value)

    bos = token_id("tokenizer.ggml.bos_token_id", 1)
    eos = [token_id(k, d) for k, d in (("tokenizer.ggml.eos_token_id", 2), ("tokenizer.ggml.eot_token_id", None))]
    add_eos = bool(field("tokenizer.ggml.add_eos_token", False))
    return Tokenizer(_SpmRuntime(spm, bos, source), bos, sorted({i for i in eos if i is not None}),
                     bool(field("tokenizer.ggml.add_bos_token", True)), eos[0] if add_eos else None)


def _need_bpe():
    try:
        from tokenizers_impl import ByteLevelBPE
    except ImportError as exc:  # pragma: no cover - the package ships with convkit
        raise ConvkitError(f"the byte-level BPE tokenizer is unavailable ({exc}); reinstall convkit") from None
    return ByteLevelBPE


def gguf_tokenizer(path: Path) -> Tokenizer:
    from .load import gguf_info

    ByteLevelBPE = _need_bpe()
    field = gguf_info(path).get

    model = field("tokenizer.ggml.model")
    if model is None:
        raise ConvkitError(f"{path}: the file has no tokenizer metadata (tokenizer.ggml.*); "
                           f"convert it again with its tokenizer")
    if model == "llama":
        return _spm_tokenizer(path, field)
    if model != "gpt2":
        raise ConvkitError(f"{path}: tokenizer model {model!r} is not supported by the runtime "
                           f"(supported: gpt2, byte-level BPE; llama, sentencepiece)")
    pre = field("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRETOKENIZERS:
        raise ConvkitError(f"{path}: pre-tokenizer {pre!r} is not supported by the runtime; "
                           f"supported: {', '.join(sorted(GGUF_PRETOKENIZERS))}")
    tokens = field("tokenizer.ggml.tokens")
    if not tokens:
        raise ConvkitError(f"{path}: tokenizer.ggml.tokens is missing or empty; convert the file again")
    types = field("tokenizer.ggml.token_type") or [1] * len(tokens)
    specials = {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k in (_CONTROL, _USER_DEFINED)}
    vocab = {t: i for i, t in enumerate(tokens) if t not in specials}
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges") or []]
    bpe = ByteLevelBPE(vocab, merges, GGUF_PRETOKENIZERS[pre], specials)
    eos = [field(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")]
    return Tokenizer(bpe, field("tokenizer.ggml.bos_token_id"), sorted({int(i) for i in eos if i is not None}),
                     bool(field("tokenizer.ggml.add_bos_token", False)))


def _hf_bos(doc: dict, config: dict) -> tuple[int | None, bool]:
    """BOS id and whether encoding adds it: from the post-processor template, else the config."""
    post = doc.get("post_processor") or {}
    if not isinstance(post, dict):
        return None, bool(config.get("add_bos_token", False))
    steps = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for step in steps if isinstance(steps, list) else []:
        if isinstance(step, dict) and step.get("type") == "TemplateProcessing":
            first = (step.get("single") or [{}])[0]
            if isinstance(first, dict) and isinstance(first.get("SpecialToken"), dict):
                name = first["SpecialToken"].get("id")
                entry = (step.get("special_tokens") or {}).get(name) if isinstance(name, str) else None
                ids = entry.get("ids") if isinstance(entry, dict) else None
                return (ids[0] if isinstance(ids, list) and ids else "missing"), True
    return None, bool(config.get("add_bos_token", False))


def _json_object(path: Path) -> dict:
    return read_json_object(path) if path.exists() else {}


class _VocabKeys:
    """Collects the tokenizer.ggml.* values convkit's converter would write (a GGUFWriter
    stand-in for gguf_vocab.write_vocab)."""

    def __init__(self):
        import gguf

        K = gguf.Keys.Tokenizer
        self.values = {}
        self._keys = {"add_tokenizer_model": K.MODEL, "add_tokenizer_pre": K.PRE, "add_token_list": K.LIST,
                      "add_token_scores": K.SCORES, "add_token_types": K.TOKEN_TYPE,
                      "add_add_space_prefix": K.ADD_PREFIX, "add_add_bos_token": K.ADD_BOS,
                      "add_add_eos_token": K.ADD_EOS}

    def add_uint32(self, key, value):
        self.values[key] = value

    def __getattr__(self, name):
        key = self.__dict__["_keys"].get(name)
        return (lambda value: self.values.__setitem__(key, value)) if key else (lambda *args, **kw: None)


def _architecture_class(config: dict):
    from convkit.arch import REGISTRY

    names = config.get("architectures")
    return next((REGISTRY[n] for n in names if isinstance(n, str) and n in REGISTRY), None) \
        if isinstance(names, list) else None


def hf_spm_tokenizer(path: Path) -> Tokenizer:
    """An HF directory with a sentencepiece tokenizer.model: the vocabulary our converter
    writes for it (as llama.cpp's llama converter does: tokenizer.model first, added tokens
    and flags from the tokenizer configs), tokenized by llama.cpp's SPM rule. The ground
    truth is llama.cpp on the converted GGUF, not sentencepiece or HF: the ids are the ones
    the runtime gives for that file (they differ from sentencepiece's where llama.cpp's
    merge rule does, e.g. on Unigram models or with normalization)."""
    from convkit.arch.llama import Llama

    keys = _VocabKeys()
    config = _json_object(path / "config.json")
    cls = _architecture_class(config)
    # llama's sentencepiece rules, or those of an architecture whose converter writes its own
    # vocabulary (Phi-3's added tokens, Gemma's tokenizer.model only)
    own = cls is not None and ("write_vocab" in vars(cls) or cls.sentencepiece_vocab)
    (cls if own else Llama).write_vocab(keys, path, config)
    # general.name as the converter writes it (llama.cpp sets Phi-3's token attributes by name)
    keys.values["general.name"] = str(config.get("_name_or_path") or path.resolve().name).rstrip("/").split("/")[-1]
    return _spm_tokenizer(path / "tokenizer.model", lambda key, default=None: keys.values.get(key, default))


def hf_tokenizer(path: Path) -> Tokenizer:
    from tokenizers_impl import formats

    if (path / "tokenizer.model").is_file():
        return hf_spm_tokenizer(path)
    file = path / "tokenizer.json"
    if not file.exists():
        raise ConvkitError(f"{path}: no tokenizer.json; the runtime needs one to turn text into ids")
    bpe = formats.load(file)
    if getattr(bpe, "kind", None) == "sentencepiece" and getattr(bpe, "hf", None) is not None:
        bpe = _HfSentencePiece(bpe)
    if not hasattr(bpe, "decode_bytes"):
        raise ConvkitError(f"{file}: not a byte-level BPE tokenizer; the runtime reads byte-level BPE from "
                           "tokenizer.json and sentencepiece models from tokenizer.model: put the model's "
                           "tokenizer.model beside it")
    doc = json.loads(file.read_text(encoding="utf-8"))  # formats.load has parsed it already
    tok_config = _json_object(path / "tokenizer_config.json")
    model_config = _json_object(path / "config.json")
    n_vocab = bpe.vocab_size
    bos_id, add_bos = _hf_bos(doc, tok_config)
    source = file
    if bos_id is None and model_config.get("bos_token_id") is not None:
        bos_id, source = model_config["bos_token_id"], path / "config.json"
    if bos_id is not None:
        bos_id = checked_token_id(bos_id, n_vocab, source)
    eos = model_config.get("eos_token_id")
    eos = [eos] if not isinstance(eos, list) and eos is not None else list(eos or [])
    eos = [checked_token_id(i, n_vocab, path / "config.json") for i in eos]
    if not eos and isinstance(tok_config.get("eos_token"), str):
        lookup = bpe.tok if isinstance(bpe, _HfSentencePiece) else bpe
        eos = [i for i in [lookup.token_to_id(tok_config["eos_token"])] if i is not None]
    return Tokenizer(bpe, bos_id, eos, add_bos)


def load_tokenizer(path, n_vocab: int | None = None) -> Tokenizer:
    """The tokenizer of a model: a .gguf file's metadata or an HF directory's tokenizer.json.
    With `n_vocab` (the model's vocabulary), every id it can produce is checked to fit."""
    from .load import is_gguf

    path = Path(path)
    if is_gguf(path):
        tok = gguf_tokenizer(path)
    elif path.is_dir():
        tok = hf_tokenizer(path)
    else:
        raise ConvkitError(f"{path}: neither a GGUF file nor an HF checkpoint directory; give one of those")
    ids = [tok.bpe.vocab_size - 1] if isinstance(tok.bpe, (_SpmRuntime, _HfSentencePiece)) else tok.bpe._id_to_token
    top = max([*ids, *tok.eos_ids, tok.bos_id or 0], default=0)
    if n_vocab is not None and top >= n_vocab:
        raise ConvkitError(f"{path}: the tokenizer has ids up to {top} but the model's vocabulary holds {n_vocab} "
                           "tokens; the tokenizer belongs to another model")
    return tok
