"""The runtime's decoder against transformers on small random models of each family.

Each model is made by transformers (random init, fixed seed), saved as safetensors,
and loaded back by the runtime from that directory, and from GGUF files written here the
way llama.cpp's converter writes them (gguf-py's tensor names, llama's q/k row
permutation, llama3's rope_freqs, gpt2's transposed Conv1D matrices).
"""
import math

import gguf
import numpy as np
import pytest
import torch

from convkit.runtime import load_model

TOL = 1e-4
VOCAB = 320

FAMILIES = {
    "llama_gqa": ("LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False)),
    "llama_linear": ("LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, rms_norm_eps=1e-6,
        rope_scaling={"rope_type": "linear", "factor": 4.0}, tie_word_embeddings=True)),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64}, tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(
        n_embd=64, n_layer=2, n_head=4, n_positions=128, layer_norm_epsilon=1e-5)),
}


# gpt2 stores q/k/v as one fused tensor, so its parts can never differ in type
SPLIT_PROJECTION_FAMILIES = [name for name in FAMILIES if name != "gpt2"]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(name, HF directory, transformers model) for one family."""
    return make_family(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=SPLIT_PROJECTION_FAMILIES)
def split_family(request, tmp_path_factory):
    """The families whose q/k/v (gate/up) are separate tensors."""
    return make_family(request.param, tmp_path_factory)


def make_family(name, tmp_path_factory):
    import transformers

    config_cls, model_cls, kwargs = FAMILIES[name]
    torch.manual_seed(1234)
    config = getattr(transformers, config_cls)(vocab_size=VOCAB, **kwargs)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: perturb them too
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    directory = tmp_path_factory.mktemp(name)
    model.save_pretrained(directory)
    return name, directory, model


def token_ids(n=40, seed=0):
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def reference_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def converter_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (rotary halves interleaved per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg) -> np.ndarray:
    """convert_hf_to_gguf.py's rope_freqs for rope_type llama3."""
    rope = cfg.rope_parameters
    dim = cfg.hidden_size // cfg.num_attention_heads
    freqs = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    low_wavelen = rope["original_max_position_embeddings"] / rope["low_freq_factor"]
    high_wavelen = rope["original_max_position_embeddings"] / rope["high_freq_factor"]
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1)
        elif wavelen > low_wavelen:
            factors.append(rope["factor"])
        else:
            smooth = (rope["original_max_position_embeddings"] / wavelen - rope["low_freq_factor"]) / (
                rope["high_freq_factor"] - rope["low_freq_factor"])
            factors.append(1 / ((1 - smooth) / rope["factor"] + smooth))
    return np.array(factors, dtype=np.float32)


def write_gguf(model, path, qtype=gguf.GGMLQuantizationType.F32, mixed=None):
    """A GGUF of an HF model as llama.cpp's converter lays it out; matrices in `qtype`, or in
    mixed[kind] for tensors whose name contains `kind` (e.g. {"attn_v": Q8_0})."""
    cfg = model.config
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "gpt2": gguf.MODEL_ARCH.GPT2}[cfg.model_type]
    name = gguf.MODEL_ARCH_NAMES[arch]
    w = gguf.GGUFWriter(path, name)
    if cfg.model_type == "gpt2":
        w.add_block_count(cfg.n_layer); w.add_context_length(cfg.n_positions)
        w.add_embedding_length(cfg.n_embd); w.add_feed_forward_length(4 * cfg.n_embd)
        w.add_head_count(cfg.n_head); w.add_layer_norm_eps(cfg.layer_norm_epsilon)
    else:
        rope = cfg.rope_parameters
        w.add_block_count(cfg.num_hidden_layers); w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size); w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_attention_heads); w.add_head_count_kv(cfg.num_key_value_heads)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps); w.add_rope_freq_base(rope["rope_theta"])
        if rope.get("rope_type") == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR); w.add_rope_scaling_factor(rope["factor"])
    w.add_vocab_size(cfg.vocab_size)
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    tensors = {}
    if cfg.model_type == "llama" and (cfg.rope_parameters or {}).get("rope_type") == "llama3":
        tensors["rope_freqs.weight"] = llama3_rope_factors(cfg)
    for hf_name, t in model.state_dict().items():
        if hf_name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue
        data = t.numpy().astype(np.float32)
        if cfg.model_type == "gpt2" and hf_name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            data = data.T.copy()
        if cfg.model_type == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            data = converter_permute(data, cfg.num_attention_heads)
        if cfg.model_type == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            data = converter_permute(data, cfg.num_key_value_heads)
        tensors[names.get_name(hf_name, try_suffixes=(".weight", ".bias"))] = data
    if getattr(cfg, "tie_word_embeddings", False):
        tensors.pop("output.weight", None)
    for tname, data in sorted(tensors.items()):
        ttype = next((t for kind, t in (mixed or {}).items() if kind in tname), qtype)
        if data.ndim == 2 and ttype != gguf.GGMLQuantizationType.F32:
            if ttype == gguf.GGMLQuantizationType.F16:
                w.add_tensor(tname, data.astype(np.float16))
            else:
                w.add_tensor(tname, gguf.quants.quantize(data, ttype), raw_dtype=ttype)
        else:
            w.add_tensor(tname, data)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    return path


def test_hf_checkpoint_logits_equal_transformers(family):
    name, directory, model = family
    ids = token_ids()
    ours = load_model(directory)(ids)
    assert (ours - reference_logits(model, ids)).abs().max().item() < TOL


def test_f32_gguf_equals_hf_checkpoint(family, tmp_path):
    name, directory, model = family
    path = write_gguf(model, tmp_path / f"{name}.f32.gguf")
    ids = token_ids(seed=1)
    ours = load_model(path)(ids)
    assert (ours - reference_logits(model, ids)).abs().max().item() < TOL


def round_trip(data: np.ndarray, qtype) -> np.ndarray:
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16).astype(np.float32)
    return gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype)


def rounded_copy(model, qtype, mixed=None):
    """The HF model with each matrix rounded through its GGUF type (`qtype`, or mixed[kind]
    keyed by HF name fragments) in the orientation the GGUF stores it."""
    state = {}
    for k, t in model.state_dict().items():
        if t.dim() == 2:
            conv1d = model.config.model_type == "gpt2" and k.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight"))
            data = t.numpy().T if conv1d else t.numpy()
            ttype = next((q for kind, q in (mixed or {}).items() if kind in k), qtype)
            back = round_trip(np.ascontiguousarray(data), ttype)
            t = torch.from_numpy(np.ascontiguousarray(back.T if conv1d else back))
        state[k] = t
    copy = type(model)(model.config).eval()
    copy.load_state_dict(state)
    return copy


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0],
                         ids=lambda t: t.name)
def test_quantized_gguf_computes_with_its_dequantized_weights(family, tmp_path, qtype):
    name, directory, model = family
    ids = token_ids(seed=2)
    path = write_gguf(model, tmp_path / f"{name}.{qtype.name}.gguf", qtype)
    ours = load_model(path)(ids)
    assert (ours - reference_logits(rounded_copy(model, qtype), ids)).abs().max().item() < TOL


def test_mixed_types_in_one_projection(split_family, tmp_path):
    """As in Q4_K_M files: q/k and v (gate and up) of different types cannot be stacked into
    one matrix; each keeps its type and their outputs are concatenated."""
    name, directory, model = split_family
    F16, Q8_0 = gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.Q8_0
    path = write_gguf(model, tmp_path / f"{name}.mixed.gguf", F16, mixed={"attn_v": Q8_0, "ffn_up": Q8_0})
    net = load_model(path)
    from convkit.runtime.linear import ConcatLinear

    assert isinstance(net.blocks[0].attn.qkv, ConcatLinear) and isinstance(net.blocks[0].mlp.up, ConcatLinear)
    ids = token_ids(seed=7)
    reference = reference_logits(rounded_copy(model, F16, mixed={"v_proj": Q8_0, "up_proj": Q8_0}), ids)
    assert (net(ids) - reference).abs().max().item() < TOL


def test_kv_cache_decoding_equals_full_forward(family):
    name, directory, model = family
    net = load_model(directory)
    ids = token_ids(n=24, seed=3)
    full = net(ids)
    cache = net.new_cache(max_len=32)
    steps = [net(ids[:, :10], cache), net(ids[:, 10:11], cache), net(ids[:, 11:17], cache)]
    steps += [net(ids[:, i:i + 1], cache) for i in range(17, 24)]
    assert cache.length == 24
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < TOL


def test_batch_rows_are_independent(family):
    name, directory, model = family
    net = load_model(directory)
    ids = torch.cat([token_ids(seed=4), token_ids(seed=5)])
    both = net(ids)
    assert (both[1:] - net(ids[1:])).abs().max().item() < TOL


def test_bf16_tracks_fp32(family):
    name, directory, model = family
    ids = token_ids(seed=6)
    fp32 = load_model(directory)(ids)
    bf16 = load_model(directory, precision="bf16", dequantize_all=True)(ids)
    assert bf16.dtype == torch.float32
    assert (bf16.argmax(-1) == fp32.argmax(-1)).float().mean().item() > 0.9


@pytest.mark.parametrize("length", [3, 128, 300])
def test_grouped_causal_attention_equals_sdpa(length):
    """The CPU bfloat16 attention (query blocks against the keys they may see) computes
    causal attention: equal to scaled_dot_product_attention in float64 on the same values,
    for lengths below, at and across the block size, with grouped kv heads."""
    from convkit.runtime.linear import grouped_causal_attention

    g = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(2, h, length, 16, generator=g).bfloat16() for h in (6, 2, 2))
    ours = grouped_causal_attention(q, k, v, 0.25).double()
    want = torch.nn.functional.scaled_dot_product_attention(
        q.double(), k.double(), v.double(), is_causal=True, scale=0.25, enable_gqa=True)
    assert ours.shape == want.shape
    assert (ours - want).abs().max() < 0.03  # bfloat16 rounding of scores, probabilities, products


def test_bf16_kept_weights_give_the_unkept_products(family):
    """--dequantize-all in bfloat16 keeps each weight (prepacked for oneDNN on the prepacked path): the
    logits are bit for bit those of dequantizing per layer, and the plain weight is still
    there for any numerics that reads it."""
    from convkit.runtime import cpu_paths

    name, directory, model = family
    ids = token_ids(seed=7)
    per_layer = load_model(directory, precision="bf16")
    kept = load_model(directory, precision="bf16", dequantize_all=True)
    assert torch.equal(kept(ids), per_layer(ids))
    layer = kept.blocks[0].mlp.down
    assert layer._dense.is_mkldnn == (cpu_paths.current().name == "prepacked")  # packed exactly on that path
    plain = layer.dense_weight(torch.bfloat16)
    assert not plain.is_mkldnn and torch.equal(plain, per_layer.blocks[0].mlp.down.dense_weight(torch.bfloat16))
