"""ggml's iterative scale searches, vectorized across groups.

Every function takes `x` as float32 [G, n] (G independent groups of n values) and
returns per-group results. Exactness rules (ggml is plain float32 C, no FMA):
- every intermediate stays float32;
- sums are accumulated sequentially along the group, in ggml's order (`seq_sum`),
  never with numpy's pairwise `sum`;
- `nearest_int` is ggml's magic-number rounding (half to even).
Where a candidate scale does not depend on earlier winners, candidates are evaluated
all at once ([C, G] arrays) and only the choice walks them in order (ggml keeps the
first strict improvement).
"""
import numpy as np

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)
_MAGIC = F32(12582912.0)


def nearest_int(v):
    """int32 of float32 `v` exactly as ggml's nearest_int (valid for |v| <= 2**22, like ggml)."""
    bits = (np.asarray(v, dtype=F32) + _MAGIC).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def seq_sum(terms):
    """Sum float32 `terms` [..., n, G] over n, left to right, starting at 0 like a C loop."""
    acc = np.zeros(terms.shape[:-2] + terms.shape[-1:], dtype=F32)
    for i in range(terms.shape[-2]):
        acc = acc + terms[..., i, :]
    return acc


def _first_strict_improvement(candidates_better, initial, values):
    """Walk candidates in order; return the index of the candidate each group keeps (-1: none).

    `candidates_better(c, best)` says, per group, whether candidate c beats `best`;
    `values[c]` is the new best when it does.
    """
    best = initial.copy()
    chosen = np.full(initial.shape, -1, dtype=np.int64)
    for c in range(len(values)):
        take = candidates_better(c, best)
        best = np.where(take, values[c], best)
        chosen = np.where(take, c, chosen)
    return chosen, best


def _pick(chosen, candidates, fallback):
    """Per group: candidates[chosen] where chosen >= 0, else fallback.

    candidates is [C, ..., G]; chosen is [G]; fallback is [..., G].
    """
    mid = (1,) * (candidates.ndim - 2)
    idx = np.maximum(chosen, 0).reshape((1,) + mid + chosen.shape)
    picked = np.take_along_axis(candidates, idx, axis=0)[0]
    return np.where((chosen >= 0).reshape(mid + chosen.shape), picked, fallback)


def make_qkx_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad, qkx3=False):
    """ggml make_qkx2_quants (qkx3=False) / make_qkx3_quants (qkx3=True) with explicit weights.

    Returns (scale [G], the_min [G], L uint8 [G, n]); ggml's the_min is the negated minimum.
    """
    xt = np.ascontiguousarray(x.T, dtype=F32)          # [n, G]
    wt = np.ascontiguousarray(weights.T, dtype=F32)
    n, g = xt.shape
    lo = xt[0].copy()
    hi = xt[0].copy()
    sum_w = wt[0].copy()
    sum_x = sum_w * xt[0]
    for i in range(1, n):
        lo = np.where(xt[i] < lo, xt[i], lo)        # C's `if (x < min)`: NaN never wins
        hi = np.where(xt[i] > hi, xt[i], hi)
        sum_w = sum_w + wt[i]
        sum_x = sum_x + wt[i] * xt[i]
    lo = np.where(lo > 0, F32(0), lo)
    flat = (hi <= lo) if qkx3 else (hi == lo)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        span = hi - lo
        iscale = F32(nmax) / span
        scale = F32(1) / iscale
        L = np.clip(nearest_int(iscale * (xt - lo)), 0, nmax)
        diff = (scale * L.astype(F32) + lo) - xt
        diff = np.abs(diff) if use_mad else diff * diff
        best_error = seq_sum(wt * diff)
        if nstep < 1:
            L = np.where(flat, 0, L)
            return np.where(flat, F32(0), scale), -lo, L.T.astype(np.uint8)

        # ggml moves `min` as soon as a candidate wins, and later candidates are
        # rounded against the moved min: the candidates are walked in order.
        for step in range(nstep + 1):
            numer = (F32(rmin) + F32(rdelta) * F32(step)) + F32(nmax)
            iscale = numer / (hi - lo)
            Laux = np.clip(nearest_int(iscale * (xt - lo)), 0, nmax).astype(F32)   # [n, G]
            wl = wt * Laux
            sum_l = seq_sum(wl)
            sum_l2 = seq_sum(wl * Laux)
            sum_xl = seq_sum(wl * xt)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            clamp = this_min > 0
            this_min = np.where(clamp, F32(0), this_min)
            this_scale = np.where(clamp, sum_xl / sum_l2, this_scale)
            diff = (this_scale * Laux + this_min) - xt
            diff = np.abs(diff) if use_mad else diff * diff
            cur_error = seq_sum(wt * diff)
            take = (D > 0) & (cur_error < best_error)
            best_error = np.where(take, cur_error, best_error)
            scale = np.where(take, this_scale, scale)
            lo = np.where(take, this_min, lo)
            L = np.where(take, Laux.astype(L.dtype), L)

    scale = np.where(flat, F32(0), scale)
    L = np.where(flat[None, :], 0, L)
    return scale, -lo, L.T.astype(np.uint8)


def _abs_max_signed(xt):
    """Per group the value with the largest |x| (first one on ties), and that |x|."""
    ax = np.abs(xt)
    ax = np.where(np.isnan(ax), F32(-1), ax)      # `ax > amax` never holds for NaN
    idx = np.argmax(ax, axis=0)
    cols = np.arange(xt.shape[1])
    found = ax[idx, cols] > 0
    return np.where(found, xt[idx, cols], F32(0)), np.where(found, ax[idx, cols], F32(0))


def make_qx_quants(x, nmax, rmse_type, qw=None):
    """ggml make_qx_quants for rmse_type 1 (the only one the K-quants use).

    Returns (scale [G], L int8-range int32 [G, n] already offset by nmax).
    Weights: qw, or x*x when qw is None.
    """
    assert rmse_type == 1
    xt = np.ascontiguousarray(x.T, dtype=F32)
    wt = xt * xt if qw is None else np.ascontiguousarray(qw.T, dtype=F32)
    vmax, amax = _abs_max_signed(xt)
    zero = amax < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-nmax) / vmax
        l0 = np.clip(nearest_int(iscale * xt), -nmax, nmax - 1)
        lf = l0.astype(F32)
        wx = wt * xt
        sumlx = seq_sum(wx * lf)
        suml2 = seq_sum((wt * lf) * lf)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx

        steps = np.array([s for s in range(-9, 10) if s != 0], dtype=F32)
        iscales = -(F32(nmax) + F32(0.1) * steps)[:, None] / vmax[None, :]   # [C, G]
        lc = np.clip(nearest_int(iscales[:, None, :] * xt[None]), -nmax, nmax - 1)
        lcf = lc.astype(F32)
        c_sumlx = seq_sum(wx * lcf)
        c_suml2 = seq_sum((wt * lcf) * lcf)
        c_scale = c_sumlx / c_suml2
        c_best = c_scale * c_sumlx

    chosen, _ = _first_strict_improvement(
        lambda c, b: (c_suml2[c] > 0) & (c_sumlx[c] * c_sumlx[c] > b * c_suml2[c]), best, c_best)
    # `best` in the comparison is the running best value, which _first_strict_improvement tracks.
    scale = _pick(chosen, c_scale, scale)
    L = _pick(chosen, lc, l0) + nmax
    scale = np.where(zero, F32(0), scale)
    L = np.where(zero[None, :], 0, L)
    return scale, L.T


def make_q3_quants(x, nmax):
    """ggml make_q3_quants with do_rmse=true (weights x*x, 5 rounds of coordinate descent).

    Returns (scale [G], L int32 [G, n] offset by nmax; all-zero groups give L = 0).
    """
    xt = np.ascontiguousarray(x.T, dtype=F32)
    n = xt.shape[0]
    vmax, amax = _abs_max_signed(xt)
    zero = amax < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-nmax) / vmax
        L = np.clip(nearest_int(iscale * xt), -nmax, nmax - 1)      # [n, G]
        wt = xt * xt
        wx = wt * xt
        Lf = L.astype(F32)
        sumlx = seq_sum(wx * Lf)
        suml2 = seq_sum((wt * Lf) * Lf)
        for _ in range(5):
            changed = np.zeros(xt.shape[1], dtype=bool)
            for i in range(n):
                w, xi, li = wt[i], xt[i], L[i].astype(F32)
                slx = sumlx - wx[i] * li
                sl2 = suml2 - (w * li) * li
                new_l = np.clip(nearest_int((xi * sl2) / slx), -nmax, nmax - 1)
                nf = new_l.astype(F32)
                slx2 = slx + wx[i] * nf
                sl22 = sl2 + (w * nf) * nf
                take = ((slx > 0) & (new_l != L[i]) & (sl22 > 0)
                        & ((slx2 * slx2) * suml2 > (sumlx * sumlx) * sl22))
                L[i] = np.where(take, new_l, L[i])
                sumlx = np.where(take, slx2, sumlx)
                suml2 = np.where(take, sl22, suml2)
                changed |= take
            if not changed.any():
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    L = L + nmax
    scale = np.where(zero, F32(0), scale)
    L = np.where(zero[None, :], 0, L)
    return scale, L.T


def make_qp_quants(x, nmax, qw):
    """ggml make_qp_quants: scale for non-negative values (sub-block scales/mins) under weights.

    Returns (scale [G], L uint8 [G, n]).
    """
    xt = np.ascontiguousarray(x.T, dtype=F32)
    wt = np.ascontiguousarray(qw.T, dtype=F32)
    n = xt.shape[0]
    vmax = np.zeros(xt.shape[1], dtype=F32)
    for i in range(n):                              # ggml's MAX(max, x): a NaN x wins
        vmax = np.where(vmax > xt[i], vmax, xt[i])
    zero = vmax < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(nmax) / vmax
        L8 = nearest_int(iscale * xt).astype(np.uint8)               # stored as uint8, like ggml
        scale = F32(1) / iscale
        diff = xt - scale * L8.astype(F32)
        best_mse = seq_sum((wt * diff) * diff)

        steps = np.array([s for s in range(-4, 5) if s != 0], dtype=F32)
        iscales = (F32(0.1) * steps + F32(nmax))[:, None] / vmax[None, :]   # [C, G]
        scales_c = F32(1) / iscales
        lc = np.minimum(nearest_int(iscales[:, None, :] * xt[None]), nmax).astype(F32)
        diff = xt - scales_c[:, None, :] * lc
        mse = seq_sum((wt * diff) * diff)
    chosen, _ = _first_strict_improvement(lambda c, b: mse[c] < b, best_mse, mse)
    iscale = _pick(chosen, iscales, iscale)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        Li = np.minimum(nearest_int(iscale * xt), nmax)             # int values used in sums
        Lf = Li.astype(F32)
        wx = wt * xt
        sumlx = seq_sum(wx * Lf)
        suml2 = seq_sum((wt * Lf) * Lf)
        L8 = Li.astype(np.uint8)
        for _ in range(5):
            changed = np.zeros(xt.shape[1], dtype=bool)
            for i in range(n):
                w = wt[i]
                li = L8[i].astype(F32)
                slx = sumlx - wx[i] * li
                sl2 = suml2 - (w * li) * li
                new_l = np.minimum(nearest_int((xt[i] * sl2) / slx), nmax)
                nf = new_l.astype(F32)
                slx2 = slx + wx[i] * nf
                sl22 = sl2 + (w * nf) * nf
                take = ((slx > 0) & (sl2 > 0) & (new_l != L8[i].astype(np.int32))
                        & ((slx2 * slx2) * suml2 > (sumlx * sumlx) * sl22))
                L8[i] = np.where(take, new_l.astype(np.uint8), L8[i])
                sumlx = np.where(take, slx2, sumlx)
                suml2 = np.where(take, sl22, suml2)
                changed |= take
            if not changed.any():
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    scale = np.where(zero, F32(0), scale)
    L8 = np.where(zero[None, :], np.uint8(0), L8)
    return scale, L8.T
