"""HF tokenizer.json of the SentencePiece families, read and written.

The layouts transformers writes for sentencepiece models:
- Llama 2 / Mistral (BPE with byte fallback): `Metaspace` pre-tokenizer (prepend "first",
  no split), or the legacy normalizers `Prepend("▁")` + `Replace(" ", "▁")`; decoders
  Replace(▁ -> space), ByteFallback, Fuse, Strip(one leading space);
- Gemma (BPE with byte fallback): `Replace(" ", "▁")`, a Split after each space (which
  the replacement leaves none of), decoders without Strip;
- T5 (Unigram): `Precompiled` normalizer (the sentencepiece charsmap), `WhitespaceSplit`
  then `Metaspace` (prepend "always", split), decoder Metaspace.
HF runs these stages, not sentencepiece's normalizer, so a file of this kind is encoded
the HF way (`HFLayout`): added tokens cut out of the raw text, each part normalized and
pre-tokenized as the stages say, then BPE by merge rank (HF's BPE) or Unigram Viterbi in
double precision (HF's Unigram), unknown characters as bytes with byte fallback and
runs of unknowns fused into one.
"""
import heapq
import json
import re

from .errors import TokenizerError
from .serial import hf_type
from .spm_normalize import SPACE

# char::is_whitespace of Rust (Unicode White_Space), which HF's WhitespaceSplit splits on
_WHITESPACE = re.compile("[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
REPLACEMENT = "\ufffd"


class HFLayout:
    """The stages of one tokenizer.json around a sentencepiece-style model."""

    def __init__(self, *, steps=(), prepend=False, whitespace_split=False, collapse=False,
                 metaspace=False, prepend_scheme="always", split=False, model="BPE", merges=None,
                 fuse_unk=True, byte_fallback=False, charsmap=None, split_after=None):
        self.charsmap = charsmap
        self.split_after = split_after  # Gemma's Split(" ", MergedWithPrevious): cut after each
        self.unk_id = None  # the model's unknown token id (HF's BPE may have none)
        self.normalized_tokens, self.normalized_splitter = {}, None
        self.steps = list(steps)  # the normalizers, in order: functions str -> str
        self.prepend, self.collapse = prepend, collapse
        self.whitespace_split, self.metaspace = whitespace_split, metaspace
        self.prepend_scheme, self.split = prepend_scheme, split
        self.model, self.merges = model, merges or {}
        self.fuse_unk, self.byte_fallback = fuse_unk, byte_fallback

    # ---------------------------------------------------------------- pre-processing
    def words(self, text: str, at_start: bool) -> list[str]:
        """The pieces HF's pre-tokenizer cuts one normalized part of the text into."""
        if not text:
            return []
        if self.split_after is not None:
            return [w for w in re.split(f"(?<={re.escape(self.split_after)})", text) if w]
        if self.whitespace_split:
            spans = [(m.start(), m.group()) for m in re.finditer(r"\S+", _WHITESPACE.sub(" ", text))]
        else:
            spans = [(0, text)]
        out = []
        for start, word in spans:
            if self.metaspace:
                word = word.replace(" ", SPACE)
                first = at_start and start == 0
                if (self.prepend_scheme == "always" or (self.prepend_scheme == "first" and first)) \
                        and not word.startswith(SPACE):
                    word = SPACE + word
                if self.split:
                    out += [w for w in re.split(f"(?={SPACE})", word) if w]
                    continue
            out.append(word)
        return out

    # ---------------------------------------------------------------- models
    def bpe(self, tok, word: str) -> list[int]:
        """HF's BPE on one word: characters (unknown ones as bytes or one fused unknown),
        then the lowest-ranked merge first, leftmost on ties."""
        vocab, merges = tok.vocab, self.merges
        symbols: list = []
        for ch in word:
            if ch in vocab:
                symbols.append(ch)
            elif self.byte_fallback:
                # the byte tokens the vocab has (HF drops the others, and never says unknown)
                symbols += [t for t in (f"<0x{b:02X}>" for b in ch.encode("utf-8")) if t in vocab]
            elif self.unk_id is None:
                continue
            elif symbols and self.fuse_unk and symbols[-1] is None:
                continue
            else:
                symbols.append(None)  # the unknown token
        n = len(symbols)
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        heap = []

        def add(left, right):
            if left < 0 or right < 0:
                return
            a, b = symbols[left], symbols[right]
            if a is None or b is None:
                return
            rank = merges.get((a, b))
            if rank is not None:
                heapq.heappush(heap, (rank, left, right, a, b))

        for k in range(1, n):
            add(k - 1, k)
        while heap:
            _, left, right, a, b = heapq.heappop(heap)
            if symbols[left] != a or symbols[right] != b or nxt[left] != right:
                continue
            symbols[left] = a + b
            symbols[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            add(prv[left], left)
            add(left, nxt[left])
        ids, k = [], 0 if n else -1
        while k != -1:
            s = symbols[k]
            ids.append(self.unk_id if s is None else vocab[s])
            k = nxt[k]
        return ids

    def unigram(self, tok, word: str) -> list[int]:
        """HF's Unigram on one word: Viterbi in double precision, unknown runs fused."""
        n = len(word)
        best = [0.0] * (n + 1)
        starts = [-1] * (n + 1)
        ids = [0] * (n + 1)
        get = tok.hf_scores.get
        unk_id, unk_score, max_len = self.unk_id, tok.hf_unk_score, tok.hf_max_len
        for i in range(n):
            here = best[i]
            single = False
            for length in range(1, min(max_len, n - i) + 1):
                hit = get(word[i:i + length])
                if hit is None:
                    continue
                j = i + length
                candidate = hit[1] + here
                if starts[j] == -1 or candidate > best[j]:
                    best[j], starts[j], ids[j] = candidate, i, hit[0]
                if length == 1:
                    single = True
            if not single:
                j = i + 1
                candidate = unk_score + here
                if starts[j] == -1 or candidate > best[j]:
                    best[j], starts[j], ids[j] = candidate, i, unk_id
        pieces, j = [], n
        while j > 0:
            i = starts[j]
            if ids[j] == unk_id and self.fuse_unk and pieces and pieces[-1][1] == unk_id:
                pieces[-1] = (word[i:j] + pieces[-1][0], unk_id)
            else:
                pieces.append((word[i:j], ids[j]))
            j = i
        out = []
        for piece, i in reversed(pieces):
            if i == unk_id and self.byte_fallback:
                out += [tok.vocab[t] for t in (f"<0x{b:02X}>" for b in piece.encode("utf-8")) if t in tok.vocab]
            else:
                out.append(i)
        return out

    def encode_part(self, tok, text: str, at_start: bool) -> list[int]:
        """Ids of a part of the text between raw-matched added tokens: normalized, then
        cut at the added tokens HF matches in normalized text, then pre-tokenized."""
        engine = self.bpe if self.model == "BPE" else self.unigram
        for step in self.steps:
            text = step(text)
        ids, start = [], 0
        for m in (self.normalized_splitter.finditer(text) if self.normalized_splitter is not None else ()):
            for word in self.words(text[start:m.start()], at_start and start == 0):
                ids += engine(tok, word)
            ids.append(self.normalized_tokens[m.group()])
            start = m.end()
        for word in self.words(text[start:], at_start and start == 0):
            ids += engine(tok, word)
        return ids

    def set_added_tokens(self, added: list) -> dict:
        """Split HF's added tokens: those matched in the raw text (returned, {content: id})
        and those matched in the normalized text (kept here)."""
        from .pretokenize import special_splitter

        raw = {e["content"]: e["id"] for e in added if not e.get("normalized", False)}
        # HF looks for the normalized form of these (its normalizers run on their content too)
        self.normalized_tokens = {}
        for e in added:
            if e.get("normalized", False):
                content = e["content"]
                for step in self.steps:
                    content = step(content)
                if content:
                    self.normalized_tokens[content] = e["id"]
        self.normalized_splitter = special_splitter(self.normalized_tokens)
        return raw

    # ---------------------------------------------------------------- decoding
    def decode(self, tok, ids) -> str:
        """HF's decoders: byte tokens joined into UTF-8 (U+FFFD each if invalid), ▁ read
        as a space, the first token's leading space dropped."""
        parts, pending = [], bytearray()
        for i in ids:
            token = tok.id_to_token(i)
            if token is None:
                raise tok._bad_id(i)
            b = tok.byte_value(i)
            if b is not None and self.byte_fallback:
                pending.append(b)
                continue
            if pending:
                parts.append(_bytes_text(pending))
                pending = bytearray()
            parts.append(token.replace(SPACE, " "))
        if pending:
            parts.append(_bytes_text(pending))
        text = "".join(parts)
        if self.prepend_scheme != "never" and self.metaspace or self.prepend:
            if text.startswith(" "):
                text = text[1:]
        return text


def _bytes_text(data: bytes) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return REPLACEMENT * len(data)


# ---------------------------------------------------------------------------- reading
def layout_of(doc: dict, model: dict, name: str) -> "HFLayout | None":
    """The layout of a tokenizer.json, None when it is not a sentencepiece family file."""
    mtype = model.get("type")
    norm, pre = doc.get("normalizer"), doc.get("pre_tokenizer")
    if mtype == "BPE" and not model.get("byte_fallback") and hf_type(pre) != "Metaspace" \
            and not _legacy_normalizer(norm):
        return None  # a byte-level or character BPE: other kinds read it
    if model.get("dropout"):
        raise TokenizerError(f"{name}: BPE dropout is sampling, which convkit does not do (it encodes the one "
                             f"best segmentation): set dropout to null")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise TokenizerError(f"{name}: BPE with {key} is not a sentencepiece layout and is not supported")
    opts = {"model": mtype, "byte_fallback": bool(model.get("byte_fallback")),
            "fuse_unk": bool(model.get("fuse_unk", mtype == "Unigram"))}
    opts["steps"] = steps = []
    for step in norm.get("normalizers") if hf_type(norm) == "Sequence" else ([norm] if norm else []):
        steps.append(_normalizer_step(step, opts, mtype, name))
    pres = pre.get("pretokenizers") if hf_type(pre) == "Sequence" else ([pre] if pre else [])
    for step in pres:
        kind = hf_type(step)
        if kind == "WhitespaceSplit":
            opts["whitespace_split"] = True
        elif kind == "Split" and len(pres) == 1 and isinstance((step.get("pattern") or {}).get("String"), str) \
                and step.get("behavior") == "MergedWithPrevious" and not step.get("invert") and step["pattern"]["String"]:
            opts["split_after"] = step["pattern"]["String"]
        elif kind == "Metaspace" and step.get("replacement", SPACE) == SPACE:
            opts["metaspace"] = True
            scheme = step.get("prepend_scheme")
            if scheme is None:  # older files: add_prefix_space
                scheme = "always" if step.get("add_prefix_space", True) else "never"
            opts["prepend_scheme"] = scheme
            opts["split"] = bool(step.get("split", True))
        else:
            raise TokenizerError(f"{name}: pre-tokenizer {kind!r} is not supported with a {mtype} sentencepiece "
                                 f"model (Metaspace, WhitespaceSplit)")
    return HFLayout(**opts)


def _normalizer_step(step: dict, opts: dict, mtype: str, name: str):
    """One HF normalizer of these layouts as a function on text."""
    kind = hf_type(step)
    if kind == "Prepend" and isinstance(step.get("prepend"), str):
        prefix = step["prepend"]
        opts["prepend"] = True
        return lambda text: prefix + text if text else text
    if kind == "Replace" and isinstance(step.get("content"), str) and isinstance(step.get("pattern"), dict):
        pattern, content = step["pattern"], step["content"]
        if isinstance(pattern.get("String"), str):
            old = pattern["String"]
            return lambda text: text.replace(old, content)
        if pattern.get("Regex") == " {2,}":
            opts["collapse"] = True
            return lambda text: _SPACE_RUNS.sub(content, text)
    if kind == "Strip":
        left, right = step.get("strip_left", True), step.get("strip_right", True)
        return lambda text: _strip(text, left, right)
    if kind == "Precompiled":
        import base64

        from .spm_normalize import read_charsmap
        blob = step.get("precompiled_charsmap") or ""
        try:
            data = base64.b64decode(blob, validate=True) if isinstance(blob, str) else bytes(blob)
        except ValueError:
            raise TokenizerError(f"{name}: the Precompiled normalizer's charsmap is not base64") from None
        opts["charsmap"] = data
        return PrecompiledHF(read_charsmap(data, name))
    raise TokenizerError(f"{name}: normalizer {json.dumps(step)[:80]} is not supported with a {mtype} sentencepiece "
                         f"model (Precompiled, Prepend, Replace of a space or of space runs, Strip)")


_SPACE_RUNS = re.compile(" {2,}")


class PrecompiledHF:
    """HF's Precompiled normalizer, which is not sentencepiece's: it walks the text by
    grapheme cluster; a cluster under 6 bytes that some rule's source begins is replaced
    whole by the value of the shortest such rule, any other character by its own rule.
    Clusters here: CR LF, or a character and the combining marks, joiners and variation
    selectors after it (the clusters that can be that short)."""

    def __init__(self, rules: dict):
        self.rules = rules
        self.table = {ord(k): v for k, v in rules.items() if len(k) == 1}
        self.max_len = max(map(len, rules), default=1)
        self.cluster = re.compile(f"\r\n|[^\r\n][{_extenders()}]+")

    def __call__(self, text: str) -> str:
        out, pos = [], 0
        for m in self.cluster.finditer(text):
            g = m.group()
            if len(g.encode("utf-8")) >= 6:
                continue
            hit = next((self.rules[g[:k]] for k in range(1, min(len(g), self.max_len) + 1) if g[:k] in self.rules),
                       None)
            if hit is None:
                continue
            out.append(text[pos:m.start()].translate(self.table))
            out.append(hit)
            pos = m.end()
        out.append(text[pos:].translate(self.table))
        return "".join(out)


_EXTENDERS = None


def _extenders() -> str:
    """A regex class of the characters that extend a grapheme cluster (marks, ZWJ, VS)."""
    global _EXTENDERS
    if _EXTENDERS is None:
        import unicodedata
        marks = [c for c in map(chr, range(0x300, 0x110000))
                 if not 0xD800 <= ord(c) < 0xE000 and unicodedata.category(c) in ("Mn", "Mc", "Me")]
        _EXTENDERS = "".join(re.escape(c) for c in marks) + "\u200d"
    return _EXTENDERS


def _strip(text: str, left: bool, right: bool) -> str:
    if left:
        text = _WHITESPACE_START.sub("", text)
    if right:
        text = _WHITESPACE_END.sub("", text)
    return text


_WS_CLASS = "[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
_WHITESPACE_START = re.compile(f"^{_WS_CLASS}+")
_WHITESPACE_END = re.compile(f"{_WS_CLASS}+$")


def _legacy_normalizer(norm) -> bool:
    steps = norm.get("normalizers") if hf_type(norm) == "Sequence" else ([norm] if norm else [])
    return any(hf_type(s) in ("Prepend", "Precompiled") for s in steps)


# ---------------------------------------------------------------------------- writing
def _metaspace(scheme: str, split: bool) -> dict:
    return {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": scheme, "split": split}


def hf_document(tok) -> dict:
    """The tokenizer.json stages and model of a sentencepiece model, as transformers'
    converters write them: BPE with merges from the piece scores (every split of a piece
    into two pieces, best-scored piece first) or Unigram with the scores; byte fallback;
    Precompiled for the charsmap; WhitespaceSplit where sentencepiece folds whitespace."""
    from . import spm_proto as proto

    if tok.hf is not None and getattr(tok.hf, "stages", None) is not None:
        out = dict(tok.hf.stages)
        out["model"] = tok.hf.model_doc
        return out
    norm = tok.model.get("normalizer_spec", {})
    dummy = proto.field(norm, "add_dummy_prefix")
    charsmap = proto.field(norm, "precompiled_charsmap")
    if not proto.field(norm, "escape_whitespaces"):
        raise TokenizerError("a sentencepiece model that does not escape whitespace has no tokenizer.json form")
    if proto.field(tok.model.get("trainer_spec", {}), "treat_whitespace_as_suffix"):
        raise TokenizerError("a sentencepiece model with whitespace as suffix has no tokenizer.json form")
    # sentencepiece's normalization as HF normalizers: the charsmap, whitespace runs folded
    # and the ends stripped, the dummy prefix, spaces as ▁; the pre-tokenizer only cuts
    # words at ▁ (unless pieces hold ▁ inside them, which BPE may then join across)
    steps = []
    if charsmap:
        import base64
        steps.append({"type": "Precompiled", "precompiled_charsmap": base64.b64encode(charsmap).decode("ascii")})
    if proto.field(norm, "remove_extra_whitespaces"):
        steps += [{"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
                  {"type": "Strip", "strip_left": True, "strip_right": True}]
    if dummy:
        steps.append({"type": "Prepend", "prepend": SPACE})
    steps.append({"type": "Replace", "pattern": {"String": " "}, "content": SPACE})
    normalizer = {"type": "Sequence", "normalizers": steps}
    inner = any(SPACE in p[1:] for p, t in zip(tok.pieces, tok.types)
                if t in (proto.NORMAL, proto.USER_DEFINED))
    pre = None if inner else _metaspace("never", True)
    decoders = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]
    if dummy:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    added = []
    for i, (piece, t) in enumerate(zip(tok.pieces, tok.types)):
        if t in (proto.CONTROL, proto.UNKNOWN, proto.USER_DEFINED):
            added.append({"id": i, "content": piece, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": t != proto.USER_DEFINED})
    unk = tok.pieces[tok.unk_id] if tok.unk_id is not None else None
    if tok.model_type == "unigram":
        model = {"type": "Unigram", "unk_id": tok.unk_id, "vocab": [[p, s] for p, s in zip(tok.pieces, tok.scores)],
                 "byte_fallback": tok.byte_fallback}
    else:
        model = {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": tok.byte_fallback,
                 "ignore_merges": False, "vocab": {p: i for i, p in enumerate(tok.pieces)},
                 "merges": [list(m) for m in bpe_merges(tok)]}
    return {"added_tokens": added, "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": None,
            "decoder": {"type": "Sequence", "decoders": decoders}, "model": model}


def bpe_merges(tok) -> list[tuple[str, str]]:
    """Merges for HF's BPE from sentencepiece's scored pieces: each piece that
    segmentation may produce, split every way into two such pieces; pieces by score
    (best first, then id), the splits of one piece by the ids of their halves."""
    from . import spm_proto as proto

    joinable = {p: i for p, i in tok.vocab.items() if tok.types[i] in (proto.NORMAL, proto.USER_DEFINED)}
    merges = []
    for piece, i in sorted(joinable.items(), key=lambda kv: (-tok.scores[kv[1]], kv[1])):
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in joinable and piece[k:] in joinable]
        local.sort(key=lambda ab: (joinable[ab[0]], joinable[ab[1]]))
        merges += local
    return merges
