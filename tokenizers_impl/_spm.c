/* Hot loops of tokenizers_impl/sentencepiece.py (optional; the Python methods there are
 * the reference and give the same ids):
 *   Trie(keys, values)                 every prefix of every key in one hash table, so
 *                                      that a walk along the text stops where no key
 *                                      continues (value -1: only a prefix)
 *   apply_rules(rules, users, text)    the charsmap replacement of spm_normalize
 *   viterbi(...)                       sentencepiece 0.2.3's optimized Unigram Viterbi
 *   bpe(...)                           sentencepiece's score-ordered BPE joins
 * Texts are UTF-8 bytes; positions are byte offsets, moved one character at a time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdatomic.h>
#include <stdint.h>
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <unistd.h>
#define SPM_THREADS 1
#endif
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ hash trie */
/* A byte trie whose nodes live in one open-addressing table keyed by (parent, byte):
 * a child is found in O(1) and checked exactly by its parent and byte, no key compare. */
typedef struct {
    int32_t parent;  /* -1: the root */
    int32_t value;   /* the key's value, -1 when only a prefix of longer keys */
    uint32_t byte1;  /* byte + 1; 0 marks an empty slot */
} Node;

typedef struct {
    PyObject_HEAD
    Node *slots;
    size_t mask;
    Py_ssize_t max_len;
    int32_t root[256];  /* children of the root, directly */
    uint8_t pairs[8192];  /* bit (b0 << 8 | b1): some key starts with bytes b0 b1 */
} Trie;

static inline size_t slot_of(int32_t parent, unsigned b, size_t mask) {
    uint64_t x = ((uint64_t)(uint32_t)parent << 8 | b) * 0x9E3779B97F4A7C15ULL;
    return (size_t)(x >> 32) & mask;
}

static inline int has_pair(const Trie *t, unsigned char b0, unsigned char b1) {
    unsigned k = (unsigned)b0 << 8 | b1;
    return t->pairs[k >> 3] >> (k & 7) & 1;
}

static inline int32_t child(const Trie *t, int32_t node, unsigned char b) {
    if (node < 0) return t->root[b];
    size_t i = slot_of(node, b, t->mask);
    for (;;) {
        const Node *e = &t->slots[i];
        if (e->byte1 == 0) return -1;
        if (e->parent == node && e->byte1 == (uint32_t)b + 1) return (int32_t)i;
        i = (i + 1) & t->mask;
    }
}

/* The node of key s[0:len], or -1. */
static inline int32_t walk(const Trie *t, const char *s, Py_ssize_t len) {
    if (len > t->max_len) return -1;
    int32_t node = -1;
    for (Py_ssize_t j = 0; j < len; j++) {
        node = child(t, node, (unsigned char)s[j]);
        if (node < 0) return -1;
    }
    return node;
}

static void Trie_dealloc(Trie *t) {
    free(t->slots);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static int Trie_init(Trie *t, PyObject *args, PyObject *kw) {
    PyObject *keys, *values;
    if (t->slots != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Trie is initialized once");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &keys, &PyList_Type, &values)) return -1;
    Py_ssize_t n = PyList_GET_SIZE(keys);
    if (PyList_GET_SIZE(values) != n) {
        PyErr_SetString(PyExc_ValueError, "keys and values differ in length");
        return -1;
    }
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyList_GET_ITEM(keys, i);
        if (!PyBytes_Check(k) || PyBytes_GET_SIZE(k) == 0) {
            PyErr_SetString(PyExc_TypeError, "keys must be non-empty bytes");
            return -1;
        }
        total += (size_t)PyBytes_GET_SIZE(k);
    }
    /* built twice: first in a table sized by the key bytes, then, knowing the number of
     * nodes, in one twice that size (a small table stays in cache) */
    size_t cap = 16, nodes = 0;
    while (cap < 2 * total + 16) cap <<= 1;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) {
            free(t->slots);
            cap = 16;
            while (cap < 2 * nodes + 16) cap <<= 1;
        }
        t->slots = calloc(cap, sizeof(Node));
        if (!t->slots) {
            PyErr_NoMemory();
            return -1;
        }
        t->mask = cap - 1;
        t->max_len = 0;
        nodes = 0;
        memset(t->pairs, 0, sizeof t->pairs);
        for (int b = 0; b < 256; b++) t->root[b] = -1;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *k = PyList_GET_ITEM(keys, i);
            long v = PyLong_AsLong(PyList_GET_ITEM(values, i));
            if (v == -1 && PyErr_Occurred()) return -1;
            const unsigned char *key = (const unsigned char *)PyBytes_AS_STRING(k);
            Py_ssize_t len = PyBytes_GET_SIZE(k);
            if (len > t->max_len) t->max_len = len;
            if (len > 1) t->pairs[((unsigned)key[0] << 8 | key[1]) >> 3] |= 1 << (key[1] & 7);
            int32_t node = -1;
            for (Py_ssize_t j = 0; j < len; j++) {
                int32_t next = child(t, node, key[j]);
                if (next < 0) {
                    size_t s = slot_of(node, key[j], t->mask);
                    while (t->slots[s].byte1 != 0) s = (s + 1) & t->mask;
                    t->slots[s] = (Node){node, -1, (uint32_t)key[j] + 1};
                    next = (int32_t)s;
                    nodes++;
                    if (node < 0) t->root[key[j]] = next;
                }
                node = next;
            }
            if (t->slots[node].value < 0) t->slots[node].value = (int32_t)v;  /* the first key wins */
        }
    }
    return 0;
}

static PyTypeObject TrieType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tokenizers_impl._spm.Trie",
    .tp_basicsize = sizeof(Trie),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Trie_init,
    .tp_dealloc = (destructor)Trie_dealloc,
    .tp_doc = "Every prefix of every key, hashed; values of keys, -1 for prefixes only.",
};

static inline Py_ssize_t char_len(const unsigned char *s, Py_ssize_t left) {
    unsigned char c = s[0];
    Py_ssize_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    return n < left ? n : left;
}

/* The longest key that starts at s (its value, and its length in *len); -1 if none. */
static int32_t longest(const Trie *t, const char *s, Py_ssize_t left, Py_ssize_t *len) {
    int32_t best = -1, node = -1;
    Py_ssize_t lim = left < t->max_len ? left : t->max_len;
    for (Py_ssize_t j = 0; j < lim; j++) {
        if (j == 1 && !has_pair(t, (unsigned char)s[0], (unsigned char)s[1])) break;
        node = child(t, node, (unsigned char)s[j]);
        if (node < 0) break;
        if (t->slots[node].value >= 0) {
            best = t->slots[node].value;
            *len = j + 1;
        }
    }
    return best;
}

/* ------------------------------------------------------------------ growable buffers */
typedef struct { char *p; size_t n, cap; } Buf;

static int buf_put(Buf *b, const char *s, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

/* apply_rules(rules: Trie, replacements: list[bytes], users: Trie | None, text: bytes) -> bytes */
static PyObject *apply_rules(PyObject *self, PyObject *args) {
    Trie *rules;
    PyObject *repl, *users;
    const char *s;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O!O!Oy#", &TrieType, &rules, &PyList_Type, &repl, &users, &s, &n)) return NULL;
    Trie *ut = users == Py_None ? NULL : (Trie *)users;
    Buf out = {0};
    Py_ssize_t i = 0, run = 0;  /* bytes [run, i) are copied unchanged */
    while (i < n) {
        Py_ssize_t len = 0;
        if (ut != NULL && longest(ut, s + i, n - i, &len) >= 0) {
            i += len;  /* a user-defined piece stays as it is */
            continue;
        }
        int32_t r = longest(rules, s + i, n - i, &len);
        if (r >= 0 && r < PyList_GET_SIZE(repl)) {
            PyObject *rb = PyList_GET_ITEM(repl, r);
            if (buf_put(&out, s + run, (size_t)(i - run)) < 0 ||
                buf_put(&out, PyBytes_AS_STRING(rb), (size_t)PyBytes_GET_SIZE(rb)) < 0) {
                free(out.p);
                return PyErr_NoMemory();
            }
            i += len;
            run = i;
            continue;
        }
        i += char_len((const unsigned char *)s + i, n - i);
    }
    if (buf_put(&out, s + run, (size_t)(n - run)) < 0) {
        free(out.p);
        return PyErr_NoMemory();
    }
    PyObject *res = PyBytes_FromStringAndSize(out.p ? out.p : "", (Py_ssize_t)out.n);
    free(out.p);
    return res;
}

/* ------------------------------------------------------------------ ids out */
/* Ids go into a C buffer (so that the segmenters run without the GIL), then a list. */
typedef struct {
    int32_t *p;
    size_t n, cap;
    int unk_id, byte_fallback, prev_unk;
    const int32_t *byte_ids;
} Ids;

static int ids_push(Ids *o, int32_t v) {
    if (o->n == o->cap) {
        size_t cap = o->cap ? 2 * o->cap : 64;
        int32_t *p = realloc(o->p, cap * sizeof(int32_t));
        if (!p) return -1;
        o->p = p;
        o->cap = cap;
    }
    o->p[o->n++] = v;
    return 0;
}

static int ids_add(Ids *o, int id, const char *piece, Py_ssize_t len) {
    int is_unk = id == o->unk_id;
    if (is_unk && o->byte_fallback) {
        for (Py_ssize_t k = 0; k < len; k++)
            if (ids_push(o, o->byte_ids[(uint8_t)piece[k]]) < 0) return -1;
    } else if (!(is_unk && o->prev_unk)) {  /* a run of unknowns is one unknown id */
        if (ids_push(o, id) < 0) return -1;
    }
    o->prev_unk = is_unk;
    return 0;
}

static PyObject *ids_list(const Ids *o) {
    PyObject *list = PyList_New((Py_ssize_t)o->n);
    for (size_t i = 0; list && i < o->n; i++) {
        PyObject *v = PyLong_FromLong(o->p[i]);
        if (!v) { Py_CLEAR(list); break; }
        PyList_SET_ITEM(list, (Py_ssize_t)i, v);
    }
    return list;
}

static int parse_bytes_ids(PyObject *obj, Py_buffer *view, Py_ssize_t want) {
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) return -1;
    if (view->len != want) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "table of the wrong size");
        return -1;
    }
    return 0;
}

/* sentencepiece 0.2.3's optimized Unigram Viterbi over s[0:n]; ids appended to out.
 * scores: float32 per id (user-defined pieces carry their bonus). */
static int viterbi_core(const Trie *t, const float *scores, Py_ssize_t n_scores, int unk_id, float unk_score,
                        Ids *out, const char *s, Py_ssize_t n) {
    float *best = calloc((size_t)n + 1, sizeof(float));
    int32_t *starts = malloc(((size_t)n + 1) * sizeof(int32_t));
    int32_t *ids = malloc(((size_t)n + 1) * sizeof(int32_t));
    if (!best || !starts || !ids) {
        free(best); free(starts); free(ids);
        return -1;
    }
    for (Py_ssize_t k = 0; k <= n; k++) starts[k] = -1;
    const float reset = 100000.0f;
    Py_ssize_t frontier = 0, i = 0;
    while (i < n) {
        float here = best[i];
        if (here < -reset || here > reset) {  /* sentencepiece rebases long sums to 0 */
            for (Py_ssize_t k = i; k <= frontier; k++)
                if (k == i || starts[k] != -1) best[k] -= here;
            here = 0.0f;
        }
        Py_ssize_t mb = char_len((const unsigned char *)s + i, n - i);
        int single = 0;
        int32_t node = -1;
        Py_ssize_t lim = n - i < t->max_len ? n - i : t->max_len;
        for (Py_ssize_t j = 0; j < lim; j++) {
            if (j == 1 && !has_pair(t, (unsigned char)s[i], (unsigned char)s[i + 1])) break;
            node = child(t, node, (unsigned char)s[i + j]);
            if (node < 0) break;
            int32_t value = t->slots[node].value;
            if (value < 0 || value >= n_scores) continue;
            Py_ssize_t end = i + j + 1;
            if (end > frontier) frontier = end;
            float cand = scores[value] + here;
            if (starts[end] == -1 || cand > best[end]) {
                best[end] = cand;
                starts[end] = (int32_t)i;
                ids[end] = value;
            }
            if (j + 1 == mb) single = 1;
        }
        if (!single) {
            Py_ssize_t end = i + mb;
            if (end > frontier) frontier = end;
            float cand = unk_score + here;
            if (starts[end] == -1 || cand > best[end]) {
                best[end] = cand;
                starts[end] = (int32_t)i;
                ids[end] = unk_id;
            }
        }
        i += mb;
    }
    /* the path, reversed in place: starts[] becomes the forward links */
    Py_ssize_t count = 0;
    for (Py_ssize_t j = n; j > 0; j = starts[j]) count++;
    int32_t *path = malloc(((size_t)count + 1) * sizeof(int32_t));
    int err = path == NULL;
    if (!err) {
        Py_ssize_t k = count;
        for (Py_ssize_t j = n; j > 0; j = starts[j]) path[--k] = (int32_t)j;
        for (k = 0; k < count && !err; k++) {
            Py_ssize_t end = path[k], start = starts[end];
            err = ids_add(out, ids[end], s + start, end - start) < 0;
        }
    }
    free(path); free(best); free(starts); free(ids);
    return err ? -1 : 0;
}

/* viterbi(trie, scores: bytes of float32 per id, unk_id, unk_score, byte_fallback,
 *         byte_ids: bytes of int32 x 256, text: bytes) -> list[int] */
static PyObject *viterbi(PyObject *self, PyObject *args) {
    Trie *t;
    PyObject *scores_obj, *bytes_obj;
    int unk_id, byte_fallback;
    float unk_score;
    const char *s;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O!OifpOy#", &TrieType, &t, &scores_obj, &unk_id, &unk_score, &byte_fallback,
                          &bytes_obj, &s, &n))
        return NULL;
    Py_buffer sv, bv;
    if (PyObject_GetBuffer(scores_obj, &sv, PyBUF_SIMPLE) < 0) return NULL;
    if (parse_bytes_ids(bytes_obj, &bv, 256 * 4) < 0) { PyBuffer_Release(&sv); return NULL; }
    Ids out = {NULL, 0, 0, unk_id, byte_fallback, 0, bv.buf};
    PyObject *list = viterbi_core(t, sv.buf, sv.len / 4, unk_id, unk_score, &out, s, n) < 0 ? PyErr_NoMemory()
                                                                                             : ids_list(&out);
    free(out.p);
    PyBuffer_Release(&sv); PyBuffer_Release(&bv);
    return list;
}

/* ------------------------------------------------------------------ BPE */
typedef struct { float score; int32_t left, right; uint32_t size; int32_t node; } Pair;

static inline int pair_before(const Pair *a, const Pair *b) {  /* a pops first */
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct { Pair *p; size_t n, cap; } Heap;

static int heap_push(Heap *h, Pair x) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 256;
        Pair *p = realloc(h->p, cap * sizeof(Pair));
        if (!p) return -1;
        h->p = p;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!pair_before(&x, &h->p[up])) break;
        h->p[i] = h->p[up];
        i = up;
    }
    h->p[i] = x;
    return 0;
}

static Pair heap_pop(Heap *h) {
    Pair top = h->p[0], last = h->p[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && pair_before(&h->p[c + 1], &h->p[c])) c++;
        if (!pair_before(&h->p[c], &last)) break;
        h->p[i] = h->p[c];
        i = c;
    }
    if (h->n) h->p[i] = last;
    return top;
}

typedef struct { int32_t start, len, prev, next, node; int frozen; } Sym;  /* node: its text's trie node */

/* sentencepiece's BPE over s[0:n]: characters (user-defined pieces whole and frozen),
 * the adjacent pair whose join is the best-scored piece joined first (leftmost on ties).
 * trie: the pieces joins may produce, no unused ones (those run in Python). */
static int bpe_core(const Trie *t, const float *scores, Py_ssize_t n_scores, const Trie *ut, int unk_id,
                    Ids *out, const char *s, Py_ssize_t n) {
    Sym *sym = malloc(((size_t)n + 1) * sizeof(Sym));
    Heap heap = {0};
    if (!sym) goto nomem;
    Py_ssize_t m = 0;
    for (Py_ssize_t i = 0; i < n;) {
        Py_ssize_t len = 0;
        int frozen = ut != NULL && longest(ut, s + i, n - i, &len) >= 0;
        if (!frozen) len = char_len((const unsigned char *)s + i, n - i);
        sym[m] = (Sym){(int32_t)i, (int32_t)len, (int32_t)m - 1, (int32_t)m + 1, walk(t, s + i, len), frozen};
        m++;
        i += len;
    }
    if (m) sym[m - 1].next = -1;
#define TRY_PAIR(L, R)                                                                            \
    do {                                                                                          \
        int32_t l_ = (L), r_ = (R);                                                               \
        if (l_ >= 0 && r_ >= 0 && !sym[l_].frozen && !sym[r_].frozen) {                            \
            Py_ssize_t size_ = sym[l_].len + sym[r_].len, id_ = -1;                               \
            int32_t node_ = sym[l_].node; /* the join continues the left symbol's trie path */    \
            const char *p_ = s + sym[r_].start;                                                   \
            if (size_ > t->max_len) node_ = -1;                                                   \
            for (Py_ssize_t q_ = 0; node_ >= 0 && q_ < sym[r_].len; q_++)                         \
                node_ = child(t, node_, (unsigned char)p_[q_]);                                   \
            if (node_ >= 0 && t->slots[node_].value >= 0 && t->slots[node_].value < n_scores)     \
                id_ = t->slots[node_].value;                                                      \
            if (id_ >= 0 && heap_push(&heap, (Pair){scores[id_], l_, r_, (uint32_t)size_, node_}) < 0) \
                goto nomem;                                                                       \
        }                                                                                         \
    } while (0)
    for (Py_ssize_t k = 1; k < m; k++) TRY_PAIR((int32_t)k - 1, (int32_t)k);
    while (heap.n) {
        Pair top = heap_pop(&heap);
        Sym *a = &sym[top.left], *b = &sym[top.right];
        if (a->len == 0 || b->len == 0 || (uint32_t)(a->len + b->len) != top.size) continue;
        a->len += b->len;
        a->node = top.node;
        b->len = 0;
        a->next = b->next;
        if (b->next >= 0) sym[b->next].prev = top.left;
        TRY_PAIR(a->prev, top.left);
        TRY_PAIR(top.left, a->next);
    }
#undef TRY_PAIR
    for (int32_t k = m ? 0 : -1; k != -1; k = sym[k].next) {
        const char *p = s + sym[k].start;
        int32_t node = sym[k].node, id = node >= 0 ? t->slots[node].value : -1;
        if (ids_add(out, id >= 0 ? id : unk_id, p, sym[k].len) < 0) goto fail;
    }
    free(sym); free(heap.p);
    return 0;
nomem:
fail:
    free(sym); free(heap.p);
    return -1;
}

/* bpe(trie, scores, users: Trie | None, unk_id, byte_fallback, byte_ids, text) -> list[int] */
static PyObject *bpe(PyObject *self, PyObject *args) {
    Trie *t;
    PyObject *scores_obj, *users, *bytes_obj;
    int unk_id, byte_fallback;
    const char *s;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O!OOipOy#", &TrieType, &t, &scores_obj, &users, &unk_id, &byte_fallback,
                          &bytes_obj, &s, &n))
        return NULL;
    Py_buffer sv, bv;
    if (PyObject_GetBuffer(scores_obj, &sv, PyBUF_SIMPLE) < 0) return NULL;
    if (parse_bytes_ids(bytes_obj, &bv, 256 * 4) < 0) { PyBuffer_Release(&sv); return NULL; }
    Ids out = {NULL, 0, 0, unk_id, byte_fallback, 0, bv.buf};
    PyObject *list = bpe_core(t, sv.buf, sv.len / 4, users == Py_None ? NULL : (Trie *)users, unk_id, &out, s, n) < 0
                         ? PyErr_NoMemory() : ids_list(&out);
    free(out.p);
    PyBuffer_Release(&sv); PyBuffer_Release(&bv);
    return list;
}

/* ------------------------------------------------------------------ the whole encoder */
typedef struct {
    PyObject_HEAD
    PyObject *rules, *repl, *users, *pieces, *scores, *byte_ids;  /* rules/users may be None */
    int unigram, unk_id, byte_fallback, dummy, remove_ws, escape, suffix;
    float unk_score;
    Py_buffer sv, bv;
} Model;

static void Model_dealloc(Model *m) {
    if (m->sv.obj) PyBuffer_Release(&m->sv);
    if (m->bv.obj) PyBuffer_Release(&m->bv);
    Py_XDECREF(m->rules); Py_XDECREF(m->repl); Py_XDECREF(m->users);
    Py_XDECREF(m->pieces); Py_XDECREF(m->scores); Py_XDECREF(m->byte_ids);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

/* Model(rules, replacements, users, pieces, scores, byte_ids, unigram, unk_id, unk_score, byte_fallback,
 *       add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces, treat_whitespace_as_suffix) */
static int Model_init(Model *m, PyObject *args, PyObject *kw) {
    PyObject *rules, *repl, *users, *pieces, *scores, *byte_ids;
    if (m->pieces != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Model is initialized once");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OOOO!OOpifppppp", &rules, &repl, &users, &TrieType, &pieces, &scores, &byte_ids,
                          &m->unigram, &m->unk_id, &m->unk_score, &m->byte_fallback, &m->dummy, &m->remove_ws,
                          &m->escape, &m->suffix))
        return -1;
    if ((rules != Py_None && !PyObject_TypeCheck(rules, &TrieType)) || !PyList_Check(repl) ||
        (users != Py_None && !PyObject_TypeCheck(users, &TrieType))) {
        PyErr_SetString(PyExc_TypeError, "rules and users are Tries (or None), replacements a list");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(repl); i++)
        if (!PyBytes_Check(PyList_GET_ITEM(repl, i))) {
            PyErr_SetString(PyExc_TypeError, "replacements are bytes");
            return -1;
        }
    Py_INCREF(rules); Py_INCREF(repl); Py_INCREF(users); Py_INCREF(pieces); Py_INCREF(scores); Py_INCREF(byte_ids);
    m->rules = rules; m->repl = repl; m->users = users; m->pieces = pieces; m->scores = scores; m->byte_ids = byte_ids;
    if (PyObject_GetBuffer(m->scores, &m->sv, PyBUF_SIMPLE) < 0) return -1;
    if (parse_bytes_ids(m->byte_ids, &m->bv, 256 * 4) < 0) return -1;
    return 0;
}

static const char SPACE_SYMBOL[] = "\xe2\x96\x81";

/* One step of sentencepiece's NormalizePrefix: the replaced text of the longest thing at s. */
static Py_ssize_t norm_prefix(const Model *m, const char *s, Py_ssize_t left, const char **rep, Py_ssize_t *rep_len) {
    Py_ssize_t len = 0;
    if (m->users != Py_None && longest((Trie *)m->users, s, left, &len) >= 0) {
        *rep = s;
        *rep_len = len;
        return len;
    }
    if (m->rules != Py_None) {
        int32_t r = longest((Trie *)m->rules, s, left, &len);
        if (r >= 0 && r < PyList_GET_SIZE(m->repl)) {
            PyObject *b = PyList_GET_ITEM(m->repl, r);
            *rep = PyBytes_AS_STRING(b);
            *rep_len = PyBytes_GET_SIZE(b);
            return len;
        }
    }
    len = char_len((const unsigned char *)s, left);
    *rep = s;
    *rep_len = len;
    return len;
}

/* sentencepiece's Normalizer::Normalize (0.2.3), into out. */
static int normalize_into(const Model *m, const char *s, Py_ssize_t n, Buf *out) {
    const char *space = m->escape ? SPACE_SYMBOL : " ";
    size_t space_len = m->escape ? 3 : 1;
    const char *rep;
    Py_ssize_t rep_len;
    if (m->remove_ws) {  /* leading pieces that are exactly one space */
        while (n > 0) {
            Py_ssize_t used = norm_prefix(m, s, n, &rep, &rep_len);
            if (!(rep_len == 1 && rep[0] == ' ')) break;
            s += used;
            n -= used;
        }
    }
    if (n == 0) return 0;
    if (!m->suffix && m->dummy && buf_put(out, space, space_len) < 0) return -1;
    int prev_space = m->remove_ws;
    while (n > 0) {
        Py_ssize_t used = norm_prefix(m, s, n, &rep, &rep_len);
        while (prev_space && rep_len > 0 && rep[0] == ' ') { rep++; rep_len--; }
        if (rep_len > 0) {
            Py_ssize_t run = 0;
            for (Py_ssize_t k = 0; k < rep_len; k++) {
                if (rep[k] == ' ') {
                    if (buf_put(out, rep + run, (size_t)(k - run)) < 0 || buf_put(out, space, space_len) < 0) return -1;
                    run = k + 1;
                }
            }
            if (buf_put(out, rep + run, (size_t)(rep_len - run)) < 0) return -1;
            prev_space = rep[rep_len - 1] == ' ';
        }
        s += used;
        n -= used;
        if (!m->remove_ws) prev_space = 0;
    }
    if (m->remove_ws)
        while (out->n >= space_len && memcmp(out->p + out->n - space_len, space, space_len) == 0) out->n -= space_len;
    if (m->suffix && m->dummy && buf_put(out, space, space_len) < 0) return -1;
    return 0;
}

/* Normalize and segment s[0:n] into out; runs without the GIL. -1: out of memory. */
static int encode_into(const Model *m, const char *s, Py_ssize_t n, Ids *out) {
    Buf norm = {0};
    int err = normalize_into(m, s, n, &norm) < 0;
    if (!err && norm.n) {
        if (m->unigram)
            err = viterbi_core((Trie *)m->pieces, m->sv.buf, m->sv.len / 4, m->unk_id, m->unk_score, out, norm.p,
                               (Py_ssize_t)norm.n) < 0;
        else
            err = bpe_core((Trie *)m->pieces, m->sv.buf, m->sv.len / 4,
                           m->users == Py_None ? NULL : (Trie *)m->users, m->unk_id, out, norm.p,
                           (Py_ssize_t)norm.n) < 0;
    }
    free(norm.p);
    return err ? -1 : 0;
}

static PyObject *Model_encode(Model *m, PyObject *arg) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &n);
    if (s == NULL) return NULL;
    Ids out = {NULL, 0, 0, m->unk_id, m->byte_fallback, 0, m->bv.buf};
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = encode_into(m, s, n, &out);
    Py_END_ALLOW_THREADS
    PyObject *list = err ? PyErr_NoMemory() : ids_list(&out);
    free(out.p);
    return list;
}

static PyObject *Model_normalize(Model *m, PyObject *arg) {
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &n);
    if (s == NULL) return NULL;
    Buf norm = {0};
    if (normalize_into(m, s, n, &norm) < 0) {
        free(norm.p);
        return PyErr_NoMemory();
    }
    PyObject *res = PyUnicode_DecodeUTF8(norm.p ? norm.p : "", (Py_ssize_t)norm.n, "strict");
    free(norm.p);
    return res;
}

/* encode_batch: texts shared out to threads in blocks (sentencepiece's batch call uses
 * threads too); each text's ids land in its own buffer, made into lists afterwards. */
typedef struct {
    Ids ids;                  /* the ids of a block of texts, back to back */
    size_t ends[64];          /* where each text's ids end in it */
} Block;

typedef struct {
    const Model *m;
    const char **texts;
    const Py_ssize_t *lens;
    Block *blocks;
    Py_ssize_t count;
    _Atomic Py_ssize_t next;
    _Atomic int failed;
} Batch;

#define BATCH_BLOCK 64

static void *batch_worker(void *arg) {
    Batch *b = arg;
    for (;;) {
        Py_ssize_t start = atomic_fetch_add(&b->next, BATCH_BLOCK);
        if (start >= b->count || atomic_load(&b->failed)) break;
        Py_ssize_t end = start + BATCH_BLOCK < b->count ? start + BATCH_BLOCK : b->count;
        Block *blk = &b->blocks[start / BATCH_BLOCK];
        for (Py_ssize_t i = start; i < end; i++) {
            blk->ids.prev_unk = 0;
            if (encode_into(b->m, b->texts[i], b->lens[i], &blk->ids) < 0) atomic_store(&b->failed, 1);
            blk->ends[i - start] = blk->ids.n;
        }
    }
    return NULL;
}

static int cpu_count(void) {
#ifdef _SC_NPROCESSORS_ONLN
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 16 ? 16 : (int)n;
#else
    return 1;
#endif
}

static PyObject *Model_encode_batch(Model *m, PyObject *args) {
    PyObject *arg;
    int threads = 0;
    if (!PyArg_ParseTuple(args, "O|i", &arg, &threads)) return NULL;
    PyObject *seq = PySequence_Fast(arg, "encode_batch takes a sequence of str");
    if (seq == NULL) return NULL;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(seq);
    Py_ssize_t n_blocks = (k + BATCH_BLOCK - 1) / BATCH_BLOCK;
    const char **texts = calloc((size_t)k + 1, sizeof(char *));
    Py_ssize_t *lens = calloc((size_t)k + 1, sizeof(Py_ssize_t));
    Block *blocks = calloc((size_t)n_blocks + 1, sizeof(Block));
    PyObject *res = NULL;
    if (!texts || !lens || !blocks) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < k; i++) {
        texts[i] = PyUnicode_AsUTF8AndSize(PySequence_Fast_GET_ITEM(seq, i), &lens[i]);
        if (texts[i] == NULL) goto done;
    }
    for (Py_ssize_t j = 0; j < n_blocks; j++) blocks[j].ids = (Ids){NULL, 0, 0, m->unk_id, m->byte_fallback, 0, m->bv.buf};
    Batch batch = {m, texts, lens, blocks, k, 0, 0};
    if (threads <= 0) threads = cpu_count();
    if (threads > n_blocks) threads = (int)n_blocks;
    Py_BEGIN_ALLOW_THREADS
#ifdef SPM_THREADS
    pthread_t pool[16];
    int started = 0;
    for (; started < threads - 1 && started < 16; started++)
        if (pthread_create(&pool[started], NULL, batch_worker, &batch) != 0) break;
    batch_worker(&batch);
    for (int i = 0; i < started; i++) pthread_join(pool[i], NULL);
#else
    batch_worker(&batch);
#endif
    Py_END_ALLOW_THREADS
    if (atomic_load(&batch.failed)) { PyErr_NoMemory(); goto done; }
    res = PyList_New(k);
    for (Py_ssize_t i = 0; res && i < k; i++) {
        Block *blk = &blocks[i / BATCH_BLOCK];
        size_t j = (size_t)(i % BATCH_BLOCK), from = j ? blk->ends[j - 1] : 0, to = blk->ends[j];
        Ids view = blk->ids;
        view.p = blk->ids.p + from;
        view.n = to - from;
        PyObject *ids = ids_list(&view);
        if (ids == NULL) Py_CLEAR(res);
        else PyList_SET_ITEM(res, i, ids);
    }
done:
    for (Py_ssize_t j = 0; blocks && j < n_blocks; j++) free(blocks[j].ids.p);
    free(texts); free(lens); free(blocks);
    Py_DECREF(seq);
    return res;
}

static PyMethodDef model_methods[] = {
    {"encode", (PyCFunction)Model_encode, METH_O, "Ids of a str (normalized here)."},
    {"encode_batch", (PyCFunction)Model_encode_batch, METH_VARARGS, "Ids of each str (texts, threads=all CPUs)."},
    {"normalize", (PyCFunction)Model_normalize, METH_O, "sentencepiece's normalized form of a str."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ModelType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tokenizers_impl._spm.Model",
    .tp_basicsize = sizeof(Model),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Model_init,
    .tp_dealloc = (destructor)Model_dealloc,
    .tp_methods = model_methods,
    .tp_doc = "A sentencepiece model's normalizer and segmenter in one.",
};

static PyMethodDef methods[] = {
    {"apply_rules", apply_rules, METH_VARARGS, "The longest-match charsmap replacement (user pieces kept)."},
    {"viterbi", viterbi, METH_VARARGS, "sentencepiece's Unigram Viterbi; final ids."},
    {"bpe", bpe, METH_VARARGS, "sentencepiece's BPE joins; final ids."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_spm", "sentencepiece hot loops.", -1, methods};

PyMODINIT_FUNC PyInit__spm(void) {
    if (PyType_Ready(&TrieType) < 0 || PyType_Ready(&ModelType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&TrieType);
    if (PyModule_AddObject(m, "Trie", (PyObject *)&TrieType) < 0) {
        Py_DECREF(&TrieType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&ModelType);
    if (PyModule_AddObject(m, "Model", (PyObject *)&ModelType) < 0) {
        Py_DECREF(&ModelType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
