"""sentencepiece's Unigram trainer (model_type=unigram, its default), as sentencepiece
0.2.3's unigram_model_trainer.cc runs it.

1. Seeds: every character of the alphabet, and the substrings that occur at least
   twice and are not always followed by the same character (the internal nodes of the
   corpus's suffix tree, which is where sentencepiece takes them from), at most
   `seed_sentencepiece_size` of them, ranked by occurrences x length. Only valid
   pieces count: no `▁` but at the start, one script, at most 16 characters. Each
   seed's first score is log(its rank value / the sum of them all).
2. EM over the corpus's words: the E step sums each piece's expected count over all
   segmentations (forward-backward); the M step drops pieces expected less than 0.5
   times and scores the rest digamma(count) - digamma(total) (the Bayesian EM update
   that sentencepiece uses, a sparse prior).
3. After every two EM steps, prune, until at most 1.1 x vocab_size pieces are left:
   pieces that no best segmentation of a word uses go, and so do pieces whose own best
   segmentation is split; a piece whose best segmentation is itself and that has a
   second-best one would lose (its share of the tokens) x (its log-probability - that
   of its replacement); the pieces losing least go, down to max(1.1 x vocab_size,
   0.75 x pieces).
4. Pieces that no segmentation would use go (their own best segmentation is split).
5. The alphabet is kept (a character that fell out scores just below the lowest
   score), then the best-scoring pieces up to the vocab size, sorted by score.

Result: [(piece, score, type)] in id order, as sentencepiece lays a model out.
"""
import math
from typing import Callable, Iterable

import numpy as np

from . import spm_lattice
from .errors import TokenizerError
from .spm_train_input import (BOUNDARY, UNK_CHAR, WS, SpmTrainOptions, assemble, basic_nmt_nfkc, char_class,
                              load_corpus, piece_validator)

UNK_PENALTY = 10.0          # an unknown character scores this much below the lowest piece
MIN_EXPECTED = 0.5          # the M step drops pieces expected less often than this
REQUIRED_CHAR_PENALTY = 1e-4


def train_unigram(lines: Iterable[str], opts: SpmTrainOptions,
                  normalize: Callable[[str], str] = basic_nmt_nfkc) -> list[tuple[str, float, int]]:
    if not opts.split_by_whitespace:
        raise TokenizerError("Unigram training here needs split_by_whitespace")
    corpus = load_corpus(lines, opts, normalize)
    valid = piece_validator(opts)
    seeds = seed_pieces(corpus, opts, valid)
    words = corpus.word_counts()
    corpus.words = corpus.ends = {}  # the sorted words are all that is needed from here on
    freq = np.array([n for _, n in words], np.float64)
    words = [w for w, _ in words]
    if max(map(len, words)) > 0xFFFF:
        raise TokenizerError("a word of more than 65535 characters; split the corpus into shorter lines")
    index = {p: i for i, (p, _) in enumerate(seeds)}
    max_len = opts.max_sentencepiece_length
    lattices = spm_lattice.build(words, index, max_len)
    del words
    own = spm_lattice.build([p for p, _ in seeds], index, max_len)  # each piece as a word

    cur = np.arange(len(seeds))                      # seed ids of the current pieces, in model order
    scores = np.array([s for _, s in seeds], np.float64)
    desired = int(opts.vocab_size * 1.1)
    while True:
        for _ in range(opts.num_sub_iterations):
            cur, scores = _em_step(lattices, freq, cur, scores, len(seeds))
        cur, scores = _prune(lattices, own, freq, cur, scores, len(seeds), desired, opts.shrinking_factor)
        if len(cur) <= desired:
            break
    cur, scores = _drop_unreachable(own, cur, scores, len(seeds))
    pieces = _finalize(corpus, [seeds[i][0] for i in cur], scores, opts.vocab_size - len(corpus.meta))
    return assemble(corpus.meta, pieces, opts.vocab_size)


def _lead_byte(c: str) -> int:
    """The first UTF-8 byte of a character."""
    cp = ord(c)
    if cp < 0x80:
        return cp
    if cp < 0x800:
        return 0xC0 | cp >> 6
    if cp < 0x10000:
        return 0xE0 | cp >> 12
    return 0xF0 | cp >> 18


def seed_pieces(corpus, opts: SpmTrainOptions, valid: Callable[[str], bool]) -> list[tuple[str, float]]:
    """The alphabet's characters by frequency, then the frequent substrings by
    occurrences x length; each with log(value / sum of all values).

    sentencepiece finds the substrings with a suffix array over the UTF-8 bytes of the
    sentences (each ended by a NUL): a substring is a candidate when it occurs at least
    twice and the bytes after its occurrences are not all the same. A valid piece never
    holds `▁` past its start, so it lies within one word; the byte after a word is the
    first byte of `▁` or the sentence's NUL. (One difference: sentencepiece also counts
    a substring once more where it ends the very last sentence of the corpus.)"""
    ws_lead = _lead_byte(WS)
    seeds = [(c, n) for c, n in corpus.sorted_required_chars() if n > 0]
    limit = opts.seed_sentencepiece_size
    # (word, first byte after it) -> count
    runs = {(w, ws_lead): n - corpus.ends.get(w, 0) for w, n in corpus.words.items() if n > corpus.ends.get(w, 0)}
    runs.update(((w, 0), n) for w, n in corpus.ends.items())
    if spm_lattice._spm_train is not None:
        words = [w for w, _ in runs]
        kinds = {ord(c): char_class(c, opts) for c in corpus.required_chars}
        kinds.update({ord(c): -1 for c in (UNK_CHAR, BOUNDARY)})
        ranked = spm_lattice._spm_train.seed_substrings(
            words, bytes(a for _, a in runs), np.fromiter(runs.values(), np.int64, len(runs)), kinds,
            opts.max_sentencepiece_length, limit)
        del words
    else:
        ranked = _frequent_substrings(runs, opts.max_sentencepiece_length, valid)[:limit]
    del runs
    seeds += ranked
    logsum = math.log(sum(v for _, v in seeds))
    return [(p, float(np.float32(math.log(v) - logsum))) for p, v in seeds]


def _frequent_substrings(runs: dict, max_len: int, valid) -> list[tuple[str, float]]:
    """Candidate substrings of the words, ranked (the compiled helper's seed_substrings)."""
    stats: dict[str, list] = {}  # substring -> [occurrences, byte after the first, several bytes after?]
    for (w, after), f in runs.items():
        n = len(w)
        leads = [_lead_byte(c) for c in w[1:]] + [after]
        for s in range(n - 1):
            for e in range(s + 2, min(n, s + max_len) + 1):
                sub = w[s:e]
                if not valid(sub):
                    break  # a longer substring from s is not valid either
                nxt = leads[e - 1]
                rec = stats.get(sub)
                if rec is None:
                    stats[sub] = [f, nxt, False]
                else:
                    rec[0] += f
                    if not rec[2] and rec[1] != nxt:
                        rec[2] = True
    # ranked by float32 occurrences x length, then longer in bytes, then by string
    ranked = [(sub, float(np.float32(rec[0]) * np.float32(len(sub)))) for sub, rec in stats.items() if rec[2]]
    ranked.sort(key=lambda t: (-t[1], -len(t[0].encode()), t[0]))
    return ranked


def digamma(x: np.ndarray) -> np.ndarray:
    """sentencepiece's digamma: recurrence up to 7, then the asymptotic series."""
    x = np.array(x, np.float64)
    result = np.zeros_like(x)
    for _ in range(7):
        small = x < 7
        if not small.any():
            break
        result[small] -= 1.0 / x[small]
        x[small] += 1.0
    x = x - 0.5
    xx = 1.0 / x
    xx2 = xx * xx
    xx4 = xx2 * xx2
    return result + np.log(x) + xx2 / 24.0 - 7.0 / 960.0 * xx4 + 31.0 / 8064.0 * xx4 * xx2 - 127.0 / 30720.0 * xx4 * xx4


def _active(cur: np.ndarray, n_seeds: int) -> np.ndarray:
    active = np.full(n_seeds, -1, np.int32)
    active[cur] = np.arange(len(cur), dtype=np.int32)
    return active


def _em_step(lattices, freq, cur, scores, n_seeds):
    # an unknown character is counted for the model's first piece, as in sentencepiece's
    # trainer (its model's unknown id is left at 0)
    expected, _ = spm_lattice.expected_counts(lattices, _active(cur, n_seeds), scores, freq,
                                              float(scores.min()) - UNK_PENALTY, 0)
    keep = expected >= MIN_EXPECTED
    cur, expected = cur[keep], expected[keep]
    return cur, digamma(expected) - digamma(np.array([expected.sum()]))[0]


def _prune(lattices, own, freq, cur, scores, n_seeds, desired, shrinking_factor):
    active = _active(cur, n_seeds)
    unk_score = float(scores.min()) - UNK_PENALTY
    kinds, alts = spm_lattice.second_best(own, active, scores, unk_score, 0)
    counts = spm_lattice.viterbi_counts(lattices, active, scores, freq, unk_score, 0)
    total = float(counts.sum())
    logsum = math.log(total)
    kept, candidates = [], []
    for i, sid in enumerate(cur):
        kind = kinds[sid]
        if counts[i] == 0 or kind == 1:  # unused, or its best segmentation is already split
            continue
        if kind == 0:  # nothing could replace it
            kept.append(i)
            continue
        alt = alts[sid]
        c = counts[i]
        logprob = math.log(c) - logsum
        logsum_alt = math.log(total + c * (len(alt) - 1))
        logprob_alt = sum(math.log(counts[j] + c) - logsum_alt for j in alt)
        candidates.append((c / total * (logprob - logprob_alt), i))
    target = max(desired, int(shrinking_factor * len(cur)))
    candidates.sort(key=lambda t: (-t[0], t[1]))
    for _, i in candidates:
        if len(kept) == target:
            break
        kept.append(i)
    kept = np.array(kept, np.int64)
    return cur[kept], scores[kept]


def _drop_unreachable(own, cur, scores, n_seeds):
    """Pieces that no segmentation would pick go: those whose own best segmentation is
    split (scores strictly higher than the piece; on a tie the piece wins)."""
    kinds, _ = spm_lattice.second_best(own, _active(cur, n_seeds), scores, float(scores.min()) - UNK_PENALTY, 0)
    keep = kinds[cur] != 1
    return cur[keep], scores[keep]


def _finalize(corpus, pieces: list[str], scores: np.ndarray, size: int) -> list[tuple[str, float]]:
    # sentencepiece's scores are float32: pieces whose scores round alike tie, and ties go
    # by string (many pieces share the lowest score)
    scores = scores.astype(np.float32)
    score_of = dict(zip(pieces, scores.tolist()))
    final: dict[str, float] = {}
    low = np.float32(scores.min())
    penalty = np.float32(0.0)
    for c, _ in corpus.sorted_required_chars():
        if c in score_of:
            final[c] = score_of[c]
        else:  # frequent characters get the smaller penalties
            final[c] = float(np.float32(low + penalty))
            penalty = np.float32(penalty + np.float32(REQUIRED_CHAR_PENALTY))
    for p, s in sorted(score_of.items(), key=lambda kv: (-kv[1], kv[0])):
        if p in final:
            continue
        if len(final) == size:
            break
        final[p] = s
    return sorted(final.items(), key=lambda kv: (-kv[1], kv[0]))
