/* 32-value block kernels (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) with ggml's exact float32 arithmetic.
 *
 * Included by _kquants.c after _kquants_k.h (it uses kq_nearest_int, kq_put_f16 and the lane
 * searches kq_qx_lanes / kq_qkx_lanes from there). The numpy code in quant/legacy.py and
 * quant/iq4nl.py is the readable reference; tests check both give ggml's bytes.
 *
 * Speed without an importance vector comes from loops the compiler vectorizes: the block's
 * extremes are found on the integer bit patterns (same order as the floats, NaN excluded)
 * and the first position holding them is then looked up, which keeps ggml's "first one wins".
 * C conversions keep ggml's semantics: (int8_t)(float) truncates to int32 (invalid gives
 * INT_MIN) and keeps the low byte.
 */
#include <float.h>

#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"   /* 32-byte vector helpers are static: no ABI crosses a boundary */
#endif

#define LG_QK 32

/* ggml_compute_fp32_to_fp16: branch-free float arithmetic, round to nearest even, NaN -> 0x7e00. */
static inline uint16_t lg_f16_bits(float f) {
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = kq_bits(f), shl1_w = w + w, sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    bias += (0x71000000u - bias) & -(uint32_t)(bias < 0x71000000u);    /* masks, not ?:, so it vectorizes */
    base = kq_float((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = kq_bits(base);
    const uint32_t nonsign = ((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu);
    const uint32_t nan = -(uint32_t)(shl1_w > 0xFF000000u);
    return (uint16_t)((sign >> 16) | (0x7E00u & nan) | (nonsign & ~nan));
}

static inline void lg_put_f16(uint8_t *p, float f) {
    const uint16_t h = lg_f16_bits(f);
    memcpy(p, &h, sizeof h);      /* little-endian, like ggml's in-memory fp16 */
}

/* ------------------------------------------------------------------ block extremes */

typedef float lg_v8f __attribute__((vector_size(32)));
typedef int32_t lg_v8i __attribute__((vector_size(32)));

static inline lg_v8f lg_load8(const float *p) { lg_v8f v; memcpy(&v, p, sizeof v); return v; }

/* a < b ? a : b per lane (a NaN in a never wins), written with masks as C has no vector ?: */
static inline lg_v8f lg_vmin(lg_v8f a, lg_v8f b) {
    lg_v8i m = a < b;
    return (lg_v8f)(((lg_v8i)a & m) | ((lg_v8i)b & ~m));
}

static inline lg_v8f lg_vmax(lg_v8f a, lg_v8f b) {
    lg_v8i m = a > b;
    return (lg_v8f)(((lg_v8i)a & m) | ((lg_v8i)b & ~m));
}

/* Horizontal max / min of 8 lanes holding no NaN (then the order of the comparisons does not matter). */
static inline float lg_hmax(lg_v8f m) {
    m = lg_vmax(m, __builtin_shufflevector(m, m, 4, 5, 6, 7, 0, 1, 2, 3));
    m = lg_vmax(m, __builtin_shufflevector(m, m, 2, 3, 0, 1, 6, 7, 4, 5));
    m = lg_vmax(m, __builtin_shufflevector(m, m, 1, 0, 3, 2, 5, 4, 7, 6));
    return m[0];
}

static inline float lg_hmin(lg_v8f m) {
    m = lg_vmin(m, __builtin_shufflevector(m, m, 4, 5, 6, 7, 0, 1, 2, 3));
    m = lg_vmin(m, __builtin_shufflevector(m, m, 2, 3, 0, 1, 6, 7, 4, 5));
    m = lg_vmin(m, __builtin_shufflevector(m, m, 1, 0, 3, 2, 5, 4, 7, 6));
    return m[0];
}

static inline int lg_hany(lg_v8i m) {
    m |= __builtin_shufflevector(m, m, 4, 5, 6, 7, 0, 1, 2, 3);
    m |= __builtin_shufflevector(m, m, 2, 3, 0, 1, 6, 7, 4, 5);
    m |= __builtin_shufflevector(m, m, 1, 0, 3, 2, 5, 4, 7, 6);
    return m[0] != 0;
}

/* ggml's `if (amax < |v|) {amax = |v|; max = v}` from 0: the first value of largest |v| (NaN never
 * wins); 0 when every |v| is 0 or NaN. The largest |v| does not depend on the order; only its sign
 * does, and only when both +amax and -amax occur, which is looked up in order. */
static inline float lg_signed_abs_max(const float *x) {
    const lg_v8i absmask = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff,
                            0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
    lg_v8f m = {0};
    for (int j = 0; j < LG_QK; j += 8) m = lg_vmax((lg_v8f)((lg_v8i)lg_load8(x + j) & absmask), m);
    const float amax = lg_hmax(m);
    if (amax == 0.0f) return 0.0f;
    lg_v8i pos = {0}, neg = {0};
    for (int j = 0; j < LG_QK; j += 8) {
        lg_v8f v = lg_load8(x + j);
        pos |= v == amax;
        neg |= v == -amax;
    }
    const int any_pos = lg_hany(pos), any_neg = lg_hany(neg);
    if (!any_neg) return amax;
    if (!any_pos) return -amax;
    for (int j = 0; j < LG_QK; ++j)
        if (fabsf(x[j]) == amax) return x[j];
    return amax;
}

static inline void lg_min_max(const float *x, float *lo_out, float *hi_out) {
    lg_v8f lo = lg_load8(x), hi = lo;
    /* start from the first 8 values: a NaN there must not stick, so reseed NaN lanes */
    {
        lg_v8i nan = lo != lo;
        lg_v8f big = {FLT_MAX, FLT_MAX, FLT_MAX, FLT_MAX, FLT_MAX, FLT_MAX, FLT_MAX, FLT_MAX};
        lo = (lg_v8f)(((lg_v8i)big & nan) | ((lg_v8i)lo & ~nan));
        hi = (lg_v8f)(((lg_v8i)(-big) & nan) | ((lg_v8i)hi & ~nan));
    }
    for (int j = 8; j < LG_QK; j += 8) {
        lg_v8f v = lg_load8(x + j);
        lo = lg_vmin(v, lo);
        hi = lg_vmax(v, hi);
    }
    float flo = lg_hmin(lo), fhi = lg_hmax(hi);
    if (flo == 0.0f || fhi == 0.0f) {   /* -0 and +0 compare equal in C: the first zero is kept */
        float z = 0.0f;
        for (int j = 0; j < LG_QK; ++j)
            if (x[j] == 0.0f) { z = x[j]; break; }
        if (flo == 0.0f) flo = z;
        if (fhi == 0.0f) fhi = z;
    }
    *lo_out = flo;
    *hi_out = fhi;
}

/* ggml's running amax = MAX(amax, |v|) with MAX(a, b) = a > b ? a : b: NaN resets it. */
static inline float lg_q8_amax(const float *x) {
    uint32_t m = 0, anynan = 0;
    for (int j = 0; j < LG_QK; ++j) {
        uint32_t b = kq_bits(x[j]) & 0x7fffffffu;
        anynan |= b > 0x7f800000u;
        m = b > m ? b : m;
    }
    if (!anynan) return kq_float(m);
    float amax = 0.0f;
    for (int j = 0; j < LG_QK; ++j) {
        float a = fabsf(x[j]);
        amax = amax > a ? amax : a;
    }
    return amax;
}

static inline void lg_put_u32(uint8_t *p, uint32_t h) {
    p[0] = (uint8_t)h; p[1] = (uint8_t)(h >> 8); p[2] = (uint8_t)(h >> 16); p[3] = (uint8_t)(h >> 24);
}

/* (int8_t)(v) as ggml's x86 build computes it: cvttps2dq truncates to int32 (NaN and out-of-range give
 * INT_MIN, the instruction's "integer indefinite"), then the low byte is kept. Formally the C cast is
 * undefined there; GCC emits the same instruction here as in ggml, and the tests pin the result. */
static inline int lg_to_int8(float v) {
    int32_t i = (int32_t)v;
    return (int8_t)(uint8_t)(i & 0xff);
}

/* ------------------------------------------------------------------ reference quantizers */

/* Q4_0 (nmax 8) / Q5_0 (nmax 16): L = MIN(2nmax-1, (int8)(x*id + nmax + 0.5)), packed into qs (and qh). */
static inline float lg_symmetric_ref(const float *x, int nmax, uint8_t *qs, uint8_t *qh) {
    float vmax = lg_signed_abs_max(x);
    float d = vmax / (float)-nmax;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    float off = (float)nmax + 0.5f;
    int top = 2 * nmax - 1;
    uint32_t h = 0;
    for (int j = 0; j < LG_QK / 2; ++j) {
        int l0 = lg_to_int8(x[j] * id + off), l1 = lg_to_int8(x[j + 16] * id + off);
        uint8_t q0 = (uint8_t)(l0 < top ? l0 : top), q1 = (uint8_t)(l1 < top ? l1 : top);
        /* ggml stores Q4 nibbles unmasked; L is always 0..15 there (|x*id| <= 8 or the cast gives 0) */
        qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
        if (qh) h |= ((uint32_t)((q0 >> 4) & 1) << j) | ((uint32_t)((q1 >> 4) & 1) << (j + 16));
    }
    if (qh) lg_put_u32(qh, h);
    return d;
}

/* Q4_1 (nmax 15) / Q5_1 (nmax 31): L = (int8)((x - min)*id + 0.5), capped at 15 for Q4_1. */
static inline float lg_affine_ref(const float *x, int nmax, float *min_out, uint8_t *qs, uint8_t *qh) {
    float lo, hi;
    lg_min_max(x, &lo, &hi);
    float d = (hi - lo) / (float)nmax;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    int top = nmax == 15 ? 15 : 255;
    uint32_t h = 0;
    for (int j = 0; j < LG_QK / 2; ++j) {
        int l0 = lg_to_int8((x[j] - lo) * id + 0.5f), l1 = lg_to_int8((x[j + 16] - lo) * id + 0.5f);
        uint8_t q0 = (uint8_t)(l0 < top ? l0 : top), q1 = (uint8_t)(l1 < top ? l1 : top);
        /* ggml stores Q4 nibbles unmasked; L is always 0..15 there (|x*id| <= 8 or the cast gives 0) */
        qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
        if (qh) h |= ((uint32_t)((q0 >> 4) & 1) << j) | ((uint32_t)((q1 >> 4) & 1) << (j + 16));
    }
    if (qh) lg_put_u32(qh, h);
    *min_out = lo;
    return d;
}

static inline void lg_q8_0_block(const float *x, uint8_t *y) {
    float amax = lg_q8_amax(x);
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    lg_put_f16(y, d);
    for (int j = 0; j < LG_QK; ++j) {
        float v = x[j] * id;
        int ok = fabsf(v) < 2147483648.0f;
        int32_t i = ok ? (int32_t)v : INT32_MIN;          /* truncation, then roundf's half away */
        float frac = v - (float)i;
        i += ok & (frac >= 0.5f);
        i -= ok & (frac <= -0.5f);
        y[2 + j] = (uint8_t)(i & 0xff);
    }
}

/* ------------------------------------------------------------------ packing */

static inline void lg_pack_nibbles(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < 16; ++j) qs[j] = (uint8_t)((L[j] & 0xF) | ((L[j + 16] & 0xF) << 4));
}

/* Q4_0/Q4_1 store `L[j] | L[j+16] << 4` unmasked, like ggml. */
static inline void lg_pack_nibbles_raw(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < 16; ++j) qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
}

static inline void lg_put_fifth_bits(const uint8_t *L, uint8_t *qh) {
    uint32_t h = 0;
    for (int j = 0; j < LG_QK; ++j) h |= (uint32_t)((L[j] >> 4) & 1) << j;
    qh[0] = (uint8_t)h; qh[1] = (uint8_t)(h >> 8); qh[2] = (uint8_t)(h >> 16); qh[3] = (uint8_t)(h >> 24);
}

/* Write one block of `type` from its scale, min and L (0..2^bits-1). */
static inline void lg_put_block(int type, float d, float m, const uint8_t *L, uint8_t *y) {
    lg_put_f16(y, d);
    switch (type) {
        case 2: lg_pack_nibbles_raw(L, y + 2); break;
        case 3: lg_put_f16(y + 2, m); lg_pack_nibbles_raw(L, y + 4); break;
        case 6: lg_put_fifth_bits(L, y + 2); lg_pack_nibbles(L, y + 6); break;
        case 7: lg_put_f16(y + 2, m); lg_put_fifth_bits(L, y + 4); lg_pack_nibbles(L, y + 8); break;
    }
}

static int lg_block_bytes(int type) {
    switch (type) {
        case 2: return 18;
        case 3: return 20;
        case 6: return 22;
        case 7: return 24;
        case 8: return 34;
        case 20: return 18;
        case 1: case 30: return 2;
    }
    return 0;
}

/* ------------------------------------------------------------------ importance-weighted rows */

/* ggml's per-row weights: imatrix[j] * sqrtf(sigma2 + x[j]^2), sigma2 = (sequential sum x^2) / n. */
static float lg_row_sigma2(const float *x, int64_t n) {
    float s = 0;
    for (int64_t j = 0; j < n; ++j) s += x[j] * x[j];
    return s / (float)n;
}

/* Q4_0/Q5_0 with make_qx_quants, Q4_1/Q5_1 with make_qkx3_quants(-0.9, 0.05, 36), 16 blocks per lane batch. */
static void lg_row_weighted(int type, const float *x, const float *qw, int64_t n, uint8_t *y) {
    const int64_t nb = n / LG_QK;
    const int bytes = lg_block_bytes(type);
    const int affine = type == 3 || type == 7;
    const int nmax = type == 2 ? 8 : type == 6 ? 16 : type == 3 ? 15 : 31;
    const float sigma2 = lg_row_sigma2(x, n);
    kq_lanes_f xt[LG_QK], wt[LG_QK];
    kq_lanes_u8 L[LG_QK];
    float scale[KQ_LANES], the_min[KQ_LANES];
    uint8_t Lb[LG_QK];
    for (int64_t b0 = 0; b0 < nb; b0 += KQ_LANES) {
        const int lanes = nb - b0 < KQ_LANES ? (int)(nb - b0) : KQ_LANES;
        for (int k = 0; k < KQ_LANES; ++k) {
            for (int j = 0; j < LG_QK; ++j) {
                if (k < lanes) {
                    const int64_t at = (b0 + k) * LG_QK + j;
                    xt[j][k] = x[at];
                    wt[j][k] = qw[at] * sqrtf(sigma2 + x[at] * x[at]);
                } else {
                    xt[j][k] = 0.0f;
                    wt[j][k] = 0.0f;
                }
            }
        }
        if (affine)
            kq_qkx_lanes(LG_QK, nmax, xt, wt, -0.9f, 0.05f, 36, 0, 1, scale, the_min, L);
        else
            kq_qx_lanes(LG_QK, nmax, xt, wt, scale, L);
        for (int k = 0; k < lanes; ++k) {
            for (int j = 0; j < LG_QK; ++j) Lb[j] = L[j][k];
            lg_put_block(type, scale[k], affine ? -the_min[k] : 0.0f, Lb, y + (b0 + k) * bytes);
        }
    }
}

/* ------------------------------------------------------------------ IQ4_NL */

static const float lg_kv[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* best_index_int8(16, kvalues_iq4nl, v) for 32 values, branch-free so it vectorizes. */
static inline void lg_iq4_index(const float *v, uint8_t *idx) {
    for (int j = 0; j < LG_QK; ++j) {
        float x = v[j], lo = lg_kv[0], hi = lg_kv[15];
        int mu = 1;
        for (int k = 1; k < 15; ++k) {
            int ge = x >= lg_kv[k];
            mu += ge;
            lo = ge ? lg_kv[k] : lo;
        }
        for (int k = 14; k >= 1; --k) hi = x < lg_kv[k] ? lg_kv[k] : hi;
        int l = (x - lo) < (hi - x) ? mu - 1 : mu;
        l = x <= lg_kv[0] ? 0 : l;
        l = x >= lg_kv[15] ? 15 : l;
        l = x != x ? 15 : l;
        idx[j] = (uint8_t)l;
    }
}

#define LG_IQ4_TRIES 16   /* the first scale, then itry = -7..7 */

/* The scale quantize_row_iq4_nl_impl picks for one 32-value block under weights w (0 below GROUP_MAX_EPS). */
static inline float lg_iq4_scale(const float *x, const float *w) {
    float v[LG_QK], q[LG_IQ4_TRIES][LG_QK];
    uint8_t idx[LG_QK];
    float amax = 0, vmax = 0;
    for (int j = 0; j < LG_QK; ++j) {
        float ax = fabsf(x[j]);
        if (ax > amax) { amax = ax; vmax = x[j]; }
    }
    float d = 0.0f;
    if (!(amax < KQ_EPS)) {
        float ids[LG_IQ4_TRIES];
        ids[0] = 1 / (-vmax / lg_kv[0]);
        for (int t = 1; t < LG_IQ4_TRIES; ++t) ids[t] = (float)(t - 8 - 127) / vmax;
        for (int t = 0; t < LG_IQ4_TRIES; ++t) {
            for (int j = 0; j < LG_QK; ++j) v[j] = ids[t] * x[j];
            lg_iq4_index(v, idx);
            for (int j = 0; j < LG_QK; ++j) q[t][j] = lg_kv[idx[j]];
        }
        float sqx[LG_IQ4_TRIES], sq2[LG_IQ4_TRIES];
        for (int t = 0; t < LG_IQ4_TRIES; ++t) sqx[t] = sq2[t] = 0;
        for (int j = 0; j < LG_QK; ++j) {          /* ggml's order along the block, tries side by side */
            for (int t = 0; t < LG_IQ4_TRIES; ++t) {
                float wq = w[j] * q[t][j];
                sqx[t] += wq * x[j];
                sq2[t] += wq * q[t][j];
            }
        }
        d = sq2[0] > 0 ? sqx[0] / sq2[0] : 0.f;
        float best = d * sqx[0];
        for (int t = 1; t < LG_IQ4_TRIES; ++t) {
            if (sq2[t] > 0 && sqx[t] * sqx[t] > best * sq2[t]) {
                d = sqx[t] / sq2[t];
                best = d * sqx[t];
            }
        }
    }
    return d;
}

static inline void lg_iq4nl_block(const float *x, const float *qw, uint8_t *y) {
    float w[LG_QK], v[LG_QK];
    uint8_t idx[LG_QK];
    if (qw) {
        float s = 0;
        for (int j = 0; j < LG_QK; ++j) s += x[j] * x[j];
        s *= 2.f / LG_QK;
        for (int j = 0; j < LG_QK; ++j) w[j] = qw[j] * sqrtf(s + x[j] * x[j]);
    } else {
        for (int j = 0; j < LG_QK; ++j) w[j] = x[j] * x[j];
    }
    const float d = lg_iq4_scale(x, w);
    lg_put_f16(y, d);
    float id = d ? 1 / d : 0;
    for (int j = 0; j < LG_QK; ++j) v[j] = id * x[j];
    lg_iq4_index(v, idx);
    lg_pack_nibbles(idx, y + 2);
}

/* ------------------------------------------------------------------ dispatch */

/* One type's blocks in a loop of its own, so nmax and the layout are constants there. */
#define LG_REF_LOOP(BYTES, BODY)                                              \
    for (int64_t b = 0; b < nblocks; ++b) {                                   \
        const float *xb = x + b * LG_QK;                                      \
        uint8_t *y = out + b * (BYTES);                                       \
        float d, m = 0;                                                       \
        (void)d; (void)m;                                                     \
        BODY                                                                  \
    }

/* Reference quantizers (no importance vector) over nblocks consecutive blocks. */
KQ_CLONES static void lg_rows_ref(int type, const float *restrict x, int64_t nblocks, uint8_t *restrict out) {
    switch (type) {
        case 2: LG_REF_LOOP(18, d = lg_symmetric_ref(xb, 8, y + 2, NULL); lg_put_f16(y, d);) break;
        case 6: LG_REF_LOOP(22, d = lg_symmetric_ref(xb, 16, y + 6, y + 2); lg_put_f16(y, d);) break;
        case 3: LG_REF_LOOP(20, d = lg_affine_ref(xb, 15, &m, y + 4, NULL); lg_put_f16(y, d); lg_put_f16(y + 2, m);) break;
        case 7: LG_REF_LOOP(24, d = lg_affine_ref(xb, 31, &m, y + 8, y + 4); lg_put_f16(y, d); lg_put_f16(y + 2, m);) break;
        case 8: LG_REF_LOOP(34, lg_q8_0_block(xb, y);) break;
    }
}

KQ_CLONES static void lg_rows_iq4nl(const float *restrict x, const float *restrict imatrix, int64_t rows,
                                    int64_t n, uint8_t *restrict out) {
    const int64_t nb = n / LG_QK;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < nb; ++b)
            lg_iq4nl_block(x + r * n + b * LG_QK, imatrix ? imatrix + b * LG_QK : NULL, out + (r * nb + b) * 18);
}

/* IQ4_XS: 256-value super-blocks of eight IQ4_NL-searched blocks, 6-bit block scales (quant/iq4xs.py). */
#define LG_IQ4XS_QK 256
#define LG_IQ4XS_BYTES 136

static inline void lg_iq4xs_superblock(const float *x, const float *qw, uint8_t *y) {
    float w[LG_QK], scales[8], v[LG_QK];
    uint8_t idx[LG_QK];
    float sigma2 = 0;
    if (qw) {
        for (int j = 0; j < LG_IQ4XS_QK; ++j) sigma2 += x[j] * x[j];
        sigma2 *= 2.f / LG_IQ4XS_QK;
    }
    float max_scale = 0, amax_scale = 0;
    for (int ib = 0; ib < 8; ++ib) {
        const float *xb = x + ib * LG_QK;
        for (int j = 0; j < LG_QK; ++j)
            w[j] = qw ? qw[ib * LG_QK + j] * sqrtf(sigma2 + xb[j] * xb[j]) : xb[j] * xb[j];
        scales[ib] = lg_iq4_scale(xb, w);
        const float a = fabsf(scales[ib]);
        if (a > amax_scale) { amax_scale = a; max_scale = scales[ib]; }
    }
    const float d = -max_scale / 32;
    lg_put_f16(y, d);
    const float id = d ? 1 / d : 0.f;
    uint16_t scales_h = 0;
    uint8_t *scales_l = y + 4, *qs = y + 8;
    memset(scales_l, 0, 4);
    for (int ib = 0; ib < 8; ++ib) {
        int l = kq_nearest_int(id * scales[ib]);
        l = l < -32 ? -32 : l > 31 ? 31 : l;
        const float dl = d * l;
        const float idl = dl ? 1 / dl : 0.f;
        for (int j = 0; j < LG_QK; ++j) v[j] = idl * x[ib * LG_QK + j];
        lg_iq4_index(v, idx);
        lg_pack_nibbles(idx, qs + ib * 16);
        l += 32;
        scales_l[ib / 2] |= (uint8_t)((l & 0xf) << (4 * (ib % 2)));
        scales_h |= (uint16_t)((l >> 4) << (2 * ib));
    }
    y[2] = (uint8_t)scales_h;
    y[3] = (uint8_t)(scales_h >> 8);
}

KQ_CLONES static void lg_rows_iq4xs(const float *restrict x, const float *restrict imatrix, int64_t rows,
                                    int64_t n, uint8_t *restrict out) {
    const int64_t nb = n / LG_IQ4XS_QK;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < nb; ++b)
            lg_iq4xs_superblock(x + r * n + b * LG_IQ4XS_QK, imatrix ? imatrix + b * LG_IQ4XS_QK : NULL,
                                out + (r * nb + b) * LG_IQ4XS_BYTES);
}

/* F16 and BF16 rows: ggml_fp32_to_fp16_row / ggml_fp32_to_bf16_row_ref, value by value. */
KQ_CLONES static void lg_rows_f16(const float *restrict x, int64_t count, uint8_t *restrict out) {
    uint16_t h[64];
    int64_t i = 0;
    for (; i + 64 <= count; i += 64) {          /* a fixed-size chunk the compiler vectorizes */
        for (int k = 0; k < 64; ++k) h[k] = lg_f16_bits(x[i + k]);
        memcpy(out + 2 * i, h, sizeof h);
    }
    for (; i < count; ++i) lg_put_f16(out + 2 * i, x[i]);
}

KQ_CLONES static void lg_rows_bf16(const float *restrict x, int64_t count, uint8_t *restrict out) {
    for (int64_t i = 0; i < count; ++i) {
        uint32_t u = kq_bits(x[i]);
        uint16_t h = (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16) | 64)   /* NaN: force quiet */
                                                     : (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
        out[2 * i] = (uint8_t)h;
        out[2 * i + 1] = (uint8_t)(h >> 8);
    }
}

/* Values per block for the ids this file handles (0 for others). */
static int lg_block_values(int type) {
    return type == 1 || type == 30 ? 1 : lg_block_bytes(type) ? LG_QK : 0;
}

/* ggml type ids: F16 1, Q4_0 2, Q4_1 3, Q5_0 6, Q5_1 7, Q8_0 8, IQ4_NL 20, BF16 30.
 * Returns 0, or -1 for an unknown id. */
static int lg_quantize_rows(int type, const float *x, const float *imatrix, int64_t rows,
                            int64_t n, uint8_t *out) {
    if (type == 1) { lg_rows_f16(x, rows * n, out); return 0; }
    if (type == 30) { lg_rows_bf16(x, rows * n, out); return 0; }
    const int bytes = lg_block_bytes(type);
    if (!bytes) return -1;
    const int64_t nb = n / LG_QK;
    if (type == 20) {
        lg_rows_iq4nl(x, imatrix, rows, n, out);
        return 0;
    }
    if (imatrix && type != 8) {
        for (int64_t r = 0; r < rows; ++r) lg_row_weighted(type, x + r * n, imatrix, n, out + r * nb * bytes);
        return 0;
    }
    lg_rows_ref(type, x, rows * nb, out);
    return 0;
}
