/* Kernels for the block types without a scale search: TQ1_0, TQ2_0 (ternary), MXFP4 and NVFP4.
 *
 * Included by _kquants.c after _kquants_legacy.h. quant/ternary.py, mxfp4.py and nvfp4.py are
 * the readable references; the arithmetic here is ggml's reference quantizers', with the
 * C library's lroundf / log2f / floorf as ggml calls them.
 */

/* ------------------------------------------------------------------ ternary */

#define SM_QK_K 256

/* d = max|x|; trit = lroundf(x / d) + 1, for the 256 values of one super-block. */
static inline float sm_trits(const float *x, uint8_t *t) {
    float amax = 0.0f;
    for (int j = 0; j < SM_QK_K; ++j) {
        const float a = fabsf(x[j]);
        amax = amax > a ? amax : a;              /* ggml's MAX(amax, a) */
    }
    const float id = amax ? 1.0f / amax : 0.0f;
    /* |x * id| < 1.5 for every finite block with a normal max: lroundf is then a comparison
     * (half away from zero), which vectorizes; anything else takes lroundf itself */
    int plain = 1;
    for (int j = 0; j < SM_QK_K; ++j) plain &= fabsf(x[j] * id) < 1.5f;
    if (plain) {
        for (int j = 0; j < SM_QK_K; ++j) {
            const float v = x[j] * id;
            t[j] = (uint8_t)(1 + (v >= 0.5f) - (v <= -0.5f));
        }
    } else {
        for (int j = 0; j < SM_QK_K; ++j) t[j] = (uint8_t)(lroundf(x[j] * id) + 1);
    }
    return amax;
}

/* k trits (first most significant) scaled to a byte: ceil(q * 256 / 243). */
static inline uint8_t sm_base3(const uint8_t *t, int stride, int k, int pad) {
    unsigned q = 0;
    for (int n = 0; n < k; ++n) q = (uint8_t)(q * 3 + t[n * stride]);
    for (int n = 0; n < pad; ++n) q = (uint8_t)(q * 3);
    return (uint8_t)((q * 256 + 242) / 243);
}

KQ_CLONES static void sm_rows_tq1_0(const float *restrict x, int64_t nblocks, uint8_t *restrict out) {
    uint8_t t[SM_QK_K];
    for (int64_t b = 0; b < nblocks; ++b) {
        uint8_t *y = out + b * 54;
        const float d = sm_trits(x + b * SM_QK_K, t);
        for (int m = 0; m < 32; ++m) y[m] = sm_base3(t + m, 32, 5, 0);
        for (int m = 0; m < 16; ++m) y[32 + m] = sm_base3(t + 160 + m, 16, 5, 0);
        for (int j = 0; j < 4; ++j) y[48 + j] = sm_base3(t + 240 + j, 4, 4, 1);
        lg_put_f16(y + 52, d);
    }
}

KQ_CLONES static void sm_rows_tq2_0(const float *restrict x, int64_t nblocks, uint8_t *restrict out) {
    uint8_t t[SM_QK_K];
    for (int64_t b = 0; b < nblocks; ++b) {
        uint8_t *y = out + b * 66;
        const float d = sm_trits(x + b * SM_QK_K, t);
        for (int c = 0; c < 2; ++c)
            for (int m = 0; m < 32; ++m) {
                uint8_t q = 0;
                for (int n = 0; n < 4; ++n) q += (uint8_t)((t[c * 128 + n * 32 + m] & 3) << (2 * n));
                y[c * 32 + m] = q;
            }
        lg_put_f16(y + 64, d);
    }
}

/* ------------------------------------------------------------------ MXFP4 */

static const float sm_fp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* ggml_e8m0_to_fp32_half: 2^(e - 128). */
static inline float sm_e8m0_half(uint8_t e) {
    return kq_float(e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23);
}

KQ_CLONES static void sm_rows_mxfp4(const float *restrict x, int64_t nblocks, uint8_t *restrict out) {
    uint8_t L[LG_QK];
    for (int64_t b = 0; b < nblocks; ++b) {
        const float *xb = x + b * LG_QK;
        uint8_t *y = out + b * 17;
        float amax = 0.0f;
        for (int j = 0; j < LG_QK; ++j) {
            const float a = fabsf(xb[j]);
            if (amax < a) amax = a;
        }
        /* the float-to-uint8 conversion as ggml's build does it on x86: through int32 */
        const uint8_t e = amax > 0.0f ? (uint8_t)(int32_t)(floorf(log2f(amax)) - 2 + 127) : 0;
        const float d = sm_e8m0_half(e);
        /* codes in order, the 32 values side by side (vectorizes); strict < keeps the first nearest */
        float best_err[LG_QK], best[LG_QK];          /* all-float lanes: selects, not branches */
        for (int j = 0; j < LG_QK; ++j) {
            best_err[j] = fabsf(sm_fp4[0] * d - xb[j]);
            best[j] = 0.0f;
        }
        for (int i = 1; i < 16; ++i) {
            const float v = sm_fp4[i] * d, code = (float)i;
            for (int j = 0; j < LG_QK; ++j) {
                const float err = fabsf(v - xb[j]);
                best[j] = err < best_err[j] ? code : best[j];
                best_err[j] = err < best_err[j] ? err : best_err[j];
            }
        }
        for (int j = 0; j < LG_QK; ++j) L[j] = (uint8_t)best[j];
        y[0] = e;
        lg_pack_nibbles(L, y + 1);
    }
}

/* ------------------------------------------------------------------ NVFP4 */

/* ggml_fp32_to_ue4m3: unsigned E4M3, rounded on the first dropped mantissa bit, saturating at 0x7E. */
static inline uint8_t sm_to_ue4m3(float x) {
    if (!(x > 0.0f)) return 0;
    if (x > 448.0f) x = 448.0f;
    const uint32_t bits = kq_bits(x);
    int e = (int)((bits >> 23) & 0xFF) - 127 + 7;
    int m = (int)((bits >> 20) & 0x7);
    if (e <= 0) {
        int man = (int)(x * 512.0f + 0.5f);
        if (man > 7) man = 7;
        return man < 1 ? 0 : (uint8_t)man;
    }
    if (e >= 15) return 0x7E;
    m += (int)((bits >> 19) & 1);
    if (m > 7) {
        m = 0;
        if (++e >= 15) return 0x7E;
    }
    return (uint8_t)((e << 3) | m);
}

/* ggml_ue4m3_to_fp32: the E4M3 value times 0.5 (exact powers of two, so no ldexpf needed). */
static inline float sm_from_ue4m3(uint8_t u) {
    if (u == 0 || u == 0x7F) return 0.0f;
    const int e = (u >> 3) & 0xF, m = u & 7;
    const float raw = e == 0 ? (float)m * (1.0f / 512.0f)
                             : (1.0f + (float)m / 8.0f) * kq_float((uint32_t)(e - 7 + 127) << 23);
    return raw * 0.5f;
}

KQ_CLONES static void sm_rows_nvfp4(const float *restrict x, int64_t nblocks, uint8_t *restrict out) {
    for (int64_t b = 0; b < nblocks; ++b) {
        uint8_t *y = out + b * 36;
        for (int s = 0; s < 4; ++s) {
            const float *xb = x + b * 64 + s * 16;
            float amax = 0.0f;
            for (int j = 0; j < 16; ++j) {
                const float a = fabsf(xb[j]);
                if (amax < a) amax = a;
            }
            const uint8_t ue = sm_to_ue4m3(amax / 6.0f);
            const float d = sm_from_ue4m3(ue);
            float best_err[16], best[16];
            for (int j = 0; j < 16; ++j) {
                best_err[j] = fabsf(sm_fp4[0] * d - xb[j]);
                best[j] = 0.0f;
            }
            for (int i = 1; i < 16; ++i) {
                const float v = sm_fp4[i] * d, code = (float)i;
                for (int j = 0; j < 16; ++j) {
                    const float err = fabsf(v - xb[j]);
                    best[j] = err < best_err[j] ? code : best[j];
                    best_err[j] = err < best_err[j] ? err : best_err[j];
                }
            }
            y[s] = ue;
            for (int j = 0; j < 8; ++j) y[4 + s * 8 + j] = (uint8_t)((uint8_t)best[j] | ((uint8_t)best[8 + j] << 4));
        }
    }
}

/* ggml type ids: TQ1_0 34, TQ2_0 35, MXFP4 39, NVFP4 40. Values and bytes per block, 0 for other ids. */
static int sm_block_values(int type) {
    return type == 34 || type == 35 ? SM_QK_K : type == 39 ? LG_QK : type == 40 ? 64 : 0;
}
static int sm_block_bytes(int type) {
    return type == 34 ? 54 : type == 35 ? 66 : type == 39 ? 17 : type == 40 ? 36 : 0;
}

static void sm_quantize_rows(int type, const float *x, int64_t rows, int64_t n, uint8_t *out) {
    const int64_t nblocks = rows * (n / sm_block_values(type));
    switch (type) {
        case 34: sm_rows_tq1_0(x, nblocks, out); break;
        case 35: sm_rows_tq2_0(x, nblocks, out); break;
        case 39: sm_rows_mxfp4(x, nblocks, out); break;
        case 40: sm_rows_nvfp4(x, nblocks, out); break;
    }
}
