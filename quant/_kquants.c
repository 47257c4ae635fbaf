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
    {"geometry", py_geometry, METH_VARARGS,
     "geometry(type_id): (values, bytes) per block this helper writes for the type, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kquants_module = {
    PyModuleDef_HEAD_INIT, "_kquants", "Compiled block-quantization kernels.", -1, kquants_methods,
};

PyMODINIT_FUNC PyInit__kquants(void) { return PyModule_Create(&kquants_module); }
