/* quant._kquants: optional compiled kernels for quant/ (plain CPython C API + buffer protocol).
 *
 * Every kernel has a numpy twin in quant/ that stays the readable reference; tests check
 * both give ggml's bytes. Kernels release the GIL so callers can split rows over threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_kquants_k.h"
#include "_kquants_legacy.h"
#include "_kquants_simple.h"
#include "_kquants_grid.h"

/* bytes per 256-value block of Q2_K..Q8_K (ids 10..15) */
static const int kq_type_bytes[6] = {84, 110, 144, 176, 210, 292};

/* ------------------------------------------------------------------ K-quants */

/* kquant(type_id, x, imatrix_or_None, out, rows, n_per_row): x float32 C-contiguous
 * [rows * n_per_row], imatrix float32 [n_per_row] or None, out writable uint8. */
static PyObject *py_kquant(PyObject *self, PyObject *args) {
    int type;
    Py_buffer xb, ob, qb;
    PyObject *imatrix;
    Py_ssize_t rows, n;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*Ow*nn", &type, &xb, &imatrix, &ob, &rows, &n)) return NULL;
    int have_q = imatrix != Py_None;
    if (have_q && PyObject_GetBuffer(imatrix, &qb, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&xb);
        PyBuffer_Release(&ob);
        return NULL;
    }
    const char *err = NULL;
    if (type < 10 || type > 15) err = "unknown K-quant type id";
    else if (n <= 0 || n % KQ_QK) err = "n_per_row must be a positive multiple of 256";
    else if (rows < 0 || xb.len < (Py_ssize_t)(rows * n * sizeof(float))) err = "x is smaller than rows * n_per_row floats";
    else if (ob.len < rows * (n / KQ_QK) * kq_type_bytes[type - 10]) err = "out is too small";
    else if (have_q && qb.len < (Py_ssize_t)(n * sizeof(float))) err = "imatrix is smaller than n_per_row floats";
    if (!err) {
        const float *x = (const float *)xb.buf;
        const float *q = have_q ? (const float *)qb.buf : NULL;
        uint8_t *o = (uint8_t *)ob.buf;
        Py_BEGIN_ALLOW_THREADS
        kq_quantize_rows(type, x, q, rows, n, o);
        Py_END_ALLOW_THREADS
    }
    if (have_q) PyBuffer_Release(&qb);
    PyBuffer_Release(&xb);
    PyBuffer_Release(&ob);
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ 32-value blocks */

/* legacy(type_id, x, imatrix_or_None, out, rows, n_per_row): Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 (2, 3, 6, 7, 8),
 * IQ4_NL (20), F16 (1) or BF16 (30); x float32 C-contiguous [rows * n_per_row], imatrix float32 [n_per_row] or None. */
static PyObject *py_legacy(PyObject *self, PyObject *args) {
    int type;
    Py_buffer xb, ob, qb;
    PyObject *imatrix;
    Py_ssize_t rows, n;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*Ow*nn", &type, &xb, &imatrix, &ob, &rows, &n)) return NULL;
    int have_q = imatrix != Py_None;
    if (have_q && PyObject_GetBuffer(imatrix, &qb, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&xb);
        PyBuffer_Release(&ob);
        return NULL;
    }
    const int bytes = lg_block_bytes(type), per_block = lg_block_values(type);
    const char *err = NULL;
    if (!bytes || !per_block) err = "unknown block type id";
    else if (n <= 0 || n % per_block) err = "n_per_row must be a positive multiple of the block size";
    else if (rows < 0 || xb.len < (Py_ssize_t)(rows * n * sizeof(float))) err = "x is smaller than rows * n_per_row floats";
    else if (ob.len < rows * (n / per_block) * bytes) err = "out is too small";
    else if (have_q && qb.len < (Py_ssize_t)(n * sizeof(float))) err = "imatrix is smaller than n_per_row floats";
    if (!err) {
        const float *x = (const float *)xb.buf;
        const float *q = have_q ? (const float *)qb.buf : NULL;
        uint8_t *o = (uint8_t *)ob.buf;
        Py_BEGIN_ALLOW_THREADS
        lg_quantize_rows(type, x, q, rows, n, o);
        Py_END_ALLOW_THREADS
    }
    if (have_q) PyBuffer_Release(&qb);
    PyBuffer_Release(&xb);
    PyBuffer_Release(&ob);
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ IQ4_XS */

/* iq4_xs(x, imatrix_or_None, out, rows, n_per_row): x float32 C-contiguous [rows * n_per_row],
 * imatrix float32 [n_per_row] or None, out writable uint8 [rows * n_per_row / 256 * 136]. */
static PyObject *py_iq4_xs(PyObject *self, PyObject *args) {
    Py_buffer xb, ob, qb;
    PyObject *imatrix;
    Py_ssize_t rows, n;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*Ow*nn", &xb, &imatrix, &ob, &rows, &n)) return NULL;
    int have_q = imatrix != Py_None;
    if (have_q && PyObject_GetBuffer(imatrix, &qb, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&xb);
        PyBuffer_Release(&ob);
        return NULL;
    }
    const char *err = NULL;
    if (n <= 0 || n % LG_IQ4XS_QK) err = "n_per_row must be a positive multiple of 256";
    else if (rows < 0 || xb.len < (Py_ssize_t)(rows * n * sizeof(float))) err = "x is smaller than rows * n_per_row floats";
    else if (ob.len < rows * (n / LG_IQ4XS_QK) * LG_IQ4XS_BYTES) err = "out is too small";
    else if (have_q && qb.len < (Py_ssize_t)(n * sizeof(float))) err = "imatrix is smaller than n_per_row floats";
    if (!err) {
        const float *x = (const float *)xb.buf;
        const float *q = have_q ? (const float *)qb.buf : NULL;
        uint8_t *o = (uint8_t *)ob.buf;
        Py_BEGIN_ALLOW_THREADS
        lg_rows_iq4xs(x, q, rows, n, o);
        Py_END_ALLOW_THREADS
    }
    if (have_q) PyBuffer_Release(&qb);
    PyBuffer_Release(&xb);
    PyBuffer_Release(&ob);
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ TQ1_0, TQ2_0, MXFP4 */

/* simple(type_id, x, out, rows, n_per_row): x float32 C-contiguous [rows * n_per_row], out writable uint8. */
static PyObject *py_simple(PyObject *self, PyObject *args) {
    int type;
    Py_buffer xb, ob;
    Py_ssize_t rows, n;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*w*nn", &type, &xb, &ob, &rows, &n)) return NULL;
    const int per_block = sm_block_values(type), bytes = sm_block_bytes(type);
    const char *err = NULL;
    if (!per_block) err = "unknown block type id";
    else if (n <= 0 || n % per_block) err = "n_per_row must be a positive multiple of the block size";
    else if (rows < 0 || xb.len < (Py_ssize_t)(rows * n * sizeof(float))) err = "x is smaller than rows * n_per_row floats";
    else if (ob.len < rows * (n / per_block) * bytes) err = "out is too small";
    if (!err) {
        const float *x = (const float *)xb.buf;
        uint8_t *o = (uint8_t *)ob.buf;
        Py_BEGIN_ALLOW_THREADS
        sm_quantize_rows(type, x, rows, n, o);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&xb);
    PyBuffer_Release(&ob);
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ grid types (IQ3_*, IQ2_*, IQ1_*) */

/* grid_codes(type_id, codes): the type's grid points as uint16 codes (3 bits per coordinate),
 * handed over once; the lookup tables are built from them at first use. */
static PyObject *py_grid_codes(PyObject *self, PyObject *args) {
    int type;
    Py_buffer cb;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*", &type, &cb)) return NULL;
    gr_table *t = gr_table_for(type);
    const char *err = NULL;
    if (!t) err = "not a grid type id";
    else if (cb.len != (Py_ssize_t)(t->size * sizeof(uint16_t))) err = "codes must be one uint16 per grid point";
    else if (!t->codes) {
        uint16_t *codes = malloc(cb.len);
        if (!codes) err = "out of memory";
        else {
            memcpy(codes, cb.buf, cb.len);
            t->codes = codes;
        }
    }
    PyBuffer_Release(&cb);
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* grid(type_id, x, imatrix_or_None, out, rows, n_per_row) -> -1, or the first row whose values
 * are too large for the grid search (ggml aborts on such rows). */
static PyObject *py_grid(PyObject *self, PyObject *args) {
    int type;
    Py_buffer xb, ob, qb;
    PyObject *imatrix;
    Py_ssize_t rows, n;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*Ow*nn", &type, &xb, &imatrix, &ob, &rows, &n)) return NULL;
    int have_q = imatrix != Py_None;
    if (have_q && PyObject_GetBuffer(imatrix, &qb, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&xb);
        PyBuffer_Release(&ob);
        return NULL;
    }
    const int per_block = gr_block_values(type), bytes = gr_block_bytes(type);
    const char *err = NULL;
    int64_t bad = -1;
    if (!per_block) err = "not a grid type id";
    else if (!gr_prepare(type)) err = "grid tables unavailable: grid_codes was not called, or out of memory";
    else if (!have_q && gr_needs_imatrix(type)) err = "this type needs an importance vector";
    else if (n <= 0 || n % per_block) err = "n_per_row must be a positive multiple of 256";
    else if (rows < 0 || xb.len < (Py_ssize_t)(rows * n * sizeof(float))) err = "x is smaller than rows * n_per_row floats";
    else if (ob.len < rows * (n / per_block) * bytes) err = "out is too small";
    else if (have_q && qb.len < (Py_ssize_t)(n * sizeof(float))) err = "imatrix is smaller than n_per_row floats";
    if (!err) {
        const float *x = (const float *)xb.buf;
        const float *q = have_q ? (const float *)qb.buf : NULL;
        uint8_t *o = (uint8_t *)ob.buf;
        Py_BEGIN_ALLOW_THREADS
        bad = gr_quantize_rows(type, x, q, rows, n, o);
        Py_END_ALLOW_THREADS
    }
    if (have_q) PyBuffer_Release(&qb);
    PyBuffer_Release(&xb);
    PyBuffer_Release(&ob);
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    return PyLong_FromLongLong(bad);
}

/* ------------------------------------------------------------------ straight from the source's bytes */

/* F16, BF16 or F32 source values -> float32, exactly (every F16/BF16 value is a float32).
 * Returns 1 when any value is infinite or NaN (ggml rejects such rows), else 0. */
KQ_CLONES static int src_to_f32(int src_type, const uint8_t *restrict src, int64_t count, float *restrict dst) {
    uint32_t bad = 0;
    if (src_type == 1) {
        const uint16_t *h = (const uint16_t *)src;
        for (int64_t i = 0; i < count; ++i) {
            /* exponent and mantissa moved into float32 position, exponent rebiased (15 -> 127);
             * subnormal halves are renormalized by one exact float subtraction */
            const uint32_t em = (uint32_t)(h[i] & 0x7fffu) << 13;
            const uint32_t e = em & 0x0f800000u;
            bad |= e == 0x0f800000u;
            const float sub = kq_float(em + 0x38800000u) - kq_float(0x38800000u);
            const uint32_t mag = e == 0 ? kq_bits(sub) : em + 0x38000000u;
            dst[i] = kq_float(mag | (uint32_t)(h[i] & 0x8000u) << 16);
        }
    } else if (src_type == 30) {
        const uint16_t *h = (const uint16_t *)src;
        for (int64_t i = 0; i < count; ++i) {
            bad |= (h[i] & 0x7f80u) == 0x7f80u;
            dst[i] = kq_float((uint32_t)h[i] << 16);
        }
    } else {
        const uint32_t *u = (const uint32_t *)src;
        for (int64_t i = 0; i < count; ++i) {
            bad |= (u[i] & 0x7f800000u) == 0x7f800000u;
            dst[i] = kq_float(u[i]);
        }
    }
    return bad != 0;
}

static int src_value_bytes(int src_type) { return src_type == 1 || src_type == 30 ? 2 : src_type == 0 ? 4 : 0; }

/* One quantizer for every type this helper holds; -1 for an id it does not. */
static int any_quantize_rows(int type, const float *x, const float *q, int64_t rows, int64_t n, uint8_t *o) {
    if (type >= 10 && type <= 15) return kq_quantize_rows(type, x, q, rows, n, o);
    if (type == 23) { lg_rows_iq4xs(x, q, rows, n, o); return 0; }
    if (lg_block_values(type)) return lg_quantize_rows(type, x, q, rows, n, o);
    if (sm_block_values(type)) { sm_quantize_rows(type, x, rows, n, o); return 0; }
    if (gr_block_values(type)) return gr_quantize_rows(type, x, q, rows, n, o) < 0 ? 0 : -2;
    return -1;
}

static int any_geometry(int type, int *values, int *bytes) {
    if (type >= 10 && type <= 15) { *values = KQ_QK; *bytes = kq_type_bytes[type - 10]; }
    else if (type == 23) { *values = LG_IQ4XS_QK; *bytes = LG_IQ4XS_BYTES; }
    else if (lg_block_values(type)) { *values = lg_block_values(type); *bytes = lg_block_bytes(type); }
    else if (sm_block_values(type)) { *values = sm_block_values(type); *bytes = sm_block_bytes(type); }
    else if (gr_block_values(type) && gr_table_for(type)->codes) { *values = GR_QK; *bytes = gr_block_bytes(type); }
    else return 0;
    return 1;
}

#define SRC_CHUNK_VALUES 32768  /* float32 staging per step: stays in the L2 cache */

/* from_source(type_id, src_type, src, imatrix_or_None, out, rows, n_per_row) -> -1, or the first
 * row (of this call) holding an infinite or NaN value. src holds rows * n_per_row values of
 * F16 (1), BF16 (30) or F32 (0); they are widened a few rows at a time into a small buffer and
 * quantized from there, so no float32 copy of the tensor is ever made. */
static PyObject *py_from_source(PyObject *self, PyObject *args) {
    int type, src_type;
    Py_buffer sb, ob, qb;
    PyObject *imatrix;
    Py_ssize_t rows, n;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiy*Ow*nn", &type, &src_type, &sb, &imatrix, &ob, &rows, &n)) return NULL;
    int have_q = imatrix != Py_None;
    if (have_q && PyObject_GetBuffer(imatrix, &qb, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&sb);
        PyBuffer_Release(&ob);
        return NULL;
    }
    int per_block = 0, bytes = 0;
    const int vbytes = src_value_bytes(src_type);
    const char *err = NULL;
    if (!any_geometry(type, &per_block, &bytes)) err = "unknown block type id";
    else if (gr_block_values(type) && !gr_prepare(type)) err = "grid tables unavailable (out of memory)";
    else if (gr_block_values(type) && !have_q && gr_needs_imatrix(type)) err = "this type needs an importance vector";
    else if (!vbytes) err = "source type must be F32 (0), F16 (1) or BF16 (30)";
    else if (n <= 0 || n % per_block) err = "n_per_row must be a positive multiple of the block size";
    else if (rows < 0 || sb.len < (Py_ssize_t)(rows * n * vbytes)) err = "src is smaller than rows * n_per_row values";
    else if (ob.len < rows * (n / per_block) * bytes) err = "out is too small";
    else if (have_q && qb.len < (Py_ssize_t)(n * sizeof(float))) err = "imatrix is smaller than n_per_row floats";
    int64_t bad_row = -1;
    int too_large = 0;
    if (!err) {
        const int64_t step = n >= SRC_CHUNK_VALUES ? 1 : SRC_CHUNK_VALUES / n;
        float *buf = (float *)malloc((size_t)(step * n) * sizeof(float));
        if (!buf) err = "out of memory";
        else {
            const uint8_t *s = (const uint8_t *)sb.buf;
            const float *q = have_q ? (const float *)qb.buf : NULL;
            uint8_t *o = (uint8_t *)ob.buf;
            const int64_t row_out = n / per_block * bytes;
            Py_BEGIN_ALLOW_THREADS
            for (int64_t r = 0; r < rows && bad_row < 0; r += step) {
                const int64_t k = rows - r < step ? rows - r : step;
                if (src_to_f32(src_type, s + r * n * vbytes, k * n, buf)) {
                    for (int64_t j = 0; j < k && bad_row < 0; ++j)   /* which row: for the message */
                        if (src_to_f32(src_type, s + (r + j) * n * vbytes, n, buf)) bad_row = r + j;
                    break;
                }
                if (any_quantize_rows(type, buf, q, k, n, o + r * row_out) == -2) { too_large = 1; break; }
            }
            Py_END_ALLOW_THREADS
            free(buf);
            if (too_large) err = "values too large for the grid search (ggml aborts on them)";
        }
    }
    if (have_q) PyBuffer_Release(&qb);
    PyBuffer_Release(&sb);
    PyBuffer_Release(&ob);
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    return PyLong_FromLongLong(bad_row);
}

/* widen(src_type, src, out, count) -> 1 when any value is infinite or NaN, else 0: F16/BF16/F32
 * values as float32 into out (float32 [count]). */
static PyObject *py_widen(PyObject *self, PyObject *args) {
    int src_type;
    Py_buffer sb, ob;
    Py_ssize_t count;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*w*n", &src_type, &sb, &ob, &count)) return NULL;
    const int vbytes = src_value_bytes(src_type);
    const char *err = NULL;
    int bad = 0;
    if (!vbytes) err = "source type must be F32 (0), F16 (1) or BF16 (30)";
    else if (count < 0 || sb.len < count * vbytes) err = "src is smaller than count values";
    else if (ob.len < (Py_ssize_t)(count * sizeof(float))) err = "out is too small";
    if (!err) {
        const uint8_t *s = (const uint8_t *)sb.buf;
        float *o = (float *)ob.buf;
        Py_BEGIN_ALLOW_THREADS
        bad = src_to_f32(src_type, s, count, o);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&sb);
    PyBuffer_Release(&ob);
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    return PyBool_FromLong(bad);
}

/* ------------------------------------------------------------------ geometry */

/* geometry(type_id) -> (values per block, bytes per block) this helper writes, or None.
 * The Python side checks these against gguf-py's table (the one source of the facts). */
static PyObject *py_geometry(PyObject *self, PyObject *args) {
    int type;
    (void)self;
    if (!PyArg_ParseTuple(args, "i", &type)) return NULL;
    if (type >= 10 && type <= 15) return Py_BuildValue("(ii)", KQ_QK, kq_type_bytes[type - 10]);
    if (type == 23) return Py_BuildValue("(ii)", LG_IQ4XS_QK, LG_IQ4XS_BYTES);
    if (lg_block_values(type)) return Py_BuildValue("(ii)", lg_block_values(type), lg_block_bytes(type));
    if (sm_block_values(type)) return Py_BuildValue("(ii)", sm_block_values(type), sm_block_bytes(type));
    if (gr_block_values(type) && gr_table_for(type)->codes) return Py_BuildValue("(ii)", GR_QK, gr_block_bytes(type));
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ module */

static PyMethodDef kquants_methods[] = {
    {"kquant", py_kquant, METH_VARARGS,
     "kquant(type_id, x, imatrix_or_None, out, rows, n_per_row): ggml K-quant bytes into out."},
    {"legacy", py_legacy, METH_VARARGS,
     "legacy(type_id, x, imatrix_or_None, out, rows, n_per_row): Q4_0..Q8_0 / IQ4_NL bytes into out."},
    {"iq4_xs", py_iq4_xs, METH_VARARGS,
     "iq4_xs(x, imatrix_or_None, out, rows, n_per_row): ggml's IQ4_XS bytes into out."},
    {"simple", py_simple, METH_VARARGS,
     "simple(type_id, x, out, rows, n_per_row): TQ1_0 / TQ2_0 / MXFP4 bytes into out."},
    {"grid_codes", py_grid_codes, METH_VARARGS,
     "grid_codes(type_id, codes): hand over a grid type's points (uint16, 3 bits per coordinate)."},
    {"grid", py_grid, METH_VARARGS,
     "grid(type_id, x, imatrix_or_None, out, rows, n_per_row): IQ3_* / IQ2_* / IQ1_* bytes into out; -1, or "
     "the first row too large for the grid search."},
    {"from_source", py_from_source, METH_VARARGS,
     "from_source(type_id, src_type, src, imatrix_or_None, out, rows, n_per_row): quantize F16/BF16/F32 "
     "source bytes directly; -1, or the first row holding an infinite or NaN value."},
    {"widen", py_widen, METH_VARARGS,
     "widen(src_type, src, out, count): F16/BF16/F32 values into float32 out; True if any is not finite."},
    {"geometry", py_geometry, METH_VARARGS,
     "geometry(type_id): (values, bytes) per block this helper writes for the type, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kquants_module = {
    PyModuleDef_HEAD_INIT, "_kquants", "Compiled block-quantization kernels.", -1, kquants_methods,
};

PyMODINIT_FUNC PyInit__kquants(void) { return PyModule_Create(&kquants_module); }
