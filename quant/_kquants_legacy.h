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

#define LG_QK 32

/* ggml_compute_fp32_to_fp16: branch-free float arithmetic, round to nearest even, NaN -> 0x7e00. */
static inline void lg_put_f16(uint8_t *p, float f) {
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = kq_bits(f), shl1_w = w + w, sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    bias = bias < 0x71000000u ? 0x71000000u : bias;
    base = kq_float((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = kq_bits(base);
    const uint32_t nonsign = ((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu);
    const uint16_t h = (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* ------------------------------------------------------------------ block extremes */

/* First value of largest |v| (NaN never wins); 0 when every |v| is 0 or NaN. */
static inline float lg_signed_abs_max(const float *x) {
    uint32_t a[LG_QK], m = 0;
    for (int j = 0; j < LG_QK; ++j) {
        uint32_t b = kq_bits(x[j]) & 0x7fffffffu;
        a[j] = b > 0x7f800000u ? 0 : b;
    }
    for (int j = 0; j < LG_QK; ++j) m = a[j] > m ? a[j] : m;
    if (m == 0) return 0.0f;
    int first = LG_QK - 1;
    for (int j = LG_QK - 1; j >= 0; --j) first = a[j] == m ? j : first;
    return x[first];
}

/* ggml's `if (v < min) min = v; if (v > max) max = v` from (FLT_MAX, -FLT_MAX). Minimum and maximum
 * do not depend on the order (NaN never wins a comparison), except for the sign of a zero: when the
 * result is zero, the first zero of the block is the one ggml keeps. */
static inline void lg_min_max(const float *x, float *lo_out, float *hi_out) {
    float lo[8], hi[8];
    for (int k = 0; k < 8; ++k) { lo[k] = FLT_MAX; hi[k] = -FLT_MAX; }
    for (int j = 0; j < LG_QK; j += 8)
        for (int k = 0; k < 8; ++k) {
            lo[k] = x[j + k] < lo[k] ? x[j + k] : lo[k];
            hi[k] = x[j + k] > hi[k] ? x[j + k] : hi[k];
        }
    float flo = lo[0], fhi = hi[0];
    for (int k = 1; k < 8; ++k) {
        flo = lo[k] < flo ? lo[k] : flo;
        fhi = hi[k] > fhi ? hi[k] : fhi;
    }
    if (flo == 0.0f || fhi == 0.0f) {
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

/* (int8_t)(v) as compiled for x86: int32 truncation (INT_MIN when invalid), low byte. */
static inline int lg_to_int8(float v) {
    int32_t i = fabsf(v) < 2147483648.0f ? (int32_t)v : INT32_MIN;
    return (int8_t)(uint8_t)(i & 0xff);
}

/* ------------------------------------------------------------------ reference quantizers */

/* Q4_0 (nmax 8) / Q5_0 (nmax 16): L = MIN(2nmax-1, (int8)(x*id + nmax + 0.5)). */
static inline float lg_symmetric_ref(const float *x, int nmax, uint8_t *L) {
    float vmax = lg_signed_abs_max(x);
    float d = vmax / (float)-nmax;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    float off = (float)nmax + 0.5f;
    int top = 2 * nmax - 1;
    for (int j = 0; j < LG_QK; ++j) {
        int l = lg_to_int8(x[j] * id + off);
        L[j] = (uint8_t)(l < top ? l : top);
    }
    return d;
}

/* Q4_1 (nmax 15) / Q5_1 (nmax 31): L = (int8)((x - min)*id + 0.5), capped at 15 for Q4_1. */
static inline float lg_affine_ref(const float *x, int nmax, float *min_out, uint8_t *L) {
    float lo, hi;
    lg_min_max(x, &lo, &hi);
    float d = (hi - lo) / (float)nmax;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    int top = nmax == 15 ? 15 : 255;
    for (int j = 0; j < LG_QK; ++j) {
        int l = lg_to_int8((x[j] - lo) * id + 0.5f);
        L[j] = (uint8_t)(l < top ? l : top);
    }
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

static inline void lg_iq4nl_block(const float *x, const float *qw, uint8_t *y) {
    float w[LG_QK], v[LG_QK], q[LG_IQ4_TRIES][LG_QK];
    uint8_t idx[LG_QK];
    if (qw) {
        float s = 0;
        for (int j = 0; j < LG_QK; ++j) s += x[j] * x[j];
        s *= 2.f / LG_QK;
        for (int j = 0; j < LG_QK; ++j) w[j] = qw[j] * sqrtf(s + x[j] * x[j]);
    } else {
        for (int j = 0; j < LG_QK; ++j) w[j] = x[j] * x[j];
    }
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
        uint8_t L[LG_QK];                                                     \
        float d, m = 0;                                                       \
        (void)L; (void)d; (void)m;                                            \
        BODY                                                                  \
    }

/* Reference quantizers (no importance vector) over nblocks consecutive blocks. */
KQ_CLONES static void lg_rows_ref(int type, const float *restrict x, int64_t nblocks, uint8_t *restrict out) {
    switch (type) {
        case 2: LG_REF_LOOP(18, d = lg_symmetric_ref(xb, 8, L); lg_put_block(2, d, m, L, y);) break;
        case 6: LG_REF_LOOP(22, d = lg_symmetric_ref(xb, 16, L); lg_put_block(6, d, m, L, y);) break;
        case 3: LG_REF_LOOP(20, d = lg_affine_ref(xb, 15, &m, L); lg_put_block(3, d, m, L, y);) break;
        case 7: LG_REF_LOOP(24, d = lg_affine_ref(xb, 31, &m, L); lg_put_block(7, d, m, L, y);) break;
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

/* ggml type ids: Q4_0 2, Q4_1 3, Q5_0 6, Q5_1 7, Q8_0 8, IQ4_NL 20. Returns 0, or -1 for an unknown id. */
static int lg_quantize_rows(int type, const float *x, const float *imatrix, int64_t rows,
                            int64_t n, uint8_t *out) {
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
