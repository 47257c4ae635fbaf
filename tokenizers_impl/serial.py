"""Pieces of tokenizer.json and GGUF vocab metadata that several kinds write alike."""
import json

from .errors import TokenizerError

# HF's Split pattern of the Llama 3 pre-tokenizer (the `llama3` preset)
LLAMA3_PATTERN = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
                  " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
# llama.cpp's names for our pre-tokenizer presets (tokenizer.ggml.pre)
GGUF_PRE = {"gpt2": "gpt-2", "llama3": "llama-bpe", "smollm": "smollm"}

# llama.cpp's token types (gguf.TokenType)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


def by_id(vocab: dict) -> dict:
    return dict(sorted(vocab.items(), key=lambda kv: kv[1]))


def hf_type(node) -> str | None:
    return node.get("type") if isinstance(node, dict) else None


def added_tokens(tok) -> list:
    """Our special tokens as HF added tokens (matched in the raw text, never normalized)."""
    return [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for t, i in by_id(tok.special_tokens).items()]


def bpe_model(tok, unk_token) -> dict:
    vocab = dict(tok.vocab)
    for t, i in tok.special_tokens.items():
        vocab.setdefault(t, i)
    return {"type": "BPE", "dropout": None, "unk_token": unk_token, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": by_id(vocab), "merges": [list(m) for m in tok.merges]}


def byte_level(use_regex: bool, trim_offsets: bool = True) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": trim_offsets, "use_regex": use_regex}


def hf_pretokenizer(preset: str) -> dict:
    if preset == "gpt2":
        return byte_level(True)
    if preset == "llama3":
        split = {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False}
        return {"type": "Sequence", "pretokenizers": [split, byte_level(False)]}
    if preset == "smollm":
        return {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                      byte_level(True)]}
    raise TokenizerError(f"pre-tokenizer {preset!r} has no tokenizer.json form")


def bytelevel_preset(pre, name: str) -> str | None:
    """Our preset for an HF byte-level pre-tokenizer, None if it is not byte-level."""
    def is_byte_level(node, use_regex):
        return (hf_type(node) == "ByteLevel" and not node.get("add_prefix_space", False)
                and node.get("use_regex", True) == use_regex)
    if hf_type(pre) == "ByteLevel":
        if is_byte_level(pre, True):
            return "gpt2"
    elif hf_type(pre) == "Sequence":
        steps = pre.get("pretokenizers") or []
        if len(steps) == 2 and hf_type(steps[0]) == "Digits" and steps[0].get("individual_digits") \
                and is_byte_level(steps[1], True):
            return "smollm"
        if len(steps) == 2 and hf_type(steps[0]) == "Split" and is_byte_level(steps[1], False) \
                and (steps[0].get("pattern") or {}).get("Regex") == LLAMA3_PATTERN \
                and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert"):
            return "llama3"
    else:
        return None
    raise TokenizerError(f"{name}: byte-level pre-tokenizer {json.dumps(pre)[:120]} is not one of ours "
                         f"(gpt2, llama3, smollm)")


def gguf_token_table(tok) -> tuple[dict, list, list]:
    """(vocab with specials, tokens by id, types by id) for tokenizer.ggml.tokens / token_type;
    ids no token holds become unused [PADn] entries."""
    vocab = dict(tok.vocab)
    for t, i in tok.special_tokens.items():
        vocab.setdefault(t, i)
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [TOKEN_UNUSED] * size
    for t, i in vocab.items():
        tokens[i] = t
        types[i] = TOKEN_CONTROL if t in tok.special_tokens else TOKEN_NORMAL
    return vocab, tokens, types


def gguf_special_ids(meta: dict, vocab: dict, ids: dict) -> None:
    """tokenizer.ggml.<role>_token_id for the first name of each role that the vocab holds."""
    for role, names in ids.items():
        hit = next((vocab[n] for n in names if n in vocab), None)
        if hit is not None:
            meta[f"tokenizer.ggml.{role}_token_id"] = hit


BPE_OPTIONS = ("continuing_subword_prefix", "end_of_word_suffix", "byte_fallback", "ignore_merges", "dropout")


def plain_bpe(doc: dict, model: dict) -> bool:
    """A tokenizer.json BPE without options or a normalizer (what our BPE kinds read)."""
    return not any(model.get(k) for k in BPE_OPTIONS) and doc.get("normalizer") is None
