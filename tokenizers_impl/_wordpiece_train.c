/* Compiled helper for WordPiece training: the merge loop of wordpiece._Trainer.run, and
 * the word count of ASCII text (wordpiece._count_ascii_words).
 *
 * _Trainer.run_python is the readable reference for merges() (same arguments, same
 * merges, same tie rules); tests check that both give the same vocab. Instead of scoring
 * every pair at every merge, the live pairs (count >= threshold) sit in an indexed
 * max-heap ordered as _PairTable.best picks: score desc, count desc, left asc, right asc.
 * Every key in the heap is exact: a pair's key changes only when its count changes (the
 * pairs of the words a merge rewrites) or, with "likelihood" scoring
 * (count / (freq(a) * freq(b))), when the frequency of one of its symbols changes, which
 * a merge of (a, b) into n does for a, b and n only: each symbol keeps the list of the
 * pairs it appears in, and those pairs are re-keyed. The score is computed as numpy
 * computes it: double(count) / (double(freq(a)) * double(freq(b))).
 *
 * Words come as one flat int32 array of symbol ids with int64 offsets and int64 counts.
 * new_token(a, b) -> id names the merged symbol (it may reuse an existing token, never a
 * or b: a merged token is longer than both);
 * progress(n_merges), if not None, is called every 64 merges and at the end.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t a, b;
    int64_t count;
    int32_t pos;       /* place in the heap, -1 when not there */
    uint32_t touched;  /* merge number of the last merge that changed the count */
    int64_t before;    /* the count before that merge */
    int32_t *words;    /* indices of words that hold (or held) the pair; may repeat */
    int32_t n_words, cap_words;
    uint8_t listed;    /* in the pair lists of its symbols (likelihood only): bits 1 and 2 */
} Pair;

typedef struct {
    double score;
    int64_t count;
    uint64_t ab; /* a << 32 | b: smaller (a, b) first */
} Key;

typedef struct {
    int32_t *items;
    int32_t n, cap;
} IntVec;

typedef struct {
    /* words */
    int32_t *sym;
    int64_t *start;
    int32_t *len;
    const int64_t *wcount;
    Py_ssize_t n_words;
    /* pairs and their (a, b) -> index table */
    Pair *pairs;
    int32_t n_pairs, cap_pairs;
    int64_t *keys;  /* open addressing: key (a << 32 | b) + 1, 0 = empty */
    int32_t *vals;
    int64_t mask, used;
    /* symbols */
    int64_t *freq;
    IntVec *sym_pairs;
    int64_t n_sym_cap;
    /* heap of pair indices, and each pair's key */
    int32_t *heap;
    int64_t heap_n, heap_cap;
    Key *keys_of;
    int64_t cap_keys;
    /* pairs whose count changed in the current merge */
    int32_t *changed;
    int64_t n_changed, cap_changed;
    int likelihood;
    int64_t threshold;
} T;

static int grow(void **p, int64_t *cap, int64_t need, size_t size) {
    if (need <= *cap) return 0;
    int64_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * size);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int vec_push(IntVec *v, int32_t x) {
    if (v->n == v->cap) {
        int32_t c = v->cap ? v->cap * 2 : 4;
        int32_t *q = realloc(v->items, (size_t)c * sizeof(int32_t));
        if (!q) return -1;
        v->items = q;
        v->cap = c;
    }
    v->items[v->n++] = x;
    return 0;
}

static int pair_add_word(Pair *p, int32_t w) {
    if (p->n_words && p->words[p->n_words - 1] == w) return 0;
    if (p->n_words == p->cap_words) {
        int32_t c = p->cap_words ? p->cap_words * 2 : 2;
        int32_t *q = realloc(p->words, (size_t)c * sizeof(int32_t));
        if (!q) return -1;
        p->words = q;
        p->cap_words = c;
    }
    p->words[p->n_words++] = w;
    return 0;
}

static inline uint64_t hash64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static int sym_reserve(T *t, int64_t id) {
    if (id < t->n_sym_cap) return 0;
    int64_t c = t->n_sym_cap ? t->n_sym_cap : 256;
    while (c <= id) c *= 2;
    int64_t *f = realloc(t->freq, (size_t)c * sizeof(int64_t));
    if (!f) return -1;
    t->freq = f;
    IntVec *v = realloc(t->sym_pairs, (size_t)c * sizeof(IntVec));
    if (!v) return -1;
    t->sym_pairs = v;
    memset(t->freq + t->n_sym_cap, 0, (size_t)(c - t->n_sym_cap) * sizeof(int64_t));
    memset(t->sym_pairs + t->n_sym_cap, 0, (size_t)(c - t->n_sym_cap) * sizeof(IntVec));
    t->n_sym_cap = c;
    return 0;
}

static int table_grow(T *t) {
    int64_t size = t->mask ? (t->mask + 1) * 2 : 1 << 16;
    int64_t *keys = calloc((size_t)size, sizeof(int64_t));
    int32_t *vals = malloc((size_t)size * sizeof(int32_t));
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return -1;
    }
    for (int64_t i = 0; t->mask && i <= t->mask; i++) {
        if (!t->keys[i]) continue;
        int64_t j = (int64_t)(hash64((uint64_t)t->keys[i]) & (uint64_t)(size - 1));
        while (keys[j]) j = (j + 1) & (size - 1);
        keys[j] = t->keys[i];
        vals[j] = t->vals[i];
    }
    free(t->keys);
    free(t->vals);
    t->keys = keys;
    t->vals = vals;
    t->mask = size - 1;
    return 0;
}

/* Index of pair (a, b), created with count 0 if new; -1 when out of memory. */
static int32_t pair_of(T *t, int32_t a, int32_t b) {
    if ((t->used + 1) * 2 > t->mask + 1 && table_grow(t) < 0) return -1;
    int64_t key = (int64_t)(((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    int64_t j = (int64_t)(hash64((uint64_t)key) & (uint64_t)t->mask);
    while (t->keys[j]) {
        if (t->keys[j] == key) return t->vals[j];
        j = (j + 1) & t->mask;
    }
    if (t->n_pairs == t->cap_pairs) {
        int32_t c = t->cap_pairs ? t->cap_pairs * 2 : 1024;
        Pair *q = realloc(t->pairs, (size_t)c * sizeof(Pair));
        if (!q) return -1;
        t->pairs = q;
        t->cap_pairs = c;
    }
    int32_t idx = t->n_pairs++;
    Pair *p = &t->pairs[idx];
    memset(p, 0, sizeof(Pair));
    p->a = a;
    p->b = b;
    p->touched = UINT32_MAX;
    p->pos = -1;
    if (grow((void **)&t->keys_of, &t->cap_keys, t->n_pairs, sizeof(Key)) < 0) return -1;
    t->keys[j] = key;
    t->vals[j] = idx;
    t->used++;
    return idx;
}

static inline int better(const Key *x, const Key *y) {
    if (x->score != y->score) return x->score > y->score;
    if (x->count != y->count) return x->count > y->count;
    return x->ab < y->ab;
}

static inline double score_of(const T *t, const Pair *p) {
    if (!t->likelihood) return (double)p->count;
    return (double)p->count / ((double)t->freq[p->a] * (double)t->freq[p->b]);
}

static void sift_up(T *t, int64_t i) {
    int32_t idx = t->heap[i];
    const Key *k = &t->keys_of[idx];
    while (i > 0) {
        int64_t up = (i - 1) / 2;
        if (!better(k, &t->keys_of[t->heap[up]])) break;
        t->heap[i] = t->heap[up];
        t->pairs[t->heap[i]].pos = (int32_t)i;
        i = up;
    }
    t->heap[i] = idx;
    t->pairs[idx].pos = (int32_t)i;
}

static void sift_down(T *t, int64_t i) {
    int32_t idx = t->heap[i];
    const Key *k = &t->keys_of[idx];
    int64_t n = t->heap_n;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && better(&t->keys_of[t->heap[c + 1]], &t->keys_of[t->heap[c]])) c++;
        if (!better(&t->keys_of[t->heap[c]], k)) break;
        t->heap[i] = t->heap[c];
        t->pairs[t->heap[i]].pos = (int32_t)i;
        i = c;
    }
    t->heap[i] = idx;
    t->pairs[idx].pos = (int32_t)i;
}

/* Puts pair idx in its place for its current key: in the heap if live, out if not. */
static int rekey(T *t, int32_t idx) {
    Pair *p = &t->pairs[idx];
    if (p->count < t->threshold) {
        if (p->pos >= 0) {
            int64_t i = p->pos;
            p->pos = -1;
            int32_t last = t->heap[--t->heap_n];
            if (i < t->heap_n) {
                t->heap[i] = last;
                sift_up(t, i);
                sift_down(t, t->pairs[last].pos);
            }
        }
        return 0;
    }
    Key k = {score_of(t, p), p->count, ((uint64_t)(uint32_t)p->a << 32) | (uint32_t)p->b};
    Key *old = &t->keys_of[idx];
    if (p->pos < 0) {
        if (grow((void **)&t->heap, &t->heap_cap, t->heap_n + 1, sizeof(int32_t)) < 0) return -1;
        *old = k;
        t->heap[t->heap_n] = idx;
        sift_up(t, t->heap_n++);
    } else if (better(&k, old)) {
        *old = k;
        sift_up(t, p->pos);
    } else {
        *old = k;
        sift_down(t, p->pos);
    }
    return 0;
}

/* count of pair idx += delta, remembering its count before this merge. */
static int add_count(T *t, int32_t idx, int64_t delta, uint32_t merge_no) {
    Pair *p = &t->pairs[idx];
    if (p->touched != merge_no) {
        p->touched = merge_no;
        p->before = p->count;
        if (grow((void **)&t->changed, &t->cap_changed, t->n_changed + 1, sizeof(int32_t)) < 0) return -1;
        t->changed[t->n_changed++] = idx;
    }
    p->count += delta;
    if (t->likelihood && p->count > 0) {
        /* bit 1: in the list of a; bit 2: in the list of b (a pair (s, s) uses bit 1 only) */
        if (!(p->listed & 1)) {
            p->listed |= 1;
            if (vec_push(&t->sym_pairs[p->a], idx) < 0) return -1;
        }
        if (p->b != p->a && !(p->listed & 2)) {
            p->listed |= 2;
            if (vec_push(&t->sym_pairs[p->b], idx) < 0) return -1;
        }
    }
    return 0;
}

/* Re-keys the pairs holding symbol s (its frequency changed); pairs with no count left
 * leave s's list (add_count puts them back if they come back). */
static int rekey_holding(T *t, int32_t s) {
    IntVec *v = &t->sym_pairs[s];
    int32_t n = 0;
    for (int32_t i = 0; i < v->n; i++) {
        int32_t idx = v->items[i];
        Pair *p = &t->pairs[idx];
        if (p->count <= 0) {
            p->listed &= (uint8_t)(p->a == s ? ~1 : ~2);
            continue;
        }
        v->items[n++] = idx;
        if (rekey(t, idx) < 0) return -1;
    }
    v->n = n;
    return 0;
}

static void t_free(T *t) {
    for (int32_t i = 0; i < t->n_pairs; i++) free(t->pairs[i].words);
    free(t->pairs);
    free(t->keys);
    free(t->vals);
    for (int64_t i = 0; i < t->n_sym_cap; i++) free(t->sym_pairs[i].items);
    free(t->sym_pairs);
    free(t->freq);
    free(t->heap);
    free(t->keys_of);
    free(t->changed);
    free(t->sym);
    free(t->start);
    free(t->len);
}

static PyObject *py_merges(PyObject *self, PyObject *args) {
    PyObject *sym_obj, *off_obj, *cnt_obj, *new_token, *progress;
    Py_ssize_t n_sym, vocab_size;
    long long threshold;
    int likelihood;
    if (!PyArg_ParseTuple(args, "OOOnnLpOO", &sym_obj, &off_obj, &cnt_obj, &n_sym, &vocab_size, &threshold,
                          &likelihood, &new_token, &progress))
        return NULL;
    Py_buffer bsym, boff, bcnt;
    if (PyObject_GetBuffer(sym_obj, &bsym, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (PyObject_GetBuffer(off_obj, &boff, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&bsym);
        return NULL;
    }
    if (PyObject_GetBuffer(cnt_obj, &bcnt, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&bsym);
        PyBuffer_Release(&boff);
        return NULL;
    }
    T t = {0};
    PyObject *result = NULL;
    Py_ssize_t n_words = bcnt.len / (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t n_total = bsym.len / (Py_ssize_t)sizeof(int32_t);
    const int64_t *off = boff.buf;
    if (boff.len != (n_words + 1) * (Py_ssize_t)sizeof(int64_t) || off[0] != 0 || off[n_words] != n_total) {
        PyErr_SetString(PyExc_ValueError, "offsets do not match the words and counts");
        goto done;
    }
    t.likelihood = likelihood;
    t.threshold = threshold;
    t.n_words = n_words;
    t.wcount = bcnt.buf;
    t.sym = malloc((size_t)(n_total ? n_total : 1) * sizeof(int32_t));
    t.start = malloc((size_t)(n_words ? n_words : 1) * sizeof(int64_t));
    t.len = malloc((size_t)(n_words ? n_words : 1) * sizeof(int32_t));
    if (!t.sym || !t.start || !t.len || sym_reserve(&t, n_sym > vocab_size ? n_sym : vocab_size) < 0) goto nomem;
    memcpy(t.sym, bsym.buf, (size_t)n_total * sizeof(int32_t));
    for (Py_ssize_t w = 0; w < n_words; w++) {
        if (off[w + 1] < off[w] || off[w + 1] - off[w] > INT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "offsets must not decrease");
            goto done;
        }
        t.start[w] = off[w];
        t.len[w] = (int32_t)(off[w + 1] - off[w]);
        const int32_t *s = t.sym + off[w];
        int64_t c = t.wcount[w];
        for (int32_t i = 0; i < t.len[w]; i++) {
            if (s[i] < 0 || s[i] >= n_sym) {
                PyErr_SetString(PyExc_ValueError, "symbol id out of range");
                goto done;
            }
            t.freq[s[i]] += c;
        }
        for (int32_t i = 0; i + 1 < t.len[w]; i++) {
            int32_t idx = pair_of(&t, s[i], s[i + 1]);
            if (idx < 0 || add_count(&t, idx, c, 0) < 0 || pair_add_word(&t.pairs[idx], (int32_t)w) < 0) goto nomem;
        }
    }
    for (int32_t i = 0; i < t.n_pairs; i++)
        if (rekey(&t, i) < 0) goto nomem;
    t.n_changed = 0;

    Py_ssize_t n_tokens = n_sym, n_merges = 0;
    while (n_tokens < vocab_size) {
        if (!t.heap_n) break;
        int32_t best = t.heap[0];
        int32_t a = t.pairs[best].a, b = t.pairs[best].b;
        PyObject *r = PyObject_CallFunction(new_token, "ii", (int)a, (int)b);
        if (!r) goto done;
        long nid = PyLong_AsLong(r);
        Py_DECREF(r);
        if (nid == -1 && PyErr_Occurred()) goto done;
        if (nid < 0 || nid > INT32_MAX - 1 || nid == a || nid == b) {
            PyErr_SetString(PyExc_ValueError, "new_token returned a bad id");
            goto done;
        }
        if (nid >= n_tokens) n_tokens = nid + 1;
        if (sym_reserve(&t, nid) < 0) goto nomem;
        int32_t new_id = (int32_t)nid;
        uint32_t merge_no = (uint32_t)(n_merges + 1);
        t.n_changed = 0;
        /* the word list of the best pair is taken over: new pairs never equal it */
        int32_t *ws = t.pairs[best].words, nw = t.pairs[best].n_words;
        t.pairs[best].words = NULL;
        t.pairs[best].n_words = t.pairs[best].cap_words = 0;
        for (int32_t k = 0; k < nw; k++) {
            int32_t w = ws[k];
            int32_t *s = t.sym + t.start[w];
            int32_t n = t.len[w];
            int hit = 0;
            for (int32_t i = 0; i + 1 < n; i++)
                if (s[i] == a && s[i + 1] == b) {
                    hit = 1;
                    break;
                }
            if (!hit) continue;
            int64_t c = t.wcount[w];
            for (int32_t i = 0; i + 1 < n; i++) {
                int32_t idx = pair_of(&t, s[i], s[i + 1]);
                if (idx < 0 || add_count(&t, idx, -c, merge_no) < 0) goto nomem_ws;
            }
            int32_t m = 0;
            for (int32_t i = 0; i < n;) {
                if (i + 1 < n && s[i] == a && s[i + 1] == b) {
                    s[m++] = new_id;
                    i += 2;
                } else {
                    s[m++] = s[i++];
                }
            }
            t.len[w] = m;
            for (int32_t i = 0; i + 1 < m; i++) {
                int32_t idx = pair_of(&t, s[i], s[i + 1]);
                if (idx < 0 || add_count(&t, idx, c, merge_no) < 0) goto nomem_ws;
                if ((s[i] == new_id || s[i + 1] == new_id) && pair_add_word(&t.pairs[idx], w) < 0) goto nomem_ws;
            }
            int64_t merged = (int64_t)(n - m) * c;
            t.freq[a] -= merged;
            t.freq[b] -= merged;
            t.freq[new_id] += merged;
        }
        free(ws);
        /* new keys: the pairs whose count changed, and (likelihood) the pairs holding a
         * symbol whose frequency changed */
        for (int64_t i = 0; i < t.n_changed; i++)
            if (t.pairs[t.changed[i]].count != t.pairs[t.changed[i]].before && rekey(&t, t.changed[i]) < 0) goto nomem;
        if (t.likelihood && (rekey_holding(&t, a) < 0 || (b != a && rekey_holding(&t, b) < 0) ||
                             rekey_holding(&t, new_id) < 0))
            goto nomem;
        n_merges++;
        if (progress != Py_None && n_merges % 64 == 0) {
            PyObject *pr = PyObject_CallFunction(progress, "n", n_merges);
            if (!pr) goto done;
            Py_DECREF(pr);
        }
        continue;
    nomem_ws:
        free(ws);
        goto nomem;
    }
    if (progress != Py_None) {
        PyObject *pr = PyObject_CallFunction(progress, "n", n_merges);
        if (!pr) goto done;
        Py_DECREF(pr);
    }
    result = PyLong_FromSsize_t(n_merges);
    goto done;
nomem:
    PyErr_NoMemory();
done:
    t_free(&t);
    PyBuffer_Release(&bsym);
    PyBuffer_Release(&boff);
    PyBuffer_Release(&bcnt);
    return result;
}

/* ---------------------------------------------------------------- ASCII word count */

typedef struct {
    uint64_t hash;
    int64_t off; /* in the arena */
    int64_t count;
    int32_t len;
} Word;

typedef struct {
    Word *slots;
    int64_t mask, used;
    char *arena;
    int64_t arena_n, arena_cap;
} WordTable;

static uint64_t hash_bytes(const char *s, int32_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (int32_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ULL;
    return h;
}

static int wt_grow(WordTable *w) {
    int64_t size = w->mask ? (w->mask + 1) * 2 : 1 << 12;
    Word *slots = calloc((size_t)size, sizeof(Word));
    if (!slots) return -1;
    for (int64_t i = 0; w->mask && i <= w->mask; i++) {
        if (!w->slots[i].len) continue;
        int64_t j = (int64_t)(w->slots[i].hash & (uint64_t)(size - 1));
        while (slots[j].len) j = (j + 1) & (size - 1);
        slots[j] = w->slots[i];
    }
    free(w->slots);
    w->slots = slots;
    w->mask = size - 1;
    return 0;
}

static int wt_add(WordTable *w, const char *s, int32_t n) {
    if ((w->used + 1) * 2 > w->mask + 1 && wt_grow(w) < 0) return -1;
    uint64_t h = hash_bytes(s, n);
    int64_t j = (int64_t)(h & (uint64_t)w->mask);
    while (w->slots[j].len) {
        Word *e = &w->slots[j];
        if (e->hash == h && e->len == n && !memcmp(w->arena + e->off, s, (size_t)n)) {
            e->count++;
            return 0;
        }
        j = (j + 1) & w->mask;
    }
    if (grow((void **)&w->arena, &w->arena_cap, w->arena_n + n, 1) < 0) return -1;
    memcpy(w->arena + w->arena_n, s, (size_t)n);
    w->slots[j] = (Word){h, w->arena_n, 1, n};
    w->arena_n += n;
    w->used++;
    return 0;
}

/* counts[word] += occurrences for each word of an ASCII text, normalized and split as
 * BertNormalizer (clean_text, lowercase; its other steps change no ASCII text) and
 * bert_pretokenize do: the reference is wordpiece.count_words' Python path. */
static PyObject *py_count_ascii(PyObject *self, PyObject *args) {
    PyObject *text, *counts;
    int clean, lower;
    if (!PyArg_ParseTuple(args, "UppO!", &text, &clean, &lower, &PyDict_Type, &counts)) return NULL;
    if (!PyUnicode_IS_ASCII(text)) {
        PyErr_SetString(PyExc_ValueError, "count_ascii needs ASCII text");
        return NULL;
    }
    /* 1: whitespace ends a word; 2: punctuation is a word of its own; 4: dropped by clean_text */
    static const char punct[] = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
    uint8_t kind[128] = {0};
    for (int c = 0x09; c <= 0x0D; c++) kind[c] = 1;
    kind[' '] = 1;
    for (const char *p = punct; *p; p++) kind[(uint8_t)*p] = 2;
    if (clean) {
        for (int c = 0; c < 0x20; c++)
            if (c != '\t' && c != '\n' && c != '\r') kind[c] = 4;
        kind[0x7F] = 4;
    }
    const char *s = (const char *)PyUnicode_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    WordTable w = {0};
    char *buf = NULL;
    int64_t cap = 0, len = 0;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i <= n; i++) {
        uint8_t c = i < n ? (uint8_t)s[i] : ' ';
        uint8_t k = kind[c];
        if (k == 4) continue;
        if (k) {
            if (len && wt_add(&w, buf, (int32_t)len) < 0) goto nomem;
            len = 0;
            if (k == 2 && wt_add(&w, (const char *)&c, 1) < 0) goto nomem;
            continue;
        }
        if (lower && c >= 'A' && c <= 'Z') c += 32;
        if (len >= INT32_MAX - 1) {
            PyErr_SetString(PyExc_ValueError, "word too long");
            goto done;
        }
        if (grow((void **)&buf, &cap, len + 1, 1) < 0) goto nomem;
        buf[len++] = (char)c;
    }
    for (int64_t j = 0; w.mask && j <= w.mask; j++) {
        const Word *e = &w.slots[j];
        if (!e->len) continue;
        PyObject *key = PyUnicode_DecodeASCII(w.arena + e->off, e->len, NULL);
        if (!key) goto done;
        PyObject *old = PyDict_GetItemWithError(counts, key);
        PyObject *value = NULL;
        if (old) {
            PyObject *add = PyLong_FromLongLong(e->count);
            if (add) value = PyNumber_Add(old, add);
            Py_XDECREF(add);
        } else if (!PyErr_Occurred()) {
            value = PyLong_FromLongLong(e->count);
        }
        int rc = value ? PyDict_SetItem(counts, key, value) : -1;
        Py_DECREF(key);
        Py_XDECREF(value);
        if (rc < 0) goto done;
    }
    result = Py_NewRef(Py_None);
    goto done;
nomem:
    PyErr_NoMemory();
done:
    free(buf);
    free(w.slots);
    free(w.arena);
    return result;
}

static PyMethodDef methods[] = {
    {"count_ascii", py_count_ascii, METH_VARARGS,
     "count_ascii(text, clean_text, lowercase, counts): counts[word] += n for the words of ASCII text"},
    {"merges", py_merges, METH_VARARGS,
     "merges(symbols, offsets, counts, n_sym, vocab_size, threshold, likelihood, new_token, progress) -> n_merges"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_wordpiece_train", NULL, -1, methods};

PyMODINIT_FUNC PyInit__wordpiece_train(void) { return PyModule_Create(&module); }
