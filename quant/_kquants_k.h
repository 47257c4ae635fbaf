/* K-quant kernels (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K) with ggml's exact float32 arithmetic.
 *
 * Included by _kquants.c. The numpy code in quant/kquants.py and quant/search.py is the
 * readable reference; this file runs the same operations in the same order, faster:
 * the sub-blocks of a super-block (or of two, for Q4_K/Q5_K) are searched side by side,
 * one "lane" each, so the compiler can vectorize across lanes while every lane keeps
 * ggml's sequential float32 order. Build as ISO C (-std=c11): no FMA contraction.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")   /* a fused a*b+c would round differently from ggml */
#endif

#define KQ_QK 256
#define KQ_LANES 16
#define KQ_EPS 1e-15f

/* Lane loops are compiled for wider vector units too and picked at load time (ifunc);
 * the arithmetic is identical IEEE float32 in every clone, and ISO C mode forbids contraction. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \
    && !defined(KQ_NO_CLONES)
#define KQ_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KQ_CLONES
#endif

typedef float kq_lanes_f[KQ_LANES];
typedef uint8_t kq_lanes_u8[KQ_LANES];

/* ------------------------------------------------------------------ scalar helpers */

static inline int kq_nearest_int(float f) {
    float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

static inline uint32_t kq_bits(float f) { uint32_t b; memcpy(&b, &f, sizeof b); return b; }
static inline float kq_float(uint32_t b) { float f; memcpy(&f, &b, sizeof f); return f; }

/* float32 -> float16, round to nearest even (NaN -> quiet NaN 0x7e00 with sign, like ggml). */
static uint16_t kq_f32_to_f16(float f) {
    uint32_t x = kq_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00;
    if (a >= 0x477ff000u) return sign | 0x7c00;              /* >= 65520 rounds to inf */
    if (a >= 0x38800000u) {                                   /* normal half */
        uint32_t r = a - 0x38000000u;
        uint32_t h = r >> 13, rem = r & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
        return sign | (uint16_t)h;
    }
    if (a <= 0x33000000u) return sign;                        /* <= 2^-25 rounds to zero */
    {
        uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)e;                             /* units of 2^-24 */
        uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return sign | (uint16_t)h;
    }
}

static float kq_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-8f;           /* m * 2^-24, exact */
        return sign ? -v : v;
    }
    if (e == 31) return kq_float(sign | 0x7f800000u | (m << 13));
    return kq_float(sign | ((e + 112) << 23) | (m << 13));
}

static inline void kq_put_f16(uint8_t *p, float f) {
    uint16_t h = kq_f32_to_f16(f);
    p[0] = (uint8_t)(h & 0xff);
    p[1] = (uint8_t)(h >> 8);
}

static inline float kq_get_f16(const uint8_t *p) {
    return kq_f16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
}

/* ------------------------------------------------------------------ lane searches */

/* make_qkx2_quants (qkx3 = 0) / make_qkx3_quants (qkx3 = 1), one group per lane. */
KQ_CLONES static void kq_qkx_lanes(int n, int nmax, const kq_lanes_f *xt, const kq_lanes_f *wt,
                         float rmin, float rdelta, int nstep, int use_mad, int qkx3,
                         float *scale_out, float *the_min_out, kq_lanes_u8 *L) {
    float mn[KQ_LANES], mx[KQ_LANES], sum_w[KQ_LANES], sum_x[KQ_LANES];
    float best[KQ_LANES], scale[KQ_LANES], iscale[KQ_LANES];
    int flat[KQ_LANES];
    kq_lanes_u8 Laux[32];
    for (int k = 0; k < KQ_LANES; ++k) {
        mn[k] = mx[k] = xt[0][k];
        sum_w[k] = wt[0][k];
        sum_x[k] = sum_w[k] * xt[0][k];
    }
    for (int i = 1; i < n; ++i) {
        for (int k = 0; k < KQ_LANES; ++k) {
            float v = xt[i][k], w = wt[i][k];
            mn[k] = v < mn[k] ? v : mn[k];
            mx[k] = v > mx[k] ? v : mx[k];
            sum_w[k] += w;
            sum_x[k] += w * v;
        }
    }
    for (int k = 0; k < KQ_LANES; ++k) {
        if (mn[k] > 0) mn[k] = 0;
        flat[k] = qkx3 ? (mx[k] <= mn[k]) : (mx[k] == mn[k]);
        iscale[k] = nmax / (mx[k] - mn[k]);
        scale[k] = 1 / iscale[k];
        best[k] = 0;
    }
    for (int i = 0; i < n; ++i) {
        for (int k = 0; k < KQ_LANES; ++k) {
            int l = kq_nearest_int(iscale[k] * (xt[i][k] - mn[k]));
            l = l > nmax ? nmax : l;
            l = l < 0 ? 0 : l;
            L[i][k] = (uint8_t)l;
            float diff = scale[k] * l + mn[k] - xt[i][k];
            diff = use_mad ? fabsf(diff) : diff * diff;
            best[k] += wt[i][k] * diff;
        }
    }
    for (int is = 0; is <= nstep; ++is) {
        float isc[KQ_LANES], sl[KQ_LANES], sl2[KQ_LANES], sxl[KQ_LANES];
        float ts[KQ_LANES], tm[KQ_LANES], cur[KQ_LANES], D[KQ_LANES];
        int take[KQ_LANES];
        for (int k = 0; k < KQ_LANES; ++k) {
            isc[k] = (rmin + rdelta * is + nmax) / (mx[k] - mn[k]);
            sl[k] = sl2[k] = sxl[k] = 0;
        }
        for (int i = 0; i < n; ++i) {
            for (int k = 0; k < KQ_LANES; ++k) {
                int l = kq_nearest_int(isc[k] * (xt[i][k] - mn[k]));
                l = l > nmax ? nmax : l;
                l = l < 0 ? 0 : l;
                Laux[i][k] = (uint8_t)l;
                float w = wt[i][k];
                sl[k] += w * l;
                sl2[k] += w * l * l;
                sxl[k] += w * l * xt[i][k];
            }
        }
        for (int k = 0; k < KQ_LANES; ++k) {
            D[k] = sum_w[k] * sl2[k] - sl[k] * sl[k];
            ts[k] = (sum_w[k] * sxl[k] - sum_x[k] * sl[k]) / D[k];
            tm[k] = (sl2[k] * sum_x[k] - sl[k] * sxl[k]) / D[k];
            if (tm[k] > 0) {
                tm[k] = 0;
                ts[k] = sxl[k] / sl2[k];
            }
            cur[k] = 0;
        }
        for (int i = 0; i < n; ++i) {
            for (int k = 0; k < KQ_LANES; ++k) {
                float diff = ts[k] * Laux[i][k] + tm[k] - xt[i][k];
                diff = use_mad ? fabsf(diff) : diff * diff;
                cur[k] += wt[i][k] * diff;
            }
        }
        int any = 0;
        for (int k = 0; k < KQ_LANES; ++k) {
            take[k] = (D[k] > 0) & (cur[k] < best[k]);
            any |= take[k];
            if (take[k]) {
                best[k] = cur[k];
                scale[k] = ts[k];
                mn[k] = tm[k];
            }
        }
        if (any) {
            for (int i = 0; i < n; ++i)
                for (int k = 0; k < KQ_LANES; ++k)
                    if (take[k]) L[i][k] = Laux[i][k];
        }
    }
    for (int k = 0; k < KQ_LANES; ++k) {
        if (flat[k]) {
            scale[k] = 0;
            for (int i = 0; i < n; ++i) L[i][k] = 0;
        }
        scale_out[k] = scale[k];
        the_min_out[k] = -mn[k];
    }
}

/* make_qx_quants with rmse_type 1, one group per lane; L gets l + nmax (0 for all-zero groups). */
KQ_CLONES static void kq_qx_lanes(int n, int nmax, const kq_lanes_f *xt, const kq_lanes_f *wt,
                        float *scale_out, kq_lanes_u8 *L) {
    float vmax[KQ_LANES], amax[KQ_LANES], iscale[KQ_LANES], sumlx[KQ_LANES], suml2[KQ_LANES];
    float scale[KQ_LANES], best[KQ_LANES];
    for (int k = 0; k < KQ_LANES; ++k) vmax[k] = amax[k] = sumlx[k] = suml2[k] = 0;
    for (int i = 0; i < n; ++i) {
        for (int k = 0; k < KQ_LANES; ++k) {
            float ax = fabsf(xt[i][k]);
            int gt = ax > amax[k];              /* ggml: if (ax > amax) {amax = ax; max = x;} */
            vmax[k] = gt ? xt[i][k] : vmax[k];
            amax[k] = gt ? ax : amax[k];
        }
    }
    for (int k = 0; k < KQ_LANES; ++k) iscale[k] = -nmax / vmax[k];
    for (int i = 0; i < n; ++i) {
        for (int k = 0; k < KQ_LANES; ++k) {
            int l = kq_nearest_int(iscale[k] * xt[i][k]);
            l = l > nmax - 1 ? nmax - 1 : l;
            l = l < -nmax ? -nmax : l;
            L[i][k] = (uint8_t)(l + nmax);
            float w = wt[i][k];
            sumlx[k] += w * xt[i][k] * l;
            suml2[k] += w * l * l;
        }
    }
    for (int k = 0; k < KQ_LANES; ++k) {
        scale[k] = suml2[k] ? sumlx[k] / suml2[k] : 0.0f;
        best[k] = scale[k] * sumlx[k];
    }
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        int take[KQ_LANES], any = 0;
        for (int k = 0; k < KQ_LANES; ++k) {
            iscale[k] = -(nmax + 0.1f * is) / vmax[k];
            sumlx[k] = suml2[k] = 0;
        }
        for (int i = 0; i < n; ++i) {
            for (int k = 0; k < KQ_LANES; ++k) {
                int l = kq_nearest_int(iscale[k] * xt[i][k]);
                l = l > nmax - 1 ? nmax - 1 : l;
                l = l < -nmax ? -nmax : l;
                float w = wt[i][k];
                sumlx[k] += w * xt[i][k] * l;
                suml2[k] += w * l * l;
            }
        }
        for (int k = 0; k < KQ_LANES; ++k) {
            take[k] = (suml2[k] > 0) & (sumlx[k] * sumlx[k] > best[k] * suml2[k]);
            any |= take[k];
            if (take[k]) {
                scale[k] = sumlx[k] / suml2[k];
                best[k] = scale[k] * sumlx[k];
            }
        }
        if (any) {
            for (int i = 0; i < n; ++i) {
                for (int k = 0; k < KQ_LANES; ++k) {
                    if (!take[k]) continue;
                    int l = kq_nearest_int(iscale[k] * xt[i][k]);
                    l = l > nmax - 1 ? nmax - 1 : l;
                    l = l < -nmax ? -nmax : l;
                    L[i][k] = (uint8_t)(l + nmax);
                }
            }
        }
    }
    for (int k = 0; k < KQ_LANES; ++k) {
        if (amax[k] < KQ_EPS) {
            scale[k] = 0;
            for (int i = 0; i < n; ++i) L[i][k] = 0;
        }
        scale_out[k] = scale[k];
    }
}

/* make_q3_quants with do_rmse, one group per lane; L gets l + nmax (0 for all-zero groups). */
KQ_CLONES static void kq_q3_lanes(int n, int nmax, const kq_lanes_f *xt, float *scale_out, kq_lanes_u8 *Lout) {
    float vmax[KQ_LANES], amax[KQ_LANES], iscale[KQ_LANES], sumlx[KQ_LANES], suml2[KQ_LANES];
    int L[16][KQ_LANES];
    for (int k = 0; k < KQ_LANES; ++k) vmax[k] = amax[k] = sumlx[k] = suml2[k] = 0;
    for (int i = 0; i < n; ++i) {
        for (int k = 0; k < KQ_LANES; ++k) {
            float ax = fabsf(xt[i][k]);
            int gt = ax > amax[k];              /* ggml: if (ax > amax) {amax = ax; max = x;} */
            vmax[k] = gt ? xt[i][k] : vmax[k];
            amax[k] = gt ? ax : amax[k];
        }
    }
    for (int k = 0; k < KQ_LANES; ++k) iscale[k] = -nmax / vmax[k];
    for (int i = 0; i < n; ++i) {
        for (int k = 0; k < KQ_LANES; ++k) {
            int l = kq_nearest_int(iscale[k] * xt[i][k]);
            l = l > nmax - 1 ? nmax - 1 : l;
            l = l < -nmax ? -nmax : l;
            L[i][k] = l;
            float w = xt[i][k] * xt[i][k];
            sumlx[k] += w * xt[i][k] * l;
            suml2[k] += w * l * l;
        }
    }
    for (int itry = 0; itry < 5; ++itry) {
        int changed = 0;
        for (int i = 0; i < n; ++i) {
            /* ggml branches; the same arithmetic is done for every lane and then selected */
            for (int k = 0; k < KQ_LANES; ++k) {
                float x = xt[i][k], w = x * x;
                int li = L[i][k];
                float slx = sumlx[k] - w * x * li;
                float sl2 = suml2[k] - w * li * li;
                int new_l = kq_nearest_int(x * sl2 / slx);
                new_l = new_l > nmax - 1 ? nmax - 1 : new_l;
                new_l = new_l < -nmax ? -nmax : new_l;
                float slx2 = slx + w * x * new_l;
                float sl22 = sl2 + w * new_l * new_l;
                int take = (slx > 0) & (new_l != li) & (sl22 > 0)
                           & (slx2 * slx2 * suml2[k] > sumlx[k] * sumlx[k] * sl22);
                L[i][k] = take ? new_l : li;
                sumlx[k] = take ? slx2 : sumlx[k];
                suml2[k] = take ? sl22 : suml2[k];
                changed |= take;
            }
        }
        if (!changed) break;   /* a pass without changes would repeat forever: every lane is done */
    }
    for (int k = 0; k < KQ_LANES; ++k) {
        int zero = amax[k] < KQ_EPS;
        scale_out[k] = zero ? 0.0f : (suml2[k] > 0.0f ? sumlx[k] / suml2[k] : 0.0f);
        for (int i = 0; i < n; ++i) Lout[i][k] = zero ? 0 : (uint8_t)(L[i][k] + nmax);
    }
}

/* ------------------------------------------------------------------ scalar searches (per super-block) */

/* make_qx_quants, rmse_type 1, with weights, for the 16 sub-block scales of Q3_K. */
static float kq_qx_scalar(int n, int nmax, const float *x, const float *w, uint8_t *L) {
    float vmax = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; vmax = x[i]; }
    }
    if (amax < KQ_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / vmax, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = kq_nearest_int(iscale * x[i]);
        l = l > nmax - 1 ? nmax - 1 : (l < -nmax ? -nmax : l);
        L[i] = (uint8_t)(l + nmax);
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / vmax;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = kq_nearest_int(iscale * x[i]);
            l = l > nmax - 1 ? nmax - 1 : (l < -nmax ? -nmax : l);
            sumlx += w[i] * x[i] * l;
            suml2 += w[i] * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                int l = kq_nearest_int(iscale * x[i]);
                L[i] = (uint8_t)(nmax + (l > nmax - 1 ? nmax - 1 : (l < -nmax ? -nmax : l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* make_qp_quants: scale for non-negative values (sub-block scales or mins). */
static float kq_qp_scalar(int n, int nmax, const float *x, uint8_t *L, const float *qw) {
    float vmax = 0;
    for (int i = 0; i < n; ++i) vmax = vmax > x[i] ? vmax : x[i];
    if (vmax < KQ_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = nmax / vmax;
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)kq_nearest_int(iscale * x[i]);
    float scale = 1 / iscale, best_mse = 0;
    for (int i = 0; i < n; ++i) {
        float diff = x[i] - scale * L[i];
        best_mse += qw[i] * diff * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        float iscale_is = (0.1f * is + nmax) / vmax;
        float scale_is = 1 / iscale_is, mse = 0;
        for (int i = 0; i < n; ++i) {
            int l = kq_nearest_int(iscale_is * x[i]);
            l = l < nmax ? l : nmax;
            float diff = x[i] - scale_is * l;
            mse += qw[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = kq_nearest_int(iscale * x[i]);
        l = l < nmax ? l : nmax;
        L[i] = (uint8_t)l;
        sumlx += qw[i] * x[i] * l;
        suml2 += qw[i] * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int changed = 0;
        for (int i = 0; i < n; ++i) {
            float w = qw[i];
            float slx = sumlx - w * x[i] * L[i];
            float sl2 = suml2 - w * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                int new_l = kq_nearest_int(x[i] * sl2 / slx);
                new_l = new_l < nmax ? new_l : nmax;
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++changed;
                    }
                }
            }
        }
        if (!changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* ------------------------------------------------------------------ packing helpers */

static void kq_pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < KQ_QK; j += 128)
        for (int l = 0; l < 32; ++l)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

static void kq_pack_scale_min_k4(const uint8_t *ls, const uint8_t *lm, uint8_t *s) {
    for (int j = 0; j < 8; ++j) {
        if (j < 4) {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (uint8_t)((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
            s[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            s[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

static void kq_get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

/* ------------------------------------------------------------------ Q4_K / Q5_K */

/* Quantize one row of Q4_K (nmax 15) or Q5_K (nmax 31); qw is the row's importance vector or NULL. */
static void kq_row_affine(const float *x, const float *qw, int64_t n_per_row, int nmax, uint8_t *out) {
    const int64_t nb = n_per_row / KQ_QK;
    const int five = nmax == 31;
    const int bytes = five ? 176 : 144;
    for (int64_t ib = 0; ib < nb; ib += 2) {
        const int nsb = ib + 1 < nb ? 2 : 1;                  /* super-blocks in this batch */
        kq_lanes_f xt[32], wt[32];
        kq_lanes_u8 L[32];
        float scales[KQ_LANES], mins[KQ_LANES], sw[KQ_LANES];
        memset(xt, 0, sizeof xt);
        memset(wt, 0, sizeof wt);
        for (int s = 0; s < nsb; ++s) {
            const float *xb = x + (ib + s) * KQ_QK;
            for (int j = 0; j < 8; ++j)
                for (int l = 0; l < 32; ++l) xt[l][8 * s + j] = xb[32 * j + l];
            if (qw) {
                const float *q = qw + (ib + s) * KQ_QK;
                float sum_x2 = 0;
                for (int l = 0; l < KQ_QK; ++l) sum_x2 += xb[l] * xb[l];
                float sigma2 = 2 * sum_x2 / KQ_QK;
                for (int j = 0; j < 8; ++j) {
                    float sumw = 0;
                    for (int l = 0; l < 32; ++l) {
                        float v = xb[32 * j + l];
                        float w = q[32 * j + l] * sqrtf(sigma2 + v * v);
                        wt[l][8 * s + j] = w;
                        sumw += w;
                    }
                    sw[8 * s + j] = sumw;
                }
            }
        }
        if (qw) {
            kq_qkx_lanes(32, nmax, xt, wt, -0.9f, 0.05f, 36, 0, 1, scales, mins, L);
        } else {
            float sum_x2[KQ_LANES] = {0};
            for (int l = 0; l < 32; ++l)
                for (int k = 0; k < KQ_LANES; ++k) sum_x2[k] += xt[l][k] * xt[l][k];
            for (int k = 0; k < KQ_LANES; ++k) {
                float av_x = sqrtf(sum_x2[k] / 32);
                for (int l = 0; l < 32; ++l) wt[l][k] = av_x + fabsf(xt[l][k]);
            }
            if (five) kq_qkx_lanes(32, nmax, xt, wt, -0.5f, 0.1f, 15, 0, 0, scales, mins, L);
            else      kq_qkx_lanes(32, nmax, xt, wt, -1.f, 0.1f, 20, 0, 0, scales, mins, L);
        }
        for (int s = 0; s < nsb; ++s) {
            const float *xb = x + (ib + s) * KQ_QK;
            uint8_t *y = out + (ib + s) * bytes;
            uint8_t ls[8], lm[8], Lb[KQ_QK];
            float d_block, m_block;
            const float *sc_s = scales + 8 * s, *mn_s = mins + 8 * s;
            for (int j = 0; j < 8; ++j)
                for (int l = 0; l < 32; ++l) Lb[32 * j + l] = L[l][8 * s + j];
            if (qw) {
                d_block = kq_qp_scalar(8, 63, sc_s, ls, sw + 8 * s);
                m_block = kq_qp_scalar(8, 63, mn_s, lm, sw + 8 * s);
                if (five) {
                    for (int j = 0; j < 8; ++j) {
                        ls[j] = ls[j] < 63 ? ls[j] : 63;
                        lm[j] = lm[j] < 63 ? lm[j] : 63;
                    }
                }
            } else {
                float max_scale = 0, max_min = 0;
                for (int j = 0; j < 8; ++j) {
                    if (sc_s[j] > max_scale) max_scale = sc_s[j];
                    if (mn_s[j] > max_min) max_min = mn_s[j];
                }
                float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
                float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
                for (int j = 0; j < 8; ++j) {
                    uint8_t a = (uint8_t)kq_nearest_int(inv_scale * sc_s[j]);
                    uint8_t b = (uint8_t)kq_nearest_int(inv_min * mn_s[j]);
                    ls[j] = a < 63 ? a : 63;
                    lm[j] = b < 63 ? b : 63;
                }
                d_block = max_scale / 63.f;
                m_block = max_min / 63.f;
            }
            uint8_t *packed = y + 4;
            kq_pack_scale_min_k4(ls, lm, packed);
            kq_put_f16(y, d_block);
            kq_put_f16(y + 2, m_block);
            const float d16 = kq_get_f16(y), dmin16 = kq_get_f16(y + 2);
            for (int j = 0; j < 8; ++j) {
                uint8_t sc, m;
                kq_get_scale_min_k4(j, packed, &sc, &m);
                const float d = d16 * sc;
                if (!d) continue;
                const float dm = dmin16 * m;
                for (int ii = 0; ii < 32; ++ii) {
                    int l = kq_nearest_int((xb[32 * j + ii] + dm) / d);
                    l = l < 0 ? 0 : (l > nmax ? nmax : l);
                    Lb[32 * j + ii] = (uint8_t)l;
                }
            }
            if (five) {
                uint8_t *qh = y + 16, *ql = y + 48;
                memset(qh, 0, 32);
                uint8_t m1 = 1, m2 = 2;
                for (int n = 0; n < KQ_QK; n += 64) {
                    for (int j = 0; j < 32; ++j) {   /* branchless: the 5th bit is random */
                        int l1 = Lb[n + j], l2 = Lb[n + j + 32];
                        qh[j] |= (uint8_t)((l1 > 15 ? m1 : 0) | (l2 > 15 ? m2 : 0));
                        ql[j] = (uint8_t)((l1 & 15) | ((l2 & 15) << 4));
                    }
                    m1 <<= 2; m2 <<= 2;
                    ql += 32;
                }
            } else {
                uint8_t *q = y + 16;
                for (int j = 0; j < KQ_QK; j += 64) {
                    for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(Lb[j + l] | (Lb[j + l + 32] << 4));
                    q += 32;
                }
            }
        }
    }
}

/* ------------------------------------------------------------------ Q6_K */

static void kq_row_q6(const float *x, const float *qw, int64_t n_per_row, uint8_t *out) {
    const int64_t nb = n_per_row / KQ_QK;
    for (int64_t ib = 0; ib < nb; ++ib) {
        const float *xb = x + ib * KQ_QK;
        uint8_t *y = out + ib * 210;
        kq_lanes_f xt[16], wt[16];
        kq_lanes_u8 L[16];
        float scales[16];
        uint8_t Lb[KQ_QK];
        for (int j = 0; j < 16; ++j)
            for (int l = 0; l < 16; ++l) {
                float v = xb[16 * j + l];
                xt[l][j] = v;
                wt[l][j] = qw ? qw[ib * KQ_QK + 16 * j + l] : v * v;
            }
        kq_qx_lanes(16, 32, xt, wt, scales, L);
        for (int j = 0; j < 16; ++j)
            for (int l = 0; l < 16; ++l) Lb[16 * j + l] = L[l][j];
        float max_scale = 0, max_abs_scale = 0;
        for (int j = 0; j < 16; ++j) {
            float a = fabsf(scales[j]);
            if (a > max_abs_scale) { max_abs_scale = a; max_scale = scales[j]; }
        }
        if (max_abs_scale < KQ_EPS) {
            memset(y, 0, 210);
            continue;
        }
        int8_t *sc = (int8_t *)(y + 192);
        float iscale = -128.f / max_scale;
        kq_put_f16(y + 208, 1 / iscale);
        for (int j = 0; j < 16; ++j) {
            int v = kq_nearest_int(iscale * scales[j]);
            sc[j] = (int8_t)(v < 127 ? v : 127);
        }
        const float d16 = kq_get_f16(y + 208);
        for (int j = 0; j < 16; ++j) {
            float d = d16 * sc[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = kq_nearest_int(xb[16 * j + ii] / d);
                l = l < -32 ? -32 : (l > 31 ? 31 : l);
                Lb[16 * j + ii] = (uint8_t)(l + 32);
            }
        }
        uint8_t *ql = y, *qh = y + 128;
        for (int j = 0; j < KQ_QK; j += 128) {
            for (int l = 0; l < 32; ++l) {
                const uint8_t q1 = Lb[j + l + 0] & 0xF, q2 = Lb[j + l + 32] & 0xF;
                const uint8_t q3 = Lb[j + l + 64] & 0xF, q4 = Lb[j + l + 96] & 0xF;
                ql[l + 0] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((Lb[j + l] >> 4) | ((Lb[j + l + 32] >> 4) << 2)
                                  | ((Lb[j + l + 64] >> 4) << 4) | ((Lb[j + l + 96] >> 4) << 6));
            }
            ql += 64;
            qh += 32;
        }
    }
}

/* ------------------------------------------------------------------ Q3_K */

static void kq_row_q3(const float *x, const float *qw, int64_t n_per_row, uint8_t *out) {
    const int64_t nb = n_per_row / KQ_QK;
    for (int64_t ib = 0; ib < nb; ++ib) {
        const float *xb = x + ib * KQ_QK;
        uint8_t *y = out + ib * 110;
        uint8_t *hmask = y, *qs = y + 32, *sc = y + 96;
        kq_lanes_f xt[16], wt[16];
        kq_lanes_u8 L[16];
        float scales[16], sw[16];
        uint8_t Lb[KQ_QK];
        for (int j = 0; j < 16; ++j)
            for (int l = 0; l < 16; ++l) xt[l][j] = xb[16 * j + l];
        memset(sc, 0, 12);
        if (qw) {
            float sumx2 = 0;
            for (int j = 0; j < KQ_QK; ++j) sumx2 += xb[j] * xb[j];
            float sigma2 = 2 * sumx2 / KQ_QK;
            for (int j = 0; j < 16; ++j) {
                float sumw = 0;
                for (int l = 0; l < 16; ++l) {
                    float v = xb[16 * j + l];
                    float w = qw[ib * KQ_QK + 16 * j + l] * sqrtf(sigma2 + v * v);
                    wt[l][j] = w;
                    sumw += w;
                }
                sw[j] = sumw;
            }
            kq_qx_lanes(16, 4, xt, wt, scales, L);
            uint8_t Ls[16];
            float d_block = kq_qx_scalar(16, 32, scales, sw, Ls);
            for (int j = 0; j < 16; ++j) {
                int l = Ls[j];
                if (j < 8) sc[j] = (uint8_t)(l & 0xF);
                else sc[j - 8] |= (uint8_t)((l & 0xF) << 4);
                l >>= 4;
                sc[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
            }
            kq_put_f16(y + 108, d_block);
        } else {
            kq_q3_lanes(16, 4, xt, scales, L);
            float max_scale = 0, amax = 0;
            for (int j = 0; j < 16; ++j) {
                float a = fabsf(scales[j]);
                if (a > amax) { amax = a; max_scale = scales[j]; }
            }
            if (max_scale) {
                float iscale = -32.f / max_scale;
                for (int j = 0; j < 16; ++j) {
                    int8_t l8 = (int8_t)kq_nearest_int(iscale * scales[j]);
                    int l = l8 < -32 ? -32 : (l8 > 31 ? 31 : l8);
                    l += 32;
                    if (j < 8) sc[j] = (uint8_t)(l & 0xF);
                    else sc[j - 8] |= (uint8_t)((l & 0xF) << 4);
                    l >>= 4;
                    sc[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
                }
                kq_put_f16(y + 108, 1 / iscale);
            } else {
                kq_put_f16(y + 108, 0.f);
            }
        }
        for (int j = 0; j < 16; ++j)
            for (int l = 0; l < 16; ++l) Lb[16 * j + l] = L[l][j];
        const float d16 = kq_get_f16(y + 108);
        for (int j = 0; j < 16; ++j) {
            int s = j < 8 ? (sc[j] & 0xF) : (sc[j - 8] >> 4);
            s = (s | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
            float d = d16 * s;
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii) {
                int l = kq_nearest_int(xb[16 * j + ii] / d);
                l = l < -4 ? -4 : (l > 3 ? 3 : l);
                Lb[16 * j + ii] = (uint8_t)(l + 4);
            }
        }
        memset(hmask, 0, 32);
        for (int bit = 0; bit < 8; ++bit) {             /* value 32*bit + m: bit `bit` of hmask[m] */
            for (int m = 0; m < 32; ++m) {
                uint8_t high = Lb[32 * bit + m] > 3;
                hmask[m] |= (uint8_t)(high << bit);
                Lb[32 * bit + m] -= (uint8_t)(4 * high);
            }
        }
        kq_pack_2bit(Lb, qs);
    }
}

/* ------------------------------------------------------------------ Q2_K */

static void kq_row_q2(const float *x, const float *qw, int64_t n_per_row, uint8_t *out) {
    const int64_t nb = n_per_row / KQ_QK;
    for (int64_t ib = 0; ib < nb; ++ib) {
        const float *xb = x + ib * KQ_QK;
        uint8_t *y = out + ib * 84;
        uint8_t *sc = y, *qs = y + 16;
        kq_lanes_f xt[16], wt[16];
        kq_lanes_u8 L[16];
        float scales[16], mins[16], sw[16];
        uint8_t Lb[KQ_QK];
        for (int j = 0; j < 16; ++j)
            for (int l = 0; l < 16; ++l) xt[l][j] = xb[16 * j + l];
        if (qw) {
            float sumx2 = 0;
            for (int j = 0; j < KQ_QK; ++j) sumx2 += xb[j] * xb[j];
            float sigma2 = sumx2 / KQ_QK;
            for (int j = 0; j < 16; ++j) {
                float sumw = 0;
                for (int l = 0; l < 16; ++l) {
                    float v = xb[16 * j + l];
                    float w = qw[ib * KQ_QK + 16 * j + l] * sqrtf(sigma2 + v * v);
                    wt[l][j] = w;
                    sumw += w;
                }
                sw[j] = sumw;
            }
            kq_qkx_lanes(16, 3, xt, wt, -0.9f, 0.05f, 36, 0, 1, scales, mins, L);
            uint8_t Ls[16], Lm[16];
            float dm = kq_qp_scalar(16, 15, scales, Ls, sw);
            float mm = kq_qp_scalar(16, 15, mins, Lm, sw);
            kq_put_f16(y + 80, dm);
            kq_put_f16(y + 82, mm);
            for (int j = 0; j < 16; ++j) sc[j] = (uint8_t)(Ls[j] | (Lm[j] << 4));
        } else {
            for (int j = 0; j < 16; ++j)
                for (int l = 0; l < 16; ++l) wt[l][j] = fabsf(xt[l][j]);
            kq_qkx_lanes(16, 3, xt, wt, -0.5f, 0.1f, 15, 1, 0, scales, mins, L);
            float max_scale = 0, max_min = 0;
            for (int j = 0; j < 16; ++j) {
                if (scales[j] > max_scale) max_scale = scales[j];
                if (mins[j] > max_min) max_min = mins[j];
            }
            if (max_scale > 0) {
                float iscale = 15.f / max_scale;
                for (int j = 0; j < 16; ++j) sc[j] = (uint8_t)kq_nearest_int(iscale * scales[j]);
                kq_put_f16(y + 80, max_scale / 15.f);
            } else {
                memset(sc, 0, 16);
                kq_put_f16(y + 80, 0.f);
            }
            if (max_min > 0) {
                float iscale = 15.f / max_min;
                for (int j = 0; j < 16; ++j) sc[j] |= (uint8_t)(kq_nearest_int(iscale * mins[j]) << 4);
                kq_put_f16(y + 82, max_min / 15.f);
            } else {
                kq_put_f16(y + 82, 0.f);
            }
        }
        for (int j = 0; j < 16; ++j)
            for (int l = 0; l < 16; ++l) Lb[16 * j + l] = L[l][j];
        const float d16 = kq_get_f16(y + 80), dmin16 = kq_get_f16(y + 82);
        for (int j = 0; j < 16; ++j) {
            const float d = d16 * (sc[j] & 0xF);
            if (!d) continue;
            const float dm = dmin16 * (sc[j] >> 4);
            for (int ii = 0; ii < 16; ++ii) {
                int l = kq_nearest_int((xb[16 * j + ii] + dm) / d);
                l = l < 0 ? 0 : (l > 3 ? 3 : l);
                Lb[16 * j + ii] = (uint8_t)l;
            }
        }
        kq_pack_2bit(Lb, qs);
    }
}

/* ------------------------------------------------------------------ Q8_K */

static void kq_row_q8(const float *x, int64_t n_per_row, uint8_t *out) {
    const int64_t nb = n_per_row / KQ_QK;
    for (int64_t ib = 0; ib < nb; ++ib) {
        const float *xb = x + ib * KQ_QK;
        uint8_t *y = out + ib * 292;
        int8_t q[KQ_QK];
        int16_t bsums[16];
        float vmax = 0, amax = 0, d = 0;
        for (int j = 0; j < KQ_QK; ++j) {
            float ax = fabsf(xb[j]);
            if (ax > amax) { amax = ax; vmax = xb[j]; }
        }
        if (!amax) {
            memset(q, 0, sizeof q);
        } else {
            const float iscale = -127.f / vmax;
            for (int j = 0; j < KQ_QK; ++j) {
                int v = kq_nearest_int(iscale * xb[j]);
                q[j] = (int8_t)(v < 127 ? v : 127);
            }
            d = 1 / iscale;
        }
        for (int j = 0; j < 16; ++j) {
            int sum = 0;
            for (int ii = 0; ii < 16; ++ii) sum += q[16 * j + ii];
            bsums[j] = (int16_t)(amax ? sum : 0);
        }
        memcpy(y, &d, 4);
        memcpy(y + 4, q, KQ_QK);
        memcpy(y + 260, bsums, 32);
    }
}

/* ------------------------------------------------------------------ dispatch */

/* ggml type ids: Q2_K 10, Q3_K 11, Q4_K 12, Q5_K 13, Q6_K 14, Q8_K 15. Returns 0, or -1 for an unknown id. */
static int kq_quantize_rows(int type, const float *x, const float *imatrix, int64_t rows,
                            int64_t n_per_row, uint8_t *out) {
    static const int bytes[6] = {84, 110, 144, 176, 210, 292};
    if (type < 10 || type > 15) return -1;
    const int64_t row_bytes = n_per_row / KQ_QK * bytes[type - 10];
    for (int64_t r = 0; r < rows; ++r) {
        const float *xr = x + r * n_per_row;
        uint8_t *yr = out + r * row_bytes;
        switch (type) {
            case 10: kq_row_q2(xr, imatrix, n_per_row, yr); break;
            case 11: kq_row_q3(xr, imatrix, n_per_row, yr); break;
            case 12: kq_row_affine(xr, imatrix, n_per_row, 15, yr); break;
            case 13: kq_row_affine(xr, imatrix, n_per_row, 31, yr); break;
            case 14: kq_row_q6(xr, imatrix, n_per_row, yr); break;
            case 15: kq_row_q8(xr, n_per_row, yr); break;
        }
    }
    return 0;
}
