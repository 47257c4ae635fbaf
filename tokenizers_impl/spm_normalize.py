"""SentencePiece's normalizer: the precompiled character map in the model, and the
whitespace rules of its NormalizerSpec.

The map (`precompiled_charsmap`) is a 4-byte little-endian length, a double-array trie
(darts-clone: 32-bit units) over the UTF-8 bytes of each source string, then the
replacement strings, NUL-terminated, that the trie's values point into. sentencepiece
replaces, at each position, the longest source string that starts there (a user-defined
piece that starts there wins over any rule and is kept as it is); a character no rule
covers stays. We read every rule out of the trie once and then apply the same longest
match with Python's string machinery.
"""
import re

import numpy as np

from .errors import TokenizerError

try:
    from . import _spm
except ImportError:  # the compiled helper is optional
    _spm = None

SPACE = "\u2581"  # sentencepiece's visible space


def read_charsmap(blob: bytes, name: str = "tokenizer.model") -> dict[str, str]:
    """{source: replacement} for every rule of a precompiled charsmap."""
    if not blob:
        return {}
    if len(blob) <= 4:
        raise TokenizerError(f"{name}: the normalization rules (precompiled_charsmap) are broken")
    size = int.from_bytes(blob[:4], "little")
    if size >= len(blob) or size % 4:
        raise TokenizerError(f"{name}: the normalization trie claims {size} bytes of a {len(blob)}-byte charsmap; "
                             f"the model is damaged")
    units = np.frombuffer(blob, dtype="<u4", count=size // 4, offset=4).astype(np.int64)
    normalized = blob[4 + size:]
    if len(units) == 0:
        return {}
    n = len(units)
    offset = (units >> 10) << ((units & (1 << 9)) >> 6)
    has_leaf = ((units >> 8) & 1).tolist()
    value = (units & ((1 << 31) - 1)).tolist()
    bases = (np.arange(n, dtype=np.int64) ^ offset).tolist()
    # a node's children are the units at base ^ c whose label is c; group every unit
    # with a byte label under the base it would be the child of
    label = units & 0xFF
    inner = np.flatnonzero(((units >> 31) == 0) & (label != 0))
    children: dict = {}
    for i, c in zip(inner.tolist(), label[inner].tolist()):
        children.setdefault(i ^ c, []).append((i, c))
    rules: dict[str, str] = {}
    # darts-clone shares common suffixes (the trie is a DAG), so a node may be reached
    # by several keys; a damaged file could hold a cycle, hence the bounds
    stack = [(0, b"")]
    seen, limit = 0, 50 * n + 100_000
    while stack:
        node, key = stack.pop()
        seen += 1
        if seen > limit or len(key) > 256:
            raise TokenizerError(f"{name}: the normalization trie has a cycle; the model is damaged")
        base = bases[node]
        if key and has_leaf[node]:
            if not 0 <= base < n:
                raise TokenizerError(f"{name}: the normalization trie points outside itself; the model is damaged")
            start = value[base]
            end = normalized.find(b"\0", start)
            if start > len(normalized) or end < 0:
                raise TokenizerError(f"{name}: a normalization rule points outside the charsmap; "
                                     f"the model is damaged")
            try:
                rules[key.decode("utf-8")] = normalized[start:end].decode("utf-8")
            except UnicodeDecodeError:
                raise TokenizerError(f"{name}: a normalization rule is not UTF-8; the model is damaged") from None
        for child, c in children.get(base, ()):
            stack.append((child, key + bytes((c,))))
    return rules


class Normalizer:
    """NormalizerSpec: rules, add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces
    (and the trainer's treat_whitespace_as_suffix, which moves the dummy space to the end)."""

    def __init__(self, rules: dict, add_dummy_prefix=True, remove_extra_whitespaces=True,
                 escape_whitespaces=True, treat_whitespace_as_suffix=False, user_defined=()):
        self.rules = rules
        self.add_dummy_prefix = add_dummy_prefix
        self.remove_extra_whitespaces = remove_extra_whitespaces
        self.escape_whitespaces = escape_whitespaces
        self.suffix = treat_whitespace_as_suffix
        users = sorted(set(user_defined), key=lambda k: (-len(k), k))
        self._users = set(users)
        # one-character rules go through str.translate. Longer sources (NFKC's
        # compositions such as "A" + U+0301) all start with a character of `firsts`
        # followed by one of `seconds` (combining marks, jamo): a lookahead for that pair
        # finds the few places to try them, longest first. User pieces win over any rule.
        self._table = {ord(k): v for k, v in rules.items() if len(k) == 1}
        self._multi = {k: v for k, v in rules.items() if len(k) > 1}
        self._max_len = max(map(len, self._multi), default=1)
        alternatives = []
        if users:
            alternatives.append("(?=(?P<u>" + "|".join(map(re.escape, users)) + "))")
        if self._multi:
            firsts = "".join(sorted({k[0] for k in self._multi}))
            seconds = "".join(sorted({k[1] for k in self._multi}))
            alternatives.append(f"(?=[{_char_class(firsts)}][{_char_class(seconds)}])")
        self._regex = re.compile("|".join(alternatives)) if alternatives else None
        # sentencepiece drops spaces only where one replaced piece meets the next, so
        # collapsing every run of spaces is the same thing unless a piece itself holds
        # two spaces in a row; then the piece-by-piece path runs
        self._collapse_exact = not any("  " in v for v in rules.values()) and not any("  " in u for u in users)
        self._compiled = None
        if _spm is not None and (rules or users):
            sources = list(rules)
            self._compiled = (_spm.Trie([k.encode("utf-8") for k in sources], list(range(len(sources)))),
                              [rules[k].encode("utf-8") for k in sources],
                              _spm.Trie([u.encode("utf-8") for u in users], [1] * len(users)) if users else None)

    def replaced(self, text: str) -> str:
        """text with every rule applied (user pieces kept): the pieces joined."""
        if self._compiled is not None:
            trie, replacements, users = self._compiled
            return _spm.apply_rules(trie, replacements, users, text.encode("utf-8")).decode("utf-8")
        return "".join(self.pieces(text))

    def pieces(self, text: str):
        """The replaced pieces of text in order (runs of unchanged characters together)."""
        table = self._table
        for is_run, part in self._segments(text):
            yield part.translate(table) if is_run else part

    def _segments(self, text: str):
        """(True, run of text that only one-character rules touch) or (False, replacement)."""
        if self._regex is None:
            yield True, text
            return
        pos, n, multi = 0, len(text), self._multi
        for m in self._regex.finditer(text):
            i = m.start()
            if i < pos:
                continue
            user = m.group("u") if self._users else None
            if user:
                if i > pos:
                    yield True, text[pos:i]
                yield False, user
                pos = i + len(user)
                continue
            for length in range(min(self._max_len, n - i), 1, -1):
                hit = multi.get(text[i:i + length])
                if hit is not None:
                    if i > pos:
                        yield True, text[pos:i]
                    yield False, hit
                    pos = i + length
                    break
        if pos < n:
            yield True, text[pos:]

    def normalize(self, text: str) -> str:
        if not text:
            return ""
        if not self.remove_extra_whitespaces:
            body = self.replaced(text)
        elif self._collapse_exact:
            body = _SPACES.sub(" ", self.replaced(text)).strip(" ")
        else:
            body = self._collapse_by_piece(text)
        if self.remove_extra_whitespaces and not body:
            return ""
        space = " "
        if self.escape_whitespaces:
            body, space = body.replace(" ", SPACE), SPACE
        if self.add_dummy_prefix and not self.suffix:
            body = space + body
        if self.remove_extra_whitespaces:
            body = body.rstrip(space)
        if self.add_dummy_prefix and self.suffix:
            body += space
        return body

    def _collapse_by_piece(self, text: str) -> str:
        """sentencepiece's whitespace cleanup, one replaced character at a time."""
        out, prev_space = [], True
        for piece in self._char_pieces(text):
            if prev_space:
                piece = piece.lstrip(" ")
            if piece:
                out.append(piece)
                prev_space = piece.endswith(" ")
        return "".join(out).rstrip(" ")

    def _char_pieces(self, text: str):
        get = self._table.get
        for is_run, part in self._segments(text):
            if is_run:
                for ch in part:
                    yield get(ord(ch), ch)
            else:
                yield part


_SPACES = re.compile(" {2,}")


def _char_class(chars: str) -> str:
    """chars as the inside of a regex character class."""
    return "".join("\\" + c if c in "\\]^-[" else c for c in chars)
