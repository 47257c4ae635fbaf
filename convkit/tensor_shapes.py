"""The tensors each architecture needs, with the shapes its hyperparameters imply.

One table for both directions: the converter checks an HF checkpoint against it (after
renaming to GGUF names) and the GGUF readers check a file's tensor directory against it,
so a tensor that is missing, unexpected or of the wrong shape is one clear error before
any work, never a torch size mismatch (or a wrong file) later. Shapes are in numpy order
(row length last); None in a shape accepts any size on that axis.

`hp` keys: n_layer, hidden, n_head, n_head_kv, head_dim, ff, vocab; gpt2 and bert add
n_ctx (rows of the learned positions); `tied` says whether output.weight may be absent.
"""
from convkit.errors import ConvkitError


def _llama(hp: dict, biases_required: bool, qk_norm: str | None = None, post_norms: bool = False,
           sandwich_norms: bool = False) -> dict:
    """Llama and its kin; `qk_norm` "head" or "all" adds q/k norms of one head or of all heads,
    `post_norms` puts OLMo 2's norms after the sublayers in place of llama's before them,
    `sandwich_norms` has both (Gemma 2/3)."""
    h, ff, vocab = hp["hidden"], hp["ff"], hp["vocab"]
    q, kv = hp["n_head"] * hp["head_dim"], hp["n_head_kv"] * hp["head_dim"]
    out = {"token_embd.weight": ((vocab, h), True), "output_norm.weight": ((h,), True),
           "output.weight": ((vocab, h), not hp.get("tied", True)),
           "rope_freqs.weight": ((hp["head_dim"] // 2,), False)}
    for i in range(hp["n_layer"]):
        p = f"blk.{i}."
        out.update({
            p + "attn_q.weight": ((q, h), True), p + "attn_k.weight": ((kv, h), True),
            p + "attn_v.weight": ((kv, h), True), p + "attn_output.weight": ((h, q), True),
            p + "attn_q.bias": ((q,), biases_required), p + "attn_k.bias": ((kv,), biases_required),
            p + "attn_v.bias": ((kv,), biases_required)})
        n_exp, ff_exp = hp.get("n_expert", 0), hp.get("ff_exp")
        if n_exp:  # a router and the experts' matrices stacked
            out.update({p + "ffn_gate_inp.weight": ((n_exp, h), True),
                        p + "ffn_gate_exps.weight": ((n_exp, ff_exp, h), True),
                        p + "ffn_up_exps.weight": ((n_exp, ff_exp, h), True),
                        p + "ffn_down_exps.weight": ((n_exp, h, ff_exp), True)})
        else:
            out.update({p + "ffn_gate.weight": ((ff, h), True), p + "ffn_up.weight": ((ff, h), True),
                        p + "ffn_down.weight": ((h, ff), True)})
        norms = ("post_attention_norm", "post_ffw_norm") if post_norms else ("attn_norm", "ffn_norm")
        if sandwich_norms:
            norms += ("post_attention_norm", "post_ffw_norm")
        out.update({f"{p}{n}.weight": ((h,), True) for n in norms})
        if qk_norm is not None:
            out[p + "attn_q_norm.weight"] = ((hp["head_dim"] if qk_norm == "head" else q,), True)
            out[p + "attn_k_norm.weight"] = ((hp["head_dim"] if qk_norm == "head" else kv,), True)
        # llama's attention_bias / mlp_bias: required when config.json sets them, refused
        # when it says false, allowed when unknown (a GGUF states neither)
        extra = {"attention_bias": {p + "attn_output.bias": (h,)},
                 "mlp_bias": {p + "ffn_gate.bias": (ff,), p + "ffn_up.bias": (ff,), p + "ffn_down.bias": (h,)}}
        if hp.get("attention_bias"):
            for kind in ("attn_q", "attn_k", "attn_v"):
                out[f"{p}{kind}.bias"] = (out[f"{p}{kind}.bias"][0], True)
        for flag, tensors in extra.items():
            if hp.get(flag) is not False:
                out.update({name: (shape, bool(hp.get(flag))) for name, shape in tensors.items()})
    return out


def _phi3(hp: dict) -> dict:
    """Phi-3: q, k, v in one matrix, gate and up in one (gate rows first); LongRoPE's two
    sets of divisors, one per rotated pair, when the model scales its positions."""
    h, ff, vocab = hp["hidden"], hp["ff"], hp["vocab"]
    q, kv = hp["n_head"] * hp["head_dim"], hp["n_head_kv"] * hp["head_dim"]
    pairs = hp["rope_dim"] // 2 if hp.get("rope_dim") else None
    out = {"token_embd.weight": ((vocab, h), True), "output_norm.weight": ((h,), True),
           "output.weight": ((vocab, h), not hp.get("tied", True)),
           "rope_factors_long.weight": ((pairs,), False), "rope_factors_short.weight": ((pairs,), False)}
    for i in range(hp["n_layer"]):
        p = f"blk.{i}."
        out.update({p + "attn_norm.weight": ((h,), True), p + "attn_qkv.weight": ((q + 2 * kv, h), True),
                    p + "attn_output.weight": ((h, q), True), p + "ffn_norm.weight": ((h,), True),
                    p + "ffn_up.weight": ((2 * ff, h), True), p + "ffn_down.weight": ((h, ff), True)})
    return out


def _gpt2(hp: dict) -> dict:
    h, ff, vocab = hp["hidden"], hp["ff"], hp["vocab"]
    out = {"token_embd.weight": ((vocab, h), True), "position_embd.weight": ((hp["n_ctx"], h), True),
           "output_norm.weight": ((h,), True), "output_norm.bias": ((h,), True),
           "output.weight": ((vocab, h), not hp.get("tied", True))}
    for i in range(hp["n_layer"]):
        p = f"blk.{i}."
        out.update({
            p + "attn_norm.weight": ((h,), True), p + "attn_norm.bias": ((h,), True),
            p + "attn_qkv.weight": ((3 * h, h), True), p + "attn_qkv.bias": ((3 * h,), True),
            p + "attn_output.weight": ((h, h), True), p + "attn_output.bias": ((h,), True),
            p + "ffn_norm.weight": ((h,), True), p + "ffn_norm.bias": ((h,), True),
            p + "ffn_up.weight": ((ff, h), True), p + "ffn_up.bias": ((ff,), True),
            p + "ffn_down.weight": ((h, ff), True), p + "ffn_down.bias": ((h,), True)})
    return out


def _bert(hp: dict) -> dict:
    h, ff, vocab = hp["hidden"], hp["ff"], hp["vocab"]
    out = {"token_embd.weight": ((vocab, h), True), "position_embd.weight": ((hp["n_ctx"], h), True),
           "token_types.weight": ((None, h), True),
           "token_embd_norm.weight": ((h,), True), "token_embd_norm.bias": ((h,), True)}
    for i in range(hp["n_layer"]):
        p = f"blk.{i}."
        for kind in ("attn_q", "attn_k", "attn_v", "attn_output"):
            out[p + kind + ".weight"] = ((h, h), True)
            out[p + kind + ".bias"] = ((h,), True)
        for norm in ("attn_output_norm", "layer_output_norm"):
            out[p + norm + ".weight"] = ((h,), True)
            out[p + norm + ".bias"] = ((h,), True)
        out.update({p + "ffn_up.weight": ((ff, h), True), p + "ffn_up.bias": ((ff,), True),
                    p + "ffn_down.weight": ((h, ff), True), p + "ffn_down.bias": ((h,), True)})
    return out


# an architecture's `tensor_table` names its table; "decoder" reads the rest from its structure
TABLES = {"decoder": lambda hp, cls: _llama(hp, cls.qkv_bias_required, cls.structure.qk_norm, cls.structure.post_norms,
                                            cls.structure.sandwich_norms),
          "phi3": lambda hp, cls: _phi3(hp), "gpt2": lambda hp, cls: _gpt2(hp), "bert": lambda hp, cls: _bert(hp)}


def expected_tensors(arch: str, hp: dict) -> dict | None:
    """GGUF name -> (numpy shape, required), or None for an architecture without a table.
    `arch` is a GGUF architecture name; its convkit/arch module says which table applies."""
    from convkit.arch import GGUF_REGISTRY  # the registry imports this module

    cls = GGUF_REGISTRY.get(arch)
    if cls is None or cls.tensor_table is None:
        return None
    return TABLES[cls.tensor_table](hp, cls)


def shape_matches(expected: tuple, actual: tuple) -> bool:
    return len(expected) == len(actual) and all(e is None or e == a for e, a in zip(expected, actual))


def check_tensors(arch: str, hp: dict, shapes: dict, where) -> None:
    """Every required tensor present, nothing unknown, every shape as `hp` implies.

    `shapes`: GGUF name -> numpy shape. `where(name)` gives the file or tensor to name in
    the message. Raises ConvkitError."""
    table = expected_tensors(arch, hp)
    if table is None:
        return
    for name, shape in shapes.items():
        if name not in table:
            raise ConvkitError(f"{where(name)}: tensor {name} is not part of a {hp['n_layer']}-layer {arch} model; "
                               f"the weights and the hyperparameters disagree")
        expected = table[name][0]
        if not shape_matches(expected, tuple(shape)):
            shown = [("any" if e is None else e) for e in expected]
            raise ConvkitError(f"{where(name)}: tensor {name} has shape {list(shape)} but the hyperparameters "
                               f"imply {shown}; the weights and the hyperparameters disagree")
    missing = [name for name, (_, required) in table.items() if required and name not in shapes]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ConvkitError(f"{where(missing[0])}: tensor {missing[0]}{more} missing for a {hp['n_layer']}-layer "
                           f"{arch} model; the checkpoint is incomplete")
