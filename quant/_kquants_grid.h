/* Grid types: IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M, with ggml's exact float32 arithmetic.
 *
 * Included by _kquants.c after _kquants_k.h and _kquants_legacy.h. Groups of 4 (IQ3) or 8
 * (IQ2) values are coded as one point of a fixed grid whose coordinates are odd levels 2l+1
 * (l in 0..7 for IQ3, 0..2 for IQ2) times a block scale; the signs are stored apart.
 *
 * The grids are not spelled out here: quant/iqgrid.py hands over each grid's points (read
 * from gguf-py, which ships them) as codes, 3 (IQ3) or 2 (IQ2) bits per coordinate
 * (grid_codes), and the lookup tables are built from them at first use: for each level
 * pattern the search can produce, its grid point, or the list of grid points at the nearest
 * distinct distances (nwant of them), ordered by distance, then point index. That is what
 * ggml's iq3xs_init_impl / iq2xs_init_impl build, and the order decides ties in the search.
 *
 * The search (ggml's quantize_row_iq3_xxs_impl, _iq3_s_impl, _iq2_xxs_impl, _iq2_xs_impl,
 * _iq2_s_impl): per block (32 or 16 values), weights imatrix * sqrt(sigma2 + x^2) or a
 * type's default, values made non-negative (signs apart; the XXS/XS types keep an even
 * number of minus signs per 8 by flipping the least important value), then trial scales;
 * each group takes the levels nearest_int((v/s - 1)/2), and when that pattern is not on the
 * grid, the neighbour of least weighted error; the trial with the best sum(w x q)^2 / sum(w q^2)
 * wins, and groups are searched again at the winning scale. The types differ in the details
 * collected in gr_rules. Every sum runs in ggml's order, in float32.
 */

#define GR_QK 256
#define GR_MAX_DIM 8

/* ------------------------------------------------------------------ tables */

typedef struct {
    int type;                    /* ggml type id */
    int size;                    /* grid points */
    int dim;                     /* coordinates per point: 4 or 8 */
    int bits;                    /* bits per coordinate in a pattern code: 3 or 2 */
    int levels;                  /* levels the search produces: 8 or 3 */
    int nwant;                   /* distinct distances in a neighbour list */
    int ready;                   /* tables built */
    uint16_t *codes;             /* size codes from Python */
    float (*pos)[GR_MAX_DIM];    /* coordinates 2l+1 as float32, for the neighbour search */
    uint8_t (*lev)[GR_MAX_DIM];  /* levels l */
    int32_t *map;                /* pattern -> point index, or -(offset + 1) into neigh */
    uint16_t *neigh;             /* at each offset: count, then that many point indices */
} gr_table;

static gr_table gr_tables[] = {
    {18, 256, 4, 3, 8, 2, 0, NULL, NULL, NULL, NULL, NULL},    /* IQ3_XXS */
    {21, 512, 4, 3, 8, 3, 0, NULL, NULL, NULL, NULL, NULL},    /* IQ3_S */
    {16, 256, 8, 2, 3, 2, 0, NULL, NULL, NULL, NULL, NULL},    /* IQ2_XXS */
    {17, 512, 8, 2, 3, 2, 0, NULL, NULL, NULL, NULL, NULL},    /* IQ2_XS */
    {22, 1024, 8, 2, 3, 1, 0, NULL, NULL, NULL, NULL, NULL},   /* IQ2_S */
    {19, 2048, 8, 2, 3, 3, 0, NULL, NULL, NULL, NULL, NULL},   /* IQ1_S, and IQ1_M (one grid) */
};

static gr_table *gr_table_for(int type) {
    if (type == 29) type = 19;                    /* IQ1_M searches IQ1_S's grid */
    for (size_t i = 0; i < sizeof gr_tables / sizeof gr_tables[0]; ++i)
        if (gr_tables[i].type == type) return &gr_tables[i];
    return NULL;
}

static void gr_free(gr_table *t) {
    free(t->pos); free(t->lev); free(t->map); free(t->neigh);
    t->pos = NULL; t->lev = NULL; t->map = NULL; t->neigh = NULL;
    t->ready = 0;
}

/* Build the tables of `t` from its codes; 0 on success, -1 when out of memory or the codes
 * are not a valid grid. Runs with the GIL held, so never twice at once. Only patterns whose
 * levels the search can produce (all below t->levels) get a neighbour list: the others are
 * never looked up. */
static int gr_build(gr_table *t) {
    if (t->ready) return 0;
    if (!t->codes) return -1;
    const int size = t->size, dim = t->dim, bits = t->bits, nwant = t->nwant;
    const int npat = 1 << (bits * dim), mask = (1 << bits) - 1;
    t->pos = malloc(sizeof(*t->pos) * size);
    t->lev = malloc(sizeof(*t->lev) * size);
    t->map = malloc(sizeof(int32_t) * npat);
    int *d2 = malloc(sizeof(int) * size);
    if (!t->pos || !t->lev || !t->map || !d2) { free(d2); gr_free(t); return -1; }
    for (int p = 0; p < npat; ++p) t->map[p] = -1;
    for (int g = 0; g < size; ++g) {
        const int code = t->codes[g];
        if (code >= npat || t->map[code] >= 0) { free(d2); gr_free(t); return -1; }
        for (int i = 0; i < dim; ++i) {
            t->lev[g][i] = (uint8_t)((code >> bits * i) & mask);
            t->pos[g][i] = (float)(2 * t->lev[g][i] + 1);
        }
        t->map[code] = g;
    }
    /* two passes over the off-grid patterns: count the neighbours, then list them */
    size_t total = 0;
    uint16_t *neigh = NULL;
    for (int pass = 0; pass < 2; ++pass) {
        size_t at = 0;
        for (int p = 0; p < npat; ++p) {
            if (t->map[p] >= 0) continue;                 /* on the grid */
            int reachable = 1;
            for (int i = 0; i < dim; ++i) reachable &= ((p >> bits * i) & mask) < t->levels;
            if (!reachable) continue;
            int dmin[3] = {INT32_MAX, INT32_MAX, INT32_MAX};   /* the nwant smallest distinct distances */
            for (int g = 0; g < size; ++g) {
                int s = 0;
                for (int i = 0; i < dim; ++i) {
                    const int diff = 2 * t->lev[g][i] - 2 * ((p >> bits * i) & mask);
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
            if (!neigh) { free(d2); gr_free(t); return -1; }
        }
    }
    free(d2);
    t->neigh = neigh;
    t->ready = 1;
    return 0;
}

/* ------------------------------------------------------------------ the block search */

/* What differs between the types' searches (ggml's constants and branches). */
typedef struct {
    int block;           /* values per block scale: 32 or 16 */
    int ntry;            /* trial scales is = -ntry..ntry */
    float step;          /* id = (2 levels - 1 + is * step) / max */
    int even_signs;      /* 7 sign bits per 8, the count of minus signs made even */
    int skip_zero_only;  /* skip a block only when max == 0 (else when max < eps) */
    float eps;
    int qp_start;        /* IQ2_XXS: start from make_qp_quants, trials relative to its scale */
    int on_grid_init;    /* is_on_grid before any trial is taken */
    int refine_all;      /* search every group again at the winning scale, not only off-grid ones */
} gr_rules;

/* The neighbour of pattern list `nb` with the least sum w (s p - v)^2; its levels into L.
 * -1 when no distance compares below FLT_MAX (non-finite values), as ggml then aborts. */
static inline int gr_neighbour(const gr_table *t, const uint16_t *nb, const float *v,
                               const float *w, float s, int8_t *L) {
    const int dim = t->dim;
    float best = FLT_MAX;
    int found = -1;
    for (int j = 1; j <= nb[0]; ++j) {
        const float *p = t->pos[nb[j]];
        float d2 = 0;
        for (int i = 0; i < dim; ++i) {
            const float diff = s * p[i] - v[i];
            d2 += w[i] * diff * diff;
        }
        if (d2 < best) { best = d2; found = nb[j]; }
    }
    if (found >= 0)
        for (int i = 0; i < dim; ++i) L[i] = (int8_t)t->lev[found][i];
    return found;
}

/* Levels of one group at inverse scale id, clamped, as a pattern code. */
static inline int gr_pattern(const gr_table *t, const float *v, float id, int8_t *L) {
    const int top = t->levels - 1;
    int code = 0;
    for (int i = 0; i < t->dim; ++i) {
        int l = kq_nearest_int(0.5f * (id * v[i] - 1));
        l = l < 0 ? 0 : l > top ? top : l;
        L[i] = (int8_t)l;
        code |= l << t->bits * i;
    }
    return code;
}

/* sum w x q and sum w q^2 over a block, q = 2L + 1, in ggml's order. */
static inline void gr_sums(int n, const float *w, const float *v, const int8_t *L, float *sqx, float *sq2) {
    float a = 0, b = 0;
    for (int i = 0; i < n; ++i) {
        const float q = (float)(2 * L[i] + 1);
        a += w[i] * v[i] * q;
        b += w[i] * q * q;
    }
    *sqx = a;
    *sq2 = b;
}

/* One block of R->block values with weights w: grid points into idx (one per group), signs
 * into sgn (one byte per 8 values), the block scale into *scale_out. Returns 0 when the block
 * is empty (ggml skips it), 1 when quantized, -1 when the search failed (values too large). */
static inline __attribute__((always_inline)) int gr_block(const gr_table *t, const gr_rules *R,
                                                          const float *xb, const float *w,
                                                          float *scale_out, uint16_t *idx, uint8_t *sgn) {
    const int B = R->block, dim = t->dim, ngroups = B / dim, top = t->levels - 1;
    float sw[32], v[32];
    int8_t L[32], La[32];
    uint8_t on[8], on_a[8];
    for (int i = 0; i < B; ++i) sw[i] = sqrtf(w[i]);
    for (int k = 0; k < B / 8; ++k) {
        uint8_t s = 0;
        int flips = 0;
        for (int i = 0; i < 8; ++i) {
            const float a = xb[8 * k + i];
            if (a >= 0) v[8 * k + i] = a;
            else { v[8 * k + i] = -a; ++flips; s |= (uint8_t)(1 << i); }
        }
        if (R->even_signs && (flips & 1)) {
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
        sgn[k] = R->even_signs ? (uint8_t)(s & 127) : s;
    }
    float max = v[0];
    for (int i = 1; i < B; ++i) max = max > v[i] ? max : v[i];
    memset(L, 0, sizeof L);
    if (R->skip_zero_only ? !max : max < R->eps) { *scale_out = 0; return 0; }
    float best = 0, scale, ref;
    if (R->qp_start) {
        scale = kq_qp_scalar(B, top + 2, v, (uint8_t *)L, w);
        ref = scale * (top + 1);                      /* ggml's eff_max */
        if (ref <= 0) { *scale_out = 0; return 0; }
    } else {
        scale = max / (2 * top + 1);
        ref = max;
    }
    for (int k = 0; k < ngroups; ++k) on[k] = (uint8_t)R->on_grid_init;
    for (int is = -R->ntry; is <= R->ntry; ++is) {
        const float id = (2 * top + 1 + is * R->step) / ref;
        const float this_scale = 1 / id;
        for (int k = 0; k < ngroups; ++k) {
            const int code = gr_pattern(t, v + dim * k, id, La + dim * k);
            on_a[k] = t->map[code] >= 0;
            if (!on_a[k] && gr_neighbour(t, t->neigh - t->map[code] - 1, v + dim * k, sw + dim * k,
                                         this_scale, La + dim * k) < 0) return -1;
        }
        float sqx, sq2;
        gr_sums(B, w, v, La, &sqx, &sq2);
        if (sq2 > 0 && sqx * sqx > best * sq2) {
            scale = sqx / sq2;
            best = scale * sqx;
            memcpy(L, La, (size_t)B);
            memcpy(on, on_a, (size_t)ngroups);
        }
    }
    int off = 0;
    for (int k = 0; k < ngroups; ++k) off += !on[k];
    if ((R->qp_start || off) && scale > 0) {
        const float id = 1 / scale;
        for (int k = 0; k < ngroups; ++k) {
            if (!R->refine_all && on[k]) continue;
            const int code = gr_pattern(t, v + dim * k, id, L + dim * k);
            if (t->map[code] < 0 && gr_neighbour(t, t->neigh - t->map[code] - 1, v + dim * k, sw + dim * k,
                                                 scale, L + dim * k) < 0) return -1;
        }
        float sqx, sq2;
        gr_sums(B, w, v, L, &sqx, &sq2);
        if (sq2 > 0) scale = sqx / sq2;
    }
    if (scale < 0) {
        /* ggml's guard (the scale is stored unsigned): flip the scale and every sign */
        scale = -scale;
        for (int k = 0; k < B / 8; ++k) sgn[k] = R->even_signs ? (uint8_t)(~sgn[k] & 127) : (uint8_t)~sgn[k];
    }
    for (int k = 0; k < ngroups; ++k) {
        int code = 0;
        for (int i = 0; i < dim; ++i) code |= L[dim * k + i] << t->bits * i;
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

/* Block weights: imatrix * sqrt(sigma2 + x^2), or the type's default without one. */
static inline void gr_weights(int n, const float *xb, const float *qw, float sigma2, int dflt, float *w) {
    if (qw) {
        for (int i = 0; i < n; ++i) w[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
    } else if (dflt == 0) {
        for (int i = 0; i < n; ++i) w[i] = xb[i] * xb[i];
    } else {
        for (int i = 0; i < n; ++i) w[i] = 0.25f * sigma2 + xb[i] * xb[i];
    }
}

static inline int gr_scale4(float id, float s) {
    int l = kq_nearest_int(0.5f * (id * s - 1));
    return l < 0 ? 0 : l > 15 ? 15 : l;
}

static const gr_rules GR_IQ3XXS = {32, 15, 0.2f, 1, 0, 1e-8f, 0, 1, 0};
static const gr_rules GR_IQ3S = {32, 9, 0.2f, 0, 1, 0.f, 0, 0, 1};
static const gr_rules GR_IQ2XXS = {32, 6, 0.1f, 1, 0, 1e-15f, 1, 1, 1};
static const gr_rules GR_IQ2XS = {16, 9, 0.1f, 1, 0, 1e-15f, 0, 1, 0};
static const gr_rules GR_IQ2S = {16, 9, 0.1f, 0, 0, 1e-8f, 0, 1, 0};

/* ------------------------------------------------------------------ super-blocks */

/* IQ3_XXS (98 bytes): fp16 d; 64 grid indices; 8 u32 of 4x7 sign bits + 4-bit scale. */
static int gr_iq3xxs(const gr_table *t, const float *x, const float *qw, uint8_t *y) {
    float scales[8], w[32];
    uint8_t q3[64];
    uint32_t ss[8];
    memset(q3, 0, sizeof q3);
    memset(ss, 0, sizeof ss);
    const float sigma2 = 2 * gr_sumx2(x) / GR_QK;
    float max_scale = 0;
    for (int ib = 0; ib < 8; ++ib) {
        uint16_t idx[8];
        uint8_t sgn[4];
        gr_weights(32, x + 32 * ib, qw ? qw + 32 * ib : NULL, sigma2, 0, w);
        const int r = gr_block(t, &GR_IQ3XXS, x + 32 * ib, w, &scales[ib], idx, sgn);
        if (r < 0) return -1;
        if (!r) continue;
        for (int k = 0; k < 8; ++k) q3[8 * ib + k] = (uint8_t)idx[k];
        ss[ib] = sgn[0] | (uint32_t)sgn[1] << 7 | (uint32_t)sgn[2] << 14 | (uint32_t)sgn[3] << 21;
        max_scale = max_scale > scales[ib] ? max_scale : scales[ib];
    }
    memset(y, 0, 98);
    if (!max_scale) return 0;
    const float d = max_scale / 31;
    lg_put_f16(y, d * 1.0125f);
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ++ib) ss[ib] |= (uint32_t)gr_scale4(id, scales[ib]) << 28;
    memcpy(y + 2, q3, 64);
    memcpy(y + 66, ss, 32);                       /* little-endian, like ggml's in-memory u32 */
    return 0;
}

/* IQ3_S (110 bytes): fp16 d; 64 low index bytes; 8 bytes of 9th bits; 32 sign bytes; 4 bytes
 * of two 4-bit scales. As in ggml, an empty block does not advance the index and sign
 * positions, so the blocks after it move up (and the last positions stay zero). */
static int gr_iq3s(const gr_table *t, const float *x, const float *qw, uint8_t *y) {
    float scales[8], w[32];
    memset(y, 0, 110);
    uint8_t *qs = y + 2, *qh = y + 66, *signs = y + 74, *sc = y + 106;
    const float sigma2 = 2 * gr_sumx2(x) / GR_QK;
    float max_scale = 0;
    for (int ib = 0; ib < 8; ++ib) {
        uint16_t idx[8];
        uint8_t sgn[4];
        gr_weights(32, x + 32 * ib, qw ? qw + 32 * ib : NULL, sigma2, 0, w);
        const int r = gr_block(t, &GR_IQ3S, x + 32 * ib, w, &scales[ib], idx, sgn);
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
    for (int ib = 0; ib < 8; ib += 2)
        sc[ib / 2] = (uint8_t)(gr_scale4(id, scales[ib]) | gr_scale4(id, scales[ib + 1]) << 4);
    return 0;
}

/* IQ2_XXS (66 bytes): fp16 d; per 32-value block two u32: four 8-bit grid indices, then four
 * 7-bit sign patterns and the 4-bit scale. Needs an importance vector. */
static int gr_iq2xxs(const gr_table *t, const float *x, const float *qw, uint8_t *y) {
    float scales[8], w[32];
    uint32_t q2[16];
    memset(q2, 0, sizeof q2);
    const float sigma2 = gr_sumx2(x) / GR_QK;
    float max_scale = 0;
    for (int ib = 0; ib < 8; ++ib) {
        uint16_t idx[4];
        uint8_t sgn[4];
        gr_weights(32, x + 32 * ib, qw + 32 * ib, sigma2, 0, w);
        const int r = gr_block(t, &GR_IQ2XXS, x + 32 * ib, w, &scales[ib], idx, sgn);
        if (r < 0) return -1;
        if (!r) continue;
        for (int k = 0; k < 4; ++k) {
            q2[2 * ib] |= (uint32_t)idx[k] << 8 * k;
            q2[2 * ib + 1] |= (uint32_t)sgn[k] << 7 * k;
        }
        max_scale = max_scale > scales[ib] ? max_scale : scales[ib];
    }
    memset(y, 0, 66);
    if (!max_scale) return 0;
    const float d = max_scale / 31;
    lg_put_f16(y, d);
    const float id = 1 / d;
    for (int ib = 0; ib < 8; ++ib) q2[2 * ib + 1] |= (uint32_t)gr_scale4(id, scales[ib]) << 28;
    memcpy(y + 2, q2, 64);
    return 0;
}

/* IQ2_XS (74 bytes): fp16 d; 32 u16 of a 9-bit grid index and 7 sign bits; 8 bytes of two
 * 4-bit scales (16-value blocks). Needs an importance vector. */
static int gr_iq2xs(const gr_table *t, const float *x, const float *qw, uint8_t *y) {
    float scales[16], w[16];
    uint16_t q2[32];
    memset(q2, 0, sizeof q2);
    memset(y, 0, 74);
    const float sigma2 = gr_sumx2(x) / GR_QK;
    float max_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
        uint16_t idx[2];
        uint8_t sgn[2];
        gr_weights(16, x + 16 * ib, qw + 16 * ib, sigma2, 0, w);
        const int r = gr_block(t, &GR_IQ2XS, x + 16 * ib, w, &scales[ib], idx, sgn);
        if (r < 0) return -1;
        if (!r) continue;
        for (int k = 0; k < 2; ++k) q2[2 * ib + k] = (uint16_t)(idx[k] | sgn[k] << 9);
        max_scale = max_scale > scales[ib] ? max_scale : scales[ib];
    }
    if (!max_scale) return 0;
    const float d = max_scale / 31;
    lg_put_f16(y, d);
    const float id = 1 / d;
    for (int ib = 0; ib < 16; ib += 2)
        y[66 + ib / 2] = (uint8_t)(gr_scale4(id, scales[ib]) | gr_scale4(id, scales[ib + 1]) << 4);
    memcpy(y + 2, q2, 64);
    return 0;
}

/* IQ2_S (82 bytes): fp16 d; 32 low index bytes, then 32 sign bytes; 8 bytes of 2 high index
 * bits each; 8 bytes of two 4-bit scales (16-value blocks). */
static int gr_iq2s(const gr_table *t, const float *x, const float *qw, uint8_t *y) {
    float scales[16], w[16];
    memset(y, 0, 82);
    uint8_t *qs = y + 2, *qh = y + 66, *sc = y + 74;
    const float sigma2 = 2 * gr_sumx2(x) / GR_QK;
    float max_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
        uint16_t idx[2];
        uint8_t sgn[2];
        gr_weights(16, x + 16 * ib, qw ? qw + 16 * ib : NULL, sigma2, 1, w);
        const int r = gr_block(t, &GR_IQ2S, x + 16 * ib, w, &scales[ib], idx, sgn);
        if (r < 0) return -1;
        if (!r) continue;
        for (int k = 0; k < 2; ++k) {
            const int i8 = 2 * ib + k;
            qs[i8] = (uint8_t)(idx[k] & 255);
            qh[i8 / 4] |= (uint8_t)((idx[k] >> 8) << 2 * (i8 % 4));
            qs[32 + i8] = sgn[k];
        }
        max_scale = max_scale > scales[ib] ? max_scale : scales[ib];
    }
    if (!max_scale) return 0;
    const float d = max_scale / 31;
    lg_put_f16(y, d * 0.9875f);
    const float id = 1 / d;
    for (int ib = 0; ib < 16; ib += 2)
        sc[ib / 2] = (uint8_t)(gr_scale4(id, scales[ib]) | gr_scale4(id, scales[ib + 1]) << 4);
    return 0;
}

/* ------------------------------------------------------------------ IQ1_S, IQ1_M */

/* The IQ1 types code a group of 8 as a grid point of levels 0..2 standing for -1, 0, 1 shifted
 * by +-delta (x_p or x_m); the best split of a block's sorted values into three groups is found
 * exhaustively (ggml's quantize_row_iq1_s_impl / _iq1_m_impl). The sort is the C library's
 * qsort with ggml's comparison, so equal values land in the order ggml's run gives them. */

#define GR_IQ1_DELTA 0.125f

static int gr_iq1_compare(const void *a, const void *b) {
    const float l = *(const float *)a, r = *(const float *)b;
    return l < r ? -1 : l > r ? 1 : 0;
}

/* Sort the block's values with their positions (pairs of float value, int index, as ggml lays
 * them out); order[j] = position of the j-th smallest. */
static void gr_iq1_sort(const float *xb, int n, int *order) {
    float pairs[2 * 32];
    for (int j = 0; j < n; ++j) {
        pairs[2 * j] = xb[j];
        memcpy(&pairs[2 * j + 1], &j, sizeof(int));
    }
    qsort(pairs, (size_t)n, 2 * sizeof(float), gr_iq1_compare);
    for (int j = 0; j < n; ++j) memcpy(&order[j], &pairs[2 * j + 1], sizeof(int));
}

/* The neighbour of least sum w (s xx[l] - x)^2 (ggml's iq1_find_best_neighbour2); -1 if none
 * compares below FLT_MAX (ggml then scans the whole grid reading past its values: such rows,
 * with non-finite weights, are refused here). */
static inline int gr_iq1_neighbour(const gr_table *t, const uint16_t *nb, const float *xb, const float *w,
                                   float s, const float *xx, int8_t *L) {
    float best = FLT_MAX;
    int found = -1;
    for (int j = 1; j <= nb[0]; ++j) {
        const uint8_t *lv = t->lev[nb[j]];
        float d2 = 0;
        for (int i = 0; i < 8; ++i) {
            const float diff = s * xx[lv[i]] - xb[i];
            d2 += w[i] * diff * diff;
        }
        if (d2 < best) { best = d2; found = nb[j]; }
    }
    if (found >= 0)
        for (int i = 0; i < 8; ++i) L[i] = (int8_t)t->lev[found][i];
    return found;
}

/* Grid points for the levels L of `groups` groups of 8 (neighbours where off the grid), the
 * shift table of each group from xxk. Returns 1 when all were on the grid, 0 if not, -1 on failure. */
static inline int gr_iq1_points(const gr_table *t, int groups, const float *xb, const float *w, float scale,
                                const float *const *xxk, int8_t *L, uint16_t *index) {
    int all_on = 1;
    for (int k = 0; k < groups; ++k) {
        int code = 0;
        for (int j = 0; j < 8; ++j) code |= L[8 * k + j] << 2 * j;
        int g = t->map[code];
        if (g < 0) {
            all_on = 0;
            g = gr_iq1_neighbour(t, t->neigh - t->map[code] - 1, xb + 8 * k, w + 8 * k, scale, xxk[k], L + 8 * k);
            if (g < 0) return -1;
        }
        index[k] = (uint16_t)g;
    }
    return all_on;
}

/* sum w q x and sum w q^2 over the groups' grid points, q = xx[level], in ggml's order. */
static inline void gr_iq1_refit(const gr_table *t, int groups, const float *xb, const float *w,
                                const float *const *xxk, const uint16_t *index, float *sqx, float *sq2) {
    float a = 0, b = 0;
    for (int k = 0; k < groups; ++k)
        for (int j = 0; j < 8; ++j) {
            const float q = xxk[k][t->lev[index[k]][j]];
            a += w[8 * k + j] * q * xb[8 * k + j];
            b += w[8 * k + j] * q * q;
        }
    *sqx = a;
    *sq2 = b;
}

static const float GR_XP[3] = {-1 + GR_IQ1_DELTA, GR_IQ1_DELTA, 1 + GR_IQ1_DELTA};
static const float GR_XM[3] = {-1 - GR_IQ1_DELTA, -GR_IQ1_DELTA, 1 - GR_IQ1_DELTA};

/* IQ1_S (50 bytes): fp16 d; 32 low index bytes; 8 u16 of 3 high bits per group, a 3-bit scale
 * (bits 12-14) and the shift sign (bit 15), per 32-value block. Needs an importance vector. */
KQ_CLONES static int gr_iq1s(const gr_table *t, const float *x, const float *qw, uint8_t *y) {
    float scales[8], w[32], sumx[33], sumw[33];
    int8_t shifts[8], L[32];
    uint16_t qh[8];
    int order[32];
    memset(y, 0, 50);
    memset(qh, 0, sizeof qh);
    const float sigma2 = 2 * gr_sumx2(x) / GR_QK;
    float max_scale = 0;
    for (int ib = 0; ib < 8; ++ib) {
        const float *xb = x + 32 * ib;
        gr_weights(32, xb, qw + 32 * ib, sigma2, 0, w);
        float max = fabsf(xb[0]);
        for (int i = 1; i < 32; ++i) max = max > fabsf(xb[i]) ? max : fabsf(xb[i]);
        scales[ib] = 0;
        shifts[ib] = 1;
        if (max < 1e-12f) continue;
        gr_iq1_sort(xb, 32, order);
        sumx[0] = sumw[0] = 0;
        for (int j = 0; j < 32; ++j) {
            const int i = order[j];
            sumx[j + 1] = sumx[j] + w[i] * xb[i];
            sumw[j + 1] = sumw[j] + w[i];
        }
        float best = -FLT_MAX, scale = max;
        int b1 = -1, b2 = -1, shift = 0;
        for (int i1 = 0; i1 <= 32; ++i1)
            for (int i2 = i1; i2 <= 32; ++i2) {
                const float a = sumx[i1] - sumx[0], b = sumx[i2] - sumx[i1], c = sumx[32] - sumx[i2];
                const float wa = sumw[i1] - sumw[0], wb = sumw[i2] - sumw[i1], wc = sumw[32] - sumw[i2];
                for (int m = 0; m < 2; ++m) {
                    const float *v = m ? GR_XM : GR_XP;
                    const float sqx = a * v[0] + b * v[1] + c * v[2];
                    const float sq2 = wa * v[0] * v[0] + wb * v[1] * v[1] + wc * v[2] * v[2];
                    if (sq2 > 0 && sqx * sqx > best * sq2) {
                        scale = sqx / sq2;
                        best = scale * sqx;
                        b1 = i1; b2 = i2; shift = m ? -1 : 1;
                    }
                }
            }
        if (b1 < 0 || b2 < 0 || shift == 0) continue;
        for (int j = 0; j < 32; ++j) L[order[j]] = (int8_t)(j < b1 ? 0 : j < b2 ? 1 : 2);
        if (scale < 0) {
            for (int j = 0; j < 32; ++j) L[j] = (int8_t)(2 - L[j]);
            scale = -scale;
            shift = -shift;
        }
        const float *xx = shift == 1 ? GR_XP : GR_XM;
        const float *xxk[4] = {xx, xx, xx, xx};
        uint16_t index[4];
        const int on = gr_iq1_points(t, 4, xb, w, scale, xxk, L, index);
        if (on < 0) return -1;
        if (!on) {
            float sqx, sq2;
            gr_iq1_refit(t, 4, xb, w, xxk, index, &sqx, &sq2);
            if (sqx > 0 && sq2 > 0) scale = sqx / sq2;
        }
        uint16_t h = 0;
        for (int k = 0; k < 4; ++k) {
            y[2 + 4 * ib + k] = (uint8_t)(index[k] & 255);
            h |= (uint16_t)((index[k] >> 8) << 3 * k);
        }
        qh[ib] = h;
        if (!(scale >= 0)) return -1;   /* ggml asserts scale >= 0 */
        scales[ib] = scale;
        shifts[ib] = (int8_t)shift;
        max_scale = max_scale > scale ? max_scale : scale;
    }
    if (max_scale) {
        const float d = max_scale / 15;
        lg_put_f16(y, d * 1.125f);
        const float id = 1 / d;
        for (int ib = 0; ib < 8; ++ib) {
            int l = kq_nearest_int(0.5f * (id * scales[ib] - 1));
            l = l < 0 ? 0 : l > 7 ? 7 : l;
            if (shifts[ib] == -1) l |= 8;
            qh[ib] |= (uint16_t)(l << 12);
        }
    }
    memcpy(y + 34, qh, 16);
    return 0;
}

/* IQ1_M (56 bytes): 32 low index bytes; 16 bytes of two 3-bit high index parts and two shift
 * signs (bits 3 and 7), per 16-value block; 8 bytes: 3-bit block scales, and the fp16 super-block
 * scale spread over the top nibble of each u16. */
KQ_CLONES static int gr_iq1m(const gr_table *t, const float *x, const float *qw, uint8_t *y) {
    static const uint8_t masks[4] = {0x00, 0x80, 0x08, 0x88};
    float scales[16], w[16];
    int8_t shifts[16], L[16];
    int order[16];
    memset(y, 0, 56);
    uint8_t *qs = y, *qh = y + 32;
    uint16_t sc[4] = {0, 0, 0, 0};
    const float sigma2 = 2 * gr_sumx2(x) / GR_QK;
    float max_scale = 0;
    for (int ib = 0; ib < 16; ++ib) {
        const float *xb = x + 16 * ib;
        gr_weights(16, xb, qw ? qw + 16 * ib : NULL, sigma2, 0, w);
        float max = fabsf(xb[0]);
        for (int i = 1; i < 16; ++i) max = max > fabsf(xb[i]) ? max : fabsf(xb[i]);
        scales[ib] = 0;
        shifts[ib] = 0;
        if (max < 1e-7f) continue;
        gr_iq1_sort(xb, 16, order);
        /* prefix sums per half of the block: each half has its own shift sign */
        float px[2][17], pw[2][17];
        px[0][0] = px[1][0] = pw[0][0] = pw[1][0] = 0;
        for (int j = 0; j < 16; ++j) {
            const int i = order[j], h = i < 8 ? 0 : 1;
            px[h][j + 1] = px[h][j] + w[i] * xb[i];
            px[1 - h][j + 1] = px[1 - h][j];
            pw[h][j + 1] = pw[h][j] + w[i];
            pw[1 - h][j + 1] = pw[1 - h][j];
        }
        const float txs[2] = {px[0][16], px[1][16]}, tws[2] = {pw[0][16], pw[1][16]};
        const float p2 = GR_XP[2], m2 = GR_XM[2];
        const float cp1 = GR_XP[0] * GR_XP[0] - GR_XP[1] * GR_XP[1], cp2 = GR_XP[1] * GR_XP[1] - GR_XP[2] * GR_XP[2];
        const float cm1 = GR_XM[0] * GR_XM[0] - GR_XM[1] * GR_XM[1], cm2 = GR_XM[1] * GR_XM[1] - GR_XM[2] * GR_XM[2];
        float best = -FLT_MAX, scale = max;
        int b1 = -1, b2 = -1, bk = -1;
        for (int i1 = 0; i1 <= 16; ++i1)
            for (int i2 = i1; i2 <= 16; ++i2) {
                float qxp[2], qxm[2], q2p[2], q2m[2], sqx[4], sq2[4];
                for (int h = 0; h < 2; ++h) {
                    const float sx = px[h][i1] + px[h][i2];
                    qxp[h] = txs[h] * p2 - sx;
                    qxm[h] = txs[h] * m2 - sx;
                    q2p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                    q2m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
                }
                sqx[0] = qxp[0] + qxp[1]; sqx[1] = qxp[0] + qxm[1];
                sqx[2] = qxm[0] + qxp[1]; sqx[3] = qxm[0] + qxm[1];
                sq2[0] = q2p[0] + q2p[1]; sq2[1] = q2p[0] + q2m[1];
                sq2[2] = q2m[0] + q2p[1]; sq2[3] = q2m[0] + q2m[1];
                for (int k = 0; k < 4; ++k)
                    if (sq2[k] > 0 && sqx[k] * sqx[k] > best * sq2[k]) {
                        scale = sqx[k] / sq2[k];
                        best = scale * sqx[k];
                        b1 = i1; b2 = i2; bk = k;
                    }
            }
        if (b1 < 0 || b2 < 0 || bk < 0) continue;
        for (int j = 0; j < 16; ++j) L[order[j]] = (int8_t)(j < b1 ? 0 : j < b2 ? 1 : 2);
        if (scale < 0) {
            for (int j = 0; j < 16; ++j) L[j] = (int8_t)(2 - L[j]);
            scale = -scale;
            bk = 3 - bk;
        }
        const float *xxk[2] = {bk < 2 ? GR_XP : GR_XM, bk % 2 == 0 ? GR_XP : GR_XM};
        uint16_t index[2];
        const int on = gr_iq1_points(t, 2, xb, w, scale, xxk, L, index);
        if (on < 0) return -1;
        if (!on) {
            float sqx, sq2;
            gr_iq1_refit(t, 2, xb, w, xxk, index, &sqx, &sq2);
            if (sqx > 0 && sq2 > 0) scale = sqx / sq2;
        }
        qs[2 * ib] = (uint8_t)(index[0] & 255);
        qs[2 * ib + 1] = (uint8_t)(index[1] & 255);
        qh[ib] = (uint8_t)((index[0] >> 8) | ((index[1] >> 8) << 4));
        if (!(scale >= 0)) return -1;   /* ggml asserts scale >= 0 */
        scales[ib] = scale;
        shifts[ib] = (int8_t)bk;
        max_scale = max_scale > scale ? max_scale : scale;
    }
    if (!max_scale) return 0;
    float d = max_scale / 15;
    const float id = 1 / d;
    float sqx = 0, sq2 = 0;
    for (int ib = 0; ib < 16; ++ib) {
        int l = kq_nearest_int(0.5f * (id * scales[ib] - 1));
        l = l < 0 ? 0 : l > 7 ? 7 : l;
        sc[ib / 4] |= (uint16_t)(l << 3 * (ib % 4));
        qh[ib] |= masks[shifts[ib]];
        /* refit d over the whole super-block from the stored points (empty blocks included) */
        const float *xb = x + 16 * ib;
        gr_weights(16, xb, qw ? qw + 16 * ib : NULL, sigma2, 0, w);
        for (int k = 0; k < 2; ++k) {
            const float *xx = k == 0 ? (shifts[ib] < 2 ? GR_XP : GR_XM) : (shifts[ib] % 2 == 0 ? GR_XP : GR_XM);
            const int g = qs[2 * ib + k] + (((int)qh[ib] << (8 - 4 * k)) & 0x700);
            for (int j = 0; j < 8; ++j) {
                const float q = xx[t->lev[g][j]] * (float)(2 * l + 1);
                sqx += w[8 * k + j] * q * xb[8 * k + j];
                sq2 += w[8 * k + j] * q * q;
            }
        }
    }
    if (sq2 > 0) d = sqx / sq2;
    const uint16_t s = lg_f16_bits(d * 1.1125f);
    sc[0] |= (uint16_t)((s & 0x000f) << 12);
    sc[1] |= (uint16_t)((s & 0x00f0) << 8);
    sc[2] |= (uint16_t)((s & 0x0f00) << 4);
    sc[3] |= (uint16_t)(s & 0xf000);
    memcpy(y + 48, sc, 8);
    return 0;
}

/* ------------------------------------------------------------------ rows */

static int gr_block_values(int type) { return gr_table_for(type) ? GR_QK : 0; }

static int gr_block_bytes(int type) {
    switch (type) {
    case 18: return 98;
    case 21: return 110;
    case 16: return 66;
    case 17: return 74;
    case 22: return 82;
    case 19: return 50;
    case 29: return 56;
    default: return 0;
    }
}

/* Types ggml refuses to quantize without an importance vector. */
static int gr_needs_imatrix(int type) { return type == 16 || type == 17 || type == 19; }

/* Whether the type's tables are built or can be (codes handed over); builds them. GIL held. */
static int gr_prepare(int type) {
    gr_table *t = gr_table_for(type);
    return t && t->codes && gr_build(t) == 0;
}

/* Rows of a grid type; the tables must be prepared (and an imatrix given where the type needs
 * one). Returns -1, or the first row (of this call) whose search failed: values so large that
 * the weights overflow (ggml aborts on such rows). */
static int64_t gr_quantize_rows(int type, const float *x, const float *imatrix, int64_t rows, int64_t n,
                                uint8_t *out) {
    const gr_table *t = gr_table_for(type);
    const int bytes = gr_block_bytes(type);
    const int64_t nb = n / GR_QK;
    int (*superblock)(const gr_table *, const float *, const float *, uint8_t *) =
        type == 18 ? gr_iq3xxs : type == 21 ? gr_iq3s : type == 16 ? gr_iq2xxs : type == 17 ? gr_iq2xs :
        type == 22 ? gr_iq2s : type == 19 ? gr_iq1s : gr_iq1m;
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < nb; ++b) {
            const float *xb = x + r * n + b * GR_QK;
            const float *qw = imatrix ? imatrix + b * GR_QK : NULL;
            if (superblock(t, xb, qw, out + (r * nb + b) * bytes) < 0) return r;
        }
    return -1;
}
