"""`convkit quantize --target-bpw X | --target-size SIZE`: each tensor's type chosen for the budget.

The file type's mix (llama.cpp's rules) fixes the file type and every tensor that cannot be
measured (norms, the token embedding, an output head without statistics, the user's
--tensor-type choices). Every other weight may take any type of llama.cpp's standard set
(Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_0, and the mix's own type), each passed through
llama.cpp's row-length fallback (a 576-wide row cannot hold Q4_K and gets Q5_0), so every
file is a standard GGUF.

The loss of a weight W at type t is measured by quantizing it: the output error over the
calibration text, tr((W - Q_t) H (W - Q_t)^T) / tokens with H = X^T X (`--calibrate`), or
with only the diagonal known, sum_ij imp_j (W - Q_t)_ij^2 (`--imatrix`). The types are then
chosen greedily: every tensor starts at its cheapest type, and the upgrade with the largest
loss decrease per extra byte that still fits the budget is taken, until none fits.
"""
import re
from dataclasses import dataclass

import numpy as np

from convkit.errors import ConvkitError

# llama.cpp's standard K-quant and legacy ladder, cheapest first
LADDER = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")

# How far down a weight may move from the mix's type: to FLOOR_BITS (Q3_K), or STEPS_DOWN types
# below its own (so Q2_K only where the mix gives Q3_K). On the sample at Q4_0's size, weights
# sent from Q4_0 to Q2_K did not carry to text of another source: 0.93x llama.cpp's KLD
# without these limits, 0.46x with them (benchmarks/bench_calibrate.py). None: no limit.
STEPS_DOWN = 1
FLOOR_BITS = 3.4375

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20, "G": 1 << 30,
          "GIB": 1 << 30, "T": 1 << 40, "TIB": 1 << 40, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9,
          "TB": 10 ** 12}


def parse_size(text: str) -> int:
    """80M, 1.5G, 3.2MiB, 500MB, 123456 -> bytes (K/M/G and KiB/MiB/GiB are binary, KB/MB/GB decimal)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS:
        raise ConvkitError(f"--target-size {text!r}: give a size such as 80M, 1.5G or 3500000 (bytes; K/M/G are "
                           "binary units, KB/MB/GB decimal)")
    return int(float(m.group(1)) * _UNITS[unit])


@dataclass
class Budget:
    """At most `limit` bytes: tensor bytes (--target-bpw, as llama.cpp counts bits per weight)
    or the whole file (--target-size: header, metadata, tensors and their alignment)."""
    limit: int
    whole_file: bool
    label: str


def candidate_types(row: int, mix_type) -> list:
    """The standard types a tensor of rows of `row` values can hold, cheapest first, within
    the downward limits from the mix's type."""
    from quant.errors import QuantError
    from quant.mixes import fallback_type
    from quant.types import QuantType

    seen = {}
    for name in (*LADDER, QuantType(int(mix_type)).name):
        try:
            t = fallback_type(row, QuantType[name], "tensor")
        except QuantError:  # a type with no fallback for this row is not offered
            continue
        if t != QuantType.F16:
            seen[int(t)] = t
    ordered = sorted(seen.values(), key=lambda t: _bits(t))
    if STEPS_DOWN is None:
        return ordered
    below = [t for t in ordered if _bits(t) < _bits(mix_type)]
    keep = below[len(below) - STEPS_DOWN:] if STEPS_DOWN else []
    return [t for t in ordered if t in keep or _bits(t) >= min(_bits(mix_type), FLOOR_BITS)]


def _bits(qtype) -> float:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(qtype))]
    return 8 * size / block


def tensor_bytes(shape, qtype, align: int = 1) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(qtype))]
    n = int(np.prod(shape, dtype=np.int64)) // block * size
    return n + (-n % align)


def measured_losses(values, types, *, hessian=None, count: int = 1, importance=None, threads: int = 1) -> list:
    """The loss of `values` (float32 [rows, n]) quantized to each of `types`: the output error
    tr(E H E^T) / count with the full second moment, else sum imp_j E_ij^2."""
    import quant

    W = np.ascontiguousarray(values, dtype=np.float32).reshape(-1, np.shape(values)[-1])
    if hessian is not None:
        H = np.asarray(hessian, dtype=np.float64) / max(count, 1)
        imp = np.diag(H).astype(np.float32)
    else:
        H, imp = None, None if importance is None else np.asarray(importance, dtype=np.float32)
    out = []
    for t in types:
        Q = np.asarray(quant.dequantize(quant.quantize(W, t, imatrix=imp, threads=threads), t),
                       dtype=np.float32).reshape(W.shape)
        E = (W - Q).astype(np.float64)
        if H is not None:
            out.append(float(np.einsum("ij,ij->", E @ H, E)))
        elif imp is not None:
            out.append(float(((E * E) @ imp.astype(np.float64)).sum()))
        else:
            out.append(float((E * E).sum()))
    return out


def greedy(costs: list, losses: list, budget: int) -> list:
    """Index of the chosen type per item: cheapest first, then the upgrade of most loss
    saved per extra byte that fits, repeated; None when even the cheapest do not fit."""
    state = [0] * len(costs)
    left = budget - sum(c[0] for c in costs)
    if left < 0:
        return None
    while True:
        best, pick = 0.0, None
        for i, (c, l) in enumerate(zip(costs, losses)):
            s = state[i]
            for j in range(s + 1, len(c)):
                extra = c[j] - c[s]
                gain = l[s] - l[j]
                if gain <= 0 or extra > left:
                    continue
                rate = gain / max(extra, 1)
                if rate > best:
                    best, pick = rate, (i, j, extra)
        if pick is None:
            return state
        i, j, extra = pick
        state[i] = j
        left -= extra


def allocate(source, plan, budget: Budget, *, header: int, align: int, fixed=frozenset(), stats=None,
             vectors=None, sensitivity=None, threads: int = 1, progress_bar=None) -> tuple:
    """(new plan, report): `plan` with the measured weights' types chosen within `budget`.

    sensitivity: {name: rounding function} -> {name: the model's output KLD with only that
    weight rounded} (convkit.sensitivity.output_kld); each weight's losses are then scaled to
    KLD by its probe at its cheapest type."""
    from convkit.gguf_out import PlannedTensor

    unit = align if budget.whole_file else 1
    movable, costs, losses, cands, inputs = [], [], [], [], []
    fixed_bytes = header if budget.whole_file else 0
    direct = []  # weights without statistics whose losses the output KLD gives directly
    for t in plan:
        entry = _measure_inputs(t, stats, vectors) if t.name not in fixed and _is_quantized(t.qtype) else None
        if (entry is None and sensitivity is not None and t.name in _DIRECT and t.name not in fixed
                and _is_quantized(t.qtype) and len(t.shape) == 2):
            entry = {"direct": True}
        if entry is None:
            fixed_bytes += tensor_bytes(t.shape, t.qtype, unit)
            if progress_bar:
                progress_bar.update(1)
            continue
        types = candidate_types(t.shape[-1], t.qtype)
        if entry.get("direct"):
            ls = [None] * len(types)
            direct.append(len(movable))
        else:
            ls = measured_losses(source.read(t.name), types, threads=threads, **entry)
        movable.append(t.name)
        inputs.append(entry)
        cands.append(types)
        costs.append([tensor_bytes(t.shape, q, unit) for q in types])
        losses.append(ls)
        if progress_bar:
            progress_bar.update(1)
    if not movable:
        raise ConvkitError(f"{source.path}: no weight has calibration statistics to measure; --target-bpw needs "
                           "--calibrate TEXT or an --imatrix of this model")
    if sensitivity is not None:
        losses = _scaled_by_sensitivity(movable, cands, losses, inputs, sensitivity, threads, direct)
    state = greedy(costs, losses, budget.limit - fixed_bytes)
    if state is None:
        smallest = fixed_bytes + sum(c[0] for c in costs)
        raise ConvkitError(f"{budget.label} is below the smallest file this model can have "
                           f"({_describe(smallest, budget, plan)}); give a larger target")
    chosen = {name: types[s] for name, types, s in zip(movable, cands, state)}
    mix_types = {t.name: t.qtype for t in plan}
    mix_loss = 0.0
    for name, types, ls in zip(movable, cands, losses):
        k = [int(q) for q in types].index(int(mix_types[name])) if int(mix_types[name]) in map(int, types) else None
        mix_loss = mix_loss + ls[k] if (k is not None and mix_loss is not None) else None
    new_plan = [PlannedTensor(t.name, t.shape, int(chosen.get(t.name, t.qtype))) for t in plan]
    report = {"budget_bytes": budget.limit, "budget": "file" if budget.whole_file else "tensor bytes",
              "loss": "output KLD (sum over weights)" if sensitivity is not None else "layer output error",
              "allocated_tensors": len(movable),
              "predicted_loss": sum(ls[s] for ls, s in zip(losses, state)),
              "mix_predicted_loss": mix_loss,
              "types": {name: chosen[name].name for name in movable}}
    return new_plan, report


# the token embedding and the output head: the output's KLD at each type is their loss
_DIRECT = ("token_embd.weight", "output.weight")


def _scaled_by_sensitivity(names, cands, losses, inputs, sensitivity, threads, direct):
    """Losses in units of the output's KLD: a measured weight's scaled by its probe at its
    cheapest type, the `direct` ones' measured at every type."""
    import quant

    def probe(qtype, imp):
        def rounded(w):
            return quant.dequantize(quant.quantize(w, qtype, imatrix=imp, threads=threads), qtype)
        return rounded

    probes = []
    for i, (name, types, entry) in enumerate(zip(names, cands, inputs)):
        h = entry.get("hessian")
        imp = (np.diag(h) / max(entry.get("count", 1), 1)).astype(np.float32) if h is not None \
            else entry.get("importance")
        for k, qtype in enumerate(types if i in direct else types[:1]):
            probes.append(((i, k), name, probe(qtype, imp)))
    kld = sensitivity(probes)
    factors = {i: kld[(i, 0)] / ls[0] for i, ls in enumerate(losses)
               if i not in direct and (i, 0) in kld and ls[0] > 0}
    fallback = float(np.median(list(factors.values()))) if factors else 1.0
    out = []
    for i, ls in enumerate(losses):
        if i in direct:
            # a missing probe (a head the runtime fuses) keeps the weight at its cheapest type's cost only
            out.append([max(kld.get((i, k), 0.0), 0.0) for k in range(len(ls))])
        else:
            out.append([v * factors.get(i, fallback) for v in ls])
    return out


def check_reachable(plan, budget: Budget, *, header: int, align: int, fixed=frozenset()) -> None:
    """Refuse, before anything is measured, a budget below the file with every weight that may
    move at its cheapest type."""
    unit = align if budget.whole_file else 1
    smallest = header if budget.whole_file else 0
    for t in plan:
        movable = t.name not in fixed and _is_quantized(t.qtype) and len(t.shape) == 2
        cheapest = candidate_types(t.shape[-1], t.qtype)[0] if movable else t.qtype
        smallest += tensor_bytes(t.shape, cheapest, unit)
    if smallest > budget.limit:
        raise ConvkitError(f"{budget.label} is below the smallest file this model can have "
                           f"({_describe(smallest, budget, plan)}); give a larger target")


def _describe(nbytes, budget, plan):
    if budget.whole_file:
        return f"{nbytes} bytes"
    elements = sum(int(np.prod(t.shape, dtype=np.int64)) for t in plan)
    return f"{nbytes * 8 / elements:.4f} bits per weight"


def _is_quantized(qtype) -> bool:
    from quant.types import QuantType, is_quantized

    try:
        return is_quantized(QuantType(int(qtype)))
    except ValueError:
        return False


def _measure_inputs(t, stats, vectors):
    """The statistics that measure tensor t's loss: {hessian, count} or {importance}, or None."""
    if len(t.shape) != 2:  # expert stacks keep the mix's type
        return None
    if stats is not None:
        entry = stats.get(t.name)
        if entry is not None:
            return {"hessian": entry[0], "count": entry[1]}
        return None
    if vectors is not None:
        from quant.imatrix import importance_for

        imp = importance_for(vectors, t.name, t.shape)
        if imp is not None:
            return {"importance": np.asarray(imp, dtype=np.float32).reshape(-1)}
    return None
