"""The Unigram lattices of many words at once, for training.

A word's lattice holds one node for every substring that is a piece: (start, length,
piece id), sorted by start and then length, as sentencepiece's Lattice builds it from
its trie. The pieces are fixed when the lattices are built (the seed pieces); training
only removes pieces, so later steps pass `active` (seed id -> current id, or -1 for a
removed piece) and the current scores instead of rebuilding.

Where no current piece of one character starts at a position, sentencepiece adds an
unknown node there: score `unk_score` (lowest score - 10), counted for `unk_id`.

Three passes, as sentencepiece's trainer runs them:
- `expected_counts`: forward-backward; each node's marginal probability times the
  word's count is added to its piece (the E step); also returns sum(count * log Z).
- `viterbi_counts`: the best segmentation of each word; counts per piece.
- `second_best`: for pieces as words, whether the best segmentation is the piece
  itself, and if so the second-best segmentation (what the piece would be replaced by).

The compiled helper (_spm_train.c) does the same; this file is the readable
reference and the fallback when the helper is not built.
"""
import math
from dataclasses import dataclass

import numpy as np

try:
    from . import _spm_train
except ImportError:  # no compiler at install time: the Python passes below
    _spm_train = None

NEG_INF = float("-inf")


@dataclass
class Lattices:
    word_len: np.ndarray   # int32 [n_words], characters
    offsets: np.ndarray    # int64 [n_words + 1], node range of each word
    pos: np.ndarray        # uint16 [n_nodes] (a word is at most 65535 characters)
    length: np.ndarray     # uint8 [n_nodes]
    piece: np.ndarray      # int32 [n_nodes], seed piece id


def build(words: list[str], index: dict[str, int], max_len: int) -> Lattices:
    """Nodes for every substring of each word (up to max_len characters) found in index."""
    if _spm_train is not None:
        wl, off, pos, ln, pc = _spm_train.build(words, index, max_len)
        return Lattices(np.frombuffer(wl, np.int32), np.frombuffer(off, np.int64), np.frombuffer(pos, np.uint16),
                        np.frombuffer(ln, np.uint8), np.frombuffer(pc, np.int32))
    offsets, pos, length, piece = [0], [], [], []
    for w in words:
        n = len(w)
        for s in range(n):
            for e in range(s + 1, min(n, s + max_len) + 1):
                pid = index.get(w[s:e])
                if pid is not None:
                    pos.append(s)
                    length.append(e - s)
                    piece.append(pid)
        offsets.append(len(pos))
    if any(len(w) > 0xFFFF for w in words):
        raise ValueError("a word longer than 65535 characters")
    return Lattices(np.array([len(w) for w in words], np.int32), np.array(offsets, np.int64),
                    np.array(pos, np.uint16), np.array(length, np.uint8), np.array(piece, np.int32))


def _args(lat: Lattices, active: np.ndarray, scores: np.ndarray):
    return (lat.word_len, lat.offsets, lat.pos, lat.length, lat.piece,
            np.ascontiguousarray(active, np.int32), np.ascontiguousarray(scores, np.float64))


def _word_nodes(lat, active, scores, w, unk_score, unk_id):
    """(start, end, current id, score) of word w's live nodes plus its unknown nodes, by start."""
    a, b = int(lat.offsets[w]), int(lat.offsets[w + 1])
    n = int(lat.word_len[w])
    by_start = [[] for _ in range(n)]
    for k in range(a, b):
        cid = int(active[lat.piece[k]])
        if cid >= 0:
            s = int(lat.pos[k])
            by_start[s].append((s, s + int(lat.length[k]), cid, float(scores[cid])))
    for s in range(n):
        if not any(e - s == 1 for _, e, _, _ in by_start[s]):
            by_start[s].append((s, s + 1, unk_id, unk_score))
    return n, by_start


def _logaddexp(x, y):
    if x == NEG_INF:
        return y
    if y == NEG_INF:
        return x
    hi, lo = (x, y) if x > y else (y, x)
    return hi + math.log1p(math.exp(lo - hi))


def expected_counts(lat: Lattices, active, scores, freq: np.ndarray, unk_score: float, unk_id: int):
    """(expected count per current piece, sum over words of count * log Z)."""
    n_cur = len(scores)
    if _spm_train is not None:
        exp, logz = _spm_train.expected(*_args(lat, active, scores), np.ascontiguousarray(freq, np.float64),
                                          n_cur, unk_score, unk_id)
        return np.frombuffer(exp, np.float64).copy(), logz
    expected = np.zeros(n_cur)
    total = 0.0
    for w in range(len(lat.word_len)):
        n, by_start = _word_nodes(lat, active, scores, w, unk_score, unk_id)
        alpha = [0.0] + [NEG_INF] * n
        for s in range(n):
            for _, e, _, sc in by_start[s]:
                alpha[e] = _logaddexp(alpha[e], alpha[s] + sc)
        beta = [NEG_INF] * n + [0.0]
        for s in range(n - 1, -1, -1):
            for _, e, _, sc in by_start[s]:
                beta[s] = _logaddexp(beta[s], sc + beta[e])
        z = alpha[n]
        f = float(freq[w])
        for s in range(n):
            for _, e, cid, sc in by_start[s]:
                expected[cid] += f * math.exp(alpha[s] + sc + beta[e] - z)
        total += f * z
    return expected, total


def _best_paths(n, by_start, keep):
    """Top-`keep` paths into every position: lists of (score, node, rank of the path before)."""
    best = [[] for _ in range(n + 1)]
    best[0] = [(0.0, None, 0)]
    for s in range(n):
        for node in by_start[s]:
            e, sc = node[1], node[3]
            for r, (prev, _, _) in enumerate(best[s]):
                cand = prev + sc
                top = best[e]
                i = len(top)
                while i > 0 and cand > top[i - 1][0]:  # strictly better only: earlier starts win ties
                    i -= 1
                if i < keep:
                    top.insert(i, (cand, node, r))
                    del top[keep:]
    return best


def _trace(best, n, rank):
    path, e = [], n
    while e > 0:
        _, node, r = best[e][rank]
        path.append(node)
        e, rank = node[0], r
    return path[::-1]


def viterbi_counts(lat: Lattices, active, scores, freq, unk_score: float, unk_id: int) -> np.ndarray:
    """Count of each current piece in the words' best segmentations, times the words' counts."""
    n_cur = len(scores)
    if _spm_train is not None:
        out = _spm_train.viterbi(*_args(lat, active, scores), np.ascontiguousarray(freq, np.float64),
                                   n_cur, unk_score, unk_id)
        return np.frombuffer(out, np.float64).copy()
    counts = np.zeros(n_cur)
    for w in range(len(lat.word_len)):
        n, by_start = _word_nodes(lat, active, scores, w, unk_score, unk_id)
        for node in _trace(_best_paths(n, by_start, 1), n, 0):
            counts[node[2]] += float(freq[w])
    return counts


def second_best(lat: Lattices, active, scores, unk_score: float, unk_id: int):
    """Per word: kind (0: one path only, 1: the best path has several pieces, 2: the best
    path is one piece) and, for kind 2, the current ids of the second-best path."""
    if _spm_train is not None:
        kinds, alt_off, alt = _spm_train.second_best(*_args(lat, active, scores), unk_score, unk_id)
        kinds = np.frombuffer(kinds, np.int8)
        alt_off = np.frombuffer(alt_off, np.int64)
        alt = np.frombuffer(alt, np.int32)
        return kinds, [alt[alt_off[i]:alt_off[i + 1]].tolist() for i in range(len(kinds))]
    kinds, alts = [], []
    for w in range(len(lat.word_len)):
        n, by_start = _word_nodes(lat, active, scores, w, unk_score, unk_id)
        best = _best_paths(n, by_start, 2)
        if len(best[n]) < 2:
            kinds.append(0)
            alts.append([])
        elif len(_trace(best, n, 0)) >= 2:
            kinds.append(1)
            alts.append([])
        else:
            kinds.append(2)
            alts.append([node[2] for node in _trace(best, n, 1)])
    return np.array(kinds, np.int8), alts
