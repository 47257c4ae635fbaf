/* Compiled helper for the sentencepiece trainers: the Unigram lattice passes
 * (spm_lattice.py), the Unigram seed substrings (unigram_train._frequent_substrings)
 * and the BPE merges (spm_bpe_train._merge).
 *
 * Those Python functions are the readable reference for everything here (same
 * arguments, same results); tests check that both agree. Lattices come as flat arrays (any object
 * with the buffer protocol, e.g. numpy): word lengths (int32), each word's node range
 * (int64 offsets), and per node its start, length and seed piece id (int32), nodes of a
 * word sorted by start then length. `active` maps a seed id to its current id or -1;
 * `scores` (float64) are per current id. Positions without a live one-character node
 * get an unknown node (score unk_score, counted for unk_id).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    Py_buffer bufs[8];
    int n;
    Py_ssize_t n_words, n_seeds;
    const int32_t *wl, *piece, *active;
    const uint16_t *pos;
    const uint8_t *len;
    const int64_t *off;
    const double *scores, *freq;
    int32_t max_len;
} Lat;

static void lat_release(Lat *l) {
    for (int i = 0; i < l->n; i++) PyBuffer_Release(&l->bufs[i]);
    l->n = 0;
}

/* Takes the buffers of wl, off, pos, len, piece, active, scores (and freq if given). */
static int lat_get(Lat *l, PyObject **objs, int count) {
    static const Py_ssize_t item[8] = {4, 8, 2, 1, 4, 4, 8, 8};
    l->n = 0;
    for (int i = 0; i < count; i++) {
        if (PyObject_GetBuffer(objs[i], &l->bufs[i], PyBUF_C_CONTIGUOUS) < 0) {
            lat_release(l);
            return -1;
        }
        l->n = i + 1;
        if (l->bufs[i].len % item[i]) {
            lat_release(l);
            PyErr_SetString(PyExc_ValueError, "lattice array has the wrong item size");
            return -1;
        }
    }
    l->wl = l->bufs[0].buf;
    l->off = l->bufs[1].buf;
    l->pos = l->bufs[2].buf;
    l->len = l->bufs[3].buf;
    l->piece = l->bufs[4].buf;
    l->active = l->bufs[5].buf;
    l->scores = l->bufs[6].buf;
    l->freq = count > 7 ? l->bufs[7].buf : NULL;
    l->n_words = l->bufs[0].len / 4;
    l->n_seeds = l->bufs[5].len / 4;
    Py_ssize_t n_nodes = l->bufs[2].len / 2;
    if (l->bufs[1].len / 8 != l->n_words + 1 || l->bufs[3].len != n_nodes || l->bufs[4].len / 4 != n_nodes ||
        (l->freq && l->bufs[7].len / 8 != l->n_words) || l->off[l->n_words] != n_nodes) {
        lat_release(l);
        PyErr_SetString(PyExc_ValueError, "lattice arrays disagree in length");
        return -1;
    }
    l->max_len = 0;
    for (Py_ssize_t w = 0; w < l->n_words; w++)
        if (l->wl[w] > l->max_len) l->max_len = l->wl[w];
    for (Py_ssize_t k = 0; k < n_nodes; k++)
        if (l->piece[k] < 0 || l->piece[k] >= l->n_seeds) {
            lat_release(l);
            PyErr_SetString(PyExc_ValueError, "lattice node names an unknown piece");
            return -1;
        }
    /* nodes inside their word, sorted by start, offsets increasing: the passes rely on it */
    for (Py_ssize_t w = 0; w < l->n_words; w++) {
        int bad = l->off[w] > l->off[w + 1] || l->off[w] < 0;
        for (int64_t k = l->off[w]; !bad && k < l->off[w + 1]; k++)
            bad = l->len[k] == 0 || (int32_t)l->pos[k] + l->len[k] > l->wl[w] ||
                  (k > l->off[w] && l->pos[k] < l->pos[k - 1]);
        if (bad) {
            lat_release(l);
            PyErr_SetString(PyExc_ValueError, "lattice nodes out of order or outside their word");
            return -1;
        }
    }
    return 0;
}

static inline double logaddexp(double x, double y) {
    if (x == -INFINITY) return y;
    if (y == -INFINITY) return x;
    return x > y ? x + log1p(exp(y - x)) : y + log1p(exp(x - y));
}

/* has1[p] = 1 where a live one-character node starts at p */
static void mark_single(const Lat *l, Py_ssize_t w, char *has1) {
    memset(has1, 0, (size_t)l->wl[w]);
    for (int64_t k = l->off[w]; k < l->off[w + 1]; k++)
        if (l->len[k] == 1 && l->active[l->piece[k]] >= 0) has1[l->pos[k]] = 1;
}

/* ------------------------------------------------------------------ build */

typedef struct {
    int32_t *v;
    Py_ssize_t n, cap;
} Vec;

/* "y#" turns a NULL pointer into None; an empty array must stay bytes */
#define NONNULL(p) ((p) ? (const char *)(p) : "")

static int vec_push(Vec *v, int32_t x) {
    if (v->n == v->cap) {
        Py_ssize_t cap = v->cap ? 2 * v->cap : 1024;
        int32_t *p = realloc(v->v, (size_t)cap * sizeof(int32_t));
        if (!p) return -1;
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = x;
    return 0;
}

/* takes the vector's items as bytes (of `size` bytes each) and frees the vector */
static PyObject *vec_bytes(void *v, Py_ssize_t n, Py_ssize_t size) {
    PyObject *b = PyBytes_FromStringAndSize(NONNULL(v), n * size);
    free(v);
    return b;
}

/* The pieces and all their prefixes, for finding every piece that starts at a position
 * without making Python strings: an entry per distinct prefix, with the piece's id when
 * the prefix is a piece itself (else -1). Keys hash the code points as build() reads
 * them, one character more at a time. */
typedef struct {
    uint64_t hash;
    uint32_t at;
    int32_t id;
    int32_t len;
} PEntry;

typedef struct {
    PEntry *slots;
    size_t cap, used;
    uint32_t *chars;
    int64_t n_chars;
} Prefixes;

#define FNV_START 1469598103934665603ULL
#define FNV_STEP(h, c) (((h) ^ (c)) * 1099511628211ULL)

static uint64_t spread(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    return x ^ (x >> 29);
}

static PEntry *prefix_find(const Prefixes *t, uint64_t h, const uint32_t *w, int32_t len) {
    size_t j = (size_t)spread(h) & (t->cap - 1);
    for (;; j = (j + 1) & (t->cap - 1)) {
        PEntry *e = &t->slots[j];
        if (!e->len) return e;
        if (e->hash == h && e->len == len && !memcmp(t->chars + e->at, w, (size_t)len * 4)) return e;
    }
}

/* fills t from index {piece: id}; -1 with an exception set on failure */
static int prefixes_build(Prefixes *t, PyObject *index) {
    Py_ssize_t pos = 0, total = 0;
    PyObject *key, *value;
    while (PyDict_Next(index, &pos, &key, &value)) {
        if (!PyUnicode_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "pieces must be str");
            return -1;
        }
        total += PyUnicode_GET_LENGTH(key);
    }
    if (total >= (Py_ssize_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many piece characters");
        return -1;
    }
    t->cap = 1024;
    while (t->cap < 2 * (size_t)total + 2) t->cap *= 2;
    t->slots = calloc(t->cap, sizeof(PEntry));
    t->chars = malloc((size_t)(total ? total : 1) * 4);
    if (!t->slots || !t->chars) {
        PyErr_NoMemory();
        return -1;
    }
    pos = 0;
    while (PyDict_Next(index, &pos, &key, &value)) {
        const long id = PyLong_AsLong(value);
        if (id == -1 && PyErr_Occurred()) return -1;
        const Py_ssize_t n = PyUnicode_GET_LENGTH(key);
        if (n == 0) continue;
        const int kind = PyUnicode_KIND(key);
        const void *data = PyUnicode_DATA(key);
        uint32_t *w = t->chars + t->n_chars;
        for (Py_ssize_t i = 0; i < n; i++) w[i] = PyUnicode_READ(kind, data, i);
        uint64_t h = FNV_START;
        for (Py_ssize_t i = 0; i < n; i++) {
            h = FNV_STEP(h, w[i]);
            PEntry *e = prefix_find(t, h, w, (int32_t)(i + 1));
            if (!e->len) {
                *e = (PEntry){h, (uint32_t)t->n_chars, -1, (int32_t)(i + 1)};
                t->used++;
            }
            if (i + 1 == n) e->id = (int32_t)id;
        }
        t->n_chars += n;
    }
    return 0;
}

static PyObject *py_build(PyObject *self, PyObject *args) {
    PyObject *words, *index;
    int max_len;
    if (!PyArg_ParseTuple(args, "O!O!i", &PyList_Type, &words, &PyDict_Type, &index, &max_len)) return NULL;
    if (max_len < 1 || max_len > 255) {
        PyErr_SetString(PyExc_ValueError, "max_len must be 1..255");
        return NULL;
    }
    Py_ssize_t n_words = PyList_GET_SIZE(words);
    int32_t *wl = malloc(sizeof(int32_t) * (size_t)(n_words ? n_words : 1));
    int64_t *off = malloc(sizeof(int64_t) * (size_t)(n_words + 1));
    Vec piece = {0};
    uint16_t *pos = NULL;
    uint8_t *len = NULL;
    uint32_t *wbuf = malloc(4 * 0x10000);
    Prefixes pt = {0};
    PyObject *result = NULL;
    if (!wbuf) {
        PyErr_NoMemory();
        goto done;
    }
    if (prefixes_build(&pt, index) < 0) goto done;
    if (!wl || !off) {
        PyErr_NoMemory();
        goto done;
    }
    off[0] = 0;
    for (Py_ssize_t w = 0; w < n_words; w++) {
        PyObject *word = PyList_GET_ITEM(words, w);
        if (!PyUnicode_Check(word)) {
            PyErr_SetString(PyExc_TypeError, "words must be str");
            goto done;
        }
        Py_ssize_t n = PyUnicode_GET_LENGTH(word);
        if (n > 0xFFFF) {
            PyErr_SetString(PyExc_ValueError, "a word longer than 65535 characters");
            goto done;
        }
        wl[w] = (int32_t)n;
        const int kind = PyUnicode_KIND(word);
        const void *data = PyUnicode_DATA(word);
        for (Py_ssize_t i = 0; i < n; i++) wbuf[i] = PyUnicode_READ(kind, data, i);
        for (Py_ssize_t s = 0; s < n; s++) {
            Py_ssize_t end = s + max_len < n ? s + max_len : n;
            uint64_t h = FNV_START;
            for (Py_ssize_t e = s + 1; e <= end; e++) {
                h = FNV_STEP(h, wbuf[e - 1]);
                const PEntry *pe = prefix_find(&pt, h, wbuf + s, (int32_t)(e - s));
                if (!pe->len) break; /* no piece goes on like this */
                if (pe->id < 0) continue;
                const long id = pe->id;
                const Py_ssize_t cap = piece.cap;
                if (vec_push(&piece, (int32_t)id)) {
                    PyErr_NoMemory();
                    goto done;
                }
                if (piece.cap != cap) { /* the piece vector grew: grow its companions alike */
                    uint16_t *p = realloc(pos, (size_t)piece.cap * 2);
                    if (p) pos = p;
                    uint8_t *q = p ? realloc(len, (size_t)piece.cap) : NULL;
                    if (q) len = q;
                    if (!p || !q) {
                        PyErr_NoMemory();
                        goto done;
                    }
                }
                pos[piece.n - 1] = (uint16_t)s;
                len[piece.n - 1] = (uint8_t)(e - s);
            }
        }
        off[w + 1] = piece.n;
    }
    {
        /* each array is copied into bytes and freed at once, so that at most one is held twice */
        const Py_ssize_t n = piece.n;
        PyObject *b_wl = vec_bytes(wl, n_words, 4), *b_off = vec_bytes(off, n_words + 1, 8);
        PyObject *b_pos = vec_bytes(pos, n, 2), *b_len = vec_bytes(len, n, 1), *b_piece = vec_bytes(piece.v, n, 4);
        wl = NULL, off = NULL, pos = NULL, len = NULL, piece.v = NULL;
        if (b_wl && b_off && b_pos && b_len && b_piece) result = PyTuple_Pack(5, b_wl, b_off, b_pos, b_len, b_piece);
        Py_XDECREF(b_wl);
        Py_XDECREF(b_off);
        Py_XDECREF(b_pos);
        Py_XDECREF(b_len);
        Py_XDECREF(b_piece);
    }
done:
    free(wl);
    free(off);
    free(pos);
    free(len);
    free(piece.v);
    free(wbuf);
    free(pt.slots);
    free(pt.chars);
    return result;
}

/* ------------------------------------------------------------------ forward-backward */

static PyObject *py_expected(PyObject *self, PyObject *args) {
    PyObject *o[8];
    Py_ssize_t n_cur;
    double unk_score;
    int unk_id;
    if (!PyArg_ParseTuple(args, "OOOOOOOOndi", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &n_cur,
                          &unk_score, &unk_id))
        return NULL;
    Lat l;
    if (lat_get(&l, o, 8) < 0) return NULL;
    if (unk_id < 0 || unk_id >= n_cur || l.bufs[6].len / 8 < n_cur) {
        lat_release(&l);
        PyErr_SetString(PyExc_ValueError, "unk_id or scores out of range");
        return NULL;
    }
    size_t m = (size_t)l.max_len + 1;
    double *expected = calloc((size_t)n_cur ? (size_t)n_cur : 1, sizeof(double));
    double *A = malloc(m * sizeof(double)), *B = malloc(m * sizeof(double));
    char *has1 = malloc(m);
    double total = 0.0;
    PyObject *result = NULL;
    if (!expected || !A || !B || !has1) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t w = 0; w < l.n_words; w++) {
        const int32_t n = l.wl[w];
        const int64_t a = l.off[w], b = l.off[w + 1];
        const double f = l.freq[w];
        mark_single(&l, w, has1);
        A[0] = 0.0;
        for (int32_t p = 1; p <= n; p++) A[p] = -INFINITY;
        int64_t k = a;
        for (int32_t p = 0; p < n; p++) {
            const double ap = A[p];
            for (; k < b && l.pos[k] == p; k++) {
                const int32_t cid = l.active[l.piece[k]];
                if (cid < 0) continue;
                const int32_t e = p + l.len[k];
                A[e] = logaddexp(A[e], ap + l.scores[cid]);
            }
            if (!has1[p]) A[p + 1] = logaddexp(A[p + 1], ap + unk_score);
        }
        for (int32_t p = 0; p < n; p++) B[p] = -INFINITY;
        B[n] = 0.0;
        k = b - 1;
        for (int32_t p = n - 1; p >= 0; p--) {
            for (; k >= a && l.pos[k] == p; k--) {
                const int32_t cid = l.active[l.piece[k]];
                if (cid < 0) continue;
                B[p] = logaddexp(B[p], l.scores[cid] + B[p + l.len[k]]);
            }
            if (!has1[p]) B[p] = logaddexp(B[p], unk_score + B[p + 1]);
        }
        const double z = A[n];
        for (k = a; k < b; k++) {
            const int32_t cid = l.active[l.piece[k]];
            if (cid < 0) continue;
            const int32_t p = l.pos[k];
            expected[cid] += f * exp(A[p] + l.scores[cid] + B[p + l.len[k]] - z);
        }
        for (int32_t p = 0; p < n; p++)
            if (!has1[p]) expected[unk_id] += f * exp(A[p] + unk_score + B[p + 1] - z);
        total += f * z;
    }
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("y#d", (const char *)expected, n_cur * 8, total);
done:
    free(expected);
    free(A);
    free(B);
    free(has1);
    lat_release(&l);
    return result;
}

/* ------------------------------------------------------------------ Viterbi */

static PyObject *py_viterbi(PyObject *self, PyObject *args) {
    PyObject *o[8];
    Py_ssize_t n_cur;
    double unk_score;
    int unk_id;
    if (!PyArg_ParseTuple(args, "OOOOOOOOndi", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &n_cur,
                          &unk_score, &unk_id))
        return NULL;
    Lat l;
    if (lat_get(&l, o, 8) < 0) return NULL;
    if (unk_id < 0 || unk_id >= n_cur || l.bufs[6].len / 8 < n_cur) {
        lat_release(&l);
        PyErr_SetString(PyExc_ValueError, "unk_id or scores out of range");
        return NULL;
    }
    size_t m = (size_t)l.max_len + 1;
    double *counts = calloc((size_t)n_cur ? (size_t)n_cur : 1, sizeof(double));
    double *V = malloc(m * sizeof(double));
    int64_t *back = malloc(m * sizeof(int64_t));
    char *has1 = malloc(m);
    PyObject *result = NULL;
    if (!counts || !V || !back || !has1) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t w = 0; w < l.n_words; w++) {
        const int32_t n = l.wl[w];
        const int64_t a = l.off[w], b = l.off[w + 1];
        mark_single(&l, w, has1);
        V[0] = 0.0;
        for (int32_t p = 1; p <= n; p++) V[p] = -INFINITY;
        int64_t k = a;
        for (int32_t p = 0; p < n; p++) {
            for (; k < b && l.pos[k] == p; k++) {
                const int32_t cid = l.active[l.piece[k]];
                if (cid < 0) continue;
                const int32_t e = p + l.len[k];
                const double cand = V[p] + l.scores[cid];
                if (cand > V[e]) { /* strictly: the earliest start wins a tie */
                    V[e] = cand;
                    back[e] = k;
                }
            }
            if (!has1[p] && V[p] + unk_score > V[p + 1]) {
                V[p + 1] = V[p] + unk_score;
                back[p + 1] = -1;
            }
        }
        for (int32_t e = n; e > 0;) {
            const int64_t bk = back[e];
            if (bk >= 0) {
                counts[l.active[l.piece[bk]]] += l.freq[w];
                e = l.pos[bk];
            } else {
                counts[unk_id] += l.freq[w];
                e -= 1;
            }
        }
    }
    Py_END_ALLOW_THREADS
    result = PyBytes_FromStringAndSize((const char *)counts, n_cur * 8);
done:
    free(counts);
    free(V);
    free(back);
    free(has1);
    lat_release(&l);
    return result;
}

/* ------------------------------------------------------------------ two best paths */

typedef struct {
    double score;
    int64_t node; /* -1: unknown node */
    int rank;     /* rank of the path it extends at its start */
} Hyp;

static void offer(Hyp *slot, int *cnt, double score, int64_t node, int rank) {
    if (*cnt == 0) {
        slot[0] = (Hyp){score, node, rank};
        *cnt = 1;
    } else if (score > slot[0].score) {
        slot[1] = slot[0];
        slot[0] = (Hyp){score, node, rank};
        *cnt = 2;
    } else if (*cnt == 1 || score > slot[1].score) {
        slot[1] = (Hyp){score, node, rank};
        *cnt = 2;
    }
}

static PyObject *py_second_best(PyObject *self, PyObject *args) {
    PyObject *o[7];
    double unk_score;
    int unk_id;
    if (!PyArg_ParseTuple(args, "OOOOOOOdi", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &unk_score, &unk_id))
        return NULL;
    Lat l;
    if (lat_get(&l, o, 7) < 0) return NULL;
    size_t m = (size_t)l.max_len + 1;
    Hyp *H = malloc(2 * m * sizeof(Hyp));
    int *cnt = malloc(m * sizeof(int));
    char *has1 = malloc(m);
    int8_t *kinds = malloc((size_t)(l.n_words ? l.n_words : 1));
    int64_t *alt_off = malloc((size_t)(l.n_words + 1) * sizeof(int64_t));
    int32_t *path = malloc(m * sizeof(int32_t));
    Vec alt = {0};
    PyObject *result = NULL;
    int oom = 0;
    if (!H || !cnt || !has1 || !kinds || !alt_off || !path) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    alt_off[0] = 0;
    for (Py_ssize_t w = 0; w < l.n_words && !oom; w++) {
        const int32_t n = l.wl[w];
        const int64_t a = l.off[w], b = l.off[w + 1];
        mark_single(&l, w, has1);
        memset(cnt, 0, m * sizeof(int));
        H[0] = (Hyp){0.0, -1, 0};
        cnt[0] = 1;
        int64_t k = a;
        for (int32_t p = 0; p < n; p++) {
            for (; k < b && l.pos[k] == p; k++) {
                const int32_t cid = l.active[l.piece[k]];
                if (cid < 0) continue;
                const int32_t e = p + l.len[k];
                for (int r = 0; r < cnt[p]; r++)
                    offer(&H[2 * e], &cnt[e], H[2 * p + r].score + l.scores[cid], k, r);
            }
            if (!has1[p])
                for (int r = 0; r < cnt[p]; r++)
                    offer(&H[2 * (p + 1)], &cnt[p + 1], H[2 * p + r].score + unk_score, -1, r);
        }
        int kind;
        if (cnt[n] < 2) {
            kind = 0;
        } else {
            int pieces = 0;
            for (int32_t e = n, r = 0; e > 0;) {
                const Hyp *h = &H[2 * e + r];
                e = h->node >= 0 ? l.pos[h->node] : e - 1;
                r = h->rank;
                pieces++;
            }
            kind = pieces >= 2 ? 1 : 2;
        }
        kinds[w] = (int8_t)kind;
        if (kind == 2) {
            int np = 0;
            for (int32_t e = n, r = 1; e > 0;) {
                const Hyp *h = &H[2 * e + r];
                path[np++] = h->node >= 0 ? l.active[l.piece[h->node]] : unk_id;
                e = h->node >= 0 ? l.pos[h->node] : e - 1;
                r = h->rank;
            }
            for (int i = np - 1; i >= 0 && !oom; i--)
                if (vec_push(&alt, path[i])) oom = 1;
        }
        alt_off[w + 1] = alt.n;
    }
    Py_END_ALLOW_THREADS
    if (oom) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_BuildValue("y#y#y#", (const char *)kinds, l.n_words, (const char *)alt_off, (l.n_words + 1) * 8,
                           NONNULL(alt.v), alt.n * 4);
done:
    free(H);
    free(cnt);
    free(has1);
    free(kinds);
    free(alt_off);
    free(path);
    free(alt.v);
    lat_release(&l);
    return result;
}

/* ------------------------------------------------------------------ seed substrings */

/* Character classes for piece validity (spm_train_input.piece_validator); a script is >= 0. */
#define K_FORBIDDEN (-1)
#define K_WS (-2)
#define K_INHERITED (-3)
#define K_ANY (-4)

typedef struct {
    uint32_t hash;
    uint32_t at;   /* offset of the substring in the character buffer */
    int64_t count;
    uint8_t len, next, multi;
} Entry;

typedef struct {
    Entry *slots;
    size_t cap, used;
    const uint32_t *chars;
} Table;

static int table_grow(Table *t) {
    size_t cap = t->cap ? 2 * t->cap : (1u << 16);
    Entry *slots = calloc(cap, sizeof(Entry));
    if (!slots) return -1;
    for (size_t i = 0; i < t->cap; i++) {
        Entry *e = &t->slots[i];
        if (!e->len) continue;
        size_t j = (size_t)e->hash & (cap - 1);
        while (slots[j].len) j = (j + 1) & (cap - 1);
        slots[j] = *e;
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

static int table_add(Table *t, uint64_t hash, int64_t at, int len, int64_t count, uint8_t next) {
    if ((t->used + 1) * 4 > t->cap * 3 && table_grow(t)) return -1;
    size_t j = (size_t)hash & (t->cap - 1);
    for (;;) {
        Entry *e = &t->slots[j];
        if (!e->len) {
            *e = (Entry){(uint32_t)hash, (uint32_t)at, count, (uint8_t)len, next, 0};
            t->used++;
            return 0;
        }
        if (e->hash == (uint32_t)hash && e->len == len && !memcmp(t->chars + e->at, t->chars + at, (size_t)len * 4)) {
            e->count += count;
            if (e->next != next) e->multi = 1;
            return 0;
        }
        j = (j + 1) & (t->cap - 1);
    }
}

static int utf8_len(uint32_t c) { return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4; }
static uint8_t lead_byte(uint32_t c) {
    return (uint8_t)(c < 0x80 ? c : c < 0x800 ? 0xC0 | c >> 6 : c < 0x10000 ? 0xE0 | c >> 12 : 0xF0 | c >> 18);
}

typedef struct {
    float score;
    int bytes;
    const Entry *e;
} Ranked;

static const uint32_t *rank_chars;

static int rank_cmp(const void *pa, const void *pb) {
    const Ranked *a = pa, *b = pb;
    if (a->score != b->score) return a->score > b->score ? -1 : 1;
    if (a->bytes != b->bytes) return a->bytes > b->bytes ? -1 : 1;
    const uint32_t *x = rank_chars + a->e->at, *y = rank_chars + b->e->at;
    int n = a->e->len < b->e->len ? a->e->len : b->e->len;
    for (int i = 0; i < n; i++)
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    return (int)a->e->len - (int)b->e->len;
}

/* seed_substrings(words, after(bytes), counts(int64), kinds(dict cp -> class), max_len, limit)
 * -> [(substring, score)] for substrings of 2..max_len characters that are valid pieces,
 * followed by at least two different bytes; ranked by float32 count x length, then
 * longer in UTF-8, then by code points; at most limit of them. */
static PyObject *py_seed_substrings(PyObject *self, PyObject *args) {
    PyObject *words, *after_obj, *counts_obj, *kinds;
    int max_len;
    Py_ssize_t limit;
    if (!PyArg_ParseTuple(args, "O!OOO!in", &PyList_Type, &words, &after_obj, &counts_obj, &PyDict_Type, &kinds,
                          &max_len, &limit))
        return NULL;
    if (max_len < 1 || max_len > 255) {
        PyErr_SetString(PyExc_ValueError, "max_len must be 1..255");
        return NULL;
    }
    Py_buffer after, counts;
    if (PyObject_GetBuffer(after_obj, &after, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(counts_obj, &counts, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&after);
        return NULL;
    }
    Py_ssize_t n_words = PyList_GET_SIZE(words);
    PyObject *result = NULL;
    uint32_t *chars = NULL;
    int32_t *cls = NULL;
    Ranked *ranked = NULL;
    Table t = {0};
    if (after.len != n_words || counts.len != n_words * 8) {
        PyErr_SetString(PyExc_ValueError, "words, after and counts disagree in length");
        goto done;
    }
    const uint8_t *aft = after.buf;
    const int64_t *cnt = counts.buf;
    int64_t total = 0;
    for (Py_ssize_t w = 0; w < n_words; w++) {
        PyObject *word = PyList_GET_ITEM(words, w);
        if (!PyUnicode_Check(word)) {
            PyErr_SetString(PyExc_TypeError, "words must be str");
            goto done;
        }
        total += PyUnicode_GET_LENGTH(word);
    }
    if (total > (int64_t)UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "too many characters in the distinct words");
        goto done;
    }
    chars = malloc((size_t)(total ? total : 1) * 4);
    cls = malloc((size_t)(total ? total : 1) * 4);
    if (!chars || !cls) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t at = 0;
    for (Py_ssize_t w = 0; w < n_words; w++) {
        PyObject *word = PyList_GET_ITEM(words, w);
        int kind = PyUnicode_KIND(word);
        const void *data = PyUnicode_DATA(word);
        Py_ssize_t n = PyUnicode_GET_LENGTH(word);
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t c = PyUnicode_READ(kind, data, i);
            chars[at + i] = c;
            PyObject *key = PyLong_FromUnsignedLong(c);
            if (!key) goto done;
            PyObject *v = PyDict_GetItemWithError(kinds, key);
            Py_DECREF(key);
            if (!v) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "character without a class");
                goto done;
            }
            cls[at + i] = (int32_t)PyLong_AsLong(v);
        }
        at += n;
    }
    t.chars = chars;
    int oom = 0;
    Py_BEGIN_ALLOW_THREADS
    at = 0;
    for (Py_ssize_t w = 0; w < n_words && !oom; w++) {
        const int64_t n = PyUnicode_GET_LENGTH(PyList_GET_ITEM(words, w));
        for (int64_t s = 0; s + 1 < n && !oom; s++) {
            uint64_t h = 1469598103934665603ULL;
            int32_t prev = K_ANY;
            for (int64_t e = s + 1; e <= n && e - s <= max_len; e++) {
                const int64_t i = at + e - 1;
                const int32_t k = cls[i];
                if (k == K_FORBIDDEN) break;
                if (k == K_WS) {
                    if (e - 1 > s) break; /* whitespace only at the start of a piece */
                } else {
                    int32_t sc = k == K_INHERITED ? prev : k;
                    if (sc != K_ANY && prev != K_ANY && prev != sc) break; /* one script per piece */
                    prev = sc;
                }
                h = (h ^ chars[i]) * 1099511628211ULL;
                if (e - s < 2) continue;
                const uint8_t next = e < n ? lead_byte(chars[at + e]) : aft[w];
                if (table_add(&t, h ^ (uint64_t)(e - s), at + s, (int)(e - s), cnt[w], next)) {
                    oom = 1;
                    break;
                }
            }
        }
        at += n;
    }
    Py_END_ALLOW_THREADS
    if (oom) {
        PyErr_NoMemory();
        goto done;
    }
    size_t n_ranked = 0;
    ranked = malloc((t.used ? t.used : 1) * sizeof(Ranked));
    if (!ranked) {
        PyErr_NoMemory();
        goto done;
    }
    for (size_t i = 0; i < t.cap; i++) {
        const Entry *e = &t.slots[i];
        if (!e->len || !e->multi) continue;
        int bytes = 0;
        for (int j = 0; j < e->len; j++) bytes += utf8_len(chars[e->at + j]);
        ranked[n_ranked++] = (Ranked){(float)e->count * (float)e->len, bytes, e};
    }
    rank_chars = chars;
    qsort(ranked, n_ranked, sizeof(Ranked), rank_cmp);
    if ((size_t)limit < n_ranked) n_ranked = (size_t)limit;
    result = PyList_New((Py_ssize_t)n_ranked);
    if (!result) goto done;
    for (size_t i = 0; i < n_ranked; i++) {
        PyObject *s = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, chars + ranked[i].e->at, ranked[i].e->len);
        PyObject *item = s ? Py_BuildValue("(Nd)", s, (double)ranked[i].score) : NULL;
        if (!item) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)i, item);
    }
done:
    free(chars);
    free(cls);
    free(ranked);
    free(t.slots);
    PyBuffer_Release(&after);
    PyBuffer_Release(&counts);
    return result;
}

/* ------------------------------------------------------------------ BPE merges */

/* A symbol is a character or a merged piece; its characters (and their validity classes,
 * as for the seed substrings) live in growing buffers. A pair of adjacent symbols has a
 * count (over all words, by word count) and the words it was seen in (with repeats and
 * stale entries, which the merge loop skips). */

typedef struct {
    int64_t count, before; /* before: the count when the current merge first touched it */
    int32_t a, b;
    int32_t *where;
    int32_t n_where, cap_where, last_word;
    uint32_t changed_at;
    uint8_t invalid, dead;
} BPair;

typedef struct {
    uint32_t *chars;
    int32_t *cls;
    int64_t n_chars, cap_chars;
    int64_t *off;
    int32_t *len;
    int32_t n, cap;
} Syms;

typedef struct {
    uint64_t *keys;
    int32_t *vals;
    size_t cap, used;
} Map;

typedef struct {
    int64_t count;
    int32_t pair;
} HeapItem;

typedef struct {
    Syms sy;
    BPair *pairs;
    int32_t n_pairs, cap_pairs;
    Map map;
    HeapItem *heap;
    size_t heap_n, heap_cap;
    int max_len;
} Bpe;

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static int map_grow(Map *m) {
    size_t cap = m->cap ? 2 * m->cap : (1u << 16);
    uint64_t *keys = malloc(cap * sizeof(uint64_t));
    int32_t *vals = malloc(cap * sizeof(int32_t));
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return -1;
    }
    for (size_t i = 0; i < cap; i++) vals[i] = -1;
    for (size_t i = 0; i < m->cap; i++) {
        if (m->vals[i] < 0) continue;
        size_t j = (size_t)mix64(m->keys[i]) & (cap - 1);
        while (vals[j] >= 0) j = (j + 1) & (cap - 1);
        keys[j] = m->keys[i];
        vals[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return 0;
}

/* the slot of key: its value, or -1 with *slot where it would go */
static int32_t map_find(const Map *m, uint64_t key, size_t *slot) {
    size_t j = (size_t)mix64(key) & (m->cap - 1);
    while (m->vals[j] >= 0 && m->keys[j] != key) j = (j + 1) & (m->cap - 1);
    *slot = j;
    return m->vals[j];
}

static int sym_add(Syms *s, const uint32_t *chars, const int32_t *cls, int32_t len) {
    if (s->n == s->cap) {
        int32_t cap = s->cap ? 2 * s->cap : 1024;
        int64_t *off = realloc(s->off, (size_t)cap * sizeof(int64_t));
        if (!off) return -1;
        s->off = off;
        int32_t *ln = realloc(s->len, (size_t)cap * sizeof(int32_t));
        if (!ln) return -1;
        s->len = ln;
        s->cap = cap;
    }
    if (s->n_chars + len > s->cap_chars) {
        int64_t cap = s->cap_chars ? 2 * s->cap_chars : 4096;
        while (cap < s->n_chars + len) cap *= 2;
        uint32_t *c = realloc(s->chars, (size_t)cap * 4);
        if (!c) return -1;
        s->chars = c;
        int32_t *k = realloc(s->cls, (size_t)cap * 4);
        if (!k) return -1;
        s->cls = k;
        s->cap_chars = cap;
    }
    memmove(s->chars + s->n_chars, chars, (size_t)len * 4);
    memmove(s->cls + s->n_chars, cls, (size_t)len * 4);
    s->off[s->n] = s->n_chars;
    s->len[s->n] = len;
    s->n_chars += len;
    return s->n++;
}

/* spm_train_input.piece_validator on the characters of a then b */
static int concat_valid(const Bpe *B, int32_t a, int32_t b) {
    const Syms *s = &B->sy;
    if (s->len[a] + s->len[b] > B->max_len) return 0;
    int32_t prev = K_ANY, pos = 0;
    for (int part = 0; part < 2; part++) {
        const int32_t id = part ? b : a;
        const int32_t *cls = s->cls + s->off[id];
        for (int32_t i = 0; i < s->len[id]; i++, pos++) {
            const int32_t k = cls[i];
            if (k == K_FORBIDDEN) return 0;
            if (k == K_WS) {
                if (pos > 0) return 0;
                continue;
            }
            const int32_t sc = k == K_INHERITED ? prev : k;
            if (sc != K_ANY && prev != K_ANY && prev != sc) return 0;
            prev = sc;
        }
    }
    return 1;
}

/* the pair (a, b), created on first sight; -1 when out of memory */
static int32_t pair_get(Bpe *B, int32_t a, int32_t b) {
    if ((B->map.used + 1) * 2 > B->map.cap && map_grow(&B->map)) return -1;
    const uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t slot;
    int32_t id = map_find(&B->map, key, &slot);
    if (id >= 0) return id;
    if (B->n_pairs == B->cap_pairs) {
        int32_t cap = B->cap_pairs ? 2 * B->cap_pairs : 4096;
        BPair *p = realloc(B->pairs, (size_t)cap * sizeof(BPair));
        if (!p) return -1;
        B->pairs = p;
        B->cap_pairs = cap;
    }
    id = B->n_pairs++;
    B->pairs[id] = (BPair){0, 0, a, b, NULL, 0, 0, -1, 0, (uint8_t)!concat_valid(B, a, b), 0};
    B->map.keys[slot] = key;
    B->map.vals[slot] = id;
    B->map.used++;
    return id;
}

static int pair_seen_in(BPair *p, int32_t w) {
    if (p->last_word == w) return 0;
    if (p->n_where == p->cap_where) {
        int32_t cap = p->cap_where ? 2 * p->cap_where : 4;
        int32_t *x = realloc(p->where, (size_t)cap * 4);
        if (!x) return -1;
        p->where = x;
        p->cap_where = cap;
    }
    p->where[p->n_where++] = w;
    p->last_word = w;
    return 0;
}

/* heap order: higher count, then shorter piece, then smaller string */
static int better(const Bpe *B, const HeapItem *x, const HeapItem *y) {
    if (x->count != y->count) return x->count > y->count;
    const BPair *p = &B->pairs[x->pair], *q = &B->pairs[y->pair];
    const Syms *s = &B->sy;
    const int32_t lp = s->len[p->a] + s->len[p->b], lq = s->len[q->a] + s->len[q->b];
    if (lp != lq) return lp < lq;
    for (int32_t i = 0; i < lp; i++) {
        const uint32_t cp = i < s->len[p->a] ? s->chars[s->off[p->a] + i] : s->chars[s->off[p->b] + i - s->len[p->a]];
        const uint32_t cq = i < s->len[q->a] ? s->chars[s->off[q->a] + i] : s->chars[s->off[q->b] + i - s->len[q->a]];
        if (cp != cq) return cp < cq;
    }
    return x->pair < y->pair;
}

static int heap_push(Bpe *B, int64_t count, int32_t pair) {
    if (B->heap_n == B->heap_cap) {
        size_t cap = B->heap_cap ? 2 * B->heap_cap : 4096;
        HeapItem *h = realloc(B->heap, cap * sizeof(HeapItem));
        if (!h) return -1;
        B->heap = h;
        B->heap_cap = cap;
    }
    size_t i = B->heap_n++;
    B->heap[i] = (HeapItem){count, pair};
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!better(B, &B->heap[i], &B->heap[up])) break;
        HeapItem t = B->heap[i];
        B->heap[i] = B->heap[up];
        B->heap[up] = t;
        i = up;
    }
    return 0;
}

static HeapItem heap_pop(Bpe *B) {
    HeapItem top = B->heap[0];
    B->heap[0] = B->heap[--B->heap_n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < B->heap_n && better(B, &B->heap[l], &B->heap[m])) m = l;
        if (r < B->heap_n && better(B, &B->heap[r], &B->heap[m])) m = r;
        if (m == i) break;
        HeapItem t = B->heap[i];
        B->heap[i] = B->heap[m];
        B->heap[m] = t;
        i = m;
    }
    return top;
}

/* the pairs whose count the current merge changed, each with its count before */
typedef struct {
    int32_t *ids;
    int32_t n, cap;
} Changed;

/* count(x, y) += delta for word w; a new adjacency (delta > 0) records w for the pair */
static int bump(Bpe *B, Changed *C, int32_t x, int32_t y, int64_t delta, int32_t w, uint32_t stamp) {
    const int32_t p = pair_get(B, x, y);
    if (p < 0) return -1;
    BPair *q = &B->pairs[p];
    if (q->invalid) return 0;
    if (q->changed_at != stamp) {
        q->changed_at = stamp;
        q->before = q->count;
        if (C->n == C->cap) {
            int32_t cap = C->cap ? 2 * C->cap : 1024;
            int32_t *c = realloc(C->ids, (size_t)cap * 4);
            if (!c) return -1;
            C->ids = c;
            C->cap = cap;
        }
        C->ids[C->n++] = p;
    }
    q->count += delta;
    return delta > 0 ? pair_seen_in(q, w) : 0;
}

/* bpe_merges(seqs(int32 char-symbol ids), offsets(int64), counts(int64), chars(list of str, one per
 * char symbol), classes(int32 per char symbol), max_len, n_merges) -> list of merged pieces */
static PyObject *py_bpe_merges(PyObject *self, PyObject *args) {
    PyObject *seq_obj, *off_obj, *cnt_obj, *char_list, *cls_obj;
    int max_len;
    Py_ssize_t n_merges;
    if (!PyArg_ParseTuple(args, "OOOO!Oin", &seq_obj, &off_obj, &cnt_obj, &PyList_Type, &char_list, &cls_obj,
                          &max_len, &n_merges))
        return NULL;
    if (max_len < 1 || max_len > 255 || n_merges < 0) {
        PyErr_SetString(PyExc_ValueError, "max_len must be 1..255 and n_merges >= 0");
        return NULL;
    }
    Py_buffer bseq, boff, bcnt, bcls;
    if (PyObject_GetBuffer(seq_obj, &bseq, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (PyObject_GetBuffer(off_obj, &boff, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&bseq);
        return NULL;
    }
    if (PyObject_GetBuffer(cnt_obj, &bcnt, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&bseq);
        PyBuffer_Release(&boff);
        return NULL;
    }
    if (PyObject_GetBuffer(cls_obj, &bcls, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&bseq);
        PyBuffer_Release(&boff);
        PyBuffer_Release(&bcnt);
        return NULL;
    }
    Bpe B = {0};
    B.max_len = max_len;
    PyObject *result = NULL;
    int32_t *seq = NULL, *wlen = NULL, *merged = NULL;
    Changed C = {0};
    uint32_t *wstamp = NULL;
    Map made = {0}; /* hash of a merged piece's characters -> its symbol */
    const Py_ssize_t n_words = bcnt.len / 8, n_char_syms = PyList_GET_SIZE(char_list);
    const int64_t *off = boff.buf, *cnt = bcnt.buf;
    if (boff.len / 8 != n_words + 1 || bcls.len / 4 != n_char_syms || off[n_words] != bseq.len / 4) {
        PyErr_SetString(PyExc_ValueError, "BPE arrays disagree in length");
        goto done;
    }
    for (Py_ssize_t i = 0; i < n_char_syms; i++) {
        PyObject *c = PyList_GET_ITEM(char_list, i);
        if (!PyUnicode_Check(c) || PyUnicode_GET_LENGTH(c) != 1) {
            PyErr_SetString(PyExc_ValueError, "character symbols must be one character each");
            goto done;
        }
        uint32_t cp = PyUnicode_READ_CHAR(c, 0);
        if (sym_add(&B.sy, &cp, (const int32_t *)bcls.buf + i, 1) < 0) {
            PyErr_NoMemory();
            goto done;
        }
    }
    seq = malloc((size_t)(bseq.len ? bseq.len : 4));
    wlen = malloc((size_t)(n_words ? n_words : 1) * 4);
    wstamp = calloc((size_t)(n_words ? n_words : 1), 4);
    merged = malloc((size_t)(n_merges ? n_merges : 1) * 4);
    if (!seq || !wlen || !wstamp || !merged || map_grow(&made) || map_grow(&B.map)) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(seq, bseq.buf, (size_t)bseq.len);
    for (Py_ssize_t i = 0; i < bseq.len / 4; i++)
        if (seq[i] < 0 || seq[i] >= n_char_syms) {
            PyErr_SetString(PyExc_ValueError, "word names an unknown character symbol");
            goto done;
        }
    int oom = 0;
    Py_ssize_t n_out = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t w = 0; w < n_words && !oom; w++) {
        wlen[w] = (int32_t)(off[w + 1] - off[w]);
        const int32_t *x = seq + off[w];
        for (int32_t i = 0; i + 1 < wlen[w]; i++) {
            const int32_t p = pair_get(&B, x[i], x[i + 1]);
            if (p < 0 || (!B.pairs[p].invalid && pair_seen_in(&B.pairs[p], (int32_t)w))) {
                oom = 1;
                break;
            }
            if (!B.pairs[p].invalid) B.pairs[p].count += cnt[w];
        }
    }
    for (int32_t p = 0; p < B.n_pairs && !oom; p++)
        if (!B.pairs[p].invalid && B.pairs[p].count > 0 && heap_push(&B, B.pairs[p].count, p)) oom = 1;
    uint32_t stamp = 0;
    int zero_phase = 0;
    while (n_out < n_merges && !oom) {
        if (!B.heap_n) {
            /* no pair occurs any more: sentencepiece goes on with the pairs that did occur
             * once and are gone now (count 0), shortest first, then by string */
            if (zero_phase) break;
            zero_phase = 1;
            for (int32_t p = 0; p < B.n_pairs && !oom; p++)
                if (!B.pairs[p].invalid && !B.pairs[p].dead && B.pairs[p].count == 0 && heap_push(&B, 0, p)) oom = 1;
            continue;
        }
        const HeapItem top = heap_pop(&B);
        BPair *bp = &B.pairs[top.pair];
        if (bp->dead || bp->count != top.count || (top.count <= 0 && !zero_phase)) continue;
        const int32_t a = bp->a, b = bp->b, la = B.sy.len[a], lb = B.sy.len[b];
        /* the merged piece's characters, and whether an earlier merge made the same string */
        uint32_t buf[512];
        int32_t kbuf[512];
        memcpy(buf, B.sy.chars + B.sy.off[a], (size_t)la * 4);
        memcpy(buf + la, B.sy.chars + B.sy.off[b], (size_t)lb * 4);
        memcpy(kbuf, B.sy.cls + B.sy.off[a], (size_t)la * 4);
        memcpy(kbuf + la, B.sy.cls + B.sy.off[b], (size_t)lb * 4);
        uint64_t h = 1469598103934665603ULL;
        for (int32_t i = 0; i < la + lb; i++) h = (h ^ buf[i]) * 1099511628211ULL;
        if ((made.used + 1) * 2 > made.cap && map_grow(&made)) {
            oom = 1;
            break;
        }
        size_t j = (size_t)mix64(h) & (made.cap - 1);
        int dup = 0;
        for (; made.vals[j] >= 0; j = (j + 1) & (made.cap - 1)) {
            const int32_t s = made.vals[j];
            if (made.keys[j] == h && B.sy.len[s] == la + lb &&
                !memcmp(B.sy.chars + B.sy.off[s], buf, (size_t)(la + lb) * 4)) {
                dup = 1;
                break;
            }
        }
        if (dup) { /* the same string by another split: sentencepiece drops this pair */
            bp->dead = 1;
            continue;
        }
        const int32_t sym = sym_add(&B.sy, buf, kbuf, la + lb);
        if (sym < 0) {
            oom = 1;
            break;
        }
        bp = &B.pairs[top.pair];
        made.keys[j] = h;
        made.vals[j] = sym;
        made.used++;
        merged[n_out++] = sym;
        stamp++;
        C.n = 0;
        int32_t *where = bp->where;
        const int32_t n_where = bp->n_where;
        bp->where = NULL;
        bp->n_where = bp->cap_where = 0;
        for (int32_t wi = 0; wi < n_where && !oom; wi++) {
            const int32_t w = where[wi];
            if (wstamp[w] == stamp) continue;
            wstamp[w] = stamp;
            int32_t *x = seq + off[w];
            const int32_t n = wlen[w];
            /* merge left to right; each merge turns (prev, a) into (prev, sym) and (b, next)
             * into (sym, next), where prev may be a symbol just merged (then the pair it
             * takes away is one it has just added) */
            int32_t o = 0;
            for (int32_t i = 0; i < n && !oom;) {
                if (i + 1 < n && x[i] == a && x[i + 1] == b) {
                    if (o > 0 && (bump(&B, &C, x[o - 1], a, -cnt[w], w, stamp) ||
                                  bump(&B, &C, x[o - 1], sym, cnt[w], w, stamp)))
                        oom = 1;
                    if (i + 2 < n && (bump(&B, &C, b, x[i + 2], -cnt[w], w, stamp) ||
                                      bump(&B, &C, sym, x[i + 2], cnt[w], w, stamp)))
                        oom = 1;
                    x[o++] = sym;
                    i += 2;
                } else {
                    x[o++] = x[i++];
                }
            }
            wlen[w] = o;
        }
        free(where);
        B.pairs[top.pair].count = 0;
        B.pairs[top.pair].dead = 1; /* merged: never a candidate again */
        for (int32_t i = 0; i < C.n && !oom; i++) {
            BPair *q = &B.pairs[C.ids[i]];
            if (q->count == 0) { /* gone from every word: only a new symbol could bring it back, as a new pair */
                free(q->where);
                q->where = NULL;
                q->n_where = q->cap_where = 0;
                q->last_word = -1;
            }
            if (q->count > 0 && q->count != q->before && !q->dead && heap_push(&B, q->count, C.ids[i])) oom = 1;
        }
    }
    Py_END_ALLOW_THREADS
    if (oom) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyList_New(n_out);
    if (!result) goto done;
    for (Py_ssize_t i = 0; i < n_out; i++) {
        const int32_t s = merged[i];
        PyObject *str = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, B.sy.chars + B.sy.off[s], B.sy.len[s]);
        if (!str) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, i, str);
    }
done:
    for (int32_t p = 0; p < B.n_pairs; p++) free(B.pairs[p].where);
    free(B.pairs);
    free(B.map.keys);
    free(B.map.vals);
    free(B.heap);
    free(B.sy.chars);
    free(B.sy.cls);
    free(B.sy.off);
    free(B.sy.len);
    free(made.keys);
    free(made.vals);
    free(seq);
    free(wlen);
    free(wstamp);
    free(merged);
    free(C.ids);
    PyBuffer_Release(&bseq);
    PyBuffer_Release(&boff);
    PyBuffer_Release(&bcnt);
    PyBuffer_Release(&bcls);
    return result;
}

/* ------------------------------------------------------------------ word counts */

/* Counts the words of normalized sentences (spm_train_input._count_batch's words and
 * ends): a word starts at U+2581 or at the start of a sentence and runs to the next
 * U+2581 or the end of the sentence; sentences come joined by newlines. The table keeps
 * its own copy of each word's characters, so no Python string is made per occurrence. */

typedef struct {
    uint64_t hash;
    int64_t at, count, ends;
    int32_t len;
} WEntry;

typedef struct {
    WEntry *slots;
    size_t cap, used;
    uint32_t *chars;
    int64_t n_chars, cap_chars;
} Words;

static void words_free(PyObject *capsule) {
    Words *t = PyCapsule_GetPointer(capsule, "spm_words");
    if (!t) return;
    free(t->slots);
    free(t->chars);
    free(t);
}

static int words_grow(Words *t) {
    size_t cap = t->cap ? 2 * t->cap : (1u << 14);
    WEntry *slots = calloc(cap, sizeof(WEntry));
    if (!slots) return -1;
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->slots[i].len) continue;
        size_t j = (size_t)t->slots[i].hash & (cap - 1);
        while (slots[j].len) j = (j + 1) & (cap - 1);
        slots[j] = t->slots[i];
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

static int words_add(Words *t, const uint32_t *w, int32_t len, int last) {
    if ((t->used + 1) * 2 > t->cap && words_grow(t)) return -1;
    uint64_t h = 1469598103934665603ULL;
    for (int32_t i = 0; i < len; i++) h = (h ^ w[i]) * 1099511628211ULL;
    h = mix64(h);
    size_t j = (size_t)h & (t->cap - 1);
    for (;; j = (j + 1) & (t->cap - 1)) {
        WEntry *e = &t->slots[j];
        if (!e->len) break;
        if (e->hash == h && e->len == len && !memcmp(t->chars + e->at, w, (size_t)len * 4)) {
            e->count++;
            e->ends += last;
            return 0;
        }
    }
    if (t->n_chars + len > t->cap_chars) {
        int64_t cap = t->cap_chars ? 2 * t->cap_chars : (1 << 16);
        while (cap < t->n_chars + len) cap *= 2;
        uint32_t *c = realloc(t->chars, (size_t)cap * 4);
        if (!c) return -1;
        t->chars = c;
        t->cap_chars = cap;
    }
    memcpy(t->chars + t->n_chars, w, (size_t)len * 4);
    t->slots[j] = (WEntry){h, t->n_chars, 1, last, len};
    t->n_chars += len;
    t->used++;
    return 0;
}

static PyObject *py_words_new(PyObject *self, PyObject *args) {
    Words *t = calloc(1, sizeof(Words));
    if (!t) return PyErr_NoMemory();
    PyObject *cap = PyCapsule_New(t, "spm_words", words_free);
    if (!cap) free(t);
    return cap;
}

/* words_add(table, text): text is sentences each followed by a newline */
static PyObject *py_words_add(PyObject *self, PyObject *args) {
    PyObject *capsule, *text;
    if (!PyArg_ParseTuple(args, "OU", &capsule, &text)) return NULL;
    Words *t = PyCapsule_GetPointer(capsule, "spm_words");
    if (!t) return NULL;
    const Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    uint32_t *buf = PyUnicode_AsUCS4Copy(text);
    if (!buf) return NULL;
    int oom = 0;
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i <= n && !oom; i++) {
        const uint32_t c = i < n ? buf[i] : '\n';
        if (c == 0x2581 && i > start) { /* a new word starts here */
            if (words_add(t, buf + start, (int32_t)(i - start), 0)) oom = 1;
            start = i;
        } else if (c == '\n') {
            if (i > start && words_add(t, buf + start, (int32_t)(i - start), 1)) oom = 1;
            start = i + 1;
        }
    }
    PyMem_Free(buf);
    if (oom) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* words_result(table) -> (words: {word: count}, ends: {word: count at a sentence's end}) */
static PyObject *py_words_result(PyObject *self, PyObject *args) {
    PyObject *capsule;
    if (!PyArg_ParseTuple(args, "O", &capsule)) return NULL;
    Words *t = PyCapsule_GetPointer(capsule, "spm_words");
    if (!t) return NULL;
    PyObject *words = PyDict_New(), *ends = PyDict_New();
    if (!words || !ends) goto fail;
    for (size_t i = 0; i < t->cap; i++) {
        const WEntry *e = &t->slots[i];
        if (!e->len) continue;
        PyObject *w = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, t->chars + e->at, e->len);
        PyObject *c = w ? PyLong_FromLongLong(e->count) : NULL;
        int bad = !c || PyDict_SetItem(words, w, c) < 0;
        Py_XDECREF(c);
        if (!bad && e->ends) {
            c = PyLong_FromLongLong(e->ends);
            bad = !c || PyDict_SetItem(ends, w, c) < 0;
            Py_XDECREF(c);
        }
        Py_XDECREF(w);
        if (bad) goto fail;
    }
    return Py_BuildValue("(NN)", words, ends);
fail:
    Py_XDECREF(words);
    Py_XDECREF(ends);
    return NULL;
}

static PyMethodDef methods[] = {
    {"words_new", py_words_new, METH_NOARGS, "words_new() -> a word count table"},
    {"words_add", py_words_add, METH_VARARGS, "words_add(table, text): count the words of newline-ended sentences"},
    {"words_result", py_words_result, METH_VARARGS, "words_result(table) -> (words, ends) dicts"},
    {"bpe_merges", py_bpe_merges, METH_VARARGS,
     "bpe_merges(seqs, offsets, counts, chars, classes, max_len, n_merges) -> merged pieces in order"},
    {"seed_substrings", py_seed_substrings, METH_VARARGS,
     "seed_substrings(words, after, counts, kinds, max_len, limit) -> [(substring, score)]"},
    {"build", py_build, METH_VARARGS, "build(words, index, max_len) -> (word_len, offsets, pos, length, piece) bytes"},
    {"expected", py_expected, METH_VARARGS, "expected(lattice..., active, scores, freq, n_cur, unk_score, unk_id)"},
    {"viterbi", py_viterbi, METH_VARARGS, "viterbi(lattice..., active, scores, freq, n_cur, unk_score, unk_id)"},
    {"second_best", py_second_best, METH_VARARGS, "second_best(lattice..., active, scores, unk_score, unk_id)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_spm_train", NULL, -1, methods};

PyMODINIT_FUNC PyInit__spm_train(void) { return PyModule_Create(&module); }
