"""llama.cpp's own intermediate tensors, read through its graph callback (cb_eval).

llama.cpp names the tensors of its compute graph ("attn_norm-0", "ffn_out-0", "l_out-0",
...); the scheduler calls `cb_eval` for each node once computed, so the float32 values of
every named node can be copied out. The ggml_tensor layout is ggml.h's as vendored by the
pinned llama-cpp-python."""
import ctypes

import numpy as np


class _Tensor(ctypes.Structure):  # ggml.h: struct ggml_tensor (GGML_MAX_DIMS 4, _SRC 10, _NAME 64)
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


def intermediates(path, tokens: list[int]) -> dict[str, np.ndarray]:
    """name -> float32 values (numpy order: [tokens, features]) of the first contiguous f32
    node of that name, for one decode of `tokens` from position 0 with 2 threads."""
    import llama_cpp

    found = {}

    def observe(pointer, ask, _user):
        t = ctypes.cast(pointer, ctypes.POINTER(_Tensor)).contents
        if ask or t.type != 0 or not t.data:  # 0: GGML_TYPE_F32
            return True
        name, ne, nb = t.name.decode(), list(t.ne), list(t.nb)
        if nb[0] == 4 and nb[1] == 4 * ne[0] and nb[2] == nb[1] * ne[1] and name not in found:
            n = ne[0] * ne[1] * ne[2] * ne[3]
            values = np.ctypeslib.as_array(ctypes.cast(t.data, ctypes.POINTER(ctypes.c_float)), shape=(n,))
            found[name] = values.reshape(-1, ne[0]).copy()
        return True

    callback = llama_cpp.ggml_backend_sched_eval_callback(observe)
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = max(64, len(tokens))
    params.n_threads = params.n_threads_batch = 2
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as llama_cpp.Llama runs
    params.cb_eval = callback
    ctx = llama_cpp.llama_init_from_model(model, params)
    try:
        ids = (llama_cpp.llama_token * len(tokens))(*tokens)
        rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(ids, len(tokens)))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return found
