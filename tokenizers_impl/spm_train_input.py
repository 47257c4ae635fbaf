"""What sentencepiece's two trainers share: options, sentence loading, the alphabet, the
reserved pieces and the rule for which strings may become a piece.

It follows sentencepiece's trainer_interface.cc (sentencepiece 0.2.3, the version the
tests compare with):
- every non-empty input line (at most `max_sentence_length` bytes) is one sentence;
- a sentence is normalized (whitespace becomes `▁`, a `▁` is put in front), and any
  reserved piece written in it (`<s>`, a user-defined symbol, `<0x41>`) is replaced by a
  U+001F, so that it takes no part in training;
- the alphabet is the most frequent characters that together cover `character_coverage`
  of all characters; every other character becomes `▅` (never part of a piece);
- reserved pieces get the first ids: `<unk>`, `<s>`, `</s>`, then control symbols,
  user-defined symbols and, with byte fallback, `<0x00>`..`<0xFF>`.
Pieces never span a `▁` but at their start, so the sentences are kept only as counts of
their words (Corpus), read in batches.

Normalization is a parameter (a function from a raw line to its normalized form, with
`▁` for whitespace): `basic_nmt_nfkc` below is sentencepiece's `nmt_nfkc` rebuilt from
Python's NFKC, which agrees with it except on characters of Unicode versions newer
than Python's; pass the exact normalizer when one is available.
"""
import bisect
import functools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from . import unicode_scripts
from .corpus import CHUNK_BYTES, read_text_chunks
from .errors import TokenizerError

try:
    from . import _spm_train
except ImportError:  # no compiler at install time: Counter and a regex
    _spm_train = None

# sentencepiece_model.proto, ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

WS = "\u2581"        # stands for whitespace in pieces
UNK_CHAR = "\u2585"  # stands for a character outside the alphabet
BOUNDARY = "\x1f"    # where a reserved piece was cut out of a sentence


@dataclass(frozen=True)
class SpmTrainOptions:
    """sentencepiece's TrainerSpec fields that the two trainers read, with its defaults."""
    vocab_size: int
    character_coverage: float = 0.9995
    byte_fallback: bool = False
    user_defined_symbols: tuple = ()
    control_symbols: tuple = ()
    required_chars: str = ""
    max_sentencepiece_length: int = 16
    max_sentence_length: int = 4192  # bytes; longer lines are skipped
    split_by_whitespace: bool = True
    split_by_unicode_script: bool = True
    split_by_number: bool = True
    split_digits: bool = False
    unk_piece: str = "<unk>"
    bos_piece: str = "<s>"
    eos_piece: str = "</s>"
    pad_piece: str = "<pad>"
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    # Unigram only
    seed_sentencepiece_size: int = 1_000_000
    shrinking_factor: float = 0.75
    num_sub_iterations: int = 2


_SPACES = re.compile(r" +")


def basic_nmt_nfkc(line: str) -> str:
    """sentencepiece's nmt_nfkc built from Python's NFKC: its extra rules first (ASCII
    control characters go; tab, newlines, a few invisible marks, U+2581 and U+FFFD become
    spaces; the full-width tilde stays), then NFKC; then its whitespace handling: space
    runs become one, leading and trailing spaces go, a dummy prefix space is added, and
    spaces are written as `▁`. Stands in for the exact normalizer (see the module doc):
    sentencepiece maps characters with a precompiled table of a fixed Unicode version."""
    text = line.translate(_NMT_RULES)
    text = "\uff5e".join(unicodedata.normalize("NFKC", part) for part in text.split("\uff5e"))
    text = _SPACES.sub(" ", text).strip(" ")
    if not text:
        return ""
    return WS + text.replace(" ", WS)


# sentencepiece's additions to NFKC in nmt_nfkc (normalization_rule builder, MergeNmtMap)
_NMT_RULES = {c: " " for c in (0x09, 0x0A, 0x0C, 0x0D, 0x061C, 0x1680, 0x200B, 0x200C, 0x200E, 0x200F,
                               0x2028, 0x2029, 0x2581, 0xFEFF, 0xFFFD)}
_NMT_RULES.update({c: None for c in [*range(0x01, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, 0x8F, 0x9F]})


def byte_piece(b: int) -> str:
    return f"<0x{b:02X}>"


def meta_pieces(opts: SpmTrainOptions) -> dict[int, tuple[str, int]]:
    """id -> (piece, type) of the reserved pieces, as sentencepiece's InitMetaPieces lays them out."""
    meta: dict[int, tuple[str, int]] = {}
    for pid, piece in ((opts.unk_id, opts.unk_piece), (opts.bos_id, opts.bos_piece),
                       (opts.eos_id, opts.eos_piece), (opts.pad_id, opts.pad_piece)):
        if pid < 0:
            continue
        if pid >= opts.vocab_size or pid in meta:
            raise TokenizerError(f"reserved piece {piece!r}: id {pid} is taken or not below the vocab size")
        meta[pid] = (piece, UNKNOWN if piece == opts.unk_piece else CONTROL)
    seen: set[str] = set()
    special_ids = {opts.bos_piece: opts.bos_id, opts.eos_piece: opts.eos_id, opts.pad_piece: opts.pad_id}
    symbols = [(w, CONTROL) for w in opts.control_symbols] + [(w, USER_DEFINED) for w in opts.user_defined_symbols]
    if opts.byte_fallback:
        symbols += [(byte_piece(b), BYTE) for b in range(256)]
    next_id = 0
    for piece, kind in symbols:
        if piece in seen:
            raise TokenizerError(f"special token {piece!r} is given twice")
        if piece == opts.unk_piece:
            raise TokenizerError(f"{piece!r} is the unknown piece and cannot also be a special token")
        seen.add(piece)
        if special_ids.get(piece, -1) >= 0:  # e.g. <s> named again: only its type changes
            pid = special_ids[piece]
            meta[pid] = (meta[pid][0], kind)
            continue
        while next_id in meta:
            next_id += 1
        meta[next_id] = (piece, kind)
    return meta


@functools.cache
def _script_table():
    starts, ends, names = [], [], []
    for name, spec in unicode_scripts.SCRIPTS.items():
        for item in spec.split():
            lo, _, hi = item.partition("-")
            starts.append(int(lo, 16))
            ends.append(int(hi or lo, 16))
            names.append(name)
    order = sorted(range(len(starts)), key=starts.__getitem__)
    return [starts[i] for i in order], [ends[i] for i in order], [names[i] for i in order]


@functools.lru_cache(maxsize=1 << 16)
def script_of(ch: str) -> str:
    """The script sentencepiece groups a character under (Hiragana and Katakana count as Han)."""
    cp = ord(ch)
    starts, ends, names = _script_table()
    i = bisect.bisect_right(starts, cp) - 1
    name = names[i] if i >= 0 and cp <= ends[i] else "Common"
    if name in ("Hiragana", "Katakana") or cp == 0x30FC:
        return "Han"
    return name


def _is_decimal(ch: str) -> bool:
    return "0" <= ch <= "9" or "\uff10" <= ch <= "\uff19"


def piece_validator(opts: SpmTrainOptions) -> Callable[[str], bool]:
    """sentencepiece's IsValidSentencePiece for these options (whitespace as prefix)."""
    max_len = opts.max_sentencepiece_length

    @functools.lru_cache(maxsize=1 << 20)
    def valid(piece: str) -> bool:
        if not piece or len(piece) > max_len:
            return False
        prev = None  # None: any script
        last = len(piece) - 1
        for pos, c in enumerate(piece):
            if c in (UNK_CHAR, "\x00", BOUNDARY, " ") or 0xD800 <= ord(c) <= 0xDFFF:
                return False
            if c == WS:
                if opts.split_by_whitespace and pos > 0:
                    return False
                if not opts.split_by_whitespace and pos > 0 and pos == last:
                    return False
                continue
            s = script_of(c)
            if s == "Inherited":
                s = prev
            if not opts.split_by_number and _is_decimal(c):
                s = None
            if opts.split_digits and _is_decimal(c) and len(piece) > 1:
                return False
            if opts.split_by_unicode_script and s is not None and prev is not None and prev != s:
                return False
            prev = s
        return True

    return valid


# the words of many sentences joined by newlines (a normalized sentence has none of its own)
_WORDS = re.compile(f"{WS}[^{WS}\n]*|[^{WS}\n]+")
_BATCH = 1 << 12  # sentences counted at once


def char_class(c: str, opts: SpmTrainOptions) -> int:
    """A character's class for the compiled helper's piece_validator: -1 never in a
    piece of two or more characters, -2 `▁`, -3 inherits the script before it, -4 any
    script, else the script's number."""
    if c in (UNK_CHAR, "\x00", BOUNDARY, " ") or 0xD800 <= ord(c) <= 0xDFFF:
        return -1
    if c == WS:
        return -2
    digit = _is_decimal(c)
    if digit and opts.split_digits:
        return -1
    if (digit and not opts.split_by_number) or not opts.split_by_unicode_script:
        return -4
    script = script_of(c)
    return -3 if script == "Inherited" else _SCRIPT_IDS.setdefault(script, len(_SCRIPT_IDS))


_SCRIPT_IDS: dict[str, int] = {}


def split_into_words(sentence: str) -> list[str]:
    """A normalized sentence cut before every `▁` (sentencepiece's SplitIntoWords)."""
    words = sentence.split(WS)
    out = [WS + w for w in words[1:]]
    if words[0]:
        out.insert(0, words[0])
    return out


@dataclass
class Corpus:
    """The normalized corpus as counts of its words, rare characters as `▅`, and the alphabet.

    Both trainers need only words (a piece never spans `▁` but at its start), so the
    sentences are not kept: `words` counts the words, `ends` the words at the end of a
    sentence (what the Unigram seeds need to know about what follows a word)."""
    words: dict[str, int]
    ends: dict[str, int]
    required_chars: dict[str, int]  # character -> frequency, the alphabet
    meta: dict[int, tuple[str, int]]

    def word_counts(self) -> list[tuple[str, int]]:
        """Words and their counts, most frequent first, then by string (sentencepiece's Sorted)."""
        return sorted(self.words.items(), key=lambda kv: (-kv[1], kv[0]))

    def sorted_required_chars(self) -> list[tuple[str, int]]:
        return sorted(self.required_chars.items(), key=lambda kv: (-kv[1], kv[0]))


def _meta_replacer(meta: dict[int, tuple[str, int]]):
    pieces = sorted({p for p, _ in meta.values()}, key=lambda p: (-len(p), p))
    pattern = re.compile("|".join(re.escape(p) for p in pieces))
    return lambda s: pattern.sub(BOUNDARY, s)


class _WordCounts:
    """Counts of words and of the words that end a sentence, over batches of sentences."""

    def __init__(self):
        self.table = _spm_train.words_new() if _spm_train is not None else None
        self.words: Counter = Counter()
        self.ends: Counter = Counter()

    def add(self, text: str) -> None:
        """text: sentences, each followed by a newline."""
        if self.table is not None:
            _spm_train.words_add(self.table, text)
            return
        self.words.update(_WORDS.findall(text))
        self.ends.update(s[max(s.rfind(WS), 0):] for s in text.split("\n")[:-1])

    def result(self) -> tuple[dict[str, int], dict[str, int]]:
        if self.table is not None:
            return _spm_train.words_result(self.table)
        return dict(self.words), dict(self.ends)


def _count_batch(batch: list[str], strip_meta, counts: _WordCounts, chars: np.ndarray) -> None:
    """Cuts the reserved pieces out of the batch's sentences and adds its words, its
    sentences' last words and its characters (by code point) to the counts."""
    text = strip_meta("\n".join(batch) + "\n")  # no reserved piece holds a newline
    counts.add(text)
    found = np.bincount(np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32))
    found[0x0A] -= len(batch)
    chars[:len(found)] += found


def corpus_lines(paths: Iterable, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The lines of corpus files (`-` for stdin), split at newlines only, as sentencepiece
    reads them; read in chunks (corpus.read_text_chunks, which also reports text that is
    not UTF-8). A line cut between two chunks is put back together."""
    for path in paths:
        rest = ""
        for chunk in read_text_chunks(path, chunk_bytes):
            lines = (rest + chunk).split("\n")
            rest = lines.pop()
            yield from lines
        if rest:
            yield rest


def load_corpus(lines: Iterable[str], opts: SpmTrainOptions,
                normalize: Callable[[str], str] = basic_nmt_nfkc) -> Corpus:
    """sentencepiece's LoadSentences: read, normalize, pick the alphabet, mask rare characters."""
    meta = meta_pieces(opts)
    if not any(kind == UNKNOWN for _, kind in meta.values()):
        raise TokenizerError("the unknown piece needs an id")
    strip_meta = _meta_replacer(meta)
    word_counts = _WordCounts()
    counts = np.zeros(0x110000, np.int64)
    batch: list[str] = []
    n_sentences = 0
    for line in lines:
        line = line.rstrip("\n")
        # (a line of n characters has at most 4n bytes: most need no encoding to check)
        if not line or (4 * len(line) > opts.max_sentence_length
                        and len(line.encode("utf-8")) > opts.max_sentence_length):
            continue
        if UNK_CHAR in line:
            continue
        s = normalize(line).replace("\n", "")
        if s:
            batch.append(s)
            if len(batch) == _BATCH:
                _count_batch(batch, strip_meta, word_counts, counts)
                n_sentences += len(batch)
                batch = []
    if batch:
        _count_batch(batch, strip_meta, word_counts, counts)
        n_sentences += len(batch)
    if not n_sentences:
        raise TokenizerError("the corpus has no text to train on")

    chars = {chr(cp): int(counts[cp]) for cp in np.flatnonzero(counts).tolist()}
    chars.pop("\x00", None)
    required = set(opts.required_chars) - {"\x00"}
    for c in required:
        chars.setdefault(c, 0)
    total = sum(chars.values())
    ranked = sorted(chars.items(), key=lambda kv: (kv[0] not in required, -kv[1], kv[0]))
    alphabet: dict[str, int] = {}
    covered = 0
    target = np.float32(opts.character_coverage)
    for c, n in ranked:
        # sentencepiece compares the coverage as a float32
        if np.float32(covered / total) >= target:
            break
        covered += n
        if c != BOUNDARY:
            alphabet[c] = n
    if len(alphabet) + len(meta) > opts.vocab_size:
        raise TokenizerError(
            f"vocab size {opts.vocab_size} is smaller than the alphabet ({len(alphabet)} characters) plus "
            f"{len(meta)} reserved pieces; raise the vocab size or lower the character coverage")
    rare = set(chars) - set(alphabet)
    words, ends = word_counts.result()
    if rare:  # masking character by character, words can be masked after counting
        pattern = re.compile("[" + "".join(re.escape(c) for c in sorted(rare)) + "]")
        words, ends = _mask(words, pattern), _mask(ends, pattern)
    return Corpus(words, ends, alphabet, meta)


def _mask(counts: dict[str, int], pattern) -> dict[str, int]:
    """The counts with the pattern's characters in the words replaced by `▅`."""
    out: dict[str, int] = {}
    for w, n in counts.items():
        if pattern.search(w):
            w = pattern.sub(UNK_CHAR, w)
        out[w] = out.get(w, 0) + n
    return out


def assemble(meta: dict[int, tuple[str, int]], pieces: list[tuple[str, float]],
             vocab_size: int) -> list[tuple[str, float, int]]:
    """The vocabulary in id order: reserved pieces at their ids (score 0), trained pieces
    filling the other ids in order (sentencepiece's Serialize)."""
    out: list[tuple[str, float, int]] = []
    it = iter(pieces)
    for pid in range(vocab_size):
        if pid in meta:
            out.append((meta[pid][0], 0.0, meta[pid][1]))
            continue
        nxt = next(it, None)
        if nxt is None:
            raise TokenizerError(f"vocab size {vocab_size} is too large for this corpus: it gives at most "
                                 f"{len(meta) + len(pieces)} pieces; lower the vocab size or give more text")
        out.append((nxt[0], nxt[1], NORMAL))
    seen = set()
    for piece, _, _ in out:
        if piece in seen:
            raise TokenizerError(f"piece {piece!r} would appear twice in the vocabulary")
        seen.add(piece)
    return out
