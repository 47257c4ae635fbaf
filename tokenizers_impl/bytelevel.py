"""GPT-2 style byte-level BPE: every string is bytes, every byte has a token.

Tokens are written in GPT-2's byte-to-unicode form (printable bytes stand for
themselves, the others are shifted to U+0100 and up), as in HF tokenizer.json and
GGUF `tokenizer.ggml.tokens`. Encoding: special tokens are cut out first, the rest is
pre-tokenized (pretokenize.py) and each piece's UTF-8 bytes are merged by rank.
"""
import functools
from array import array
from typing import Callable, Iterable, Sequence

import numpy as np

from . import merges as bpe
from . import unicode_classes
from .base import Tokenizer, register
from .errors import TokenizerError
from .pretokenize import PRESETS, count_pieces, preset_id, pretokenize_reference, special_splitter
from .serial import (GGUF_PRE, bpe_model, byte_level, bytelevel_preset, gguf_special_ids,
                     gguf_token_table, hf_pretokenizer, plain_bpe)

try:
    from . import _bpe
except ImportError:  # the compiled helper is optional
    _bpe = None

NO_TOKEN = 0xFFFFFFFF  # byte id of a byte the vocab has no token for


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from byte to printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, shifted = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


@functools.cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def byte_alphabet() -> list[str]:
    """The 256 byte symbols in code point order: the order HF's BpeTrainer gives them ids."""
    return sorted(bytes_to_unicode().values())


def token_to_bytes(token: str) -> bytes:
    table = unicode_to_bytes()
    if all(c in table for c in token):
        return bytes(table[c] for c in token)
    return token.encode("utf-8")  # not a byte-level token (e.g. a control token)


@register
class ByteLevelBPE(Tokenizer):
    kind = "bytelevel"
    hf_models = ("BPE",)

    def __init__(self, vocab: dict, merges: list, pretokenizer: str = "gpt2",
                 special_tokens: dict | None = None):
        if preset_id(pretokenizer) == PRESETS["whitespace"]:
            raise TokenizerError("pre-tokenizer 'whitespace' is for CharBPE: use gpt2, llama3 or smollm")
        self.vocab = dict(vocab)
        self.merges = bpe.merge_pairs(merges)
        self.pretokenizer = pretokenizer
        self.special_tokens = dict(special_tokens or {})
        self._index()
        # bytes without a token (vocabs may leave out bytes that never occur) are dropped
        # when encoding, as HF's BPE model does when it has no unk token
        b2u = bytes_to_unicode()
        if sum(b2u[b] in self.vocab for b in range(256)) < 128:
            raise TokenizerError("vocab lacks most of the 256 byte tokens: not a byte-level BPE vocab")
        self._byte_ids = [self.vocab.get(b2u[b], NO_TOKEN) for b in range(256)]
        ma, mb, mn = array("I"), array("I"), array("I")
        for left, right in self.merges:
            try:
                ids = self.vocab[left], self.vocab[right], self.vocab[left + right]
            except KeyError:
                raise TokenizerError(f"merge {left!r} {right!r} uses a token missing from the vocab") from None
            for column, i in zip((ma, mb, mn), ids):
                column.append(i)
        self._merge_arrays = (ma, mb, mn)
        self._ranks = None
        self._encoder = None
        if _bpe is not None:
            self._encoder = _bpe.Encoder(unicode_classes.class_table(), preset_id(pretokenizer),
                                         array("I", self._byte_ids), ma, mb, mn)
        self._bytes = None

    # ---------------------------------------------------------------- encoding
    def encode_ordinary(self, text: str) -> list[int]:
        """Encode with special tokens treated as plain text."""
        if self._encoder is not None:
            return self._encoder.encode(text)
        return self.encode_reference(text)

    def encode_reference(self, text: str) -> list[int]:
        """The pure-Python path (no special tokens): the compiled encoder's oracle."""
        if self._ranks is None:
            ma, mb, mn = self._merge_arrays
            self._ranks = {(a, b): (r, n) for r, (a, b, n) in enumerate(zip(ma, mb, mn))}
        out = []
        for piece in pretokenize_reference(text, self.pretokenizer):
            out += bpe.apply_merges([self._byte_ids[b] for b in piece.encode("utf-8")
                                         if self._byte_ids[b] != NO_TOKEN], self._ranks)
        return out

    # ---------------------------------------------------------------- decoding
    def decode_bytes(self, ids) -> bytes:
        if self._bytes is None:
            self._bytes = {i: token_to_bytes(t) for t, i in self.vocab.items()}
            self._bytes.update({i: t.encode("utf-8") for t, i in self.special_tokens.items()})
        try:
            return b"".join([self._bytes[i] for i in ids])
        except KeyError as exc:
            raise self._bad_id(exc.args[0]) from None

    def decode(self, ids) -> str:
        """Text of ids; bytes that are not valid UTF-8 become U+FFFD (as HF's ByteLevel decoder)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---------------------------------------------------------------- training
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 0,
              special_tokens: Sequence[str] = (), pretokenizer: str = "gpt2",
              progress: Callable | None = None) -> "ByteLevelBPE":
        """Learn a vocab like HF's BpeTrainer with the ByteLevel initial alphabet: special
        tokens get the first ids, then the 256 byte symbols (in code point order), then one
        id per merge. texts is a stream of chunks; only the word counts are held.
        progress(n_merges) is called now and then while merging."""
        preset_id(pretokenizer)
        specials = list(dict.fromkeys(special_tokens))
        if vocab_size < len(specials) + 256:
            raise TokenizerError(f"vocab size {vocab_size} is smaller than the 256 byte symbols plus "
                                 f"{len(specials)} special tokens: use at least {len(specials) + 256}")
        counts = count_words(texts, pretokenizer, specials)
        if not counts:
            raise TokenizerError("empty corpus: no text to train on")
        id_to_token = specials + [c for c in byte_alphabet() if c not in specials]
        token_to_id = {t: i for i, t in enumerate(id_to_token)}
        symbols, starts, word_counts = _byte_words(counts, token_to_id)
        del counts
        raw = bpe.train_merges(symbols, starts, word_counts, id_to_token, token_to_id,
                               vocab_size, min_frequency, progress)
        merges = [(id_to_token[a], id_to_token[b]) for a, b, _ in bpe.ordered_merges(raw)]
        vocab = {t: i for i, t in enumerate(id_to_token)}
        return cls(vocab, merges, pretokenizer, {t: vocab[t] for t in specials})

    # ---------------------------------------------------------------- files
    def convkit_fields(self) -> dict:
        return {"pretokenizer": self.pretokenizer}

    def convkit_tail(self) -> dict:
        return {"merges": [list(m) for m in self.merges]}

    @classmethod
    def from_convkit(cls, doc, vocab, specials, name):
        return cls(vocab, doc["merges"], doc["pretokenizer"], specials)

    def to_hf(self) -> dict:
        return {"normalizer": None, "pre_tokenizer": hf_pretokenizer(self.pretokenizer),
                "post_processor": byte_level(True, trim_offsets=False), "decoder": byte_level(True),
                "model": bpe_model(self, None)}

    @classmethod
    def from_hf(cls, doc, model, vocab, specials, merges, name):
        if model["type"] != "BPE" or not plain_bpe(doc, model):
            return None
        preset = bytelevel_preset(doc.get("pre_tokenizer"), name)
        return None if preset is None else cls(vocab, merges, preset, specials)

    def gguf_metadata(self) -> dict:
        vocab, tokens, types = gguf_token_table(self)
        meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": GGUF_PRE[self.pretokenizer],
                "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
                "tokenizer.ggml.merges": [f"{a} {b}" for a, b in self.merges]}
        gguf_special_ids(meta, vocab, {
            "bos": ("<|begin_of_text|>", "<s>", "<|im_start|>", "<|endoftext|>"),
            "eos": ("<|end_of_text|>", "</s>", "<|im_end|>", "<|endoftext|>"),
            "unknown": ("<unk>", "<|unk|>"),
            "padding": ("<pad>", "<|pad|>"),
        })
        meta["tokenizer.ggml.add_bos_token"] = False
        return meta


def count_words(texts: Iterable[str], pretokenizer: str, special_tokens=()) -> dict:
    """How often each pre-tokenized piece occurs; special tokens are cut out, never counted."""
    if isinstance(texts, str):
        texts = [texts]
    splitter = special_splitter(special_tokens)
    counts: dict = {}
    for chunk in texts:
        for part in (splitter.split(chunk) if splitter else (chunk,)):
            if part:
                count_pieces(part, pretokenizer, counts)
    return counts


def _byte_words(counts: dict, token_to_id: dict) -> tuple:
    """Words as byte-symbol ids, back to back; words of one byte are left out (no pairs)."""
    b2u = bytes_to_unicode()
    byte_id = np.array([token_to_id[b2u[b]] for b in range(256)], dtype=np.int32)
    encoded = [w.encode("utf-8") for w in counts]
    keep = np.fromiter((len(e) > 1 for e in encoded), dtype=bool, count=len(encoded))
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))[keep]
    word_counts = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))[keep]
    data = b"".join(e for e, k in zip(encoded, keep) if k)
    symbols = byte_id[np.frombuffer(data, dtype=np.uint8)]
    starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    return symbols, starts, word_counts
