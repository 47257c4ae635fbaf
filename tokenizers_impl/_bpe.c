/* Compiled helper for tokenizers_impl: pre-tokenization, BPE encoding and BPE training.
 *
 * The readable reference for everything here is in Python (pretokenize.py, merges.py);
 * tests check that both paths agree.  Unicode classes come from Python as a table of
 * one byte per code point (see unicode_classes.py), so this file knows no Unicode data.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* class bits, kept in sync with unicode_classes.py */
#define C_L 1    /* \p{L} */
#define C_N 2    /* \p{N} */
#define C_WS 4   /* \s */
#define C_CRLF 8 /* \r \n */
#define C_W 16   /* \w of the Whitespace pre-tokenizer */

enum { P_GPT2 = 0, P_LLAMA3 = 1, P_SMOLLM = 2, P_WHITESPACE = 3 };

#define TABLE_SIZE 0x110000
#define NO_TOKEN 0xFFFFFFFFu

/* ------------------------------------------------------------------ text access */

typedef struct {
    int kind;
    const void *data;
    const uint8_t *tbl;
} Src;

#define CP(s, i) PyUnicode_READ((s)->kind, (s)->data, (i))
#define CL(s, i) ((s)->tbl[CP(s, i)])

static int get_table(PyObject *obj, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) return -1;
    if (view->len != TABLE_SIZE) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "class table must have 0x110000 entries");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ pre-tokenizers */

/* Each matcher returns the end of the match that starts at i (i < n); n bounds the
 * segment, which the regex sees as the end of its input. */

static Py_ssize_t run_of(const Src *s, Py_ssize_t j, Py_ssize_t n, uint8_t bits) {
    while (j < n && (CL(s, j) & bits)) j++;
    return j;
}

static Py_ssize_t run_without(const Src *s, Py_ssize_t j, Py_ssize_t n, uint8_t bits) {
    while (j < n && !(CL(s, j) & bits)) j++;
    return j;
}

/* \s+(?!\S)|\s+ at a whitespace character */
static Py_ssize_t match_spaces(const Src *s, Py_ssize_t i, Py_ssize_t n) {
    Py_ssize_t k = run_of(s, i, n, C_WS);
    if (k == n) return n;
    if (k - i >= 2) return k - 1;
    return i + 1;
}

static Py_ssize_t contraction(const Src *s, Py_ssize_t i, Py_ssize_t n, int fold) {
    if (CP(s, i) != '\'' || i + 1 >= n) return 0;
    Py_UCS4 d = CP(s, i + 1);
    if (fold) {
        if (d == 0x17F) d = 's'; /* long s folds to s */
        else if (d < 128) d = (Py_UCS4)Py_TOLOWER((int)d);
    }
    if (d == 's' || d == 't' || d == 'm' || d == 'd') return i + 2;
    if (i + 2 >= n) return 0;
    Py_UCS4 e = CP(s, i + 2);
    if (fold && e < 128) e = (Py_UCS4)Py_TOLOWER((int)e);
    if ((d == 'r' && e == 'e') || (d == 'v' && e == 'e') || (d == 'l' && e == 'l')) return i + 3;
    return 0;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static Py_ssize_t match_gpt2(const Src *s, Py_ssize_t i, Py_ssize_t n) {
    Py_ssize_t e = contraction(s, i, n, 0);
    if (e) return e;
    Py_ssize_t j = (CP(s, i) == ' ' && i + 1 < n) ? i + 1 : i;
    uint8_t k = CL(s, j);
    if (k & C_L) return run_of(s, j + 1, n, C_L);
    if (k & C_N) return run_of(s, j + 1, n, C_N);
    if (!(k & (C_L | C_N | C_WS))) return run_without(s, j + 1, n, C_L | C_N | C_WS);
    return match_spaces(s, i, n);
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 * \s*[\r\n]+|\s+(?!\S)|\s+ */
static Py_ssize_t match_llama3(const Src *s, Py_ssize_t i, Py_ssize_t n) {
    Py_ssize_t e = contraction(s, i, n, 1);
    if (e) return e;
    uint8_t k = CL(s, i);
    if (k & C_L) return run_of(s, i + 1, n, C_L);
    if (!(k & (C_L | C_N | C_CRLF)) && i + 1 < n && (CL(s, i + 1) & C_L))
        return run_of(s, i + 2, n, C_L);
    if (k & C_N) {
        Py_ssize_t j = i + 1;
        while (j < n && j < i + 3 && (CL(s, j) & C_N)) j++;
        return j;
    }
    Py_ssize_t j = (CP(s, i) == ' ' && i + 1 < n) ? i + 1 : i;
    if (!(CL(s, j) & (C_L | C_N | C_WS))) {
        j = run_without(s, j + 1, n, C_L | C_N | C_WS);
        return run_of(s, j, n, C_CRLF);
    }
    Py_ssize_t end = run_of(s, i, n, C_WS);
    for (Py_ssize_t p = end - 1; p >= i; p--)
        if (CL(s, p) & C_CRLF) return p + 1;
    return match_spaces(s, i, n);
}

/* \w+|[^\w\s]+ ; whitespace between matches is dropped (returns -end for a skip) */
static Py_ssize_t match_whitespace(const Src *s, Py_ssize_t i, Py_ssize_t n) {
    uint8_t k = CL(s, i);
    if (k & C_W) return run_of(s, i + 1, n, C_W);
    if (!(k & C_WS)) return run_without(s, i + 1, n, C_W | C_WS);
    return -(run_of(s, i + 1, n, C_WS));
}

/* Pieces go to a sink as they are found, so no list of all pieces is ever held. */
typedef struct {
    int (*emit)(void *ctx, Py_ssize_t start, Py_ssize_t end);
    void *ctx;
} Sink;

static int split_range(const Src *s, Py_ssize_t i, Py_ssize_t n, int preset, const Sink *out) {
    while (i < n) {
        Py_ssize_t e;
        if (preset == P_LLAMA3) e = match_llama3(s, i, n);
        else if (preset == P_WHITESPACE) {
            e = match_whitespace(s, i, n);
            if (e < 0) { i = -e; continue; }
        } else e = match_gpt2(s, i, n);
        if (out->emit(out->ctx, i, e) < 0) return -1;
        i = e;
    }
    return 0;
}

/* the pieces of s[0:n] */
static int split_text(const Src *s, Py_ssize_t n, int preset, const Sink *out) {
    if (preset != P_SMOLLM) return split_range(s, 0, n, preset, out);
    /* every numeric character alone, the gpt2 pattern on what lies between */
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (CL(s, i) & C_N) {
            if (split_range(s, start, i, P_GPT2, out) < 0) return -1;
            if (out->emit(out->ctx, i, i + 1) < 0) return -1;
            start = i + 1;
        }
    }
    return split_range(s, start, n, P_GPT2, out);
}

static int parse_text(PyObject *text, PyObject *table, int preset, Src *s, Py_buffer *tbl) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "text must be str");
        return -1;
    }
    if (preset < 0 || preset > P_WHITESPACE) {
        PyErr_SetString(PyExc_ValueError, "unknown pre-tokenizer preset");
        return -1;
    }
    if (get_table(table, tbl) < 0) return -1;
    s->kind = PyUnicode_KIND(text);
    s->data = PyUnicode_DATA(text);
    s->tbl = tbl->buf;
    return 0;
}

typedef struct {
    PyObject *text, *out; /* out: list of pieces or dict of counts */
} PieceCtx;

static int emit_to_list(void *ctx, Py_ssize_t a, Py_ssize_t b) {
    PieceCtx *c = ctx;
    PyObject *piece = PyUnicode_Substring(c->text, a, b);
    if (!piece) return -1;
    int rc = PyList_Append(c->out, piece);
    Py_DECREF(piece);
    return rc;
}

static int emit_to_counts(void *ctx, Py_ssize_t a, Py_ssize_t b) {
    PieceCtx *c = ctx;
    PyObject *piece = PyUnicode_Substring(c->text, a, b);
    if (!piece) return -1;
    PyObject *old = PyDict_GetItemWithError(c->out, piece);
    PyObject *now;
    if (old) now = PyLong_FromLongLong(PyLong_AsLongLong(old) + 1);
    else if (PyErr_Occurred()) now = NULL;
    else now = PyLong_FromLong(1);
    int rc = (now && PyDict_SetItem(c->out, piece, now) == 0) ? 0 : -1;
    Py_XDECREF(now);
    Py_DECREF(piece);
    return rc;
}

static PyObject *py_pretokenize(PyObject *self, PyObject *args) {
    PyObject *text, *table;
    int preset;
    if (!PyArg_ParseTuple(args, "OOi", &text, &table, &preset)) return NULL;
    Src s;
    Py_buffer tbl;
    if (parse_text(text, table, preset, &s, &tbl) < 0) return NULL;
    PieceCtx ctx = {text, PyList_New(0)};
    Sink sink = {emit_to_list, &ctx};
    if (ctx.out && split_text(&s, PyUnicode_GET_LENGTH(text), preset, &sink) < 0) Py_CLEAR(ctx.out);
    PyBuffer_Release(&tbl);
    return ctx.out;
}

/* counts[piece] += 1 for every piece of text */
static PyObject *py_count_words(PyObject *self, PyObject *args) {
    PyObject *text, *table, *counts;
    int preset;
    if (!PyArg_ParseTuple(args, "OOiO!", &text, &table, &preset, &PyDict_Type, &counts)) return NULL;
    Src s;
    Py_buffer tbl;
    if (parse_text(text, table, preset, &s, &tbl) < 0) return NULL;
    PieceCtx ctx = {text, counts};
    Sink sink = {emit_to_counts, &ctx};
    int rc = split_text(&s, PyUnicode_GET_LENGTH(text), preset, &sink);
    PyBuffer_Release(&tbl);
    if (rc < 0) return NULL;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ pair -> value map */

#define EMPTY_KEY UINT64_MAX

typedef struct {
    uint64_t *keys;
    int64_t *vals;
    size_t cap, used; /* cap is a power of two */
} PairMap;

static inline size_t pair_hash(uint64_t key, size_t mask) {
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 17) & mask;
}

static int pm_init(PairMap *m, size_t cap) {
    size_t c = 64;
    while (c < cap * 2) c <<= 1;
    m->keys = malloc(c * sizeof(uint64_t));
    m->vals = malloc(c * sizeof(int64_t));
    if (!m->keys || !m->vals) { free(m->keys); free(m->vals); PyErr_NoMemory(); return -1; }
    memset(m->keys, 0xFF, c * sizeof(uint64_t));
    m->cap = c;
    m->used = 0;
    return 0;
}

static void pm_free(PairMap *m) {
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
}

/* slot of key; inserts it with value 0 when absent */
static int64_t *pm_slot(PairMap *m, uint64_t key) {
    if ((m->used + 1) * 2 > m->cap) {
        PairMap bigger;
        if (pm_init(&bigger, m->cap) < 0) return NULL;
        for (size_t i = 0; i < m->cap; i++) {
            if (m->keys[i] == EMPTY_KEY) continue;
            size_t h = pair_hash(m->keys[i], bigger.cap - 1);
            while (bigger.keys[h] != EMPTY_KEY) h = (h + 1) & (bigger.cap - 1);
            bigger.keys[h] = m->keys[i];
            bigger.vals[h] = m->vals[i];
        }
        bigger.used = m->used;
        pm_free(m);
        *m = bigger;
    }
    size_t mask = m->cap - 1, h = pair_hash(key, mask);
    while (m->keys[h] != EMPTY_KEY) {
        if (m->keys[h] == key) return &m->vals[h];
        h = (h + 1) & mask;
    }
    m->keys[h] = key;
    m->vals[h] = 0;
    m->used++;
    return &m->vals[h];
}

static inline const int64_t *pm_find(const PairMap *m, uint64_t key) {
    size_t mask = m->cap - 1, h = pair_hash(key, mask);
    while (m->keys[h] != EMPTY_KEY) {
        if (m->keys[h] == key) return &m->vals[h];
        h = (h + 1) & mask;
    }
    return NULL;
}

#define PAIR(a, b) (((uint64_t)(uint32_t)(a) << 32) | (uint32_t)(b))

/* ------------------------------------------------------------------ encoder */

typedef struct {
    PyObject_HEAD
    Py_buffer tbl;
    int preset;
    uint32_t byte_id[256];
    PairMap merges; /* pair -> rank << 32 | new id */
    /* cache: utf-8 piece -> ids, open addressing over an arena */
    uint64_t *c_hash;  /* 0 = empty */
    uint32_t *c_entry; /* index into c_meta */
    size_t c_cap, c_used;
    uint32_t *c_meta; /* per entry: key offset, key length, ids offset, ids length */
    size_t c_meta_n, c_meta_cap;
    uint8_t *c_keys;
    size_t c_keys_n, c_keys_cap;
    uint32_t *c_ids;
    size_t c_ids_n, c_ids_cap;
} Encoder;

static void enc_cache_clear(Encoder *e) {
    free(e->c_hash); free(e->c_entry); free(e->c_meta); free(e->c_keys); free(e->c_ids);
    e->c_hash = NULL; e->c_entry = NULL; e->c_meta = NULL; e->c_keys = NULL; e->c_ids = NULL;
    e->c_cap = e->c_used = e->c_meta_n = e->c_meta_cap = 0;
    e->c_keys_n = e->c_keys_cap = e->c_ids_n = e->c_ids_cap = 0;
}

static void Encoder_dealloc(Encoder *e) {
    if (e->tbl.obj) PyBuffer_Release(&e->tbl);
    pm_free(&e->merges);
    enc_cache_clear(e);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 1024;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) { PyErr_NoMemory(); return -1; }
    *p = q;
    *cap = c;
    return 0;
}

static int get_u32_buffer(PyObject *obj, Py_buffer *view, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_FORMAT) < 0) return -1;
    if (view->itemsize != 4) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "%s must be a buffer of 32-bit integers", what);
        return -1;
    }
    return 0;
}

/* Encoder(table, preset, byte_ids[256], merge_a, merge_b, merge_new): rank = index */
static int Encoder_init(Encoder *e, PyObject *args, PyObject *kw) {
    PyObject *table, *byte_ids, *ma, *mb, *mn;
    int preset;
    if (!PyArg_ParseTuple(args, "OiOOOO", &table, &preset, &byte_ids, &ma, &mb, &mn)) return -1;
    if (preset < 0 || preset > P_WHITESPACE) {
        PyErr_SetString(PyExc_ValueError, "unknown pre-tokenizer preset");
        return -1;
    }
    if (get_table(table, &e->tbl) < 0) return -1;
    e->preset = preset;
    Py_buffer vb, va, vbb, vn;
    if (get_u32_buffer(byte_ids, &vb, "byte_ids") < 0) return -1;
    if (vb.len != 256 * 4) {
        PyBuffer_Release(&vb);
        PyErr_SetString(PyExc_ValueError, "byte_ids must hold 256 ids");
        return -1;
    }
    memcpy(e->byte_id, vb.buf, sizeof(e->byte_id));
    PyBuffer_Release(&vb);
    if (get_u32_buffer(ma, &va, "merge_a") < 0) return -1;
    if (get_u32_buffer(mb, &vbb, "merge_b") < 0) { PyBuffer_Release(&va); return -1; }
    if (get_u32_buffer(mn, &vn, "merge_new") < 0) { PyBuffer_Release(&va); PyBuffer_Release(&vbb); return -1; }
    size_t n = va.len / 4;
    int rc = 0;
    if ((size_t)vbb.len / 4 != n || (size_t)vn.len / 4 != n) {
        PyErr_SetString(PyExc_ValueError, "merge arrays differ in length");
        rc = -1;
    } else if (pm_init(&e->merges, n + 16) < 0) {
        rc = -1;
    } else {
        const uint32_t *a = va.buf, *b = vbb.buf, *nw = vn.buf;
        for (size_t r = 0; r < n; r++) {
            int64_t *slot = pm_slot(&e->merges, PAIR(a[r], b[r]));
            if (!slot) { rc = -1; break; }
            /* a pair listed twice keeps its last rank, as HF's BPE model does */
            *slot = ((int64_t)(r + 1) << 32) | nw[r];
        }
    }
    PyBuffer_Release(&va);
    PyBuffer_Release(&vbb);
    PyBuffer_Release(&vn);
    return rc;
}

/* BPE over one piece's symbols, in place; returns the new length.  Lowest rank first,
 * leftmost among equals; ranks of adjacent pairs are kept so each step is one scan. */
static size_t bpe_merge(const PairMap *merges, uint32_t *sym, uint64_t *rank, size_t n) {
    const uint64_t NONE = UINT64_MAX;
    for (size_t i = 0; i + 1 < n; i++) {
        const int64_t *v = pm_find(merges, PAIR(sym[i], sym[i + 1]));
        rank[i] = v ? (uint64_t)*v : NONE;
    }
    while (n > 1) {
        uint64_t best = NONE;
        size_t bi = 0;
        for (size_t i = 0; i + 1 < n; i++)
            if (rank[i] < best) { best = rank[i]; bi = i; }
        if (best == NONE) break;
        sym[bi] = (uint32_t)(best & 0xFFFFFFFFu);
        memmove(sym + bi + 1, sym + bi + 2, (n - bi - 2) * sizeof(uint32_t));
        memmove(rank + bi + 1, rank + bi + 2, (n > bi + 3 ? n - bi - 3 : 0) * sizeof(uint64_t));
        n--;
        if (bi + 1 < n) {
            const int64_t *v = pm_find(merges, PAIR(sym[bi], sym[bi + 1]));
            rank[bi] = v ? (uint64_t)*v : NONE;
        }
        if (bi > 0) {
            const int64_t *v = pm_find(merges, PAIR(sym[bi - 1], sym[bi]));
            rank[bi - 1] = v ? (uint64_t)*v : NONE;
        }
    }
    return n;
}

/* The same result for long pieces in O(n log n): a queue of (rank, position) over a
 * linked list of symbols; entries made stale by an earlier merge are skipped. */
typedef struct {
    uint64_t rank; /* rank << 32 | new id, as stored in the merge map */
    size_t pos;
    uint32_t left, right;
} PieceMerge;

static inline int pm_before(const PieceMerge *x, const PieceMerge *y) {
    uint64_t rx = x->rank >> 32, ry = y->rank >> 32;
    return rx != ry ? rx < ry : x->pos < y->pos;
}

static void pq_push(PieceMerge *q, size_t *n, PieceMerge m) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!pm_before(&m, &q[p])) break;
        q[i] = q[p];
        i = p;
    }
    q[i] = m;
}

static PieceMerge pq_pop(PieceMerge *q, size_t *n) {
    PieceMerge top = q[0], t = q[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && pm_before(&q[c + 1], &q[c])) c++;
        if (!pm_before(&q[c], &t)) break;
        q[i] = q[c];
        i = c;
    }
    if (*n) q[i] = t;
    return top;
}

static int bpe_merge_long(const PairMap *merges, uint32_t *sym, size_t *np) {
    size_t n = *np;
    /* each merge adds at most two entries: n - 1 at first, 2 per merge after */
    PieceMerge *q = malloc(3 * n * sizeof(PieceMerge));
    size_t *next = malloc(n * sizeof(size_t)), *prev = malloc(n * sizeof(size_t));
    uint8_t *dead = calloc(n, 1);
    if (!q || !next || !prev || !dead) {
        free(q); free(next); free(prev); free(dead);
        PyErr_NoMemory();
        return -1;
    }
    const size_t END = (size_t)-1;
    size_t qn = 0;
    for (size_t i = 0; i < n; i++) {
        next[i] = i + 1 < n ? i + 1 : END;
        prev[i] = i ? i - 1 : END;
        if (i + 1 < n) {
            const int64_t *v = pm_find(merges, PAIR(sym[i], sym[i + 1]));
            if (v) pq_push(q, &qn, (PieceMerge){(uint64_t)*v, i, sym[i], sym[i + 1]});
        }
    }
    while (qn) {
        PieceMerge m = pq_pop(q, &qn);
        size_t j = next[m.pos];
        if (dead[m.pos] || j == END || sym[m.pos] != m.left || sym[j] != m.right) continue;
        sym[m.pos] = (uint32_t)(m.rank & 0xFFFFFFFFu);
        dead[j] = 1;
        next[m.pos] = next[j];
        if (next[j] != END) prev[next[j]] = m.pos;
        if (prev[m.pos] != END) {
            size_t p = prev[m.pos];
            const int64_t *v = pm_find(merges, PAIR(sym[p], sym[m.pos]));
            if (v) pq_push(q, &qn, (PieceMerge){(uint64_t)*v, p, sym[p], sym[m.pos]});
        }
        if (next[m.pos] != END) {
            size_t k = next[m.pos];
            const int64_t *v = pm_find(merges, PAIR(sym[m.pos], sym[k]));
            if (v) pq_push(q, &qn, (PieceMerge){(uint64_t)*v, m.pos, sym[m.pos], sym[k]});
        }
    }
    size_t out = 0;
    for (size_t i = 0; i < n; i++)
        if (!dead[i]) sym[out++] = sym[i];
    *np = out;
    free(q); free(next); free(prev); free(dead);
    return 0;
}

#define LONG_PIECE 256

static inline uint64_t fnv1a(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h ? h : 1;
}

#define CACHE_MAX_ENTRIES (1u << 20)

static int cache_rehash(Encoder *e, size_t cap) {
    uint64_t *hs = calloc(cap, sizeof(uint64_t));
    uint32_t *en = malloc(cap * sizeof(uint32_t));
    if (!hs || !en) { free(hs); free(en); PyErr_NoMemory(); return -1; }
    for (size_t i = 0; i < e->c_cap; i++) {
        if (!e->c_hash[i]) continue;
        size_t h = e->c_hash[i] & (cap - 1);
        while (hs[h]) h = (h + 1) & (cap - 1);
        hs[h] = e->c_hash[i];
        en[h] = e->c_entry[i];
    }
    free(e->c_hash);
    free(e->c_entry);
    e->c_hash = hs;
    e->c_entry = en;
    e->c_cap = cap;
    return 0;
}

typedef struct {
    uint32_t *v;
    size_t n, cap;
} U32Vec;

static int encode_piece(Encoder *e, const uint8_t *utf8, size_t len, U32Vec *out,
                        uint32_t **sym, uint64_t **rank, size_t *scap) {
    uint64_t h = fnv1a(utf8, len);
    if (e->c_cap) {
        size_t i = h & (e->c_cap - 1);
        while (e->c_hash[i]) {
            if (e->c_hash[i] == h) {
                const uint32_t *m = e->c_meta + 4 * (size_t)e->c_entry[i];
                if (m[1] == len && memcmp(e->c_keys + m[0], utf8, len) == 0) {
                    if (grow((void **)&out->v, &out->cap, out->n + m[3], 4) < 0) return -1;
                    memcpy(out->v + out->n, e->c_ids + m[2], m[3] * sizeof(uint32_t));
                    out->n += m[3];
                    return 0;
                }
            }
            i = (i + 1) & (e->c_cap - 1);
        }
    }
    if (len > *scap) {
        free(*sym);
        free(*rank);
        *scap = len * 2;
        *sym = malloc(*scap * sizeof(uint32_t));
        *rank = malloc(*scap * sizeof(uint64_t));
        if (!*sym || !*rank) { PyErr_NoMemory(); return -1; }
    }
    /* a byte without a token is left out, as HF's BPE model does without an unk token */
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (e->byte_id[utf8[i]] != NO_TOKEN) (*sym)[n++] = e->byte_id[utf8[i]];
    if (n > LONG_PIECE) {
        if (bpe_merge_long(&e->merges, *sym, &n) < 0) return -1;
    } else {
        n = bpe_merge(&e->merges, *sym, *rank, n);
    }
    if (grow((void **)&out->v, &out->cap, out->n + n, 4) < 0) return -1;
    memcpy(out->v + out->n, *sym, n * sizeof(uint32_t));
    out->n += n;
    /* remember it */
    if (len > LONG_PIECE) return 0; /* long pieces are rare: not worth keeping */
    if (e->c_meta_n >= CACHE_MAX_ENTRIES) enc_cache_clear(e);
    if ((e->c_used + 1) * 2 > e->c_cap && cache_rehash(e, e->c_cap ? e->c_cap * 2 : 4096) < 0) return -1;
    if (grow((void **)&e->c_meta, &e->c_meta_cap, 4 * (e->c_meta_n + 1), 4) < 0) return -1;
    if (grow((void **)&e->c_keys, &e->c_keys_cap, e->c_keys_n + len, 1) < 0) return -1;
    if (grow((void **)&e->c_ids, &e->c_ids_cap, e->c_ids_n + n, 4) < 0) return -1;
    uint32_t *m = e->c_meta + 4 * e->c_meta_n;
    m[0] = (uint32_t)e->c_keys_n;
    m[1] = (uint32_t)len;
    m[2] = (uint32_t)e->c_ids_n;
    m[3] = (uint32_t)n;
    memcpy(e->c_keys + e->c_keys_n, utf8, len);
    memcpy(e->c_ids + e->c_ids_n, *sym, n * sizeof(uint32_t));
    e->c_keys_n += len;
    e->c_ids_n += n;
    size_t i = h & (e->c_cap - 1);
    while (e->c_hash[i]) i = (i + 1) & (e->c_cap - 1);
    e->c_hash[i] = h;
    e->c_entry[i] = (uint32_t)e->c_meta_n++;
    e->c_used++;
    return 0;
}

static size_t put_utf8(uint8_t *p, Py_UCS4 c) {
    if (c < 0x80) { p[0] = (uint8_t)c; return 1; }
    if (c < 0x800) { p[0] = 0xC0 | (c >> 6); p[1] = 0x80 | (c & 0x3F); return 2; }
    if (c < 0x10000) {
        p[0] = 0xE0 | (c >> 12); p[1] = 0x80 | ((c >> 6) & 0x3F); p[2] = 0x80 | (c & 0x3F);
        return 3;
    }
    p[0] = 0xF0 | (c >> 18); p[1] = 0x80 | ((c >> 12) & 0x3F);
    p[2] = 0x80 | ((c >> 6) & 0x3F); p[3] = 0x80 | (c & 0x3F);
    return 4;
}

typedef struct {
    Encoder *e;
    const Src *s;
    U32Vec out;
    uint8_t *buf; /* the piece in UTF-8 */
    size_t bufcap, scap;
    uint32_t *sym;
    uint64_t *rank;
} EncodeCtx;

static int emit_encode(void *ctx, Py_ssize_t a, Py_ssize_t b) {
    EncodeCtx *c = ctx;
    if (grow((void **)&c->buf, &c->bufcap, 4 * (size_t)(b - a), 1) < 0) return -1;
    size_t len = 0;
    for (Py_ssize_t i = a; i < b; i++) len += put_utf8(c->buf + len, CP(c->s, i));
    return encode_piece(c->e, c->buf, len, &c->out, &c->sym, &c->rank, &c->scap);
}

static PyObject *Encoder_encode(Encoder *e, PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "text must be str");
        return NULL;
    }
    Src s = {PyUnicode_KIND(text), PyUnicode_DATA(text), e->tbl.buf};
    EncodeCtx c = {e, &s, {0}, NULL, 0, 0, NULL, NULL};
    Sink sink = {emit_encode, &c};
    PyObject *result = NULL;
    if (split_text(&s, PyUnicode_GET_LENGTH(text), e->preset, &sink) == 0) {
        result = PyList_New((Py_ssize_t)c.out.n);
        for (size_t i = 0; result && i < c.out.n; i++) {
            PyObject *v = PyLong_FromUnsignedLong(c.out.v[i]);
            if (!v) { Py_CLEAR(result); break; }
            PyList_SET_ITEM(result, (Py_ssize_t)i, v);
        }
    }
    free(c.out.v);
    free(c.buf);
    free(c.sym);
    free(c.rank);
    return result;
}

static PyMethodDef Encoder_methods[] = {
    {"encode", (PyCFunction)Encoder_encode, METH_O, "encode(text) -> list of ids (no special tokens)"},
    {NULL}};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tokenizers_impl._bpe.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
    .tp_doc = "Byte-level BPE encoder with a piece cache",
};

/* ------------------------------------------------------------------ trainer */

/* A queue entry: a pair, its count when queued, and the words where it was seen. */
typedef struct {
    int64_t count;
    uint32_t a, b;
    int32_t *pos;
    int32_t npos, cappos;
} Entry;

typedef struct {
    Entry *v;
    size_t n, cap;
} Heap;

/* highest count first, then the smallest pair */
static inline int entry_before(const Entry *x, const Entry *y) {
    if (x->count != y->count) return x->count > y->count;
    if (x->a != y->a) return x->a < y->a;
    return x->b < y->b;
}

static void heap_down(Heap *h, size_t i) {
    Entry t = h->v[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && entry_before(&h->v[c + 1], &h->v[c])) c++;
        if (!entry_before(&h->v[c], &t)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    h->v[i] = t;
}

static int heap_push(Heap *h, Entry e) {
    if (grow((void **)&h->v, &h->cap, h->n + 1, sizeof(Entry)) < 0) return -1;
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!entry_before(&e, &h->v[p])) break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = e;
    return 0;
}

static Entry heap_pop(Heap *h) {
    Entry top = h->v[0];
    h->v[0] = h->v[--h->n];
    if (h->n) heap_down(h, 0);
    return top;
}

/* pair -> list of words, used while collecting where new pairs appear */
typedef struct {
    PairMap index; /* pair -> slot in entries */
    Entry *entries;
    size_t n, cap;
    size_t *scratch;
    size_t scratch_cap;
} WhereMap;

static int wm_add(WhereMap *w, uint32_t a, uint32_t b, int32_t word) {
    int64_t *slot = pm_slot(&w->index, PAIR(a, b));
    if (!slot) return -1;
    Entry *e;
    if (*slot == 0) {
        if (grow((void **)&w->entries, &w->cap, w->n + 1, sizeof(Entry)) < 0) return -1;
        e = &w->entries[w->n++];
        *slot = (int64_t)w->n;
        e->a = a; e->b = b; e->count = 0; e->pos = NULL; e->npos = 0; e->cappos = 0;
    } else {
        e = &w->entries[*slot - 1];
    }
    if (e->npos && e->pos[e->npos - 1] == word) return 0; /* words arrive grouped */
    if (e->npos == e->cappos) {
        int32_t c = e->cappos ? e->cappos * 2 : 4;
        int32_t *p = realloc(e->pos, (size_t)c * sizeof(int32_t));
        if (!p) { PyErr_NoMemory(); return -1; }
        e->pos = p;
        e->cappos = c;
    }
    e->pos[e->npos++] = word;
    return 0;
}

/* move every collected pair with a positive count into the queue */
static int wm_flush(WhereMap *w, const PairMap *counts, Heap *heap) {
    int rc = 0;
    for (size_t i = 0; i < w->n; i++) {
        Entry e = w->entries[i];
        const int64_t *c = pm_find(counts, PAIR(e.a, e.b));
        e.count = c ? *c : 0;
        if (rc == 0 && e.count > 0) {
            if (heap_push(heap, e) < 0) { rc = -1; free(e.pos); }
        } else {
            free(e.pos);
        }
    }
    /* empty the index by visiting only the used slots: find them all, then clear */
    if (rc == 0 && grow((void **)&w->scratch, &w->scratch_cap, w->n, sizeof(size_t)) < 0) rc = -1;
    if (rc == 0) {
        size_t mask = w->index.cap - 1;
        for (size_t i = 0; i < w->n; i++) {
            uint64_t key = PAIR(w->entries[i].a, w->entries[i].b);
            size_t h = pair_hash(key, mask);
            while (w->index.keys[h] != key) h = (h + 1) & mask;
            w->scratch[i] = h;
        }
        for (size_t i = 0; i < w->n; i++) w->index.keys[w->scratch[i]] = EMPTY_KEY;
    } else {
        memset(w->index.keys, 0xFF, w->index.cap * sizeof(uint64_t));
    }
    w->n = 0;
    w->index.used = 0;
    return rc;
}

typedef struct {
    PairMap counts;
    WhereMap where;
    int32_t *sym;     /* all words' symbols */
    int64_t *start;   /* word i starts at sym + start[i] */
    int32_t *len;     /* current length of word i */
    const int64_t *wcount;
} Trainer;

static inline int change(Trainer *t, int32_t word, uint32_t a, uint32_t b, int delta) {
    int64_t *c = pm_slot(&t->counts, PAIR(a, b));
    if (!c) return -1;
    *c += delta * t->wcount[word];
    if (delta > 0) return wm_add(&t->where, a, b, word);
    return 0;
}

/* replace every (a, b) of a word, left to right, by n; report the pairs that change */
static int merge_word(Trainer *t, int32_t w, uint32_t a, uint32_t b, uint32_t n) {
    int32_t *s = t->sym + t->start[w];
    int32_t len = t->len[w];
    for (int32_t i = 0; i < len; i++) {
        if ((uint32_t)s[i] != a || i + 1 >= len || (uint32_t)s[i + 1] != b) continue;
        if (i > 0) {
            if (change(t, w, (uint32_t)s[i - 1], a, -1) < 0) return -1;
            if (change(t, w, (uint32_t)s[i - 1], n, 1) < 0) return -1;
        }
        s[i] = (int32_t)n;
        memmove(s + i + 1, s + i + 2, (size_t)(len - i - 2) * sizeof(int32_t));
        len--;
        if (i < len - 1) {
            if (change(t, w, b, (uint32_t)s[i + 1], -1) < 0) return -1;
            if (change(t, w, n, (uint32_t)s[i + 1], 1) < 0) return -1;
        }
    }
    t->len[w] = len;
    return 0;
}

/* train(symbols, starts, counts, id_to_token, token_to_id, vocab_size, min_frequency,
 *       progress) -> list of (a, b, new_id)
 * symbols: int32 ids of all words back to back; starts: int64 offsets (n_words + 1);
 * counts: int64 per word.  id_to_token (list) and token_to_id (dict) grow as tokens are
 * made; a merge whose string already exists reuses that id, as HF's BpeTrainer does. */
static PyObject *py_train(PyObject *self, PyObject *args) {
    PyObject *osym, *ostart, *ocount, *id_to_token, *token_to_id, *progress;
    Py_ssize_t vocab_size;
    long long min_frequency;
    if (!PyArg_ParseTuple(args, "OOOO!O!nLO", &osym, &ostart, &ocount, &PyList_Type, &id_to_token,
                          &PyDict_Type, &token_to_id, &vocab_size, &min_frequency, &progress))
        return NULL;
    Py_buffer vs, vst, vc;
    if (PyObject_GetBuffer(osym, &vs, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) return NULL;
    if (PyObject_GetBuffer(ostart, &vst, PyBUF_FORMAT) < 0) { PyBuffer_Release(&vs); return NULL; }
    if (PyObject_GetBuffer(ocount, &vc, PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&vs); PyBuffer_Release(&vst); return NULL;
    }
    PyObject *merges = NULL;
    Trainer t = {0};
    Heap heap = {0};
    Py_ssize_t nwords = vc.len / 8;
    if (vs.itemsize != 4 || vst.itemsize != 8 || vc.itemsize != 8 || vst.len / 8 != nwords + 1) {
        PyErr_SetString(PyExc_ValueError, "train: expected int32 symbols, int64 starts and counts");
        goto done;
    }
    t.sym = vs.buf;
    t.start = vst.buf;
    t.wcount = vc.buf;
    t.len = malloc((size_t)(nwords + 1) * sizeof(int32_t));
    if (!t.len) { PyErr_NoMemory(); goto done; }
    if (pm_init(&t.counts, 1 << 16) < 0 || pm_init(&t.where.index, 1 << 16) < 0) goto done;

    /* count every adjacent pair and where it occurs */
    for (Py_ssize_t w = 0; w < nwords; w++) {
        t.len[w] = (int32_t)(t.start[w + 1] - t.start[w]);
        const int32_t *s = t.sym + t.start[w];
        for (int32_t i = 0; i + 1 < t.len[w]; i++)
            if (change(&t, (int32_t)w, (uint32_t)s[i], (uint32_t)s[i + 1], 1) < 0) goto done;
    }
    if (wm_flush(&t.where, &t.counts, &heap) < 0) goto done;

    merges = PyList_New(0);
    if (!merges) goto done;
    Py_ssize_t made = 0;
    while (PyList_GET_SIZE(id_to_token) < vocab_size && heap.n) {
        Entry top = heap_pop(&heap);
        const int64_t *now = pm_find(&t.counts, PAIR(top.a, top.b));
        int64_t cur = now ? *now : 0;
        if (top.count != cur) {
            top.count = cur;
            if (heap_push(&heap, top) < 0) { free(top.pos); Py_CLEAR(merges); goto done; }
            continue;
        }
        if (top.count < 1 || min_frequency > top.count) { free(top.pos); break; }
        if (top.a >= (uint32_t)PyList_GET_SIZE(id_to_token) || top.b >= (uint32_t)PyList_GET_SIZE(id_to_token)) {
            free(top.pos);
            PyErr_SetString(PyExc_ValueError, "train: symbol id outside id_to_token");
            Py_CLEAR(merges);
            goto done;
        }
        PyObject *tok = PyUnicode_Concat(PyList_GET_ITEM(id_to_token, top.a), PyList_GET_ITEM(id_to_token, top.b));
        if (!tok) { free(top.pos); Py_CLEAR(merges); goto done; }
        PyObject *known = PyDict_GetItemWithError(token_to_id, tok);
        long new_id;
        if (known) {
            new_id = PyLong_AsLong(known);
        } else if (PyErr_Occurred()) {
            new_id = -1;
        } else {
            new_id = (long)PyList_GET_SIZE(id_to_token);
            PyObject *idobj = PyLong_FromLong(new_id);
            if (!idobj || PyList_Append(id_to_token, tok) < 0 || PyDict_SetItem(token_to_id, tok, idobj) < 0)
                new_id = -1;
            Py_XDECREF(idobj);
        }
        Py_DECREF(tok);
        PyObject *rec = new_id < 0 ? NULL : Py_BuildValue("(IIl)", top.a, top.b, new_id);
        if (!rec || PyList_Append(merges, rec) < 0) {
            Py_XDECREF(rec); free(top.pos); Py_CLEAR(merges); goto done;
        }
        Py_DECREF(rec);
        for (int32_t k = 0; k < top.npos; k++) {
            if (merge_word(&t, top.pos[k], top.a, top.b, (uint32_t)new_id) < 0) {
                free(top.pos); Py_CLEAR(merges); goto done;
            }
        }
        free(top.pos);
        if (wm_flush(&t.where, &t.counts, &heap) < 0) { Py_CLEAR(merges); goto done; }
        made++;
        if (progress != Py_None && made % 256 == 0) {
            PyObject *r = PyObject_CallFunction(progress, "n", made);
            if (!r) { Py_CLEAR(merges); goto done; }
            Py_DECREF(r);
        }
    }
done:
    for (size_t i = 0; i < heap.n; i++) free(heap.v[i].pos);
    free(heap.v);
    for (size_t i = 0; i < t.where.n; i++) free(t.where.entries[i].pos);
    free(t.where.entries);
    free(t.where.scratch);
    pm_free(&t.where.index);
    pm_free(&t.counts);
    free(t.len);
    PyBuffer_Release(&vs);
    PyBuffer_Release(&vst);
    PyBuffer_Release(&vc);
    return merges;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"pretokenize", py_pretokenize, METH_VARARGS, "pretokenize(text, table, preset) -> list of pieces"},
    {"count_words", py_count_words, METH_VARARGS, "count_words(text, table, preset, counts): counts[piece] += 1"},
    {"train", py_train, METH_VARARGS, "train(...) -> merges; see merges.py"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "_bpe", "BPE hot loops", -1, methods};

PyMODINIT_FUNC PyInit__bpe(void) {
    if (PyType_Ready(&EncoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&EncoderType);
    if (PyModule_AddObject(m, "Encoder", (PyObject *)&EncoderType) < 0) {
        Py_DECREF(&EncoderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
