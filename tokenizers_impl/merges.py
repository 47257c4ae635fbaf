"""The BPE algorithm itself: counting pairs, merging them, training and applying merges.

`get_stats` and `merge` show the idea on one sequence. Training over a whole corpus
keeps, like HF tokenizers' BpeTrainer, a count for every adjacent pair, a priority queue
of (count, pair) and, for each queued pair, the words where it occurs; merging a pair
touches only those words and updates the counts of the pairs around each occurrence.

Tie rule (the same as HF's BpeTrainer): the highest count wins; among equal counts the
pair with the smaller (left id, right id). Queue entries may be stale: an entry whose
count no longer matches is re-queued with the current count. A merge whose string is
already a token reuses that token's id. This makes training deterministic.

`train_merges` runs the compiled helper when it is built; `train_merges_reference` is
the same algorithm in Python (slow, readable, and the helper's test oracle).
"""
import heapq

import numpy as np

from .errors import TokenizerError

try:
    from . import _bpe
except ImportError:  # the compiled helper is optional
    _bpe = None


def get_stats(ids, counts=None) -> dict:
    """How often each adjacent pair occurs in ids (added to counts if given)."""
    counts = {} if counts is None else counts
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids, pair, idx) -> list:
    """ids with every occurrence of pair, left to right, replaced by idx."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def apply_merges(symbols: list, ranks: dict) -> list:
    """Encode one piece: merge the lowest-ranked pair (leftmost among equals) until none
    is left. ranks maps (left id, right id) -> (rank, new id)."""
    symbols = list(symbols)
    while len(symbols) > 1:
        best = None
        for i, pair in enumerate(zip(symbols, symbols[1:])):
            hit = ranks.get(pair)
            if hit is not None and (best is None or hit[0] < best[0]):
                best = (hit[0], hit[1], i)
        if best is None:
            break
        _, new_id, i = best
        symbols[i:i + 2] = [new_id]
    return symbols


def merge_pairs(merges) -> list:
    """Merges as (left, right) tuples; "left right" strings (tokenizer.json's older form) are split."""
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(t, str) for t in pair):
            raise TokenizerError(f"merge {pair!r} is not a pair of tokens")
    return pairs


def flatten_words(words: list, counts: list) -> tuple:
    """(symbols int32, starts int64, counts int64) from lists of symbol ids."""
    lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    starts = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    symbols = np.fromiter((s for w in words for s in w), dtype=np.int32, count=int(starts[-1]))
    return symbols, starts, np.asarray(counts, dtype=np.int64)


def train_merges(symbols, starts, counts, id_to_token: list, token_to_id: dict,
                 vocab_size: int, min_frequency: int = 0, progress=None) -> list:
    """Learn merges over words given as symbol ids; returns [(left, right, new id)] in order.

    symbols (int32) holds all words back to back, word i is symbols[starts[i]:starts[i+1]],
    counts (int64) how often each word occurs. id_to_token/token_to_id are extended with
    the new tokens; training stops at vocab_size tokens, when no pair is left, or when the
    best pair occurs fewer than min_frequency times. progress(n_merges) is called now and then.
    """
    if _bpe is None:
        return train_merges_reference(symbols, starts, counts, id_to_token, token_to_id,
                                      vocab_size, min_frequency, progress)
    symbols = np.array(symbols, dtype=np.int32)  # merged in place: work on a copy
    return _bpe.train(symbols, np.ascontiguousarray(starts, dtype=np.int64),
                      np.ascontiguousarray(counts, dtype=np.int64), id_to_token, token_to_id,
                      vocab_size, min_frequency, progress)


def train_merges_reference(symbols, starts, counts, id_to_token, token_to_id,
                           vocab_size, min_frequency=0, progress=None) -> list:
    words = [list(map(int, symbols[starts[i]:starts[i + 1]])) for i in range(len(counts))]
    counts = [int(c) for c in counts]
    pair_counts: dict = {}
    where: dict = {}  # pair -> words where it appeared since it was last queued

    def change(w, pair, delta):
        pair_counts[pair] = pair_counts.get(pair, 0) + delta * counts[w]
        if delta > 0:
            seen = where.setdefault(pair, [])
            if not seen or seen[-1] != w:
                seen.append(w)

    def flush(queue):
        for pair, pos in where.items():
            if pair_counts[pair] > 0:
                heapq.heappush(queue, (-pair_counts[pair], pair, pos))
        where.clear()

    for w, word in enumerate(words):
        for pair in zip(word, word[1:]):
            change(w, pair, 1)
    queue: list = []
    flush(queue)

    merges = []
    while len(id_to_token) < vocab_size and queue:
        neg, pair, pos = heapq.heappop(queue)
        if -neg != pair_counts[pair]:
            heapq.heappush(queue, (-pair_counts[pair], pair, pos))
            continue
        if -neg < 1 or min_frequency > -neg:
            break
        a, b = pair
        token = id_to_token[a] + id_to_token[b]
        new_id = token_to_id.get(token)
        if new_id is None:
            new_id = len(id_to_token)
            id_to_token.append(token)
            token_to_id[token] = new_id
        merges.append((a, b, new_id))
        for w in pos:
            word, i = words[w], 0
            while i < len(word):
                if word[i] == a and i + 1 < len(word) and word[i + 1] == b:
                    if i > 0:
                        change(w, (word[i - 1], a), -1)
                        change(w, (word[i - 1], new_id), 1)
                    word[i:i + 2] = [new_id]
                    if i < len(word) - 1:
                        change(w, (b, word[i + 1]), -1)
                        change(w, (new_id, word[i + 1]), 1)
                i += 1
        flush(queue)
        if progress is not None and len(merges) % 256 == 0:
            progress(len(merges))
    return merges


def ordered_merges(raw: list) -> list:
    """Training can make the same pair twice (a pair queued again with new words); like
    HF's BPE model, the later rank wins. Returns [(left, right, new id)] in rank order."""
    last = {}
    for rank, (a, b, new_id) in enumerate(raw):
        last[(a, b)] = (rank, new_id)
    return [(a, b, new_id) for (a, b), (_, new_id) in sorted(last.items(), key=lambda kv: kv[1][0])]
