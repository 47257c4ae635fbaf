"""llama-imatrix's statistics from llama.cpp itself: its graph callback (cb_eval) sees every
MUL_MAT, and the activations (src1) are summed exactly as tools/imatrix/imatrix.cpp's
IMatrixCollector::collect_imatrix sums them (float32, row after row, in graph order).

The chunks are evaluated as `llama-imatrix -c N -b N` does: one chunk per decode from an
empty cache, BOS in front when the model adds one (the plan's chunk does that), logits
asked for every position so that the last layer and the output head see every token."""
import ctypes

import numpy as np

from llama_trace import _Tensor

GGML_TYPE_F32 = 0
MIN_ROWS = 16
def _quiet():
    """llama.cpp's log goes to the one callback the tests share (test_mixes collects a dry
    run's lines through it; a second callback would take its place for the whole process)."""
    from test_mixes import _quiet_llama

    return _quiet_llama()


def _op_mul_mat() -> int:
    """GGML_OP_MUL_MAT's number in this ggml (the enum moves between versions)."""
    from realdata import ggml_base_library

    lib = ctypes.CDLL(str(ggml_base_library()))
    lib.ggml_op_name.restype = ctypes.c_char_p
    for op in range(200):
        if lib.ggml_op_name(op) == b"MUL_MAT":
            return op
    raise RuntimeError("no MUL_MAT in ggml_op_name")


def _weight_name(name: str) -> str:
    """imatrix.cpp's filter_tensor_name: CUDA0#blk.0.attn_k.weight#0 -> blk.0.attn_k.weight."""
    parts = name.split("#")
    return parts[1] if len(parts) > 1 else name


def _rows(t: _Tensor) -> np.ndarray:
    """src1's float32 rows [ne3*ne2*ne1, ne0] in the order imatrix.cpp walks them."""
    ne, nb = list(t.ne), list(t.nb)
    extent = sum((n - 1) * s for n, s in zip(ne, nb)) + 4
    base = np.ctypeslib.as_array((ctypes.c_float * (extent // 4)).from_address(t.data))
    view = np.lib.stride_tricks.as_strided(base, shape=(ne[3], ne[2], ne[1], ne[0]),
                                           strides=(nb[3], nb[2], nb[1], nb[0]))
    return np.array(view, dtype=np.float32).reshape(-1, ne[0])


def sequential_sum_squares(acc: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """acc[j] += x[j] * x[j] for each row in turn, in float32 (np.add.accumulate is sequential)."""
    return np.add.accumulate(np.vstack([acc[None], rows * rows]), axis=0, dtype=np.float32)[-1]


def llama_imatrix(path, tokens: list[int], plan, *, process_output: bool = False, threads: int = 2,
                  flash_attn: bool | None = False, collect: bool = True, exact: bool = True) -> dict:
    """{weight name: (float32 sums [ne0], count)} as llama-imatrix collects them over `plan`'s
    chunks of `tokens` (convkit.eval.perplexity.ChunkPlan). `collect=False` runs the same
    decodes without the callback (a lower bound on llama-imatrix's time); `exact=False` sums
    each product's squares with one numpy reduction (faster, for timing only). `flash_attn`
    None keeps llama.cpp's default (auto, as llama-imatrix runs); False is what
    `--numerics ggml` reproduces."""
    llama_cpp = _quiet()
    mul_mat = _op_mul_mat()
    stats: dict[str, list] = {}

    def wanted(t: _Tensor) -> str | None:
        src0 = ctypes.cast(t.src[0], ctypes.POINTER(_Tensor)).contents
        src1 = ctypes.cast(t.src[1], ctypes.POINTER(_Tensor)).contents
        name = _weight_name(src0.name.decode())
        if src1.ne[1] < MIN_ROWS or src1.type != GGML_TYPE_F32:
            return None
        if not (name.startswith("blk.") or (process_output and name == "output.weight")):
            return None
        return name

    def observe(pointer, ask, _user):
        t = ctypes.cast(pointer, ctypes.POINTER(_Tensor)).contents
        if ask:
            return t.op == mul_mat and wanted(t) is not None
        name = wanted(t)
        src1 = ctypes.cast(t.src[1], ctypes.POINTER(_Tensor)).contents
        rows = _rows(src1)
        entry = stats.setdefault(name, [np.zeros(rows.shape[1], np.float32), 0])
        if exact:
            entry[0] = sequential_sum_squares(entry[0], rows)
        else:
            entry[0] += (rows * rows).sum(0)
        entry[1] += rows.shape[0]
        return True

    callback = llama_cpp.ggml_backend_sched_eval_callback(observe)
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = plan.n_ctx
    params.n_threads = params.n_threads_batch = threads
    if flash_attn is not None:
        params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
    if collect:
        params.cb_eval = callback
    ctx = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(plan.n_ctx, 0, 1)
    try:
        for i in range(plan.n_chunks):
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            ids = plan.chunk(tokens, i)
            batch.n_tokens = len(ids)
            for k, tok in enumerate(ids):
                batch.token[k], batch.pos[k], batch.n_seq_id[k] = tok, k, 1
                batch.seq_id[k][0] = 0
                batch.logits[k] = 1
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            llama_cpp.llama_synchronize(ctx)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return {name: (sums, count) for name, (sums, count) in stats.items()}
