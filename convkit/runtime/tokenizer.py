"""Text <-> ids for the runtime, from a GGUF's vocabulary or an HF tokenizer.json.

Encoding is our own byte-level BPE (tokenizers_impl.ByteLevelBPE); this module only
finds the vocabulary, merges, pre-tokenizer and special tokens in the model's files and
adds what a runtime needs on top: BOS handling and streaming decode (bytes of one
character can arrive in different tokens).
"""
import codecs
import json
from pathlib import Path

from convkit.errors import ConvkitError

# tokenizer.ggml.pre -> our pre-tokenizer preset
GGUF_PRETOKENIZERS = {"smollm": "smollm", "gpt-2": "gpt2", "gpt2": "gpt2", "default": "gpt2",
                      "llama-bpe": "llama3", "llama3": "llama3"}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types that are matched as whole specials


class Tokenizer:
    def __init__(self, bpe, bos_id: int | None, eos_ids: list[int], add_bos: bool):
        self.bpe = bpe
        self.bos_id, self.eos_ids, self.add_bos = bos_id, list(eos_ids), add_bos

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Ids of text; special tokens written in the text are recognised."""
        ids = self.bpe.encode(text)
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids) -> str:
        return self.bpe.decode(list(ids))

    def stream(self) -> "StreamDecoder":
        return StreamDecoder(self.bpe)


class StreamDecoder:
    """Decode one token at a time, holding back bytes of an unfinished character."""

    def __init__(self, bpe):
        self.bpe = bpe
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self.utf8.decode(self.bpe.decode_bytes([token_id]))

    def flush(self) -> str:
        return self.utf8.decode(b"", final=True)


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
    if model != "gpt2":
        raise ConvkitError(f"{path}: tokenizer model {model!r} is not supported by the runtime "
                           f"(byte-level BPE, tokenizer.ggml.model = gpt2, only)")
    pre = field("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRETOKENIZERS:
        raise ConvkitError(f"{path}: pre-tokenizer {pre!r} is not supported by the runtime; "
                           f"supported: {', '.join(sorted(GGUF_PRETOKENIZERS))}")
    tokens = field("tokenizer.ggml.tokens")
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
    steps = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    for step in steps:
        if step.get("type") == "TemplateProcessing":
            first = (step.get("single") or [{}])[0]
            if "SpecialToken" in first:
                name = first["SpecialToken"]["id"]
                return step["special_tokens"][name]["ids"][0], True
    return None, bool(config.get("add_bos_token", False))


def hf_tokenizer(path: Path) -> Tokenizer:
    from tokenizers_impl import formats

    file = path / "tokenizer.json"
    if not file.exists():
        raise ConvkitError(f"{path}: no tokenizer.json; the runtime needs one to turn text into ids")
    bpe = formats.load(file)
    if not hasattr(bpe, "decode_bytes"):
        raise ConvkitError(f"{file}: not a byte-level BPE tokenizer; the runtime supports byte-level BPE only")
    doc = json.loads(file.read_text(encoding="utf-8"))
    tok_config = path / "tokenizer_config.json"
    tok_config = json.loads(tok_config.read_text(encoding="utf-8")) if tok_config.exists() else {}
    model_config = path / "config.json"
    model_config = json.loads(model_config.read_text(encoding="utf-8")) if model_config.exists() else {}
    bos_id, add_bos = _hf_bos(doc, tok_config)
    if bos_id is None:
        bos_id = model_config.get("bos_token_id")
    eos = model_config.get("eos_token_id")
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    if not eos and isinstance(tok_config.get("eos_token"), str):
        eos = [i for i in [bpe.token_to_id(tok_config["eos_token"])] if i is not None]
    return Tokenizer(bpe, bos_id, eos, add_bos)


def load_tokenizer(path) -> Tokenizer:
    """The tokenizer of a model: a .gguf file's metadata or an HF directory's tokenizer.json."""
    from .load import is_gguf

    path = Path(path)
    if is_gguf(path):
        return gguf_tokenizer(path)
    if path.is_dir():
        return hf_tokenizer(path)
    raise ConvkitError(f"{path}: neither a GGUF file nor an HF checkpoint directory; give one of those")
