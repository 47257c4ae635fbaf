"""Classic character-level BPE over words, like HF's BPE model behind a Whitespace
pre-tokenizer (\\w+|[^\\w\\s]+).

A word starts as its characters; a character missing from the vocab becomes the unknown
token. Merges are applied by rank. Tokens carry no word-boundary marker, so decoding
joins tokens with single spaces (what HF's tokenizer does without a decoder).
"""
from typing import Callable, Iterable, Sequence

from . import merges as bpe
from .base import Tokenizer, register
from .errors import TokenizerError
from .pretokenize import count_pieces, pretokenize, special_splitter
from .serial import bpe_model, hf_type, plain_bpe

PRETOKENIZER = "whitespace"


@register
class CharBPE(Tokenizer):
    kind = "bpe"
    hf_models = ("BPE",)
    pretokenizer = PRETOKENIZER

    def __init__(self, vocab: dict, merges: list, unk_token: str | None = "[UNK]",
                 special_tokens: dict | None = None):
        self.vocab = dict(vocab)
        self.merges = bpe.merge_pairs(merges)
        self.unk_token = unk_token
        self.special_tokens = dict(special_tokens or {})
        self._index()
        self._unk_id = self.token_to_id(unk_token) if unk_token is not None else None
        if unk_token is not None and self._unk_id is None:
            raise TokenizerError(f"unknown token {unk_token!r} is not in the vocab: add it or pass unk_token=None")
        self._ranks = {}
        for rank, (left, right) in enumerate(self.merges):
            try:
                key = (self.vocab[left], self.vocab[right])
                self._ranks[key] = (rank, self.vocab[left + right])
            except KeyError:
                raise TokenizerError(f"merge {left!r} {right!r} uses a token missing from the vocab") from None
        self._cache: dict = {}

    def encode_ordinary(self, text: str) -> list[int]:
        ids, cache = [], self._cache
        for word in pretokenize(text, PRETOKENIZER):
            hit = cache.get(word)
            if hit is None:
                hit = self._encode_word(word)
                if len(cache) < 1 << 20:
                    cache[word] = hit
            ids += hit
        return ids

    def _encode_word(self, word: str) -> list[int]:
        symbols = []
        for ch in word:
            i = self.vocab.get(ch, self._unk_id)
            if i is not None:  # without an unk token an unknown character is dropped, as in HF
                symbols.append(i)
        return bpe.apply_merges(symbols, self._ranks)

    def decode(self, ids) -> str:
        try:
            return " ".join(self._id_to_token[i] for i in ids)
        except KeyError as exc:
            raise self._bad_id(exc.args[0]) from None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 0,
              special_tokens: Sequence[str] = (), pretokenizer: str = PRETOKENIZER,
              progress: Callable | None = None, unk_token: str | None = "[UNK]") -> "CharBPE":
        """Learn a vocab like HF's BpeTrainer: special tokens first (the unknown token is
        added after them if missing), then every character of the corpus in code point
        order, then one id per merge. texts is a stream of chunks; only word counts are held.
        progress(n_merges) is called now and then while merging."""
        if pretokenizer != PRETOKENIZER:
            raise TokenizerError(f"CharBPE splits words with the {PRETOKENIZER!r} pre-tokenizer, "
                                 f"not {pretokenizer!r}: use ByteLevelBPE for regex presets")
        specials = list(dict.fromkeys(special_tokens))
        if unk_token is not None and unk_token not in specials:
            specials.append(unk_token)
        splitter = special_splitter(specials)
        counts: dict = {}
        for chunk in ([texts] if isinstance(texts, str) else texts):
            for part in (splitter.split(chunk) if splitter else (chunk,)):
                if part:
                    count_pieces(part, PRETOKENIZER, counts)
        if not counts:
            raise TokenizerError("empty corpus: no text to train on")
        alphabet = sorted({ch for word in counts for ch in word} - set(specials))
        if vocab_size < len(specials) + len(alphabet):
            raise TokenizerError(f"vocab size {vocab_size} is smaller than the corpus alphabet ({len(alphabet)} "
                                 f"characters) plus {len(specials)} special tokens: use at least "
                                 f"{len(specials) + len(alphabet)}")
        id_to_token = specials + alphabet
        token_to_id = {t: i for i, t in enumerate(id_to_token)}
        words = [w for w in counts if len(w) > 1]
        symbols, starts, word_counts = bpe.flatten_words([[token_to_id[c] for c in w] for w in words],
                                                         [counts[w] for w in words])
        del counts, words
        raw = bpe.train_merges(symbols, starts, word_counts, id_to_token, token_to_id,
                               vocab_size, min_frequency, progress)
        merges = [(id_to_token[a], id_to_token[b]) for a, b, _ in bpe.ordered_merges(raw)]
        vocab = {t: i for i, t in enumerate(id_to_token)}
        return cls(vocab, merges, unk_token, {t: vocab[t] for t in specials})

    # ---------------------------------------------------------------- files
    def convkit_fields(self) -> dict:
        return {"unk_token": self.unk_token}

    def convkit_tail(self) -> dict:
        return {"merges": [list(m) for m in self.merges]}

    @classmethod
    def from_convkit(cls, doc, vocab, specials, name):
        return cls(vocab, doc["merges"], doc["unk_token"], specials)

    def to_hf(self) -> dict:
        return {"normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None,
                "decoder": None, "model": bpe_model(self, self.unk_token)}

    @classmethod
    def from_hf(cls, doc, model, vocab, specials, merges, name):
        if model["type"] != "BPE" or not plain_bpe(doc, model) or hf_type(doc.get("pre_tokenizer")) != "Whitespace":
            return None
        return cls(vocab, merges, model.get("unk_token"), specials)

    def gguf_metadata(self) -> dict:
        raise TokenizerError("classic (character) BPE has no llama.cpp tokenizer model: "
                             "train --type bytelevel for a GGUF vocab")
