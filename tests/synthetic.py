"""Shapes of HF Llama/Qwen2 checkpoints for tests and benchmarks that make their own weights."""


def llama_shapes(layers: int, hidden: int, ff: int, vocab: int, n_head: int, n_kv: int, *,
                 untied: bool = True, qkv_bias: bool = False) -> dict:
    """HF tensor name -> shape for a LlamaForCausalLM (Qwen2 with qkv_bias)."""
    kv = n_kv * (hidden // n_head)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if untied:
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
                       p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
                       p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (ff, hidden), p + "mlp.up_proj.weight": (ff, hidden),
                       p + "mlp.down_proj.weight": (hidden, ff)})
        if qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (hidden,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
    return shapes
