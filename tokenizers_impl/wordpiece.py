"""WordPiece: BERT's subword model.

Encoding (as BERT and HF tokenizers do it): special tokens are cut out of the raw text,
the rest is normalized (normalize.BertNormalizer, optional) and split into words
(normalize.bert_pretokenize); each word is covered greedily by the longest vocab entry
from its start, pieces after the first carrying the `##` prefix. A word that cannot be
covered, or is longer than `max_input_chars_per_word` characters, becomes `[UNK]` as a
whole. Each distinct word is encoded once and cached.

Training starts from every character (and its `##` form when it occurs inside a word)
and repeatedly merges the adjacent pair with the best score:
- "likelihood" (the WordPiece criterion): freq(ab) / (freq(a) * freq(b)), the gain in
  corpus likelihood of a unigram model when a and b become one symbol;
- "frequency": freq(ab), which is what HF tokenizers' WordPieceTrainer does (a BPE
  trainer with the `##` prefix).
Ties go to the higher pair count, then to the smaller (left id, right id). Initial ids
are special tokens, then characters in code point order, then their `##` forms in
code point order, so the same corpus gives the same vocab on every machine.
The merge loop and the word count of ASCII text run in the compiled helper
(_wordpiece_train.c) when it is built; the Python code here is the reference it matches.
"""
import itertools
import re
from collections import Counter
from typing import Callable, Iterable, Sequence

import numpy as np

from .base import Tokenizer, register
from .errors import TokenizerError
from .normalize import BertNormalizer, bert_pretokenize
from .serial import TOKEN_NORMAL, by_id, gguf_special_ids, gguf_token_table, hf_type

try:
    from . import _wordpiece_train
except ImportError:  # the compiled helper is optional: _Trainer.run_python does the same
    _wordpiece_train = None

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SCORINGS = ("likelihood", "frequency")
_CACHE_LIMIT = 1 << 20


def _special_splitter(tokens) -> "re.Pattern | None":
    """Finds special tokens in raw text, the longest first where they overlap."""
    tokens = sorted(tokens, key=lambda t: (-len(t), t))
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


def split_specials(text: str, splitter) -> Iterable[tuple[bool, str]]:
    """(is_special, part) for the parts of text, special tokens on their own."""
    if splitter is None:
        yield False, text
        return
    start = 0
    for m in splitter.finditer(text):
        if m.start() > start:
            yield False, text[start:m.start()]
        yield True, m.group()
        start = m.end()
    if start < len(text):
        yield False, text[start:]


def bert_template(cls_id: int, sep_id: int) -> dict:
    """HF's post-processor for BERT: [CLS] A [SEP] (and [CLS] A [SEP] B [SEP] for pairs)."""
    def special(name, type_id):
        return {"SpecialToken": {"id": name, "type_id": type_id}}

    def seq(name, type_id):
        return {"Sequence": {"id": name, "type_id": type_id}}

    return {"type": "TemplateProcessing",
            "single": [special("[CLS]", 0), seq("A", 0), special("[SEP]", 0)],
            "pair": [special("[CLS]", 0), seq("A", 0), special("[SEP]", 0), seq("B", 1), special("[SEP]", 1)],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [cls_id], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [sep_id], "tokens": ["[SEP]"]}}}


def _cleanup(token: str) -> str:
    """HF's decoder cleanup: no space before punctuation and English contractions."""
    for dirty, clean in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                         (" n't", "n't"), (" 'm", "'m"), (" do not", " don't"), (" 's", "'s"),
                         (" 've", "'ve"), (" 're", "'re")):
        token = token.replace(dirty, clean)
    return token


@register
class WordPiece(Tokenizer):
    kind = "wordpiece"
    hf_models = ("WordPiece",)

    def __init__(self, vocab: dict, unk_token: str = "[UNK]", special_tokens: dict | None = None,
                 normalizer: BertNormalizer | None = BertNormalizer(),
                 continuing_subword_prefix: str = "##", max_input_chars_per_word: int = 100,
                 post_processor: dict | None = None):
        self.vocab = dict(vocab)
        self.unk_token = unk_token
        self.special_tokens = dict(special_tokens or {})
        self.normalizer = normalizer
        self.prefix = continuing_subword_prefix
        self.max_input_chars_per_word = max_input_chars_per_word
        # an HF post-processor kept verbatim (e.g. BERT's [CLS] ... [SEP] template)
        self.post_processor = post_processor
        if unk_token not in self.vocab:
            raise TokenizerError(f"unknown token {unk_token!r} is not in the WordPiece vocab: add it to the vocab")
        self._unk = [self.vocab[unk_token]]
        self._index()
        n = len(self.prefix)
        self._max_head = max((len(t) for t in self.vocab if not t.startswith(self.prefix)), default=0)
        self._max_tail = max((len(t) - n for t in self.vocab if t.startswith(self.prefix)), default=0)
        self._cache: dict = {}

    pretokenizer = "bert"

    @property
    def unk_id(self) -> int:
        return self._unk[0]

    # ---------------------------------------------------------------- encoding
    def words(self, text: str) -> list[str]:
        """Normalized, pre-tokenized words of text (special tokens not cut out)."""
        if self.normalizer is not None:
            text = self.normalizer.normalize(text)
        return bert_pretokenize(text)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = []
        for special, part in split_specials(text, self._splitter):
            if special:
                ids.append(self.special_tokens[part])
            else:
                ids += self.encode_words(self.words(part))
        return self.post_process(ids) if add_special_tokens else ids

    def encode_batch(self, texts: Iterable[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [self.encode(t, add_special_tokens) for t in texts]

    def encode_ordinary(self, text: str) -> list[int]:
        return self.encode_words(self.words(text))

    def encode_words(self, words: list[str]) -> list[int]:
        cache = self._cache
        missing = [w for w in set(words) if w not in cache]
        if missing:
            if len(cache) + len(missing) > _CACHE_LIMIT:
                cache.clear()
            for w in missing:
                cache[w] = self.encode_word(w)
        return list(itertools.chain.from_iterable(map(cache.__getitem__, words)))

    def encode_word(self, word: str) -> list[int]:
        """Greedy longest-match-first; the whole word is [UNK] if any part has no token."""
        n = len(word)
        if n > self.max_input_chars_per_word:
            return self._unk
        vocab, prefix, ids, start = self.vocab, self.prefix, [], 0
        while start < n:
            end = min(n, start + (self._max_tail if start else self._max_head))
            while end > start:
                tid = vocab.get(word[start:end] if start == 0 else prefix + word[start:end])
                if tid is not None:
                    break
                end -= 1
            else:
                return self._unk
            ids.append(tid)
            start = end
        return ids

    def post_process(self, ids: list[int]) -> list[int]:
        """Apply a TemplateProcessing post-processor's single-sequence template, if any."""
        pp = self.post_processor
        if not pp or pp.get("type") not in ("TemplateProcessing", "BertProcessing"):
            return ids
        if pp["type"] == "BertProcessing":
            return [pp["cls"][1], *ids, pp["sep"][1]]
        out = []
        for item in pp["single"]:
            if "Sequence" in item:
                out += ids
            else:
                out += pp["special_tokens"][item["SpecialToken"]["id"]]["ids"]
        return out

    # ---------------------------------------------------------------- decoding
    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of ids, joined as HF's WordPiece decoder does (cleanup included)."""
        try:
            tokens = [self._id_to_token[i] for i in ids]
        except KeyError as exc:
            raise self._bad_id(exc.args[0]) from None
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in self.special_tokens]
        out = []
        for i, token in enumerate(tokens):
            if i:
                token = token[len(self.prefix):] if token.startswith(self.prefix) else " " + token
            out.append(_cleanup(token))
        return "".join(out)

    # ---------------------------------------------------------------- training
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 0,
              special_tokens: Sequence[str] = BERT_SPECIAL_TOKENS, unk_token: str = "[UNK]",
              normalizer: BertNormalizer | None = BertNormalizer(), scoring: str = "likelihood",
              continuing_subword_prefix: str = "##", max_input_chars_per_word: int = 100,
              progress: Callable | None = None) -> "WordPiece":
        """Learn a vocab of vocab_size tokens from a stream of text chunks (only word
        counts are held). progress(n_merges) is called now and then while merging."""
        if scoring not in SCORINGS:
            raise TokenizerError(f"unknown WordPiece scoring {scoring!r}: use one of {', '.join(SCORINGS)}")
        specials = list(dict.fromkeys(special_tokens))
        if unk_token not in specials:
            specials.append(unk_token)
        counts = count_words(texts, normalizer, specials)
        if not counts:
            raise TokenizerError("empty corpus: no words to train on")
        trainer = _Trainer(counts, specials, continuing_subword_prefix)
        del counts
        if vocab_size < len(trainer.id_to_token):
            raise TokenizerError(
                f"vocab size {vocab_size} is smaller than the corpus alphabet ({trainer.n_alphabet} characters "
                f"and {continuing_subword_prefix}-continuations) plus {len(specials)} special tokens: "
                f"use at least {len(trainer.id_to_token)}")
        trainer.run(vocab_size, min_frequency, scoring, progress)
        vocab = {t: i for i, t in enumerate(trainer.id_to_token)}
        template = bert_template(vocab["[CLS]"], vocab["[SEP]"]) if "[CLS]" in specials and "[SEP]" in specials else None
        return cls(vocab, unk_token, {t: vocab[t] for t in specials}, normalizer,
                   continuing_subword_prefix, max_input_chars_per_word, template)

    # ---------------------------------------------------------------- files
    def convkit_fields(self) -> dict:
        return {"unk_token": self.unk_token,
                "normalizer": self.normalizer.to_dict() if self.normalizer is not None else None,
                "continuing_subword_prefix": self.prefix,
                "max_input_chars_per_word": self.max_input_chars_per_word,
                "post_processor": self.post_processor}

    @classmethod
    def from_convkit(cls, doc, vocab, specials, name):
        norm = doc.get("normalizer")
        return cls(vocab, doc["unk_token"], specials, BertNormalizer.from_dict(norm) if norm is not None else None,
                   doc["continuing_subword_prefix"], doc["max_input_chars_per_word"], doc.get("post_processor"))

    def to_hf(self) -> dict:
        norm = self.normalizer
        return {"normalizer": None if norm is None else {"type": "BertNormalizer", **norm.to_dict()},
                "pre_tokenizer": {"type": "BertPreTokenizer"},
                "post_processor": self.post_processor,
                "decoder": {"type": "WordPiece", "prefix": self.prefix, "cleanup": True},
                "model": {"type": "WordPiece", "unk_token": self.unk_token,
                          "continuing_subword_prefix": self.prefix,
                          "max_input_chars_per_word": self.max_input_chars_per_word,
                          "vocab": by_id(self.vocab)}}

    @classmethod
    def from_hf(cls, doc, model, vocab, specials, merges, name):
        if model["type"] != "WordPiece":
            return None
        norm, pre = doc.get("normalizer"), doc.get("pre_tokenizer")
        if norm is not None and hf_type(norm) != "BertNormalizer":
            raise TokenizerError(f"{name}: WordPiece normalizer {hf_type(norm)!r} is not supported (only BertNormalizer)")
        if hf_type(pre) != "BertPreTokenizer":
            raise TokenizerError(f"{name}: WordPiece pre-tokenizer {hf_type(pre)!r} is not supported "
                                 f"(only BertPreTokenizer)")
        return cls(vocab, model.get("unk_token", "[UNK]"), specials,
                   BertNormalizer.from_dict(norm) if norm is not None else None,
                   model.get("continuing_subword_prefix", "##"),
                   model.get("max_input_chars_per_word", 100), doc.get("post_processor"))

    def gguf_metadata(self) -> dict:
        vocab, tokens, types = gguf_token_table(self)
        # llama.cpp's BERT vocab marks word starts with U+2581 and drops the ## prefix
        prefix = self.prefix
        for i, t in enumerate(tokens):
            if types[i] == TOKEN_NORMAL:
                tokens[i] = t[len(prefix):] if t.startswith(prefix) else "\u2581" + t
        meta = {"tokenizer.ggml.model": "bert", "tokenizer.ggml.pre": "default",
                "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types}
        # llama.cpp's BERT tokenizer starts with the bos id and ends with the separator
        gguf_special_ids(meta, vocab, {"bos": ("[CLS]",), "eos": ("[SEP]",), "unknown": (self.unk_token,),
                                       "seperator": ("[SEP]",), "padding": ("[PAD]",), "mask": ("[MASK]",)})
        meta["tokenizer.ggml.add_bos_token"] = "tokenizer.ggml.bos_token_id" in meta
        meta["tokenizer.ggml.add_eos_token"] = "tokenizer.ggml.eos_token_id" in meta
        return meta


def count_words(texts: Iterable[str], normalizer: BertNormalizer | None, special_tokens=()) -> Counter:
    """How often each word occurs; special tokens are cut out and never counted."""
    if isinstance(texts, str):
        texts = [texts]
    splitter = _special_splitter(special_tokens)
    counts: Counter = Counter()
    for chunk in _batches(texts, joinable=not any("\n" in t for t in special_tokens)):
        for special, part in split_specials(chunk, splitter):
            if special:
                continue
            if _wordpiece_train is not None and part.isascii():
                # the compiled helper normalizes (only these two steps change ASCII text) and counts
                clean, lower = (normalizer.clean_text, normalizer.lowercase) if normalizer else (False, False)
                _wordpiece_train.count_ascii(part, clean, lower, counts)
                continue
            if normalizer is not None:
                part = normalizer.normalize(part)
            if _wordpiece_train is not None and part.isascii():
                _wordpiece_train.count_ascii(part, False, False, counts)
            else:
                counts.update(bert_pretokenize(part))
    return counts


def _batches(texts: Iterable[str], joinable: bool, size: int = 1 << 18) -> Iterable[str]:
    """The texts, short ones joined by newlines into chunks of about size characters, the
    ASCII ones apart from the others (the normalizer has a fast path for ASCII text).

    Every step of the normalizer works character by character and a newline always ends a
    word, so a joined chunk gives the words of its parts; special tokens holding no newline
    cannot match across one. Joining saves the per-call cost of many short lines."""
    if not joinable:
        yield from texts
        return
    bufs: dict = {True: [], False: []}
    sizes = {True: 0, False: 0}
    for text in texts:
        key = text.isascii()
        bufs[key].append(text)
        sizes[key] += len(text) + 1
        if sizes[key] >= size:
            yield "\n".join(bufs[key])
            bufs[key], sizes[key] = [], 0
    for key in (True, False):
        if bufs[key]:
            yield "\n".join(bufs[key])


class _Trainer:
    """Merge loop over the distinct words. run_python keeps pair counts in numpy arrays so
    each step scores every pair at once; a merge rewrites only the words holding that
    pair. The compiled loop keeps the pairs in a heap instead, with the same results."""

    def __init__(self, counts: Counter, specials: list, prefix: str):
        self.prefix = prefix
        chars = sorted({c for w in counts for c in w})
        inner = sorted({c for w in counts for c in w[1:]})
        self.n_alphabet = len(chars)
        id_to_token = list(specials)
        for tok in chars + [prefix + c for c in inner]:
            if tok not in specials:
                id_to_token.append(tok)
        self.id_to_token = id_to_token
        self.token_to_id = {t: i for i, t in enumerate(id_to_token)}
        tid = self.token_to_id
        # sorted word order keeps every data structure independent of hashing
        words = sorted(counts)
        self.words = [tuple([tid[w[0]], *(tid[prefix + c] for c in w[1:])]) for w in words]
        self.word_counts = [counts[w] for w in words]

    def run(self, vocab_size, min_frequency, scoring, progress):
        if _wordpiece_train is None:
            return self.run_python(vocab_size, min_frequency, scoring, progress)
        lengths = np.fromiter(map(len, self.words), dtype=np.int64, count=len(self.words))
        offsets = np.zeros(len(self.words) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        symbols = np.fromiter(itertools.chain.from_iterable(self.words), dtype=np.int32, count=int(offsets[-1]))
        counts = np.array(self.word_counts, dtype=np.int64)
        _wordpiece_train.merges(symbols, offsets, counts, len(self.id_to_token), vocab_size,
                                max(min_frequency, 1), scoring == "likelihood", self._new_token, progress)

    def run_python(self, vocab_size, min_frequency, scoring, progress):
        """The merge loop the compiled helper (_wordpiece_train.c) follows: the reference."""
        words, wc = self.words, self.word_counts
        n_sym = len(self.id_to_token)
        sym_freq = np.zeros(max(vocab_size, n_sym) + 1, dtype=np.int64)
        pairs = _PairTable()
        pair_words: list = []  # slot -> indices of the words holding that pair
        deltas: Counter = Counter()
        for wi, (w, c) in enumerate(zip(words, wc)):
            for s in w:
                sym_freq[s] += c
            for p in zip(w, w[1:]):
                deltas[p] += c
                slot = pairs.slot(p)
                if slot == len(pair_words):
                    pair_words.append(set())
                pair_words[slot].add(wi)
        pairs.apply(deltas)
        threshold = max(min_frequency, 1)
        n_merges = 0
        while len(self.id_to_token) < vocab_size:
            best = pairs.best(sym_freq, threshold, scoring)
            if best is None:
                break
            a, b = int(pairs.left[best]), int(pairs.right[best])
            new_id = self._new_token(a, b)
            deltas = Counter()
            for wi in pair_words[best]:
                old = words[wi]
                new = _merge_word(old, a, b, new_id)
                if new is None:
                    continue
                words[wi] = new
                c = wc[wi]
                for p in zip(old, old[1:]):
                    deltas[p] -= c
                for p in zip(new, new[1:]):
                    deltas[p] += c
                    slot = pairs.slot(p)
                    if slot == len(pair_words):
                        pair_words.append(set())
                    pair_words[slot].add(wi)
                merged = (len(old) - len(new)) * c
                sym_freq[a] -= merged
                sym_freq[b] -= merged
                sym_freq[new_id] += merged
            pair_words[best] = set()
            pairs.apply(deltas)
            n_merges += 1
            if progress is not None and n_merges % 64 == 0:
                progress(n_merges)
        if progress is not None:
            progress(n_merges)

    def _new_token(self, a: int, b: int) -> int:
        """Id of left + right (right without its ## prefix); an existing token is reused."""
        right = self.id_to_token[b]
        if right.startswith(self.prefix):
            right = right[len(self.prefix):]
        token = self.id_to_token[a] + right
        tid = self.token_to_id.get(token)
        if tid is None:
            tid = self.token_to_id[token] = len(self.id_to_token)
            self.id_to_token.append(token)
        return tid


class _PairTable:
    """Parallel arrays: left id, right id and current count of every pair ever seen
    (slot = order of first appearance), grown by doubling."""

    def __init__(self):
        self.n = 0
        self.slots: dict = {}  # (left, right) -> slot
        self._new: list = []  # pairs given a slot since the last apply
        self._left = np.zeros(1024, dtype=np.int64)
        self._right = np.zeros(1024, dtype=np.int64)
        self._count = np.zeros(1024, dtype=np.int64)

    left = property(lambda self: self._left[:self.n])
    right = property(lambda self: self._right[:self.n])
    count = property(lambda self: self._count[:self.n])

    def slot(self, pair) -> int:
        slot = self.slots.get(pair)
        if slot is None:
            slot = self.slots[pair] = len(self.slots)
            self._new.append(pair)
        return slot

    def apply(self, deltas: Counter) -> None:
        """Give the new pairs their arrays' rows, then add deltas[pair] to each count."""
        n_old, n_new = self.n, len(self.slots)
        if n_new > n_old:
            if n_new > len(self._count):
                size = max(n_new, 2 * len(self._count))
                for name in ("_left", "_right", "_count"):
                    grown = np.zeros(size, dtype=np.int64)
                    grown[:n_old] = getattr(self, name)[:n_old]
                    setattr(self, name, grown)
            new = np.array(self._new, dtype=np.int64).reshape(-1, 2)
            self._left[n_old:n_new] = new[:, 0]
            self._right[n_old:n_new] = new[:, 1]
            self._new = []
            self.n = n_new
        if deltas:
            slots = np.fromiter((self.slots[p] for p in deltas), dtype=np.int64, count=len(deltas))
            np.add.at(self._count, slots, np.fromiter(deltas.values(), dtype=np.int64, count=len(deltas)))

    def best(self, sym_freq, threshold: int, scoring: str) -> int | None:
        live = np.flatnonzero(self.count >= threshold)
        if len(live) == 0:
            return None
        count = self.count[live]
        if scoring == "likelihood":
            score = count / (sym_freq[self.left[live]].astype(np.float64) * sym_freq[self.right[live]])
        else:
            score = count
        top = np.flatnonzero(score == score.max())
        if len(top) > 1:  # ties: higher count, then smaller (left, right)
            order = np.lexsort((self.right[live[top]], self.left[live[top]], -count[top]))
            top = top[order[:1]]
        return int(live[top[0]])


def _merge_word(word: tuple, a: int, b: int, new_id: int) -> tuple | None:
    """word with every (a, b), left to right, replaced by new_id; None if it has none."""
    out, i, n, hit = [], 0, len(word), False
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
            hit = True
        else:
            out.append(word[i])
            i += 1
    return tuple(out) if hit else None
