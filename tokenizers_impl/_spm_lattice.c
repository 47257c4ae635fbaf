/* Compiled helper for the Unigram trainer: the lattice passes of spm_lattice.py.
 *
 * spm_lattice.py is the readable reference for every function here (same arguments,
 * same results); tests check that both agree. Lattices come as flat arrays (any object
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
    const int32_t *wl, *pos, *len, *piece, *active;
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
    static const Py_ssize_t item[8] = {4, 8, 4, 4, 4, 4, 8, 8};
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
    Py_ssize_t n_nodes = l->bufs[2].len / 4;
    if (l->bufs[1].len / 8 != l->n_words + 1 || l->bufs[3].len / 4 != n_nodes || l->bufs[4].len / 4 != n_nodes ||
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

static PyObject *py_build(PyObject *self, PyObject *args) {
    PyObject *words, *index;
    int max_len;
    if (!PyArg_ParseTuple(args, "O!O!i", &PyList_Type, &words, &PyDict_Type, &index, &max_len)) return NULL;
    Py_ssize_t n_words = PyList_GET_SIZE(words);
    int32_t *wl = malloc(sizeof(int32_t) * (size_t)(n_words ? n_words : 1));
    int64_t *off = malloc(sizeof(int64_t) * (size_t)(n_words + 1));
    Vec pos = {0}, len = {0}, piece = {0};
    PyObject *result = NULL;
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
        if (n > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "word too long");
            goto done;
        }
        wl[w] = (int32_t)n;
        for (Py_ssize_t s = 0; s < n; s++) {
            Py_ssize_t end = s + max_len < n ? s + max_len : n;
            for (Py_ssize_t e = s + 1; e <= end; e++) {
                PyObject *sub = PyUnicode_Substring(word, s, e);
                if (!sub) goto done;
                PyObject *v = PyDict_GetItemWithError(index, sub);
                Py_DECREF(sub);
                if (!v) {
                    if (PyErr_Occurred()) goto done;
                    continue;
                }
                long id = PyLong_AsLong(v);
                if (id == -1 && PyErr_Occurred()) goto done;
                if (vec_push(&pos, (int32_t)s) || vec_push(&len, (int32_t)(e - s)) || vec_push(&piece, (int32_t)id)) {
                    PyErr_NoMemory();
                    goto done;
                }
            }
        }
        off[w + 1] = pos.n;
    }
    result = Py_BuildValue("y#y#y#y#y#", (const char *)wl, n_words * 4, (const char *)off, (n_words + 1) * 8,
                           (const char *)pos.v, pos.n * 4, (const char *)len.v, len.n * 4,
                           (const char *)piece.v, piece.n * 4);
done:
    free(wl);
    free(off);
    free(pos.v);
    free(len.v);
    free(piece.v);
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
                           (const char *)alt.v, alt.n * 4);
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
    uint64_t hash;
    int64_t at;    /* offset of the substring in the character buffer */
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
            *e = (Entry){hash, at, count, (uint8_t)len, next, 0};
            t->used++;
            return 0;
        }
        if (e->hash == hash && e->len == len && !memcmp(t->chars + e->at, t->chars + at, (size_t)len * 4)) {
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

static PyMethodDef methods[] = {
    {"seed_substrings", py_seed_substrings, METH_VARARGS,
     "seed_substrings(words, after, counts, kinds, max_len, limit) -> [(substring, score)]"},
    {"build", py_build, METH_VARARGS, "build(words, index, max_len) -> (word_len, offsets, pos, length, piece) bytes"},
    {"expected", py_expected, METH_VARARGS, "expected(lattice..., active, scores, freq, n_cur, unk_score, unk_id)"},
    {"viterbi", py_viterbi, METH_VARARGS, "viterbi(lattice..., active, scores, freq, n_cur, unk_score, unk_id)"},
    {"second_best", py_second_best, METH_VARARGS, "second_best(lattice..., active, scores, unk_score, unk_id)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_spm_lattice", NULL, -1, methods};

PyMODINIT_FUNC PyInit__spm_lattice(void) { return PyModule_Create(&module); }
