"""A torch runtime for llama, qwen2 and gpt2 checkpoints (GGUF of any supported type, or HF).

    model = load_model("model.gguf", device="cpu", precision="fp32")
    logits = model(torch.tensor([ids]))            # float32 [1, T, vocab]
    cache = model.new_cache(); model(ids, cache)   # incremental decoding

Matrices stay quantized and are dequantized as the forward pass reaches them
(`dequantize_all=True` keeps them dense); linear.py documents the numerics hook.
"""
from .linear import NUMERICS, Numerics, QTensor, QuantLinear, register_numerics
from .load import load_model
from .model import KVCache, Model, ModelConfig

__all__ = ["KVCache", "Model", "ModelConfig", "NUMERICS", "Numerics", "QTensor", "QuantLinear",
           "load_model", "register_numerics"]
