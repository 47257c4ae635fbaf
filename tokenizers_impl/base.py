"""The base every tokenizer kind shares (the shape of minbpe's `Tokenizer`).

A kind is one module with one class that subclasses `Tokenizer` and is registered with
`@register`. The base holds what every kind does alike: the id <-> token lookups, cutting
special tokens out of the text before encoding, batch encoding, save and load. A kind
supplies its algorithm (`train`, `encode_ordinary`, `decode`) and its own serialization:
`convkit_fields` / `from_convkit` for our format, `to_hf` / `from_hf` for tokenizer.json,
`gguf_metadata` for llama.cpp. formats.py only dispatches through the registry.
"""
from typing import Iterable

from .errors import TokenizerError
from .pretokenize import special_splitter

# kind name (the "type" of our format) -> class, in registration order
KINDS: dict = {}


def register(cls):
    """Class decorator: make cls the tokenizer of kind cls.kind."""
    if cls.kind in KINDS:
        raise ValueError(f"tokenizer kind {cls.kind!r} is registered twice")
    KINDS[cls.kind] = cls
    return cls


class Tokenizer:
    kind: str = ""              # the registry key and the "type" written in our format
    hf_models: tuple = ()       # tokenizer.json model types this kind may read ("BPE", ...)
    vocab: dict                 # token -> id (the model's own tokens)
    special_tokens: dict        # token -> id, matched in the raw text before encoding

    def _index(self) -> None:
        """Build the lookups from vocab and special_tokens; subclasses call it once set up."""
        self._id_to_token = {i: t for t, i in self.vocab.items()}
        self._id_to_token.update({i: t for t, i in self.special_tokens.items()})
        self._splitter = special_splitter(self.special_tokens)

    # ---------------------------------------------------------------- lookups
    def id_to_token(self, i: int) -> str | None:
        return self._id_to_token.get(i)

    def token_to_id(self, s: str) -> int | None:
        if s in self.special_tokens:
            return self.special_tokens[s]
        return self.vocab.get(s)

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    def unknown_id(self) -> int | None:
        """The id that stands for text the vocab cannot express (None if there is none)."""
        unk = getattr(self, "unk_token", None)
        return self.token_to_id(unk) if unk is not None else None

    def byte_fallback_ids(self) -> frozenset:
        """Ids of the byte pieces that stand for text no other piece covers (none by default)."""
        return frozenset()

    def _bad_id(self, i) -> TokenizerError:
        return TokenizerError(f"token id {i} is not in the vocab ({self.vocab_size} tokens)")

    # ---------------------------------------------------------------- encoding
    def encode(self, text: str) -> list[int]:
        """Ids of text: special tokens are cut out first, the parts between them encoded."""
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
        """Ids of text with special tokens treated as plain text."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, **options) -> "Tokenizer":
        raise NotImplementedError

    # ---------------------------------------------------------------- serialization
    def convkit_fields(self) -> dict:
        """What this kind writes into our format before the vocab (after type and special tokens)."""
        return {}

    def convkit_tail(self) -> dict:
        """What this kind writes into our format after the vocab (merges, scores)."""
        return {}

    @classmethod
    def from_convkit(cls, doc: dict, vocab: dict, specials: dict, name: str) -> "Tokenizer":
        raise NotImplementedError

    def to_hf(self) -> dict:
        raise TokenizerError(f"{self.kind} tokenizers have no tokenizer.json form")

    @classmethod
    def from_hf(cls, doc: dict, model: dict, vocab: dict, specials: dict, merges: list,
                name: str) -> "Tokenizer | None":
        """This kind built from a checked tokenizer.json, or None when the file is not of this kind."""
        return None

    def gguf_metadata(self) -> dict:
        raise TokenizerError(f"{self.kind} tokenizers have no llama.cpp tokenizer model")

    def save(self, path, fmt: str | None = None) -> None:
        from . import formats
        formats.save(self, path, fmt)

    @staticmethod
    def load(path) -> "Tokenizer":
        from . import formats
        return formats.load(path)
