"""Small checkpoints of the families released since Llama 2, made by transformers itself.

Each is a scaled-down config of the real model (hidden sizes multiples of 256 so every
K-quant applies, seeded random weights, norms perturbed away from 1) with SmolLM2's
byte-level BPE tokenizer (Gemma: a sentencepiece model trained here, see SPM_FAMILIES),
saved as float32 safetensors in the test cache; nothing here is committed. A cached directory is reused while the config and transformers' version match.
"""
import functools
import hashlib
import json
import shutil

from realdata import CACHE
from smollm2_fixture import smollm2_checkpoint
from spm_models import spm_model

VOCAB = 49152  # SmolLM2's tokenizer
COMMON = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
              bos_token_id=1, eos_token_id=2, pad_token_id=2)

GEMMA_VOCAB = 2048  # spm_models' bpe_gemma
# Gemma's scaled-down shape: a window of 32 (shorter than the tests' 96-token prompts), head_dim 64
# with the query scale llama.cpp uses for it, weights drawn wider than transformers' default so
# that the soft caps and the window change the logits by far more than the tolerance
GEMMA = dict(vocab_size=GEMMA_VOCAB, hidden_size=256, intermediate_size=512, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, query_pre_attn_scalar=64, max_position_embeddings=512,
             rms_norm_eps=1e-6, sliding_window=32, initializer_range=0.1, bos_token_id=2, eos_token_id=1,
             pad_token_id=0, tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh")

# name -> (config class, model class, config arguments, GGUF architecture)
FAMILIES = {
    # QK-norm per head, explicit head_dim wider than hidden / heads
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
              dict(COMMON, head_dim=128, tie_word_embeddings=True,
                   rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), "qwen3"),
    # every fourth layer without RoPE
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM",
                dict(COMMON, tie_word_embeddings=True,
                     rope_parameters={"rope_type": "default", "rope_theta": 2000000.0}), "smollm3"),
    # norms after the sublayers, QK-norm over all heads
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM",
              dict(COMMON, tie_word_embeddings=False,
                   rope_parameters={"rope_type": "default", "rope_theta": 500000.0}), "olmo2"),
    # the four multipliers (values of the released 2B model's kind)
    "granite": ("GraniteConfig", "GraniteForCausalLM",
                dict(COMMON, tie_word_embeddings=True, embedding_multiplier=12.0, residual_multiplier=0.22,
                     attention_multiplier=0.015625, logits_scaling=8.0,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000000.0}), "granite"),
    # mixture of experts, llama.cpp's llama with 8 experts (its mixes treat 8 experts apart), top 2
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(COMMON, intermediate_size=256, num_local_experts=8, num_experts_per_tok=2,
                     tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
                "llama"),
    # mixture of experts: 4 experts, top 2, weights renormalized
    "qwen3moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                 dict(COMMON, head_dim=64, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=256,
                      norm_topk_prob=True, tie_word_embeddings=False,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), "qwen3moe"),
    # soft-capped scores and logits, every other layer sliding, four norms per layer, (1 + w) norms
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(GEMMA, num_hidden_layers=4, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), "gemma2"),
    # QK-norm per head, five local layers to one global, the global RoPE scaled (linear) and the
    # local layers' own base
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(GEMMA, num_hidden_layers=7,
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}), "gemma3"),
}

# Gemma's tokenizer: a sentencepiece model (spm_models' bpe_gemma) with Gemma's tokenizer_config.json
GEMMA_TOKENIZER_CONFIG = {
    "add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
    "pad_token": "<pad>", "unk_token": "<unk>",
    "added_tokens_decoder": {str(i): {"content": t, "special": True} for i, t in enumerate(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"])},
}

# Phi-3 (Phi-3-mini-128k's kind): fused qkv and gate_up, LongRoPE with a pretraining context
# shorter than the test prompts (so the long divisors apply), a sliding window as long as
# the context, a sentencepiece tokenizer with Phi's added tokens (vocabulary padded as Phi-3's is)
PHI3_ORIGINAL_CONTEXT = 64
_PAIRS = 32  # head_dim 64: 32 rotated pairs
FAMILIES["phi3"] = ("Phi3Config", "Phi3ForCausalLM", dict(
    COMMON, vocab_size=1216, bos_token_id=1, eos_token_id=1200, pad_token_id=1200, tie_word_embeddings=False,
    sliding_window=512, original_max_position_embeddings=PHI3_ORIGINAL_CONTEXT,
    rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                     "short_factor": [round(1.0 + 0.5 * (i / _PAIRS) ** 2, 4) for i in range(_PAIRS)],
                     "long_factor": [round(1.0 + 11.0 * (i / _PAIRS) ** 1.5, 4) for i in range(_PAIRS)]}), "phi3")
# Phi-4's kind: no rope scaling, no sliding window, byte-level BPE (tokenizer_class GPT2Tokenizer);
# rotary on three quarters of each head as Phi-4-mini
FAMILIES["phi4"] = ("Phi3Config", "Phi3ForCausalLM", dict(
    COMMON, tie_word_embeddings=True, sliding_window=None, original_max_position_embeddings=512,
    rope_parameters={"rope_type": "default", "rope_theta": 250000.0, "partial_rotary_factor": 0.75}), "phi3")


def _smollm2_tokenizer(target):
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(smollm2_checkpoint() / file, target / file)


PHI3_ADDED = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]


def _phi3_tokenizer(target):
    """tokenizer.model (sentencepiece BPE trained on the Python docs, Llama's layout) with
    Phi-3's added tokens after its pieces, the files transformers writes for it
    (tokenizer.json, tokenizer_config.json), and added_tokens_decoder / added_tokens.json
    as Phi-3's repository carries them."""
    import transformers


    shutil.copy(spm_model("bpe_llama"), target / "tokenizer.model")
    tok = transformers.LlamaTokenizer.from_pretrained(str(target), eos_token="<|endoftext|>",
                                                      pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": PHI3_ADDED})
    tok.add_tokens(["<|placeholder1|>"])  # not special: a user-defined token
    tok.save_pretrained(str(target))
    config = json.loads((target / "tokenizer_config.json").read_text())
    added = json.loads((target / "tokenizer.json").read_text())["added_tokens"]
    config.update(add_bos_token=True, add_eos_token=False, tokenizer_class="LlamaTokenizer",
                  chat_template="{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}",
                  added_tokens_decoder={str(t["id"]): {"content": t["content"], "special": t["special"]}
                                        for t in added})
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (target / "added_tokens.json").write_text(json.dumps({t["content"]: t["id"] for t in added if t["id"] >= 1200}))


def _gemma_tokenizer(target):
    shutil.copy(spm_model("bpe_gemma"), target / "tokenizer.model")
    (target / "tokenizer_config.json").write_text(json.dumps(GEMMA_TOKENIZER_CONFIG, indent=1))


TOKENIZERS = {"phi3": _phi3_tokenizer, "gemma2": _gemma_tokenizer, "gemma3": _gemma_tokenizer}  # others: SmolLM2's


def _key(name) -> str:
    import transformers

    config_cls, model_cls, kwargs, _ = FAMILIES[name]
    text = json.dumps([config_cls, model_cls, kwargs, transformers.__version__, name in TOKENIZERS], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def build_model(name):
    """The transformers model (float32, eval mode), made afresh from its seed."""
    import torch
    import transformers

    config_cls, model_cls, kwargs, _ = FAMILIES[name]
    torch.manual_seed(11)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs)).eval()
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: perturb them too
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def cached_directory(target, fill):
    """`target`, made by `fill(part)` in a scratch directory renamed into place when complete
    (an interrupted build is redone, never reused)."""
    if not (target / ".complete").exists():
        if target.exists():
            shutil.rmtree(target)
        part = target.with_name(target.name + ".part")
        if part.exists():
            shutil.rmtree(part)
        part.mkdir(parents=True)
        fill(part)
        (part / ".complete").touch()
        part.rename(target)
    return target


@functools.cache
def family_checkpoint(name):
    """(directory, transformers model) for one family; the directory is cached."""
    model = build_model(name)
    target = CACHE / "families" / f"{name}-{_key(name)}"

    def fill(part):
        model.save_pretrained(part)
        TOKENIZERS.get(name, _smollm2_tokenizer)(part)

    cached_directory(target, fill)
    return target, model
