"""Pre-tokenizers: split text into the pieces BPE works inside.

Presets (HF tokenizers / tiktoken patterns; \\p{L}, \\p{N}, \\s from unicode_classes):
- gpt2:   's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
- llama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|
          ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+
- smollm: every numeric character alone (HF Digits(individual_digits=True)), then gpt2
          on the text between them
- whitespace: \\w+|[^\\w\\s]+ (HF Whitespace; whitespace is dropped)

`pretokenize` uses the compiled helper when it is built; `pretokenize_reference` is the
same thing with the standard library's `re`, kept as the readable definition.
"""
import functools
import re

from . import unicode_classes as uc
from .errors import TokenizerError

try:
    from . import _bpe
except ImportError:  # the compiled helper is optional
    _bpe = None

PRESETS = {"gpt2": 0, "llama3": 1, "smollm": 2, "whitespace": 3}


def preset_id(name: str) -> int:
    if name not in PRESETS:
        raise TokenizerError(f"unknown pre-tokenizer {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[name]


@functools.cache
def _patterns() -> dict:
    Lc, Nc, Sc, Wc = (uc.char_class(b) for b in (uc.L, uc.N, uc.WS, uc.W))
    L, N, S = f"[{Lc}]", f"[{Nc}]", f"[{Sc}]"
    spaces = f"{S}+(?![^{Sc}])|{S}+"
    gpt2 = f"'s|'t|'re|'ve|'m|'ll|'d| ?{L}+| ?{N}+| ?[^{Sc}{Lc}{Nc}]+|{spaces}"
    llama3 = (f"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n{Lc}{Nc}]?{L}+|{N}{{1,3}}"
              f"| ?[^{Sc}{Lc}{Nc}]+[\\r\\n]*|{S}*[\\r\\n]+|{spaces}")
    return {
        "gpt2": re.compile(gpt2),
        "llama3": re.compile(llama3),
        "numeric": re.compile(N),
        "whitespace": re.compile(f"[{Wc}]+|[^{Wc}{Sc}]+"),
    }


def pretokenize_reference(text: str, preset: str = "gpt2") -> list[str]:
    preset_id(preset)
    pats = _patterns()
    if preset != "smollm":
        return pats[preset].findall(text)
    pieces, start = [], 0
    for m in pats["numeric"].finditer(text):
        pieces += pats["gpt2"].findall(text[start:m.start()])
        pieces.append(m.group())
        start = m.end()
    return pieces + pats["gpt2"].findall(text[start:])


def pretokenize(text: str, preset: str = "gpt2") -> list[str]:
    pid = preset_id(preset)
    if _bpe is None:
        return pretokenize_reference(text, preset)
    return _bpe.pretokenize(text, uc.class_table(), pid)


def count_pieces(text: str, preset: str, counts: dict) -> None:
    """counts[piece] += 1 for every piece of text (the trainers' word counting)."""
    pid = preset_id(preset)
    if _bpe is not None:
        _bpe.count_words(text, uc.class_table(), pid, counts)
        return
    for piece in pretokenize_reference(text, preset):
        counts[piece] = counts.get(piece, 0) + 1


def special_splitter(special_tokens) -> "re.Pattern | None":
    """A regex that finds special tokens, longest first, so they are never split."""
    tokens = sorted(special_tokens, key=lambda t: (-len(t), t))
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in tokens))
