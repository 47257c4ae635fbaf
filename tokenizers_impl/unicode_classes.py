"""One byte of character classes per code point, the only Unicode data the pre-tokenizers use.

Bits: L = letter (\\p{L}), N = number (\\p{N}), WS = whitespace (Unicode White_Space, what
the Rust/Oniguruma regexes of HF tokenizers call \\s), CRLF = \\r or \\n, W = word
character of HF's Whitespace pre-tokenizer (\\w: alphabetic, marks, decimal digits,
connector punctuation, joiners). Categories come from this Python's unicodedata.
"""
import functools
import unicodedata

L, N, WS, CRLF, W = 1, 2, 4, 8, 16
TABLE_SIZE = 0x110000

WHITE_SPACE = [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
               0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
# alphabetic symbols outside L/Nl/M (Other_Alphabetic in category So): circled letters
_OTHER_ALPHABETIC = [*range(0x24B6, 0x24EA), *range(0x1F130, 0x1F14A), *range(0x1F150, 0x1F16A),
                     *range(0x1F170, 0x1F18A)]
# everything past these is unassigned, private use or tags (no letters or numbers)
_SCAN = [range(0, 0x32400), range(0xE0000, 0xE0200)]


def _category_bits(cat: str) -> int:
    if cat[0] == "L":
        return L | W
    if cat[0] == "N":
        return N | (W if cat in ("Nd", "Nl") else 0)
    return W if cat[0] == "M" or cat == "Pc" else 0


_CATEGORIES = [a + b for a, bs in (("L", "ultmo"), ("M", "nce"), ("N", "dlo"), ("P", "cdseifo"),
                                   ("S", "mcko"), ("Z", "slp"), ("C", "cfson")) for b in bs]


@functools.cache
def class_table() -> bytes:
    bits = {cat: _category_bits(cat) for cat in _CATEGORIES}
    table = bytearray(TABLE_SIZE)
    for block in _SCAN:
        table[block.start:block.stop] = bytes(map(bits.__getitem__, map(unicodedata.category, map(chr, block))))
    for cp in WHITE_SPACE:
        table[cp] |= WS
    for cp in _OTHER_ALPHABETIC:
        table[cp] |= W
    table[0x200C] |= W  # zero-width non-joiner / joiner
    table[0x200D] |= W
    table[0x0A] |= CRLF
    table[0x0D] |= CRLF
    return bytes(table)


@functools.cache
def char_class(bits: int) -> str:
    """The code points having any of `bits`, as the inside of a `re` character class."""
    table = class_table()
    parts, cp = [], 0
    while cp < TABLE_SIZE:
        if table[cp] & bits:
            start = cp
            while cp + 1 < TABLE_SIZE and table[cp + 1] & bits:
                cp += 1
            parts.append(_esc(start) if start == cp else f"{_esc(start)}-{_esc(cp)}")
        cp += 1
    return "".join(parts)


def _esc(cp: int) -> str:
    return f"\\U{cp:08x}"
