/* quant._qdot: matrix products that read ggml blocks directly, as ggml's CPU backend does.
 *
 * y[t, r] = dot(weight row r, activation row t). Each activation row is first quantized to
 * the weight type's vec_dot type (Q8_0, Q8_1 or Q8_K; the rounding of ggml-cpu's x86
 * quantize_row_q8_*), then every dot product sums integers per block and combines the
 * blocks in float32 in the order of ggml's generic `ggml_vec_dot_*` (ggml-cpu/quants.c).
 * Integer sums are exact, so the vector paths give the scalar path's results bit for bit:
 * they only compute the integer parts faster and keep the float operations and their order.
 * quant/qdot.py holds the numpy twin that is the readable reference. The AVX2 path also has
 * tiles (several weight rows x several activation rows per pass) for a prompt's rows and,
 * for the 32-value types, for a decoding step's single row (see AVX2_TILE).
 *
 * Built for the baseline instruction set; AVX2 and AVX-512 VNNI functions are compiled with
 * a target attribute and chosen at run time (`__builtin_cpu_supports`); CONVKIT_QDOT_ISA=avx2
 * or =scalar forces a lower path (the scalar one is plain C). Rows are split over a small pool of threads that persists
 * between calls (starting threads per product would cost more than a decoding step's
 * products on a small model).
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#define QD_X86 1
#include <immintrin.h>
#endif

/* ggml type ids */
enum { T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8, T_IQ4_NL = 20, T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14 };
enum { ACT_Q8_0, ACT_Q8_1, ACT_Q8_K };

#define QK 32
#define QKK 256

/* ------------------------------------------------------------------ fp16 */

static float f16_table[65536];

static float f16_to_f32_exact(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ffu, bits;
    if (e == 0) {
        if (m == 0) {
            bits = sign;
        } else {  /* subnormal: value m * 2^-24, exact in float */
            float f = (float)m * 0x1.0p-24f;
            memcpy(&bits, &f, 4);
            bits |= sign;
        }
    } else if (e == 31) {
        bits = sign | 0x7f800000u | (m << 13);
    } else {
        bits = sign | ((e + 112) << 23) | (m << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return f16_table[h];
}

/* ggml_compute_fp32_to_fp16: round to nearest even, NaN -> 0x7e00 */
static uint16_t f32_to_f16_bits(float f) {
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    uint32_t w, bits;
    memcpy(&w, &f, 4);
    const uint32_t shl1_w = w + w, sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    const uint32_t bb = (bias >> 1) + 0x07800000u;
    float fb;
    memcpy(&fb, &bb, 4);
    base = fb + base;
    memcpy(&bits, &base, 4);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u, mant_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mant_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

static inline float round_f16(float f) { return f16_table[f32_to_f16_bits(f)]; }

/* ------------------------------------------------------------------ activations */

/* One activation row after quantization: int8 values, per-block scales as ggml's dot
 * products read them (fp16 d already widened), Q8_1's s, Q8_K's 16-value sums, and the
 * integer sum of each 32-value block (used by the vector paths' unsigned-weight identity
 * sum((w - k) * q) = sum(w * q) - k * sum(q)). */
typedef struct {
    int8_t *q;
    float *d;
    float *s;         /* Q8_1 */
    int16_t *bsums;   /* Q8_K */
    int32_t *qsum;    /* Q8_0 / Q8_1: sum of q per 32-value block */
    int8_t *qp;       /* Q8_K for the K-quant tiles: q in lane-pair or lane-quad order (pair_lanes, quad_lanes) */
    int16_t *q16;     /* Q8_K for the Q6_K tiles: q widened, in lane-pair order */
} qact;

/* Each 32 values reordered so that bytes 4l..4l+3 hold values l, l+8, l+16, l+24: one
 * 4-byte dot product (vpdpbusd) then sums the values of one lane of a 32-value sub-block. */
static void quad_lanes(const int8_t *q, int8_t *out, int n) {
    for (int g = 0; g < n; g += 32)
        for (int l = 0; l < 8; l++)
            for (int k = 0; k < 4; k++) out[g + 4 * l + k] = q[g + l + 8 * k];
}

/* pair_lanes widened to int16 (for products with int16 weights) */
static void pair_lanes16(const int8_t *q, int16_t *out, int n) {
    for (int g = 0; g < n; g += 16)
        for (int k = 0; k < 8; k++) {
            out[g + 2 * k] = q[g + k];
            out[g + 2 * k + 1] = q[g + k + 8];
        }
}

/* Each 16 values reordered 0, 8, 1, 9, ..., 7, 15: a byte-pair product (maddubs) then sums two
 * values of the same lane (value index mod 8), the lanes of ggml's generic K-quant dot products. */
static void pair_lanes(const int8_t *q, int8_t *out, int n) {
    for (int g = 0; g < n; g += 16)
        for (int k = 0; k < 8; k++) {
            out[g + 2 * k] = q[g + k];
            out[g + 2 * k + 1] = q[g + k + 8];
        }
}

/* ggml-cpu x86 quantize_row_q8_0 / _q8_1: q = round_half_even(x * (127 / amax)), d = fp16(amax / 127) */
static void quantize_q8_0_row(const float *x, int n, qact *a, int with_s) {
    for (int b = 0; b < n / QK; b++) {
        const float *xb = x + b * QK;
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) {
            const float v = fabsf(xb[j]);
            if (v > amax) amax = v;
        }
        const float d = amax / 127.0f;
        const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            const int q = (int)rintf(xb[j] * id);
            a->q[b * QK + j] = (int8_t)q;
            sum += q;
        }
        a->d[b] = round_f16(d);
        a->qsum[b] = sum;
        if (with_s) a->s[b] = round_f16(d * (float)sum);
    }
}

/* quantize_row_q8_K: the first value of largest magnitude maps to -127; d = 1 / iscale (float32) */
static void quantize_q8_k_row(const float *x, int n, qact *a) {
    for (int b = 0; b < n / QKK; b++) {
        const float *xb = x + b * QKK;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QKK; j++) {
            const float ax = fabsf(xb[j]);
            if (ax > amax) { amax = ax; max = xb[j]; }
        }
        int8_t *q = a->q + b * QKK;
        if (amax == 0.0f) {
            a->d[b] = 0.0f;
            memset(q, 0, QKK);
            memset(a->bsums + b * 16, 0, 16 * sizeof(int16_t));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < QKK; j++) {
            int v = (int)rintf(iscale * xb[j]);
            q[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int j = 0; j < 16; j++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) sum += q[j * 16 + i];
            a->bsums[b * 16 + j] = (int16_t)sum;
        }
        a->d[b] = 1.0f / iscale;
    }
}

/* ------------------------------------------------------------------ float parts (shared) */

/* The float combination of per-block integer sums, exactly as the generic ggml_vec_dot_*. */
static float combine_q4_0(const uint8_t *w, const qact *a, const int32_t *isum, int nb, int b0, float sumf) {
    for (int i = 0; i < nb; i++) sumf += (float)isum[i] * f16(w + 18 * (b0 + i)) * a->d[b0 + i];
    return sumf;
}

static float combine_q4_1(const uint8_t *w, const qact *a, const int32_t *isum, int nb, int b0, float sumf) {
    for (int i = 0; i < nb; i++) {
        const uint8_t *blk = w + 20 * (b0 + i);
        sumf += (f16(blk) * a->d[b0 + i]) * (float)isum[i] + f16(blk + 2) * a->s[b0 + i];
    }
    return sumf;
}

static float combine_q5_1(const uint8_t *w, const qact *a, const int32_t *isum, int nb, int b0, float sumf) {
    for (int i = 0; i < nb; i++) {
        const uint8_t *blk = w + 24 * (b0 + i);
        sumf += (f16(blk) * a->d[b0 + i]) * (float)isum[i] + f16(blk + 2) * a->s[b0 + i];
    }
    return sumf;
}

static float combine_iq4_nl(const uint8_t *w, const qact *a, const int32_t *isum, int nb, int b0, float sumf) {
    for (int i = 0; i < nb; i++) sumf += (a->d[b0 + i] * f16(w + 18 * (b0 + i))) * (float)isum[i];
    return sumf;
}

static float combine_q5_0(const uint8_t *w, const qact *a, const int32_t *isum, int nb, int b0, float sumf) {
    for (int i = 0; i < nb; i++) sumf += (f16(w + 22 * (b0 + i)) * a->d[b0 + i]) * (float)isum[i];
    return sumf;
}

static float combine_q8_0(const uint8_t *w, const qact *a, const int32_t *isum, int nb, int b0, float sumf) {
    for (int i = 0; i < nb; i++) sumf += (float)isum[i] * (f16(w + 34 * (b0 + i)) * a->d[b0 + i]);
    return sumf;
}

/* ------------------------------------------------------------------ scalar integer parts */

/* signed sum over one 32-value block, ggml's element values */
static int32_t isum_q4_0(const uint8_t *blk, const int8_t *q) {
    const uint8_t *qs = blk + 2;
    int s0 = 0, s1 = 0;
    for (int j = 0; j < 16; j++) {
        s0 += ((qs[j] & 0x0F) - 8) * q[j];
        s1 += ((qs[j] >> 4) - 8) * q[j + 16];
    }
    return s0 + s1;
}

static int32_t isum_q4_1(const uint8_t *blk, const int8_t *q) {
    const uint8_t *qs = blk + 4;
    int s0 = 0, s1 = 0;
    for (int j = 0; j < 16; j++) {
        s0 += (qs[j] & 0x0F) * q[j];
        s1 += (qs[j] >> 4) * q[j + 16];
    }
    return s0 + s1;
}

static int32_t isum_q5_1(const uint8_t *blk, const int8_t *q) {
    uint32_t qh;
    memcpy(&qh, blk + 4, 4);
    const uint8_t *qs = blk + 8;
    int s0 = 0, s1 = 0;
    for (int j = 0; j < 16; j++) {
        s0 += (int)((qs[j] & 0x0F) | (((qh >> j) & 1u) << 4)) * q[j];
        s1 += (int)((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4)) * q[j + 16];
    }
    return s0 + s1;
}

/* IQ4_NL's 16 non-linear values (ggml's kvalues_iq4nl) */
static const int8_t IQ4NL_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

static int32_t isum_iq4_nl(const uint8_t *blk, const int8_t *q) {
    const uint8_t *qs = blk + 2;
    int s0 = 0, s1 = 0;
    for (int j = 0; j < 16; j++) {
        s0 += IQ4NL_VALUES[qs[j] & 0x0F] * q[j];
        s1 += IQ4NL_VALUES[qs[j] >> 4] * q[j + 16];
    }
    return s0 + s1;
}

static int32_t isum_q5_0(const uint8_t *blk, const int8_t *q) {
    uint32_t qh;
    memcpy(&qh, blk + 2, 4);
    const uint8_t *qs = blk + 6;
    int s0 = 0, s1 = 0;
    for (int j = 0; j < 16; j++) {
        const int x0 = (int)((qs[j] & 0x0F) | (((qh >> j) & 1u) << 4)) - 16;
        const int x1 = (int)((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4)) - 16;
        s0 += x0 * q[j];
        s1 += x1 * q[j + 16];
    }
    return s0 + s1;
}

static int32_t isum_q8_0(const uint8_t *blk, const int8_t *q) {
    const int8_t *qs = (const int8_t *)(blk + 2);
    int s = 0;
    for (int j = 0; j < 32; j++) s += qs[j] * q[j];
    return s;
}

#define CHUNK 256  /* blocks whose integer sums are held at once */

#define SCALAR_DOT(name, bytes, isum_fn, combine_fn)                                     \
    static float name(const uint8_t *w, const qact *a, int nb) {                         \
        int32_t isum[CHUNK];                                                             \
        float total = 0.0f;                                                              \
        for (int b0 = 0; b0 < nb; b0 += CHUNK) {                                         \
            const int m = nb - b0 < CHUNK ? nb - b0 : CHUNK;                             \
            for (int i = 0; i < m; i++) isum[i] = isum_fn(w + (bytes) * (b0 + i), a->q + QK * (b0 + i)); \
            total = combine_fn(w, a, isum, m, b0, total); /* one running sum, as ggml's sumf */ \
        }                                                                                \
        return total;                                                                    \
    }

SCALAR_DOT(dot_q4_0_scalar, 18, isum_q4_0, combine_q4_0)
SCALAR_DOT(dot_q4_1_scalar, 20, isum_q4_1, combine_q4_1)
SCALAR_DOT(dot_q5_0_scalar, 22, isum_q5_0, combine_q5_0)
SCALAR_DOT(dot_q5_1_scalar, 24, isum_q5_1, combine_q5_1)
SCALAR_DOT(dot_iq4_nl_scalar, 18, isum_iq4_nl, combine_iq4_nl)
SCALAR_DOT(dot_q8_0_scalar, 34, isum_q8_0, combine_q8_0)

/* Q4_K: 8 lanes of integer sums (lane l: values at positions = l mod 8), as ggml's aux32 */
static void q4k_scales(const uint8_t *sc, uint8_t scales[8], uint8_t mins[8]) {
    for (int j = 0; j < 4; j++) {
        scales[j] = sc[j] & 63;
        mins[j] = sc[j + 4] & 63;
        scales[j + 4] = (sc[j + 8] & 0x0F) | ((sc[j] >> 6) << 4);
        mins[j + 4] = (sc[j + 8] >> 4) | ((sc[j + 4] >> 6) << 4);
    }
}

static void lanes_q4_k_scalar(const uint8_t *blk, const int8_t *q8, const uint8_t scales[8], int32_t aux32[8]) {
    const uint8_t *q4 = blk + 16;
    memset(aux32, 0, 8 * sizeof(int32_t));
    for (int j = 0; j < 4; j++) {      /* 64 values: low nibbles, then high nibbles */
        for (int half = 0; half < 2; half++) {
            const int32_t scale = scales[2 * j + half];
            for (int l = 0; l < 32; l++) {
                const int v = half ? (q4[l] >> 4) : (q4[l] & 0x0F);
                aux32[l & 7] += scale * (v * q8[64 * j + 32 * half + l]);
            }
        }
        q4 += 32;
    }
}

/* Q5_K: Q4_K's nibbles (at byte 48) plus a fifth bit from qh (byte 16): bit k of qh[l] for
 * value l of 32-value sub-block k */
static void lanes_q5_k_scalar(const uint8_t *blk, const int8_t *q8, const uint8_t scales[8], int32_t aux32[8]) {
    const uint8_t *qh = blk + 16, *q4 = blk + 48;
    memset(aux32, 0, 8 * sizeof(int32_t));
    for (int j = 0; j < 4; j++) {
        for (int half = 0; half < 2; half++) {
            const int sub = 2 * j + half;
            const int32_t scale = scales[sub];
            for (int l = 0; l < 32; l++) {
                const int v = (half ? (q4[l] >> 4) : (q4[l] & 0x0F)) | (((qh[l] >> sub) & 1) << 4);
                aux32[l & 7] += scale * (v * q8[32 * sub + l]);
            }
        }
        q4 += 32;
    }
}

static void lanes_q6_k_scalar(const uint8_t *blk, const int8_t *q8, int32_t aux32[8]) {
    const uint8_t *ql = blk, *qh = blk + 128;
    const int8_t *sc = (const int8_t *)(blk + 192);
    int8_t a[QKK];
    for (int j = 0; j < QKK; j += 128) {
        for (int l = 0; l < 32; l++) {
            a[j + l + 0] = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            a[j + l + 32] = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            a[j + l + 64] = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            a[j + l + 96] = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        }
        ql += 64;
        qh += 32;
    }
    memset(aux32, 0, 8 * sizeof(int32_t));
    for (int j = 0; j < 16; j++)
        for (int l = 0; l < 16; l++) aux32[l & 7] += sc[j] * (a[16 * j + l] * q8[16 * j + l]);
}

/* Q3_K: values (q3 2 bits) - (hmask bit ? 0 : 4), 16 six-bit scales - 32 (ggml's unpacking) */
static void q3k_scales(const uint8_t *packed, int8_t scales[16]) {
    uint32_t aux[4];
    memcpy(aux, packed, 12);
    const uint32_t tmp = aux[2], m1 = 0x03030303, m2 = 0x0f0f0f0f;
    aux[2] = ((aux[0] >> 4) & m2) | (((tmp >> 4) & m1) << 4);
    aux[3] = ((aux[1] >> 4) & m2) | (((tmp >> 6) & m1) << 4);
    aux[0] = (aux[0] & m2) | (((tmp >> 0) & m1) << 4);
    aux[1] = (aux[1] & m2) | (((tmp >> 2) & m1) << 4);
    memcpy(scales, aux, 16);
    for (int j = 0; j < 16; j++) scales[j] = (int8_t)(scales[j] - 32);
}

static void lanes_q3_k_scalar(const uint8_t *blk, const int8_t *q8, int32_t aux32[8]) {
    const uint8_t *hm = blk, *q3 = blk + 32;
    int8_t a[QKK], scales[16];
    for (int j = 0; j < 2; j++)
        for (int s = 0; s < 4; s++)
            for (int l = 0; l < 32; l++)
                a[128 * j + 32 * s + l] = (int8_t)(((q3[32 * j + l] >> (2 * s)) & 3) - ((hm[l] >> (4 * j + s)) & 1 ? 0 : 4));
    q3k_scales(blk + 96, scales);
    memset(aux32, 0, 8 * sizeof(int32_t));
    for (int j = 0; j < 16; j++)
        for (int l = 0; l < 16; l++) aux32[l & 7] += scales[j] * (a[16 * j + l] * q8[16 * j + l]);
}

/* Q2_K (ggml_vec_dot_q2_K_q8_K): one integer sum per block, no lanes */
static float dot_q2_k_scalar(const uint8_t *w, const qact *a, int nb) {
    float sumf = 0.0f;
    for (int i = 0; i < nb; i++) {
        const uint8_t *blk = w + 84 * i, *sc = blk, *q2 = blk + 16;
        const int8_t *q8 = a->q + QKK * i;
        int summs = 0, isum = 0;
        for (int j = 0; j < 16; j++) summs += a->bsums[16 * i + j] * (sc[j] >> 4);
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < 4; j++)
                for (int h = 0; h < 2; h++) {
                    int part = 0;
                    for (int l = 16 * h; l < 16 * h + 16; l++) part += q8[128 * k + 32 * j + l] * ((q2[32 * k + l] >> (2 * j)) & 3);
                    isum += (sc[8 * k + 2 * j + h] & 0xF) * part;
                }
        const float dall = a->d[i] * f16(blk + 80), dmin = a->d[i] * f16(blk + 82);
        sumf += dall * (float)isum - dmin * (float)summs;
    }
    return sumf;
}

/* The float part of ggml_vec_dot_q4_K_q8_K (q5_K the same) / q6_K_q8_K: 8 lane sums, the mins term in sumf */
typedef void (*lanes_q4k_fn)(const uint8_t *, const int8_t *, const uint8_t *, int32_t *);
typedef void (*lanes_q6k_fn)(const uint8_t *, const int8_t *, int32_t *);

static float dot_q4_k_with(const uint8_t *w, const qact *a, int nb, int bytes, lanes_q4k_fn lanes) {
    float sums[8] = {0}, sumf = 0.0f;
    for (int i = 0; i < nb; i++) {
        const uint8_t *blk = w + bytes * i;
        uint8_t scales[8], mins[8];
        int32_t aux32[8];
        q4k_scales(blk + 4, scales, mins);
        int sumi = 0;
        for (int j = 0; j < 16; j++) sumi += a->bsums[16 * i + j] * mins[j / 2];
        lanes(blk, a->q + QKK * i, scales, aux32);
        const float d = f16(blk) * a->d[i];
        for (int l = 0; l < 8; l++) sums[l] += d * (float)aux32[l];
        const float dmin = f16(blk + 2) * a->d[i];
        sumf -= dmin * (float)sumi;
    }
    for (int l = 0; l < 8; l++) sumf += sums[l];
    return sumf;
}

static float dot_q6_k_with(const uint8_t *w, const qact *a, int nb, int bytes, lanes_q6k_fn lanes) {
    float sums[8] = {0}, sumf = 0.0f;
    for (int i = 0; i < nb; i++) {
        const uint8_t *blk = w + bytes * i;
        int32_t aux32[8];
        lanes(blk, a->q + QKK * i, aux32);
        const float d = f16(blk + bytes - 2) * a->d[i];  /* Q6_K's and Q3_K's d: the last 2 bytes */
        for (int l = 0; l < 8; l++) sums[l] += d * (float)aux32[l];
    }
    for (int l = 0; l < 8; l++) sumf += sums[l];
    return sumf;
}

static float dot_q4_k_scalar(const uint8_t *w, const qact *a, int nb) { return dot_q4_k_with(w, a, nb, 144, lanes_q4_k_scalar); }
static float dot_q5_k_scalar(const uint8_t *w, const qact *a, int nb) { return dot_q4_k_with(w, a, nb, 176, lanes_q5_k_scalar); }
static float dot_q6_k_scalar(const uint8_t *w, const qact *a, int nb) { return dot_q6_k_with(w, a, nb, 210, lanes_q6_k_scalar); }
static float dot_q3_k_scalar(const uint8_t *w, const qact *a, int nb) { return dot_q6_k_with(w, a, nb, 110, lanes_q3_k_scalar); }

/* ------------------------------------------------------------------ AVX2 integer parts */
#ifdef QD_X86
#define AVX2 __attribute__((target("avx2,f16c")))

/* 8 vectors of 8 int32 -> one vector of their 8 horizontal sums (integer, exact) */
AVX2 static inline __m256i hsum8x8(__m256i v0, __m256i v1, __m256i v2, __m256i v3,
                                   __m256i v4, __m256i v5, __m256i v6, __m256i v7) {
    const __m256i s01 = _mm256_hadd_epi32(v0, v1), s23 = _mm256_hadd_epi32(v2, v3);
    const __m256i s45 = _mm256_hadd_epi32(v4, v5), s67 = _mm256_hadd_epi32(v6, v7);
    const __m256i a = _mm256_hadd_epi32(s01, s23), b = _mm256_hadd_epi32(s45, s67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

AVX2 static inline int32_t hsum8(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* 16 packed nibbles -> 32 bytes: low nibbles (values 0..15) then high nibbles (16..31) */
AVX2 static inline __m256i nibbles32(const uint8_t *p) {
    const __m128i t = _mm_loadu_si128((const __m128i *)p);
    const __m128i m = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(t, 4), m), _mm_and_si128(t, m));
}

/* 32 bits -> 32 bytes holding 0x10 where the bit is set */
AVX2 static inline __m256i bits32_x16(const uint8_t *p) {
    uint32_t x32;
    memcpy(&x32, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x32), shuf);
    bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_and_si256(_mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10));
}

/* unsigned bytes (< 128) times signed bytes, summed to 8 int32 lanes */
AVX2 static inline __m256i dot_u8_i8(__m256i x, const int8_t *q) {
    const __m256i y = _mm256_loadu_si256((const __m256i *)q);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
}

AVX2 static inline __m256i dot_i8_i8(const int8_t *p, const int8_t *q) {
    const __m256i x = _mm256_loadu_si256((const __m256i *)p), y = _mm256_loadu_si256((const __m256i *)q);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)),
                             _mm256_set1_epi16(1));
}

/* per-block lane vectors for the four 32-value types; `off` subtracts off * sum(q) */
#define LANES_Q4_0(blk, q) dot_u8_i8(nibbles32((blk) + 2), (q))
#define LANES_Q4_1(blk, q) dot_u8_i8(nibbles32((blk) + 4), (q))
#define LANES_Q5_0(blk, q) dot_u8_i8(_mm256_or_si256(nibbles32((blk) + 6), bits32_x16((blk) + 2)), (q))
#define LANES_Q8_0(blk, q) dot_i8_i8((const int8_t *)((blk) + 2), (q))

#define AVX2_ISUMS(name, bytes, LANES, off)                                                          \
    AVX2 static void name(const uint8_t *w, const qact *a, int b0, int m, int32_t *isum) {          \
        int i = 0;                                                                                   \
        for (; i + 8 <= m; i += 8) {                                                                 \
            const uint8_t *blk = w + (bytes) * (b0 + i);                                             \
            const int8_t *q = a->q + QK * (b0 + i);                                                  \
            __m256i s = hsum8x8(LANES(blk, q), LANES(blk + (bytes), q + 32),                         \
                                LANES(blk + 2 * (bytes), q + 64), LANES(blk + 3 * (bytes), q + 96),  \
                                LANES(blk + 4 * (bytes), q + 128), LANES(blk + 5 * (bytes), q + 160),\
                                LANES(blk + 6 * (bytes), q + 192), LANES(blk + 7 * (bytes), q + 224));\
            if (off) s = _mm256_sub_epi32(s, _mm256_mullo_epi32(_mm256_set1_epi32(off),             \
                                  _mm256_loadu_si256((const __m256i *)(a->qsum + b0 + i))));         \
            _mm256_storeu_si256((__m256i *)(isum + i), s);                                           \
        }                                                                                            \
        for (; i < m; i++)                                                                           \
            isum[i] = hsum8(LANES(w + (bytes) * (b0 + i), a->q + QK * (b0 + i))) - (off) * a->qsum[b0 + i]; \
    }

AVX2_ISUMS(isums_q4_0_avx2, 18, LANES_Q4_0, 8)
AVX2_ISUMS(isums_q4_1_avx2, 20, LANES_Q4_1, 0)
AVX2_ISUMS(isums_q5_0_avx2, 22, LANES_Q5_0, 16)
AVX2_ISUMS(isums_q8_0_avx2, 34, LANES_Q8_0, 0)

#define AVX2_DOT(name, isums, combine)                                                   \
    AVX2 static float name(const uint8_t *w, const qact *a, int nb) {                    \
        int32_t isum[CHUNK];                                                             \
        float total = 0.0f;                                                              \
        for (int b0 = 0; b0 < nb; b0 += CHUNK) {                                         \
            const int m = nb - b0 < CHUNK ? nb - b0 : CHUNK;                             \
            isums(w, a, b0, m, isum);                                                    \
            total = combine(w, a, isum, m, b0, total);                                   \
        }                                                                                \
        return total;                                                                    \
    }

AVX2_DOT(dot_q4_0_avx2, isums_q4_0_avx2, combine_q4_0)
AVX2_DOT(dot_q4_1_avx2, isums_q4_1_avx2, combine_q4_1)
AVX2_DOT(dot_q5_0_avx2, isums_q5_0_avx2, combine_q5_0)
AVX2_DOT(dot_q8_0_avx2, isums_q8_0_avx2, combine_q8_0)

/* A tile of weight rows x activation rows at once. The float part of a dot product is one
 * running sum over the blocks (ggml's order), a chain of dependent additions whose latency,
 * not the integer work, bounds a single product; a tile runs up to TILE such chains side by
 * side, each in its own order. Each group of 8 weight blocks is decoded into registers once
 * for all of the tile's activation rows. Same integer sums, same float order per product. */
#define TILE 8
#define DECODE_Q4_0(blk) nibbles32((blk) + 2)
#define DECODE_Q4_1(blk) nibbles32((blk) + 4)
#define DECODE_Q5_0(blk) _mm256_or_si256(nibbles32((blk) + 6), bits32_x16((blk) + 2))
#define DECODE_Q8_0(blk) _mm256_loadu_si256((const __m256i *)((blk) + 2))
#define DECODE_Q5_1(blk) _mm256_or_si256(nibbles32((blk) + 8), bits32_x16((blk) + 4))
#define DECODE_IQ4_NL(blk) _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)IQ4NL_VALUES)), \
                                               nibbles32((blk) + 2))
#define DOTX_U(x, q) dot_u8_i8((x), (q))
#define DOTX_S(x, q) _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8((x), (x)),                 \
                         _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(q)), (x))), _mm256_set1_epi16(1))

/* one block's term of the running sum, as combine_* adds it: scalar, and for 8 blocks at
 * once (the same float operations in the same order, lane by lane). dw/mw: the blocks' fp16
 * scale/min, da/sa: the activation blocks' d/s, is: the integer sums. */
#define TERM_Q4_0(blk, a, is, b) ((float)(is) * f16(blk) * (a)->d[b])
#define TERM_Q4_1(blk, a, is, b) ((f16(blk) * (a)->d[b]) * (float)(is) + f16((blk) + 2) * (a)->s[b])
#define TERM_Q5_0(blk, a, is, b) ((f16(blk) * (a)->d[b]) * (float)(is))
#define TERM_Q8_0(blk, a, is, b) ((float)(is) * (f16(blk) * (a)->d[b]))
#define TERM_IQ4_NL(blk, a, is, b) (((a)->d[b] * f16(blk)) * (float)(is))
#define TERMS_Q4_0(dw, mw, da, sa, is) _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(is), dw), da)
#define TERMS_Q4_1(dw, mw, da, sa, is) _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(is)), \
                                                     _mm256_mul_ps(mw, sa))
#define TERMS_Q5_0(dw, mw, da, sa, is) _mm256_mul_ps(_mm256_mul_ps(dw, da), _mm256_cvtepi32_ps(is))
#define TERMS_Q8_0(dw, mw, da, sa, is) _mm256_mul_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(dw, da))
#define TERMS_IQ4_NL(dw, mw, da, sa, is) _mm256_mul_ps(_mm256_mul_ps(da, dw), _mm256_cvtepi32_ps(is))

/* the fp16 at byte `at` of 8 consecutive blocks, widened exactly */
AVX2 static inline __m256 f16x8(const uint8_t *blk, int bytes, int at) {
    uint16_t h[8];
    for (int k = 0; k < 8; k++) memcpy(&h[k], blk + bytes * k + at, 2);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
}

/* nr weight rows (row_bytes apart) x tt activation rows, nr * tt <= TILE: out[t * stride + r].
 * The terms of each product are computed 8 blocks at a time into term[], then the running
 * sums add them up block by block, all of the tile's sums side by side. */
#define AVX2_TILE(name, bytes, DECODE, DOTX, off, TERM, TERMS, has_min)                              \
    AVX2 static void name(const uint8_t *w, Py_ssize_t row_bytes, int nr, const qact *at, int tt,     \
                          int nb, float *out, Py_ssize_t stride) {                                   \
        float term[TILE][CHUNK];                                                                     \
        float total[TILE] = {0};                                                                     \
        for (int b0 = 0; b0 < nb; b0 += CHUNK) {                                                     \
            const int m = nb - b0 < CHUNK ? nb - b0 : CHUNK;                                         \
            for (int r = 0; r < nr; r++) {                                                           \
                const uint8_t *wr = w + r * row_bytes + (bytes) * b0;                                \
                float (*tr)[CHUNK] = term + r * tt;                                                  \
                int i = 0;                                                                           \
                for (; i + 8 <= m; i += 8) {                                                         \
                    const uint8_t *blk = wr + (bytes) * i;                                           \
                    const __m256i x0 = DECODE(blk), x1 = DECODE(blk + (bytes)),                      \
                                  x2 = DECODE(blk + 2 * (bytes)), x3 = DECODE(blk + 3 * (bytes)),    \
                                  x4 = DECODE(blk + 4 * (bytes)), x5 = DECODE(blk + 5 * (bytes)),    \
                                  x6 = DECODE(blk + 6 * (bytes)), x7 = DECODE(blk + 7 * (bytes));    \
                    const __m256 dw = f16x8(blk, (bytes), 0);                                        \
                    const __m256 mw = has_min ? f16x8(blk, (bytes), 2) : dw; (void)mw;                        \
                    for (int t = 0; t < tt; t++) {                                                   \
                        const int8_t *q = at[t].q + QK * (b0 + i);                                   \
                        __m256i s = hsum8x8(DOTX(x0, q), DOTX(x1, q + 32), DOTX(x2, q + 64),         \
                                            DOTX(x3, q + 96), DOTX(x4, q + 128), DOTX(x5, q + 160),  \
                                            DOTX(x6, q + 192), DOTX(x7, q + 224));                   \
                        if (off) s = _mm256_sub_epi32(s, _mm256_mullo_epi32(_mm256_set1_epi32(off),  \
                                         _mm256_loadu_si256((const __m256i *)(at[t].qsum + b0 + i)))); \
                        const __m256 da = _mm256_loadu_ps(at[t].d + b0 + i);                         \
                        const __m256 sa = has_min ? _mm256_loadu_ps(at[t].s + b0 + i) : da; (void)sa;        \
                        _mm256_storeu_ps(tr[t] + i, TERMS(dw, mw, da, sa, s));                       \
                    }                                                                                \
                }                                                                                    \
                for (; i < m; i++) {                                                                 \
                    const uint8_t *blk = wr + (bytes) * i;                                           \
                    const __m256i x = DECODE(blk);                                                   \
                    for (int t = 0; t < tt; t++) {                                                   \
                        const int32_t is = hsum8(DOTX(x, at[t].q + QK * (b0 + i))) - (off) * at[t].qsum[b0 + i]; \
                        tr[t][i] = TERM(blk, &at[t], is, b0 + i);                                    \
                    }                                                                                \
                }                                                                                    \
            }                                                                                        \
            const int chains = nr * tt;                                                              \
            for (int i = 0; i < m; i++)                                                              \
                for (int c = 0; c < chains; c++) total[c] += term[c][i];                             \
        }                                                                                            \
        for (int r = 0; r < nr; r++)                                                                 \
            for (int t = 0; t < tt; t++) out[t * stride + r] = total[r * tt + t];                    \
    }

AVX2_TILE(tile_q4_0_avx2, 18, DECODE_Q4_0, DOTX_U, 8, TERM_Q4_0, TERMS_Q4_0, 0)
AVX2_TILE(tile_q4_1_avx2, 20, DECODE_Q4_1, DOTX_U, 0, TERM_Q4_1, TERMS_Q4_1, 1)
AVX2_TILE(tile_q5_0_avx2, 22, DECODE_Q5_0, DOTX_U, 16, TERM_Q5_0, TERMS_Q5_0, 0)
AVX2_TILE(tile_q5_1_avx2, 24, DECODE_Q5_1, DOTX_U, 0, TERM_Q4_1, TERMS_Q4_1, 1)
AVX2_TILE(tile_iq4_nl_avx2, 18, DECODE_IQ4_NL, DOTX_S, 0, TERM_IQ4_NL, TERMS_IQ4_NL, 0)
AVX2_TILE(tile_q8_0_avx2, 34, DECODE_Q8_0, DOTX_S, 0, TERM_Q8_0, TERMS_Q8_0, 0)

/* 16 int16 products of two sub-blocks' halves -> 8 int32 lanes l: sa * (p[l] + p[l+8]) of
 * sub-block a plus sb * (...) of sub-block b. pa/pb hold 16 products each. */
AVX2 static inline __m256i scaled_lanes(__m256i pa, __m256i pb, int sa, int sb) {
    const __m128i ta = _mm_add_epi16(_mm256_castsi256_si128(pa), _mm256_extracti128_si256(pa, 1));
    const __m128i tb = _mm_add_epi16(_mm256_castsi256_si128(pb), _mm256_extracti128_si256(pb, 1));
    const __m256i ab = _mm256_set_m128i(_mm_unpackhi_epi16(ta, tb), _mm_unpacklo_epi16(ta, tb));
    const __m256i s = _mm256_set1_epi32((int)(((uint32_t)(uint16_t)sb << 16) | (uint16_t)sa));
    return _mm256_madd_epi16(ab, s);
}

/* 16 products x*q as int16 (x: 16 bytes signed or unsigned widened by the caller) */
AVX2 static inline __m256i prod16(__m128i x8, const int8_t *q, int is_unsigned) {
    const __m256i x = is_unsigned ? _mm256_cvtepu8_epi16(x8) : _mm256_cvtepi8_epi16(x8);
    const __m256i y = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)q));
    return _mm256_mullo_epi16(x, y);
}

AVX2 static void lanes_q4_k_avx2(const uint8_t *blk, const int8_t *q8, const uint8_t *scales, int32_t *aux32) {
    const uint8_t *q4 = blk + 16;
    const __m128i m = _mm_set1_epi8(0x0F);
    __m256i acc = _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        const __m128i b0 = _mm_loadu_si128((const __m128i *)(q4 + 32 * j));
        const __m128i b1 = _mm_loadu_si128((const __m128i *)(q4 + 32 * j + 16));
        const int8_t *y = q8 + 64 * j;
        /* sub-block 2j: low nibbles of 32 bytes; 2j+1: high nibbles. Lane sums over a
         * 32-value sub-block: (p[0..15] + p[16..31]) folded to 8 lanes. */
        const __m256i lo = _mm256_add_epi16(prod16(_mm_and_si128(b0, m), y, 1), prod16(_mm_and_si128(b1, m), y + 16, 1));
        const __m256i hi = _mm256_add_epi16(prod16(_mm_and_si128(_mm_srli_epi16(b0, 4), m), y + 32, 1),
                                            prod16(_mm_and_si128(_mm_srli_epi16(b1, 4), m), y + 48, 1));
        acc = _mm256_add_epi32(acc, scaled_lanes(lo, hi, scales[2 * j], scales[2 * j + 1]));
    }
    _mm256_storeu_si256((__m256i *)aux32, acc);
}

AVX2 static void lanes_q6_k_avx2(const uint8_t *blk, const int8_t *q8, int32_t *aux32) {
    const uint8_t *ql = blk, *qh = blk + 128;
    const int8_t *sc = (const int8_t *)(blk + 192);
    const __m128i m4 = _mm_set1_epi8(0x0F), m2 = _mm_set1_epi8(3), k32 = _mm_set1_epi8(32);
    __m256i acc = _mm256_setzero_si256();
    for (int half = 0; half < 2; half++) {      /* 128 values each */
        for (int part = 0; part < 2; part++) {  /* l in 0..15, 16..31 */
            const int o = 16 * part;
            const __m128i l0 = _mm_loadu_si128((const __m128i *)(ql + o));
            const __m128i l1 = _mm_loadu_si128((const __m128i *)(ql + 32 + o));
            const __m128i h = _mm_loadu_si128((const __m128i *)(qh + o));
            __m128i v[4];
            v[0] = _mm_or_si128(_mm_and_si128(l0, m4), _mm_slli_epi16(_mm_and_si128(h, m2), 4));
            v[1] = _mm_or_si128(_mm_and_si128(l1, m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 2), m2), 4));
            v[2] = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(l0, 4), m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 4), m2), 4));
            v[3] = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(l1, 4), m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 6), m2), 4));
            /* value index within the 128: 32*k + o + (0..15); its 16-value sub-block: 2k + part */
            for (int k = 0; k < 4; k += 2) {
                const int ia = 32 * k + o, ib = 32 * (k + 1) + o;
                const __m256i pa = prod16(_mm_sub_epi8(v[k], k32), q8 + 128 * half + ia, 0);
                const __m256i pb = prod16(_mm_sub_epi8(v[k + 1], k32), q8 + 128 * half + ib, 0);
                acc = _mm256_add_epi32(acc, scaled_lanes(pa, pb, sc[8 * half + ia / 16], sc[8 * half + ib / 16]));
            }
        }
        ql += 64;
        qh += 32;
    }
    _mm256_storeu_si256((__m256i *)aux32, acc);
}

/* K-quant tiles. ggml's generic K-quant products keep 8 integer lanes (value index mod 8).
 * Here weights and activations are both in lane-pair order (pair_lanes), so one byte-pair
 * product (maddubs) adds two values of the same lane, and the integer lanes come out equal
 * to dot_q4_k_with's / dot_q6_k_with's; the float parts are theirs, per row, in their order.
 * Each weight block is unpacked once for all of the tile's activation rows. The running
 * sums are one step per 256 values, so rows are simply taken one after the other. */
AVX2 static inline __m256i pair_order(__m256i x) {
    const __m256i order = _mm256_set_epi8(15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0,
                                          15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0);
    return _mm256_shuffle_epi8(x, order);
}

/* 16 lane-pair sums (int16) of one sub-block's 32 unsigned weights x activations -> folded to 8 by scaled_lanes */
AVX2 static inline __m256i pair_sums_u(__m256i w, const int8_t *qp) {
    return _mm256_maddubs_epi16(w, _mm256_loadu_si256((const __m256i *)qp));
}

/* Q4_K's 8 mins as 16 int16, each twice: paired with the 16 Q8_K sums of 16 values */
AVX2 static inline __m256i mins_x16(const uint8_t mins[8]) {
    const __m128i m = _mm_loadl_epi64((const __m128i *)mins);
    return _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m));
}

/* The float part of one Q4_K/Q5_K block for one activation row, dot_q4_k_with's operations
 * in its order (lanes: the block's 8 integer lane sums; mins16: its mins, each twice) */
AVX2 static inline void q45_k_float_step(const uint8_t *blk, const qact *a, int i, __m256i lanes, __m256i mins16,
                                         __m256 *sums, float *sumf) {
    const int sumi = hsum8(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(a->bsums + 16 * i)), mins16));
    const float d = f16(blk) * a->d[i];
    *sums = _mm256_add_ps(*sums, _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes)));
    const float dmin = f16(blk + 2) * a->d[i];
    *sumf -= dmin * (float)sumi;
}

/* the end of a K-quant product: the 8 float lane sums added to sumf, lane 0 first */
AVX2 static inline float k_lanes_total(__m256 sums, float sumf) {
    float lanes[8];
    _mm256_storeu_ps(lanes, sums);
    for (int l = 0; l < 8; l++) sumf += lanes[l];
    return sumf;
}

/* Sub-blocks 2j and 2j + 1 of a Q4_K (has_qh 0) or Q5_K block as 32 unsigned bytes each, natural order */
AVX2 static inline void q45_k_subblocks(const uint8_t *blk, int j, int has_qh, __m256i *lo, __m256i *hi) {
    const __m256i m = _mm256_set1_epi8(0x0F);
    const __m256i bytes = _mm256_loadu_si256((const __m256i *)(blk + (has_qh ? 48 : 16) + 32 * j));
    *lo = _mm256_and_si256(bytes, m);
    *hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), m);
    if (has_qh) {
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 16)), k16 = _mm256_set1_epi8(16);
        const __m256i b0 = _mm256_set1_epi8((char)(1 << (2 * j))), b1 = _mm256_set1_epi8((char)(1 << (2 * j + 1)));
        *lo = _mm256_or_si256(*lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b0), b0), k16));
        *hi = _mm256_or_si256(*hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, b1), b1), k16));
    }
}

AVX2 static inline void tile_q45_k_avx2(const uint8_t *w, Py_ssize_t row_bytes, int nr, const qact *at, int tt, int nb,
                                        float *out, Py_ssize_t stride, int bytes, int has_qh) {
    for (int r = 0; r < nr; r++) {
        const uint8_t *wr = w + r * row_bytes;
        __m256 sums[TILE];
        float sumf[TILE];
        for (int t = 0; t < tt; t++) {
            sums[t] = _mm256_setzero_ps();
            sumf[t] = 0.0f;
        }
        for (int i = 0; i < nb; i++) {
            const uint8_t *blk = wr + bytes * i;
            uint8_t scales[8], mins[8];
            q4k_scales(blk + 4, scales, mins);
            const __m256i mins16 = mins_x16(mins);
            __m256i acc[TILE];
            for (int t = 0; t < tt; t++) acc[t] = _mm256_setzero_si256();
            for (int j = 0; j < 4; j++) {
                __m256i lo, hi;  /* sub-blocks 2j and 2j + 1 */
                q45_k_subblocks(blk, j, has_qh, &lo, &hi);
                lo = pair_order(lo);
                hi = pair_order(hi);
                for (int t = 0; t < tt; t++) {
                    const int8_t *y = at[t].qp + QKK * i + 64 * j;
                    acc[t] = _mm256_add_epi32(acc[t], scaled_lanes(pair_sums_u(lo, y), pair_sums_u(hi, y + 32),
                                                                   scales[2 * j], scales[2 * j + 1]));
                }
            }
            for (int t = 0; t < tt; t++) q45_k_float_step(blk, &at[t], i, acc[t], mins16, &sums[t], &sumf[t]);
        }
        for (int t = 0; t < tt; t++) out[t * stride + r] = k_lanes_total(sums[t], sumf[t]);
    }
}

AVX2 static void tile_q4_k_avx2(const uint8_t *w, Py_ssize_t row_bytes, int nr, const qact *at, int tt, int nb,
                                float *out, Py_ssize_t stride) {
    tile_q45_k_avx2(w, row_bytes, nr, at, tt, nb, out, stride, 144, 0);
}

AVX2 static void tile_q5_k_avx2(const uint8_t *w, Py_ssize_t row_bytes, int nr, const qact *at, int tt, int nb,
                                float *out, Py_ssize_t stride) {
    tile_q45_k_avx2(w, row_bytes, nr, at, tt, nb, out, stride, 176, 1);
}

/* Q6_K: 16-value sub-blocks with int8 scales. Each sub-block's weights are widened to int16
 * in lane-pair order and multiplied by its scale (|w * scale| <= 32 * 128 fits int16), once
 * for all of the tile's activation rows; then one pairwise int16 product per 16 values
 * (vpmaddwd, or vpdpwssd with AVX-512 VNNI) adds two values of one lane, scaled. */
/* 16 int8 values in lane-pair order, widened to int16 and multiplied by their sub-block's scale */
AVX2 static inline __m256i pair_scaled(__m128i v, int scale) {
    const __m128i order = _mm_set_epi8(15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0);
    return _mm256_mullo_epi16(_mm256_cvtepi8_epi16(_mm_shuffle_epi8(v, order)), _mm256_set1_epi16((short)scale));
}

AVX2 static inline void q6_k_scaled_weights(const uint8_t *blk, __m256i ws[16]) {
    const uint8_t *ql = blk, *qh = blk + 128;
    const int8_t *sc = (const int8_t *)(blk + 192);
    const __m128i m4 = _mm_set1_epi8(0x0F), m2 = _mm_set1_epi8(3), k32 = _mm_set1_epi8(32);
    for (int half = 0; half < 2; half++) {
        for (int part = 0; part < 2; part++) {
            const int o = 16 * part;
            const __m128i l0 = _mm_loadu_si128((const __m128i *)(ql + o));
            const __m128i l1 = _mm_loadu_si128((const __m128i *)(ql + 32 + o));
            const __m128i h = _mm_loadu_si128((const __m128i *)(qh + o));
            __m128i v[4];  /* value index within the 128: 32 * k + o + (0..15); its sub-block: 2k + part */
            v[0] = _mm_or_si128(_mm_and_si128(l0, m4), _mm_slli_epi16(_mm_and_si128(h, m2), 4));
            v[1] = _mm_or_si128(_mm_and_si128(l1, m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 2), m2), 4));
            v[2] = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(l0, 4), m4),
                                _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 4), m2), 4));
            v[3] = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(l1, 4), m4),
                                _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 6), m2), 4));
            for (int k = 0; k < 4; k++) {
                const int sub = 8 * half + 2 * k + part;
                ws[sub] = pair_scaled(_mm_sub_epi8(v[k], k32), sc[sub]);
            }
        }
        ql += 64;
        qh += 32;
    }
}

/* Q3_K as Q6_K: 16-value sub-blocks (values -4..3, scales -32..31), in lane-pair order, scaled */
AVX2 static inline void q3_k_scaled_weights(const uint8_t *blk, __m256i ws[16]) {
    int8_t scales[16];
    q3k_scales(blk + 96, scales);
    const __m256i hm = _mm256_loadu_si256((const __m256i *)blk), m3 = _mm256_set1_epi8(3), k4 = _mm256_set1_epi8(4);
    for (int j = 0; j < 2; j++) {
        const __m256i q3 = _mm256_loadu_si256((const __m256i *)(blk + 32 + 32 * j));
        for (int s = 0; s < 4; s++) {
            const __m256i bit = _mm256_set1_epi8((char)(1 << (4 * j + s)));
            const __m256i unset = _mm256_andnot_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hm, bit), bit), k4);
            const __m256i v = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(q3, 2 * s), m3), unset);
            const int sub = 8 * j + 2 * s;  /* 32 values: sub-blocks sub and sub + 1 */
            ws[sub] = pair_scaled(_mm256_castsi256_si128(v), scales[sub]);
            ws[sub + 1] = pair_scaled(_mm256_extracti128_si256(v, 1), scales[sub + 1]);
        }
    }
}

/* Q2_K: values 0..3 times their sub-block's 4-bit scale; the order only has to match q16's */
AVX2 static inline void q2_k_scaled_weights(const uint8_t *blk, __m256i ws[16]) {
    const uint8_t *sc = blk;
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int k = 0; k < 2; k++) {
        const __m256i q2 = _mm256_loadu_si256((const __m256i *)(blk + 16 + 32 * k));
        for (int j = 0; j < 4; j++) {
            const __m256i v = _mm256_and_si256(_mm256_srli_epi16(q2, 2 * j), m3);
            const int sub = 8 * k + 2 * j;
            ws[sub] = pair_scaled(_mm256_castsi256_si128(v), sc[sub] & 0xF);
            ws[sub + 1] = pair_scaled(_mm256_extracti128_si256(v, 1), sc[sub + 1] & 0xF);
        }
    }
}

#define Q6_K_TILE(name, TARGET, PAIR_ADD) Q36_K_TILE(name, TARGET, PAIR_ADD, q6_k_scaled_weights, 210)
#define Q3_K_TILE(name, TARGET, PAIR_ADD) Q36_K_TILE(name, TARGET, PAIR_ADD, q3_k_scaled_weights, 110)

#define Q36_K_TILE(name, TARGET, PAIR_ADD, SCALED_WEIGHTS, bytes)                                      \
    TARGET static void name(const uint8_t *w, Py_ssize_t row_bytes, int nr, const qact *at, int tt, int nb, \
                            float *out, Py_ssize_t stride) {                                          \
        for (int r = 0; r < nr; r++) {                                                                \
            const uint8_t *wr = w + r * row_bytes;                                                    \
            __m256 sums[TILE];                                                                        \
            for (int t = 0; t < tt; t++) sums[t] = _mm256_setzero_ps();                               \
            for (int i = 0; i < nb; i++) {                                                            \
                const uint8_t *blk = wr + (bytes) * i;                                                \
                __m256i ws[16];                                                                       \
                SCALED_WEIGHTS(blk, ws);                                                              \
                for (int t = 0; t < tt; t++) {                                                        \
                    const int16_t *y = at[t].q16 + QKK * i;                                           \
                    __m256i acc = _mm256_setzero_si256();                                             \
                    for (int k = 0; k < 16; k++)                                                      \
                        acc = PAIR_ADD(acc, ws[k], _mm256_loadu_si256((const __m256i *)(y + 16 * k))); \
                    const float d = f16(blk + (bytes) - 2) * at[t].d[i];                              \
                    sums[t] = _mm256_add_ps(sums[t], _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(acc))); \
                }                                                                                     \
            }                                                                                         \
            for (int t = 0; t < tt; t++) out[t * stride + r] = k_lanes_total(sums[t], 0.0f);         \
        }                                                                                             \
    }

/* Q2_K: per block one integer sum and the mins term, ggml's float expression */
#define Q2_K_TILE(name, TARGET, PAIR_ADD)                                                              \
    TARGET static void name(const uint8_t *w, Py_ssize_t row_bytes, int nr, const qact *at, int tt, int nb, \
                            float *out, Py_ssize_t stride) {                                          \
        for (int r = 0; r < nr; r++) {                                                                \
            const uint8_t *wr = w + r * row_bytes;                                                    \
            float sumf[TILE];                                                                         \
            for (int t = 0; t < tt; t++) sumf[t] = 0.0f;                                              \
            for (int i = 0; i < nb; i++) {                                                            \
                const uint8_t *blk = wr + 84 * i;                                                     \
                __m256i ws[16];                                                                       \
                q2_k_scaled_weights(blk, ws);                                                         \
                const __m256i mins16 = _mm256_cvtepu8_epi16(                                          \
                    _mm_and_si128(_mm_srli_epi16(_mm_loadu_si128((const __m128i *)blk), 4), _mm_set1_epi8(0x0F))); \
                for (int t = 0; t < tt; t++) {                                                        \
                    const qact *a = &at[t];                                                           \
                    const int16_t *y = a->q16 + QKK * i;                                              \
                    __m256i acc = _mm256_setzero_si256();                                             \
                    for (int k = 0; k < 16; k++)                                                      \
                        acc = PAIR_ADD(acc, ws[k], _mm256_loadu_si256((const __m256i *)(y + 16 * k))); \
                    const int isum = hsum8(acc);                                                      \
                    const int summs = hsum8(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(a->bsums + 16 * i)), mins16)); \
                    const float dall = a->d[i] * f16(blk + 80), dmin = a->d[i] * f16(blk + 82);       \
                    sumf[t] += dall * (float)isum - dmin * (float)summs;                              \
                }                                                                                     \
            }                                                                                         \
            for (int t = 0; t < tt; t++) out[t * stride + r] = sumf[t];                              \
        }                                                                                             \
    }

#define MADD_ADD(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
Q6_K_TILE(tile_q6_k_avx2, AVX2, MADD_ADD)
Q3_K_TILE(tile_q3_k_avx2, AVX2, MADD_ADD)
Q2_K_TILE(tile_q2_k_avx2, AVX2, MADD_ADD)

/* AVX-512 VNNI (256-bit vectors, AVX512VL): Q4_K's 32-value sub-blocks in lane-quad order
 * (quad_lanes); one vpdpbusd gives the 8 integer lanes of a sub-block, scaled in int32. */
#define VNNI __attribute__((target("avx2,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

Q6_K_TILE(tile_q6_k_vnni, VNNI, _mm256_dpwssd_epi32)
Q3_K_TILE(tile_q3_k_vnni, VNNI, _mm256_dpwssd_epi32)
Q2_K_TILE(tile_q2_k_vnni, VNNI, _mm256_dpwssd_epi32)

VNNI static inline __m256i quad_order(__m256i x) {  /* natural order -> lane-quad order */
    const __m256i pairs = pair_order(x);  /* each 16 bytes: (l, l + 8) side by side */
    const __m256i words = _mm256_set_epi16(15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0);
    return _mm256_permutexvar_epi16(words, pairs);
}

VNNI static inline void tile_q45_k_vnni(const uint8_t *w, Py_ssize_t row_bytes, int nr, const qact *at, int tt, int nb,
                                        float *out, Py_ssize_t stride, int bytes, int has_qh) {
    const __m256i zero = _mm256_setzero_si256();
    for (int r = 0; r < nr; r++) {
        const uint8_t *wr = w + r * row_bytes;
        __m256 sums[TILE];
        float sumf[TILE];
        for (int t = 0; t < tt; t++) {
            sums[t] = _mm256_setzero_ps();
            sumf[t] = 0.0f;
        }
        for (int i = 0; i < nb; i++) {
            const uint8_t *blk = wr + bytes * i;
            uint8_t scales[8], mins[8];
            q4k_scales(blk + 4, scales, mins);
            const __m256i mins16 = mins_x16(mins);
            __m256i wq[8];
            for (int j = 0; j < 4; j++) {
                __m256i lo, hi;
                q45_k_subblocks(blk, j, has_qh, &lo, &hi);
                wq[2 * j] = quad_order(lo);
                wq[2 * j + 1] = quad_order(hi);
            }
            for (int t = 0; t < tt; t++) {
                const qact *a = &at[t];
                const int8_t *y = a->qp + QKK * i;
                __m256i acc = zero;
                for (int k = 0; k < 8; k++) {
                    const __m256i lanes = _mm256_dpbusd_epi32(zero, wq[k], _mm256_loadu_si256((const __m256i *)(y + 32 * k)));
                    acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(lanes, _mm256_set1_epi32(scales[k])));
                }
                q45_k_float_step(blk, a, i, acc, mins16, &sums[t], &sumf[t]);
            }
        }
        for (int t = 0; t < tt; t++) out[t * stride + r] = k_lanes_total(sums[t], sumf[t]);
    }
}

VNNI static void tile_q4_k_vnni(const uint8_t *w, Py_ssize_t row_bytes, int nr, const qact *at, int tt, int nb,
                                float *out, Py_ssize_t stride) {
    tile_q45_k_vnni(w, row_bytes, nr, at, tt, nb, out, stride, 144, 0);
}

VNNI static void tile_q5_k_vnni(const uint8_t *w, Py_ssize_t row_bytes, int nr, const qact *at, int tt, int nb,
                                float *out, Py_ssize_t stride) {
    tile_q45_k_vnni(w, row_bytes, nr, at, tt, nb, out, stride, 176, 1);
}

AVX2 static float dot_q4_k_avx2(const uint8_t *w, const qact *a, int nb) { return dot_q4_k_with(w, a, nb, 144, lanes_q4_k_avx2); }
AVX2 static float dot_q6_k_avx2(const uint8_t *w, const qact *a, int nb) { return dot_q6_k_with(w, a, nb, 210, lanes_q6_k_avx2); }
#endif

/* ------------------------------------------------------------------ dispatch */

typedef float (*dot_fn)(const uint8_t *, const qact *, int);
/* a tile of weight rows x activation rows (see AVX2_TILE) */
typedef void (*tile_fn)(const uint8_t *, Py_ssize_t, int, const qact *, int, int, float *, Py_ssize_t);

typedef struct {
    int type, act, block_values, block_bytes;
    dot_fn scalar, avx2;
    tile_fn avx2_tile;  /* NULL: the row's dot product once per activation row */
    tile_fn vnni_tile;  /* NULL: the AVX2 tile also on AVX-512 VNNI machines */
    int tile_one;       /* whether a single activation row also takes the AVX2 tile (the legacy types'
                           tiles run several rows' sums side by side; the K-quant ones are slower for
                           one row than the dot product; the VNNI tiles are not) */
} kernel;

#ifdef QD_X86
#define V(f) f
#else
#define V(f) NULL
#endif

static const kernel KERNELS[] = {
    {T_Q4_0, ACT_Q8_0, QK, 18, dot_q4_0_scalar, V(dot_q4_0_avx2), V(tile_q4_0_avx2), NULL, 1},
    {T_Q4_1, ACT_Q8_1, QK, 20, dot_q4_1_scalar, V(dot_q4_1_avx2), V(tile_q4_1_avx2), NULL, 1},
    {T_Q5_0, ACT_Q8_0, QK, 22, dot_q5_0_scalar, V(dot_q5_0_avx2), V(tile_q5_0_avx2), NULL, 1},
    {T_Q5_1, ACT_Q8_1, QK, 24, dot_q5_1_scalar, NULL, V(tile_q5_1_avx2), NULL, 1},
    {T_IQ4_NL, ACT_Q8_0, QK, 18, dot_iq4_nl_scalar, NULL, V(tile_iq4_nl_avx2), NULL, 1},
    {T_Q8_0, ACT_Q8_0, QK, 34, dot_q8_0_scalar, V(dot_q8_0_avx2), V(tile_q8_0_avx2), NULL, 1},
    {T_Q2_K, ACT_Q8_K, QKK, 84, dot_q2_k_scalar, NULL, V(tile_q2_k_avx2), V(tile_q2_k_vnni), 1},
    {T_Q3_K, ACT_Q8_K, QKK, 110, dot_q3_k_scalar, NULL, V(tile_q3_k_avx2), V(tile_q3_k_vnni), 1},
    {T_Q4_K, ACT_Q8_K, QKK, 144, dot_q4_k_scalar, V(dot_q4_k_avx2), V(tile_q4_k_avx2), V(tile_q4_k_vnni), 0},
    {T_Q5_K, ACT_Q8_K, QKK, 176, dot_q5_k_scalar, NULL, V(tile_q5_k_avx2), V(tile_q5_k_vnni), 1},
    {T_Q6_K, ACT_Q8_K, QKK, 210, dot_q6_k_scalar, V(dot_q6_k_avx2), V(tile_q6_k_avx2), V(tile_q6_k_vnni), 0},
};

static const kernel *find_kernel(int type) {
    for (size_t i = 0; i < sizeof KERNELS / sizeof KERNELS[0]; i++)
        if (KERNELS[i].type == type) return &KERNELS[i];
    return NULL;
}

enum { ISA_SCALAR, ISA_AVX2, ISA_AVX512VNNI };
static int isa_level = ISA_SCALAR;
static const char *ISA_NAMES[] = {"scalar", "avx2", "avx512vnni"};

static int detected_isa(void) {
#ifdef QD_X86
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("f16c")) return ISA_SCALAR;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512vnni"))
        return ISA_AVX512VNNI;
    return ISA_AVX2;
#else
    return ISA_SCALAR;
#endif
}

static int isa_by_name(const char *name) {
    for (int i = 0; i < (int)(sizeof ISA_NAMES / sizeof ISA_NAMES[0]); i++)
        if (strcmp(name, ISA_NAMES[i]) == 0) return i;
    return -1;
}

/* the best path this CPU has, or a lower one that CONVKIT_QDOT_ISA names (scalar, avx2) */
static void choose_isa(void) {
    isa_level = detected_isa();
    const char *forced = getenv("CONVKIT_QDOT_ISA");
    const int level = forced ? isa_by_name(forced) : -1;
    if (level >= 0 && level < isa_level) isa_level = level;
}

static dot_fn pick(const kernel *k) { return isa_level >= ISA_AVX2 && k->avx2 ? k->avx2 : k->scalar; }
static tile_fn pick_tile(const kernel *k) {
    if (isa_level >= ISA_AVX512VNNI && k->vnni_tile) return k->vnni_tile;
    return isa_level >= ISA_AVX2 ? k->avx2_tile : NULL;
}

/* ------------------------------------------------------------------ thread pool */

/* A product's rows are cut into chunks that the calling thread and the pool's threads claim
 * one at a time. The caller never waits for a helper to start: on a busy machine a helper
 * that is not scheduled simply claims nothing, and the caller waits only for chunks a
 * helper has already taken. A claim is (generation << 32 | next chunk) in one atomic, so a
 * helper that wakes late can never take a chunk of a later product. */

typedef struct {
    dot_fn dot;
    tile_fn tile;  /* NULL or the same products for several activation rows at once */
    int tile_one;
    const uint8_t *w;
    Py_ssize_t row_bytes, rows, tokens, chunk_rows;
    int nb, chunks;
    const qact *acts;
    float *out;  /* [tokens, rows] */
} job;

#define MAX_THREADS 64
#define SPIN 4000       /* polls (about 10-50 us) before a waiting thread sleeps or yields */
#define NOT_READY 0xFFFFFFFFu

static struct {
    job current;                 /* written only while the claim says NOT_READY */
    _Atomic uint64_t claim;      /* generation << 32 | next chunk */
    atomic_int done;             /* chunks finished in the current generation */
    atomic_int sleepers;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    int workers;                 /* threads besides the caller */
    pid_t pid;
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static void run_chunk(const job *jb, int c) {
    const Py_ssize_t r0 = jb->chunk_rows * c;
    const Py_ssize_t r1 = r0 + jb->chunk_rows < jb->rows ? r0 + jb->chunk_rows : jb->rows;
    if (jb->tile && (jb->tokens > 1 || jb->tile_one)) {
        /* up to TILE products at once: TILE / tokens weight rows per tile when the tokens are few */
        const int tt = jb->tokens < TILE ? (int)jb->tokens : TILE;
        const int nr = TILE / tt;
        for (Py_ssize_t r = r0; r < r1; r += nr) {
            const int rows_here = r1 - r < nr ? (int)(r1 - r) : nr;
            for (Py_ssize_t t0 = 0; t0 < jb->tokens; t0 += tt) {
                const int tokens_here = jb->tokens - t0 < tt ? (int)(jb->tokens - t0) : tt;
                jb->tile(jb->w + r * jb->row_bytes, jb->row_bytes, rows_here, jb->acts + t0, tokens_here, jb->nb,
                         jb->out + t0 * jb->rows + r, jb->rows);
            }
        }
        return;
    }
    for (Py_ssize_t r = r0; r < r1; r++) {
        const uint8_t *wr = jb->w + r * jb->row_bytes;
        for (Py_ssize_t t = 0; t < jb->tokens; t++) jb->out[t * jb->rows + r] = jb->dot(wr, &jb->acts[t], jb->nb);
    }
}

/* Claim and run chunks of generation `gen` until none is left. */
static void work(uint32_t gen) {
    uint64_t cl = atomic_load(&pool.claim);
    for (;;) {
        const uint32_t g = (uint32_t)(cl >> 32), c = (uint32_t)cl;
        if (g != gen) return;
        if (c == NOT_READY) {  /* the caller is publishing this product: ready within nanoseconds */
            cl = atomic_load(&pool.claim);
            continue;
        }
        const int chunks = pool.current.chunks;  /* stable while the claim is unchanged */
        if ((int)c >= chunks) return;
        if (atomic_compare_exchange_weak(&pool.claim, &cl, cl + 1)) {
            run_chunk(&pool.current, (int)c);
            atomic_fetch_add(&pool.done, 1);
            cl = atomic_load(&pool.claim);
        }
    }
}

static void *worker_main(void *arg) {
    uint32_t seen = (uint32_t)(uintptr_t)arg;  /* the generation current when the thread was made */
    for (;;) {
        int spins = 0;
        uint32_t g;
        while ((g = (uint32_t)(atomic_load(&pool.claim) >> 32)) == seen) {
            if (++spins < SPIN) {
#ifdef QD_X86
                _mm_pause();
#endif
                continue;
            }
            pthread_mutex_lock(&pool.mu);
            atomic_fetch_add(&pool.sleepers, 1);
            while ((uint32_t)(atomic_load(&pool.claim) >> 32) == seen) pthread_cond_wait(&pool.wake, &pool.mu);
            atomic_fetch_sub(&pool.sleepers, 1);
            pthread_mutex_unlock(&pool.mu);
            spins = 0;
        }
        seen = g;
        work(g);
    }
    return NULL;
}

static void ensure_workers(int wanted) {
    if (pool.pid != getpid()) {  /* threads do not survive fork */
        pool.workers = 0;
        pool.pid = getpid();
    }
    while (pool.workers < wanted && pool.workers < MAX_THREADS - 1) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const uint32_t gen = (uint32_t)(atomic_load(&pool.claim) >> 32);
        const int rc = pthread_create(&th, &attr, worker_main, (void *)(uintptr_t)gen);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        pool.workers++;
    }
}

static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;  /* one product at a time uses the pool */

static void run_job(const job *jb, int threads) {
    pthread_mutex_lock(&call_mu);
    if (threads > 1) ensure_workers(threads - 1);
    if (threads <= 1 || pool.workers == 0 || jb->chunks < 2) {
        for (int c = 0; c < jb->chunks; c++) run_chunk(jb, c);
        pthread_mutex_unlock(&call_mu);
        return;
    }
    const uint32_t gen = (uint32_t)(atomic_load(&pool.claim) >> 32) + 1;
    atomic_store(&pool.claim, ((uint64_t)gen << 32) | NOT_READY);  /* late helpers of the last product stop here */
    pool.current = *jb;
    atomic_store(&pool.done, 0);
    atomic_store(&pool.claim, (uint64_t)gen << 32);
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.mu);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.mu);
    }
    work(gen);
    int spins = 0;
    while (atomic_load(&pool.done) < jb->chunks)  /* only chunks a helper is running remain */
        if (++spins > SPIN) sched_yield();
#ifdef QD_X86
        else _mm_pause();
#endif
    pthread_mutex_unlock(&call_mu);
}

/* ------------------------------------------------------------------ Python entry */

/* matmul(type_id, w, rows, x, tokens, n, out, threads): w uint8 [rows, row_bytes] C-contiguous,
 * x float32 [tokens, n], out float32 [tokens, rows]. */
static PyObject *py_matmul(PyObject *self, PyObject *args) {
    int type, threads;
    Py_buffer wb, xb, ob;
    Py_ssize_t rows, tokens, n;
    (void)self;
    if (!PyArg_ParseTuple(args, "iy*ny*nnw*i", &type, &wb, &rows, &xb, &tokens, &n, &ob, &threads)) return NULL;
    const kernel *k = find_kernel(type);
    const char *err = NULL;
    if (!k) err = "no quantized product for this type id";
    else if (n <= 0 || n % k->block_values) err = "row length must be a positive multiple of the block size";
    else if (rows < 0 || tokens < 0) err = "negative size";
    else if (wb.len != rows * (n / k->block_values) * k->block_bytes) err = "weight bytes do not match rows and row length";
    else if (xb.len < (Py_ssize_t)(tokens * n * sizeof(float))) err = "x is smaller than tokens * n floats";
    else if (ob.len < (Py_ssize_t)(tokens * rows * sizeof(float))) err = "out is smaller than tokens * rows floats";
    qact *acts = NULL;
    void *mem = NULL;
    if (!err && tokens > 0 && rows > 0) {
        const int nb = (int)(n / k->block_values);
        const size_t per = 4 * (size_t)n + nb * (2 * sizeof(float) + sizeof(int32_t)) + (size_t)nb * 16 * sizeof(int16_t) + 64;
        acts = calloc((size_t)tokens, sizeof(qact));
        mem = malloc(per * (size_t)tokens);
        if (!acts || !mem) err = "out of memory";
        else {
            const float *x = (const float *)xb.buf;
            Py_BEGIN_ALLOW_THREADS
            for (Py_ssize_t t = 0; t < tokens; t++) {
                char *p = (char *)mem + per * t;
                qact *a = &acts[t];
                a->d = (float *)p;
                a->s = a->d + nb;
                a->qsum = (int32_t *)(a->s + nb);
                a->bsums = (int16_t *)(a->qsum + nb);
                a->q = (int8_t *)(a->bsums + (size_t)nb * 16);
                a->qp = a->q + n;
                a->q16 = (int16_t *)(a->qp + n);  /* 2n bytes; n is a multiple of 32, so aligned */
                if (k->act == ACT_Q8_K) {
                    quantize_q8_k_row(x + t * n, (int)n, a);
                    if ((k->type == T_Q6_K || k->type == T_Q3_K || k->type == T_Q2_K) && pick_tile(k))
                        pair_lanes16(a->q, a->q16, (int)n);
                    else if (pick_tile(k) && pick_tile(k) == k->vnni_tile) quad_lanes(a->q, a->qp, (int)n);
                    else if (pick_tile(k)) pair_lanes(a->q, a->qp, (int)n);
                } else {
                    quantize_q8_0_row(x + t * n, (int)n, a, k->act == ACT_Q8_1);
                }
            }
            threads = threads < 1 ? 1 : (threads > MAX_THREADS ? MAX_THREADS : threads);
            /* a few chunks per thread, so that a late helper leaves little for the caller */
            Py_ssize_t chunk_rows = rows / (4 * threads);
            if (chunk_rows < 16) chunk_rows = 16;
            job jb = {pick(k), pick_tile(k), k->tile_one || (k->vnni_tile && pick_tile(k) == k->vnni_tile), (const uint8_t *)wb.buf, n / k->block_values * k->block_bytes, rows, tokens,
                      chunk_rows, nb, (int)((rows + chunk_rows - 1) / chunk_rows), acts, (float *)ob.buf};
            run_job(&jb, threads);
            Py_END_ALLOW_THREADS
        }
    }
    free(mem);
    free(acts);
    PyBuffer_Release(&wb);
    PyBuffer_Release(&xb);
    PyBuffer_Release(&ob);
    if (err) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_isa(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    return PyUnicode_FromString(ISA_NAMES[isa_level]);
}

/* set_isa(name): "scalar", "avx2", "avx512vnni" (each only if this CPU has it) or "best";
 * for tests, which compare the paths in one process */
static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    const char *name;
    (void)self;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    const int level = strcmp(name, "best") == 0 ? detected_isa() : isa_by_name(name);
    if (level < 0 || level > detected_isa()) {
        PyErr_Format(PyExc_ValueError, "isa %s is not one this CPU has (best: %s)", name, ISA_NAMES[detected_isa()]);
        return NULL;
    }
    isa_level = level;
    return PyUnicode_FromString(ISA_NAMES[isa_level]);
}

static PyObject *py_types(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    PyObject *out = PyTuple_New(sizeof KERNELS / sizeof KERNELS[0]);
    for (size_t i = 0; out && i < sizeof KERNELS / sizeof KERNELS[0]; i++)
        PyTuple_SET_ITEM(out, i, PyLong_FromLong(KERNELS[i].type));
    return out;
}

static PyObject *py_tiled_types(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
    PyObject *out = PyList_New(0);
    for (size_t i = 0; out && i < sizeof KERNELS / sizeof KERNELS[0]; i++) {
        if (!pick_tile(&KERNELS[i])) continue;
        PyObject *id = PyLong_FromLong(KERNELS[i].type);
        if (!id || PyList_Append(out, id) < 0) {
            Py_XDECREF(id);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(id);
    }
    return out;
}

static PyMethodDef qdot_methods[] = {
    {"matmul", py_matmul, METH_VARARGS,
     "matmul(type_id, w, rows, x, tokens, n, out, threads): out[t, r] = ggml dot of weight row r and x[t]."},
    {"isa", py_isa, METH_NOARGS, "isa(): the instruction set the products use ('scalar', 'avx2', 'avx512vnni')."},
    {"set_isa", py_set_isa, METH_VARARGS,
     "set_isa('scalar' | 'avx2' | 'avx512vnni' | 'best'): choose the path (for tests)."},
    {"types", py_types, METH_NOARGS, "types(): the ggml type ids with a quantized product."},
    {"tiled_types", py_tiled_types, METH_NOARGS,
     "tiled_types(): the type ids whose product on the current path does several activation rows at once."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef qdot_module = {
    PyModuleDef_HEAD_INIT, "_qdot", "Matrix products on ggml blocks.", -1, qdot_methods,
};

PyMODINIT_FUNC PyInit__qdot(void) {
    for (uint32_t h = 0; h < 65536; h++) f16_table[h] = f16_to_f32_exact((uint16_t)h);
    choose_isa();
    return PyModule_Create(&qdot_module);
}
