"""Classic character-level BPE over words, like HF's BPE model behind a Whitespace
pre-tokenizer (\\w+|[^\\w\\s]+).

A word starts as its characters; a character missing from the vocab becomes the unknown
token. Merges are applied by rank. Tokens carry no word-boundary marker, so decoding
joins tokens with single spaces (what HF's tokenizer does without a decoder).
"""
from typing import Callable, Iterable, Sequence

from . import merges as bpe
from .errors import TokenizerError
from .pretokenize import count_pieces, pretokenize, special_splitter

PRETOKENIZER = "whitespace"


class CharBPE:
    pretokenizer = PRETOKENIZER

    def __init__(self, vocab: dict, merges: list, unk_token: str | None = "[UNK]",
                 special_tokens: dict | None = None):
        self.vocab = dict(vocab)
        self.merges = bpe.merge_pairs(merges)
        self.unk_token = unk_token
        self.special_tokens = dict(special_tokens or {})
        self._id_to_token = {i: t for t, i in self.vocab.items()}
        self._id_to_token.update({i: t for t, i in self.special_tokens.items()})
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
        self._splitter = special_splitter(self.special_tokens)
        self._cache: dict = {}

    def id_to_token(self, i: int) -> str | None:
        return self._id_to_token.get(i)

    def token_to_id(self, s: str) -> int | None:
        if s in self.special_tokens:
            return self.special_tokens[s]
        return self.vocab.get(s)

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    def encode(self, text: str) -> list[int]:
        if self._splitter is None:
            return self.encode_ordinary(text)
        ids, start = [], 0
        for m in self._splitter.finditer(text):
            ids += self.encode_ordinary(text[start:m.start()])
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        return ids + self.encode_ordinary(text[start:])

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

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
            raise TokenizerError(f"token id {exc.args[0]} is not in the vocab ({self.vocab_size} tokens)") from None

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
