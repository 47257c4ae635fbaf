"""sentencepiece's BPE trainer (model_type=bpe, as Llama 2 and Mistral were trained).

Words are the corpus's `▁`-prefixed runs (spm_train_input), each a sequence of
characters. Repeatedly, the most frequent adjacent pair of symbols is merged
everywhere, left to right; a pair's frequency counts every adjacent occurrence (in
`aaa` the pair `a a` occurs twice) weighted by the word's count. Ties go to the
shorter piece, then to the smaller string. A pair is never formed across a character
outside the alphabet or into a string that is not a valid piece (`▁` inside, mixed
scripts, longer than 16). If two different pairs spell a piece already made, the
second is dropped without merging. When no pair occurs any more, sentencepiece goes on
taking pairs that occurred once (count 0), shortest first. Piece i (0-based) scores -i;
the alphabet follows the merged pieces, most frequent character first, continuing the
scores.

Result: [(piece, score, type)] in id order, types as sentencepiece numbers them.
"""
import heapq
from typing import Callable, Iterable

import numpy as np

from .errors import TokenizerError
from .spm_train_input import (UNK_CHAR, SpmTrainOptions, assemble, basic_nmt_nfkc, char_class, load_corpus,
                              piece_validator)

try:
    from . import _spm_train
except ImportError:  # no compiler at install time: _merge below
    _spm_train = None


def train_spm_bpe(lines: Iterable[str], opts: SpmTrainOptions,
                  normalize: Callable[[str], str] = basic_nmt_nfkc) -> list[tuple[str, float, int]]:
    corpus = load_corpus(lines, opts, normalize)
    # the order of the words does not change the merges: no need for sentencepiece's sorting
    words = list(corpus.words.items())
    corpus.words = corpus.ends = {}  # the words are all that is needed from here on
    n_merges = opts.vocab_size - len(corpus.meta) - len(corpus.required_chars)
    if _spm_train is not None:
        merged = _merge_compiled(words, n_merges, opts)
    else:
        merged = _merge(words, n_merges, piece_validator(opts))
    if len(merged) < n_merges:
        raise TokenizerError(
            f"vocab size {opts.vocab_size} is too large for this corpus: it gives at most "
            f"{opts.vocab_size - n_merges + len(merged)} pieces; lower the vocab size or give more text")
    pieces = [(p, -float(i)) for i, p in enumerate(merged)]
    for c, _ in corpus.sorted_required_chars():
        pieces.append((c, -float(len(pieces))))
    return assemble(corpus.meta, pieces, opts.vocab_size)


def _merge_compiled(words: list[tuple[str, int]], n_merges: int, opts: SpmTrainOptions) -> list[str]:
    """_merge in the compiled helper: words as character-symbol ids, characters with their classes."""
    cps = np.frombuffer("".join(w for w, _ in words).encode("utf-32-le", "surrogatepass"), np.uint32)
    unique = np.flatnonzero(np.bincount(cps))  # the characters, in code point order
    ids = np.zeros(int(unique[-1]) + 1, np.int32)
    ids[unique] = np.arange(len(unique), dtype=np.int32)
    seqs = ids[cps]
    del cps, ids
    chars = [chr(c) for c in unique.tolist()]
    offsets = np.zeros(len(words) + 1, np.int64)
    np.cumsum([len(w) for w, _ in words], out=offsets[1:])
    counts = np.array([n for _, n in words], np.int64)
    classes = np.array([char_class(c, opts) for c in chars], np.int32)
    return _spm_train.bpe_merges(seqs, offsets, counts, chars, classes, opts.max_sentencepiece_length, n_merges)


def _merge(words: list[tuple[str, int]], n_merges: int, valid: Callable[[str], bool]) -> list[str]:
    """The merged pieces in merge order."""
    names: list[str] = []           # symbol id -> string
    ids: dict[str, int] = {}

    def symbol(s: str) -> int:
        sid = ids.get(s)
        if sid is None:
            sid = ids[s] = len(names)
            names.append(s)
        return sid

    unk = symbol(UNK_CHAR)
    seqs = [[symbol(c) for c in w] for w, _ in words]
    freqs = [n for _, n in words]
    pair_ok: dict[tuple[int, int], bool] = {}

    def ok(a: int, b: int) -> bool:
        key = (a, b)
        r = pair_ok.get(key)
        if r is None:
            r = pair_ok[key] = a != unk and b != unk and valid(names[a] + names[b])
        return r

    counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    ever: set[tuple[int, int]] = set()  # every pair that occurred at some time
    for wi, seq in enumerate(seqs):
        f = freqs[wi]
        for a, b in zip(seq, seq[1:]):
            if ok(a, b):
                counts[(a, b)] = counts.get((a, b), 0) + f
                where.setdefault((a, b), set()).add(wi)
                ever.add((a, b))

    def entry(pair, n):
        s = names[pair[0]] + names[pair[1]]
        return (-n, len(s), s, pair)

    heap = [entry(p, n) for p, n in counts.items()]
    heapq.heapify(heap)
    made: set[str] = set()
    out: list[str] = []
    dead: set[tuple[int, int]] = set()
    zero_phase = False
    while len(out) < n_merges:
        if not heap:
            # no pair occurs any more: sentencepiece goes on with the pairs that did occur
            # once and are gone now (count 0), shortest first, then by string
            if zero_phase:
                break
            zero_phase = True
            heap = sorted(entry(p, 0) for p in ever if p not in dead and not counts.get(p, 0))
            continue
        neg, _, s, pair = heapq.heappop(heap)
        if pair in dead or counts.get(pair, 0) != -neg or (neg == 0 and not zero_phase):
            continue
        if s in made:  # the same string by another split: sentencepiece drops this pair
            dead.add(pair)
            continue
        made.add(s)
        out.append(s)
        dead.add(pair)  # merged: never a candidate again
        new = symbol(s)
        a, b = pair
        changed: set[tuple[int, int]] = set()
        for wi in sorted(where.pop(pair, ())):
            seq = seqs[wi]
            f = freqs[wi]
            for p in zip(seq, seq[1:]):
                if p in counts:
                    counts[p] -= f
                    changed.add(p)
            merged_seq = []
            i, n = 0, len(seq)
            while i < n:
                if i + 1 < n and seq[i] == a and seq[i + 1] == b:
                    merged_seq.append(new)
                    if i + 2 < n and ok(new, seq[i + 2]):
                        # formed for a moment even when the next pair merges too (a b a b):
                        # sentencepiece keeps it as a pair that occurred
                        ever.add((new, seq[i + 2]))
                    i += 2
                else:
                    merged_seq.append(seq[i])
                    i += 1
            seqs[wi] = merged_seq
            for p in zip(merged_seq, merged_seq[1:]):
                if ok(*p):
                    counts[p] = counts.get(p, 0) + f
                    changed.add(p)
                    where.setdefault(p, set()).add(wi)
                    ever.add(p)
        counts.pop(pair, None)
        for p in changed:
            n = counts.get(p, 0)
            if n > 0 and p not in dead:
                heapq.heappush(heap, entry(p, n))
            elif n <= 0:
                counts.pop(p, None)
                where.pop(p, None)
    return out
