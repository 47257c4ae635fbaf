/* Grid types: IQ3_XXS and IQ3_S, with ggml's exact float32 arithmetic.
 *
 * Included by _kquants.c after _kquants_legacy.h. Groups of 4 values are coded as one point
 * of a fixed grid (256 points for IQ3_XXS, 512 for IQ3_S) whose coordinates are odd levels
 * 2l+1, l in 0..7, times a block scale; the signs are stored apart.
 *
 * The grids are not spelled out here: quant/iqgrid.py hands over each grid's points (read
 * from gguf-py, which ships them) as 12-bit codes, 3 bits per coordinate (grid_codes), and
 * the lookup tables are built from them at first use: for each of the 4096 level patterns
 * its grid point, or the list of grid points at the nearest distinct distances (2 of them
 * for the 256-point grid, 3 for the 512-point one), ordered by distance, then point index.
 * That is what ggml's iq3xs_init_impl builds, and the order decides ties in the search.
 *
 * The search (ggml's quantize_row_iq3_xxs_impl / quantize_row_iq3_s_impl): per 32-value block,
 * weights x^2 (or imatrix * sqrt(sigma2 + x^2)), values made non-negative (signs apart; IQ3_XXS
 * keeps an even number of minus signs per 8 by flipping the least important value), then
 * trial scales (15 + 0.2 is) / max; each group of 4 takes the levels nearest_int((v/s - 1)/2),
 * and when that pattern is not on the grid, the neighbour of least weighted error; the trial
 * with the best sum(w x q)^2 / sum(w q^2) wins, and off-grid groups are searched again at the
 * winning scale. Every sum runs in ggml's order, in float32.
 */

#define GR_QK 256
#define GR_QB 32                 /* values per block (one scale) */
#define GR_IQ3XXS_BYTES 98
#define GR_IQ3S_BYTES 110
#define GR_IQ3_PATTERNS 4096     /* 4 coordinates of 3 bits */

typedef struct {
    int size;                    /* grid points */
    int ready;                   /* tables built */
    uint16_t *codes;             /* size codes from Python, 3 bits per coordinate */
    float (*pos)[4];             /* coordinates 2l+1 as float32, for the neighbour search */
    uint8_t (*lev)[4];           /* levels l */
    int32_t *map;                /* pattern -> point index, or -(offset + 1) into neigh */
    uint16_t *neigh;             /* at each offset: count, then that many point indices */
} gr_iq3_table;

static gr_iq3_table gr_iq3[2] = {{256, 0, NULL, NULL, NULL, NULL, NULL}, {512, 0, NULL, NULL, NULL, NULL, NULL}};

static gr_iq3_table *gr_iq3_for(int type) {
    return type == 18 ? &gr_iq3[0] : type == 21 ? &gr_iq3[1] : NULL;
}

static void gr_iq3_free(gr_iq3_table *t) {
    free(t->pos); free(t->lev); free(t->map); free(t->neigh);
    t->pos = NULL; t->lev = NULL; t->map = NULL; t->neigh = NULL;
    t->ready = 0;
}

/* Build the tables of `t` from its codes; 0 on success, -1 when out of memory or the codes
 * are not a valid grid. Runs with the GIL held, so never twice at once. */
static int gr_iq3_build(gr_iq3_table *t) {
    if (t->ready) return 0;
    if (!t->codes) return -1;
    const int size = t->size, nwant = size == 256 ? 2 : 3;
    t->pos = malloc(sizeof(*t->pos) * size);
    t->lev = malloc(sizeof(*t->lev) * size);
    t->map = malloc(sizeof(int32_t) * GR_IQ3_PATTERNS);
    int *d2 = malloc(sizeof(int) * size);
    if (!t->pos || !t->lev || !t->map || !d2) { free(d2); gr_iq3_free(t); return -1; }
    for (int p = 0; p < GR_IQ3_PATTERNS; ++p) t->map[p] = -1;
    for (int g = 0; g < size; ++g) {
        const int code = t->codes[g];
        if (code >= GR_IQ3_PATTERNS || t->map[code] >= 0) { free(d2); gr_iq3_free(t); return -1; }
        for (int i = 0; i < 4; ++i) {
            t->lev[g][i] = (uint8_t)((code >> 3 * i) & 7);
            t->pos[g][i] = (float)(2 * t->lev[g][i] + 1);
        }
        t->map[code] = g;
    }
    /* two passes over the off-grid patterns: count the neighbours, then list them */
    size_t total = 0;
    uint16_t *neigh = NULL;
    for (int pass = 0; pass < 2; ++pass) {
        size_t at = 0;
        for (int p = 0; p < GR_IQ3_PATTERNS; ++p) {
            if (t->map[p] >= 0) continue;       /* on the grid */
            int dmin[3] = {INT32_MAX, INT32_MAX, INT32_MAX};   /* the nwant smallest distinct distances */
            for (int g = 0; g < size; ++g) {
                int s = 0;
                for (int i = 0; i < 4; ++i) {
                    const int diff = 2 * t->lev[g][i] - 2 * ((p >> 3 * i) & 7);
                    s += diff * diff;
                }
                d2[g] = s;
                for (int k = 0; k < nwant; ++k) {
                    if (s == dmin[k]) break;
                    if (s < dmin[k]) {
                        for (int m = nwant - 1; m > k; --m) dmin[m] = dmin[m - 1];
                        dmin[k] = s;
                        break;
                    }
                }
            }
            size_t count = 0;
            const size_t start = at;
            for (int k = 0; k < nwant && dmin[k] != INT32_MAX; ++k)
                for (int g = 0; g < size; ++g)
                    if (d2[g] == dmin[k]) {
                        if (pass == 1) neigh[start + 1 + count] = (uint16_t)g;
                        ++count;
                    }
            if (pass == 1) {
                neigh[start] = (uint16_t)count;
                t->map[p] = -(int32_t)start - 1;
            }
            at += 1 + count;
        }
        if (pass == 0) {
            total = at;
            neigh = malloc(sizeof(uint16_t) * (total ? total : 1));
            if (!neigh) { free(d2); gr_iq3_free(t); return -1; }
        }
    }
    free(d2);
    t->neigh = neigh;
    t->ready = 1;
    return 0;
}

/* The neighbour of pattern list `nb` with the least sum w (s p - v)^2; its levels into L.
 * -1 when no distance compares below FLT_MAX (non-finite values), as ggml then aborts. */
static inline int gr_iq3_neighbour(const gr_iq3_table *t, const uint16_t *nb, const float *v,
                                   const float *w, float s, int8_t *L) {
    float best = FLT_MAX;
    int found = -1;
    for (int j = 1; j <= nb[0]; ++j) {
        const float *p = t->pos[nb[j]];
        float d2 = 0;
        for (int i = 0; i < 4; ++i) {
            const float diff = s * p[i] - v[i];
            d2 += w[i] * diff * diff;
        }
        if (d2 < best) { best = d2; found = nb[j]; }
    }
    if (found >= 0)
        for (int i = 0; i < 4; ++i) L[i] = (int8_t)t->lev[found][i];
    return found;
}

/* Levels of 4 values at inverse scale id, clamped to 0..7, as a pattern code. */
static inline int gr_iq3_pattern(const float *v, float id, int8_t *L) {
    int code = 0;
    for (int i = 0; i < 4; ++i) {
        int l = kq_nearest_int(0.5f * (id * v[i] - 1));
        l = l < 0 ? 0 : l > 7 ? 7 : l;
        L[i] = (int8_t)l;
        code |= l << 3 * i;
    }
    return code;
}

/* sum w x q and sum w q^2 over a block, q = 2L + 1, in ggml's order. */
static inline void gr_iq3_sums(const float *w, const float *v, const int8_t *L, float *sqx, float *sq2) {
    float a = 0, b = 0;
    for (int i = 0; i < GR_QB; ++i) {
        const float q = (float)(2 * L[i] + 1);
        a += w[i] * v[i] * q;
        b += w[i] * q * q;
    }
    *sqx = a;
    *sq2 = b;
}

/* One 32-value block: levels L (grid points in idx), the block scale; signs in sgn (4 bytes,
 * one per 8 values). xxs selects IQ3_XXS's rules. Returns 0 when the block is empty (ggml
 * skips it), 1 when quantized, -1 when the search failed (values too large). */
static int gr_iq3_block(const gr_iq3_table *t, int xxs, const float *xb, const float *qw, float sigma2,
                        float *scale_out, uint16_t *idx, uint8_t *sgn) {
    float w[GR_QB], sw[GR_QB], v[GR_QB];
    int8_t L[GR_QB], La[GR_QB];
    uint8_t on[8], on_a[8];
    if (qw) {
        for (int i = 0; i < GR_QB; ++i) w[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
    } else {
        for (int i = 0; i < GR_QB; ++i) w[i] = xb[i] * xb[i];
    }
    for (int i = 0; i < GR_QB; ++i) sw[i] = sqrtf(w[i]);
    for (int k = 0; k < 4; ++k) {
        uint8_t s = 0;
        int flips = 0;
        for (int i = 0; i < 8; ++i) {
            const float a = xb[8 * k + i];
            if (a >= 0) v[8 * k + i] = a;
            else { v[8 * k + i] = -a; ++flips; s |= (uint8_t)(1 << i); }
        }
        if (xxs && (flips & 1)) {
            /* an odd count: the value of least w x^2 takes the other sign */
            int imin = 0;
            float min = w[8 * k] * xb[8 * k] * xb[8 * k];
            for (int i = 1; i < 8; ++i) {
                const float e = w[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                if (e < min) { min = e; imin = i; }
            }
            v[8 * k + imin] = -v[8 * k + imin];
            s ^= (uint8_t)(1 << imin);
        }
        sgn[k] = xxs ? (uint8_t)(s & 127) : s;
    }
    float max = v[0];
    for (int i = 1; i < GR_QB; ++i) max = max > v[i] ? max : v[i];
    memset(L, 0, sizeof L);
    if (xxs ? max < 1e-8f : !max) { *scale_out = 0; return 0; }
    const int ntry = xxs ? 15 : 9;
    float best = 0, scale = max / 15;
    for (int k = 0; k < 8; ++k) on[k] = (uint8_t)xxs;
    for (int is = -ntry; is <= ntry; ++is) {
        const float id = (15 + is * 0.2f) / max;
        const float this_scale = 1 / id;
        for (int k = 0; k < 8; ++k) {
            const int code = gr_iq3_pattern(v + 4 * k, id, La + 4 * k);
            on_a[k] = t->map[code] >= 0;
            if (!on_a[k] && gr_iq3_neighbour(t, t->neigh - t->map[code] - 1, v + 4 * k, sw + 4 * k,
                                             this_scale, La + 4 * k) < 0) return -1;
        }
        float sqx, sq2;
        gr_iq3_sums(w, v, La, &sqx, &sq2);
        if (sq2 > 0 && sqx * sqx > best * sq2) {
            scale = sqx / sq2;
            best = scale * sqx;
            memcpy(L, La, sizeof L);
            memcpy(on, on_a, sizeof on);
        }
    }
    int off = 0;
    for (int k = 0; k < 8; ++k) off += !on[k];
    if (off && scale > 0) {
        /* IQ3_XXS searches only the off-grid groups again, IQ3_S every group */
        const float id = 1 / scale;
        for (int k = 0; k < 8; ++k) {
            if (xxs && on[k]) continue;
            const int code = gr_iq3_pattern(v + 4 * k, id, L + 4 * k);
            if (t->map[code] < 0 && gr_iq3_neighbour(t, t->neigh - t->map[code] - 1, v + 4 * k, sw + 4 * k,
                                                     scale, L + 4 * k) < 0) return -1;
        }
        float sqx, sq2;
        gr_iq3_sums(w, v, L, &sqx, &sq2);
        if (sq2 > 0) scale = sqx / sq2;
    }
    if (scale < 0) {
        /* ggml's guard (the scale is stored unsigned): flip the scale and every sign */
        scale = -scale;
        for (int k = 0; k < 4; ++k) sgn[k] = xxs ? (uint8_t)(~sgn[k] & 127) : (uint8_t)~sgn[k];
    }
    for (int k = 0; k < 8; ++k) {
        const int code = L[4 * k] | L[4 * k + 1] << 3 | L[4 * k + 2] << 6 | L[4 * k + 3] << 9;
        if (t->map[code] < 0) return -1;
        idx[k] = (uint16_t)t->map[code];
    }
    if (!(scale >= 0)) return -1;   /* NaN: ggml asserts scale >= 0 */
    *scale_out = scale;
    return 1;
}

static inline float gr_sumx2(const float *x) {
    float s = 0;
    for (int i = 0; i < GR_QK; ++i) s += x[i] * x[i];
    return s;
}

/* One IQ3_XXS super-block: fp16 d; 64 grid indices; 8 u32 of 4x7 sign bits + 4-bit scale. */
static int gr_iq3xxs_superblock(const gr_iq3_table *t, const float *x, const float *qw, uint8_t *y) {
    float scales[GR_QK / GR_QB];
    uint8_t q3[96];
    uint32_t ss[GR_QK / GR_QB];
    memset(q3, 0, sizeof q3);
    memset(ss, 0, sizeof ss);
    const float sigma2 = 2 * gr_sumx2(x) / GR_QK;
    float max_scale = 0;
    for (int ib = 0; ib < GR_QK / GR_QB; ++ib) {
        uint16_t idx[8];
        uint8_t sgn[4];
        const int r = gr_iq3_block(t, 1, x + GR_QB * ib, qw ? qw + GR_QB * ib : NULL, sigma2, &scales[ib], idx, sgn);
        if (r < 0) return -1;
        if (!r) continue;
        for (int k = 0; k < 8; ++k) q3[8 * ib + k] = (uint8_t)idx[k];
        ss[ib] = sgn[0] | (uint32_t)sgn[1] << 7 | (uint32_t)sgn[2] << 14 | (uint32_t)sgn[3] << 21;
        max_scale = max_scale > scales[ib] ? max_scale : scales[ib];
    }
    memset(y, 0, GR_IQ3XXS_BYTES);
    if (!max_scale) return 0;
    const float d = max_scale / 31;
    lg_put_f16(y, d * 1.0125f);
    const float id = 1 / d;
    for (int ib = 0; ib < GR_QK / GR_QB; ++ib) {
        int l = kq_nearest_int(0.5f * (id * scales[ib] - 1));
        l = l < 0 ? 0 : l > 15 ? 15 : l;
        ss[ib] |= (uint32_t)l << 28;
    }
    memcpy(y + 2, q3, 64);
    for (int ib = 0; ib < GR_QK / GR_QB; ++ib) memcpy(y + 66 + 4 * ib, &ss[ib], 4);   /* little-endian */
    return 0;
}

/* One IQ3_S super-block: fp16 d; 64 low index bytes; 8 bytes of 9th bits; 32 sign bytes;
 * 4 bytes of two 4-bit scales. As in ggml, an empty block does not advance the index and
 * sign positions, so the blocks after it move up (and the last positions stay zero). */
static int gr_iq3s_superblock(const gr_iq3_table *t, const float *x, const float *qw, uint8_t *y) {
    float scales[GR_QK / GR_QB];
    memset(y, 0, GR_IQ3S_BYTES);
    uint8_t *qs = y + 2, *qh = y + 66, *signs = y + 74, *sc = y + 106;
    const float sigma2 = 2 * gr_sumx2(x) / GR_QK;
    float max_scale = 0;
    for (int ib = 0; ib < GR_QK / GR_QB; ++ib) {
        uint16_t idx[8];
        uint8_t sgn[4];
        const int r = gr_iq3_block(t, 0, x + GR_QB * ib, qw ? qw + GR_QB * ib : NULL, sigma2, &scales[ib], idx, sgn);
        if (r < 0) return -1;
        if (!r) continue;
        for (int k = 0; k < 8; ++k) {
            qs[k] = (uint8_t)(idx[k] & 255);
            qh[ib] |= (uint8_t)((idx[k] >> 8) << k);
        }
        qs += 8;
        memcpy(signs, sgn, 4);
        signs += 4;
        max_scale = max_scale > scales[ib] ? max_scale : scales[ib];
    }
    if (!max_scale) return 0;
    const float d = max_scale / 31;
    lg_put_f16(y, d * 1.033f);
    const float id = 1 / d;
    for (int ib = 0; ib < GR_QK / GR_QB; ib += 2) {
        int l1 = kq_nearest_int(0.5f * (id * scales[ib] - 1));
        int l2 = kq_nearest_int(0.5f * (id * scales[ib + 1] - 1));
        l1 = l1 < 0 ? 0 : l1 > 15 ? 15 : l1;
        l2 = l2 < 0 ? 0 : l2 > 15 ? 15 : l2;
        sc[ib / 2] = (uint8_t)(l1 | l2 << 4);
    }
    return 0;
}

static int gr_block_values(int type) { return type == 18 || type == 21 ? GR_QK : 0; }
static int gr_block_bytes(int type) { return type == 18 ? GR_IQ3XXS_BYTES : type == 21 ? GR_IQ3S_BYTES : 0; }

/* Whether the type's tables are built or can be (codes handed over); builds them. GIL held. */
static int gr_prepare(int type) {
    gr_iq3_table *t = gr_iq3_for(type);
    return t && t->codes && gr_iq3_build(t) == 0;
}

/* Rows of a grid type; the tables must be prepared. Returns -1, or the first row (of this
 * call) whose search failed: values so large that the weights overflow (ggml aborts there). */
static int64_t gr_quantize_rows(int type, const float *x, const float *imatrix, int64_t rows, int64_t n,
                                uint8_t *out) {
    const gr_iq3_table *t = gr_iq3_for(type);
    const int bytes = gr_block_bytes(type);
    const int64_t nb = n / GR_QK;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < nb; ++b) {
            const float *xb = x + r * n + b * GR_QK;
            const float *qw = imatrix ? imatrix + b * GR_QK : NULL;
            uint8_t *y = out + (r * nb + b) * bytes;
            const int rc = type == 18 ? gr_iq3xxs_superblock(t, xb, qw, y) : gr_iq3s_superblock(t, xb, qw, y);
            if (rc < 0) return r;
        }
    return -1;
}
