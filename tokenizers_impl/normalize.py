"""BERT's normalizer and pre-tokenizer, character for character as HF tokenizers does them.

Normalizer steps, in this order, each optional:
1. clean text: drop NUL, U+FFFD and control characters (categories Cc, Cf, Co, except
   tab, newline and carriage return), then turn every whitespace character into ' '
2. CJK: put spaces around every CJK ideograph so each becomes a word of its own
3. strip accents: NFD, then drop non-spacing marks (on by default when lowercasing)
4. lowercase: character by character (no final-sigma rule, unlike str.lower)

Pre-tokenizer: split on whitespace (dropped), then cut every punctuation character
(ASCII punctuation and Unicode P*) into a word of its own.

Every step is a regex substitution or a str method over the whole text, never a
Python loop over characters. Character classes are in bert_unicode.py.
"""
import functools
import re
import unicodedata
from dataclasses import asdict, dataclass

from . import bert_unicode as tables

# Rust's char::is_whitespace: the Unicode White_Space property
WHITESPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
              (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
              (0x3000, 0x3000)]
# the ideograph blocks BERT calls Chinese characters (not Hangul, Hiragana or Katakana)
CJK = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
       (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]
# Cc without tab/newline/CR, Co, NUL and U+FFFD; Cf comes from the table
CONTROL = [(0x00, 0x08), (0x0B, 0x0C), (0x0E, 0x1F), (0x7F, 0x9F), (0xE000, 0xF8FF),
           (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD), (0xFFFD, 0xFFFD)]
ASCII_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def _esc(cp: int) -> str:
    return f"\\U{cp:08x}"


def _class(ranges, negate: bool = False, astral: bool = True) -> str:
    """A regex matching one character in (or, negated, outside) the code point ranges.

    Python's re looks up characters below U+10000 in a table but tests code points past
    it range by range, for every character it tries. So each class comes in two forms:
    for text without such characters (astral=False) a plain table lookup, otherwise a
    table lookup with the ranges past U+FFFF tried only on characters past U+FFFF."""
    bmp = [(lo, min(hi, 0xFFFF)) for lo, hi in ranges if lo <= 0xFFFF]
    far = [(max(lo, 0x10000), hi) for lo, hi in ranges if hi > 0xFFFF]
    body = "".join(_esc(lo) if lo == hi else f"{_esc(lo)}-{_esc(hi)}" for lo, hi in bmp)
    rest = "".join(_esc(lo) if lo == hi else f"{_esc(lo)}-{_esc(hi)}" for lo, hi in far)
    plane = f"{_esc(0x10000)}-{_esc(0x10FFFF)}"
    if not astral:
        return f"[^{body}]" if negate else (f"[{body}]" if body else "(?!)")
    if negate:
        head = f"[^{body}{plane}]"
        return f"(?:{head}|(?=[{plane}])[^{rest}])" if rest else f"(?:{head}|[{plane}])"
    if not rest:
        return f"[{body}]"
    return f"(?:[{body}]|(?=[{plane}])[{rest}])" if body else f"[{rest}]"


@functools.cache
def _regexes(astral: bool) -> dict:
    """The normalizer's and pre-tokenizer's regexes, for text with or without characters past U+FFFF."""
    ascii_punct = [(ord(c), ord(c)) for c in ASCII_PUNCTUATION]
    punct = ascii_punct + tables.parse_ranges(tables.PUNCTUATION)
    extra = [(cp, cp) for cp in _lowercase_extra()]
    return {
        "control": re.compile(_class(CONTROL + tables.parse_ranges(tables.FORMAT), astral=astral) + "+"),
        "space": re.compile(_class(WHITESPACE, astral=astral)),
        "cjk": re.compile(_class(CJK, astral=astral)),
        "mark": re.compile(_class(tables.parse_ranges(tables.NONSPACING_MARK), astral=astral) + "+"),
        "no_nfd": re.compile(_class(tables.parse_ranges(tables.NO_DECOMPOSITION), astral=astral)),
        "lower_extra": re.compile(_class(extra, astral=astral)),
        "words": re.compile(f"{_class(punct, astral=astral)}|{_class(punct + WHITESPACE, True, astral)}+"),
    }


_ASTRAL = re.compile(f"[{_esc(0x10000)}-{_esc(0x10FFFF)}]")
_ASCII_CONTROL = re.compile("[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]+")
_ASCII_SPACE = re.compile("[\\t\\n\\r]")


def _rx(text: str) -> dict:
    return _regexes(_ASTRAL.search(text) is not None)


@functools.cache
def _lowercase_extra() -> dict:
    return {k: v for k, v in tables.LOWERCASE_EXTRA.items() if chr(k).lower() == chr(k)}


def _nfd(text: str) -> str:
    """NFD, leaving alone the few characters HF's normalization tables do not decompose."""
    rx = _rx(text)["no_nfd"]
    if rx.search(text) is None:
        return unicodedata.normalize("NFD", text)
    parts, start = [], 0
    for m in rx.finditer(text):
        parts += [unicodedata.normalize("NFD", text[start:m.start()]), m.group()]
        start = m.end()
    return "".join(parts) + unicodedata.normalize("NFD", text[start:])


def lowercase(text: str) -> str:
    """Each character lowercased on its own, as Rust's char::to_lowercase does it."""
    text = text.replace("\u03a3", "\u03c3").lower()  # str.lower would make a final sigma
    if not text.isascii() and _rx(text)["lower_extra"].search(text):
        text = text.translate(_lowercase_extra())
    return text


@dataclass(frozen=True)
class BertNormalizer:
    clean_text: bool = True
    handle_chinese_chars: bool = True
    strip_accents: bool | None = None  # None: follow lowercase, as BERT does
    lowercase: bool = True

    def normalize(self, text: str) -> str:
        if text.isascii():
            if self.clean_text:
                text = _ASCII_SPACE.sub(" ", _ASCII_CONTROL.sub("", text))
            return text.lower() if self.lowercase else text
        rx = _rx(text)
        if self.clean_text:
            text = rx["space"].sub(" ", rx["control"].sub("", text))
        if self.handle_chinese_chars:
            text = rx["cjk"].sub(r" \g<0> ", text)
        if self.strip_accents if self.strip_accents is not None else self.lowercase:
            text = rx["mark"].sub("", _nfd(text))
        if self.lowercase:
            text = lowercase(text)
        return text

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BertNormalizer":
        return cls(**{k: d[k] for k in ("clean_text", "handle_chinese_chars", "strip_accents", "lowercase") if k in d})


def bert_pretokenize(text: str) -> list[str]:
    """Whitespace-separated words with every punctuation character cut out on its own."""
    return _rx(text)["words"].findall(text)
