"""SentencePiece models (Unigram and BPE, with or without byte fallback), encoded and
decoded as `sentencepiece.SentencePieceProcessor` does.

The model is sentencepiece's ModelProto (spm_proto.py): pieces with scores and types,
the trainer's settings and the normalizer's. Encoding:
1. normalize (spm_normalize.py): the precompiled character map, whitespace cleanup,
   `▁` for spaces and a dummy `▁` in front;
2. segment the normalized string as a whole:
   - Unigram: Viterbi over the piece scores, as sentencepiece's optimized encoder does
     it, float32 path scores included (long inputs round their sums the same way);
     user-defined pieces get a bonus so that they always win, a character no piece
     covers becomes the unknown piece;
   - BPE: start from characters (user-defined pieces whole and frozen), repeatedly join
     the adjacent pair whose join is the piece with the highest score (leftmost on
     ties); joins through unused pieces are split back afterwards;
3. unknown pieces become their UTF-8 bytes (`<0xNN>` pieces) with byte fallback,
   otherwise one unknown id per run of unknown characters.
Sampling (subword regularization, BPE dropout) is not offered: encoding is the one
best segmentation.
"""
import base64
import heapq
from array import array

from . import spm_proto as proto
from .base import Tokenizer, register
from .errors import TokenizerError
from .spm_normalize import SPACE, Normalizer, read_charsmap

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = (proto.NORMAL, proto.UNKNOWN, proto.CONTROL,
                                                       proto.USER_DEFINED, proto.UNUSED, proto.BYTE)
FLT_MAX = 3.4028234663852886e38
FLT_MIN = 1.1754943508222875e-38
UNK_PENALTY = 10.0
RESET = 100000.0  # sentencepiece rebases path scores beyond this size
REPLACEMENT = "\ufffd"


def f32(x: float) -> float:
    """x rounded to float32 (as sentencepiece stores scores)."""
    _F32[0] = x
    return _F32[0]


_F32 = array("f", [0.0])


def compiled() -> bool:
    """Whether the compiled helper (_spm) is there to run the hot loops."""
    return _spm is not None


try:
    from . import _spm
except ImportError:  # the compiled helper is optional
    _spm = None


def byte_piece(b: int) -> str:
    return f"<0x{b:02X}>"


def piece_byte(piece: str) -> int:
    """The byte of a `<0xNN>` piece, -1 for any other piece."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            b = int(piece[3:5], 16)
        except ValueError:
            return -1
        return b if byte_piece(b) == piece else -1
    return -1


@register
class SentencePiece(Tokenizer):
    kind = "sentencepiece"
    hf_models = ("BPE", "Unigram")

    def __init__(self, model: dict, name: str = "tokenizer.model", special_tokens: dict | None = None,
                 hf=None, hf_merges=None):
        """model: a ModelProto as spm_proto reads it. special_tokens: tokens cut out of the
        raw text before normalization (HF's added tokens; sentencepiece itself has none).
        hf: an spm_hf.HFLayout when the model came from a tokenizer.json, which HF's stages
        (not sentencepiece's normalizer) encode; hf_merges: its BPE merges in rank order."""
        self.model = model
        self.hf = hf
        self.hf_merges = hf_merges
        trainer = model.get("trainer_spec", {})
        norm = model.get("normalizer_spec", {})
        mtype = proto.field(trainer, "model_type")
        if mtype not in (1, 2):
            raise TokenizerError(f"{name}: sentencepiece model type {proto.MODEL_TYPES.get(mtype, mtype)!r} is not "
                                 f"supported: convkit encodes unigram and bpe models")
        self.model_type = proto.MODEL_TYPES[mtype]
        self.byte_fallback = bool(proto.field(trainer, "byte_fallback"))
        self.unk_surface = proto.field(trainer, "unk_surface")
        self.pieces = [p["piece"] for p in model["pieces"]]
        self.scores = [float(proto.field(p, "score")) for p in model["pieces"]]
        self.types = [proto.field(p, "type") for p in model["pieces"]]
        self._init_pieces(name)
        self.vocab = {}
        for i, p in enumerate(self.pieces):
            self.vocab.setdefault(p, i)
        self.special_tokens = dict(special_tokens or {})
        self._index()
        users = [p for p, t in zip(self.pieces, self.types) if t == USER_DEFINED]
        self.normalizer = Normalizer(read_charsmap(proto.field(norm, "precompiled_charsmap"), name),
                                     proto.field(norm, "add_dummy_prefix"),
                                     proto.field(norm, "remove_extra_whitespaces"),
                                     proto.field(norm, "escape_whitespaces"),
                                     proto.field(trainer, "treat_whitespace_as_suffix"), users)
        self._users = sorted(set(users), key=lambda u: (-len(u), u))
        self._user_first = {u[0] for u in users}
        if self.model_type == "unigram":
            self._init_unigram()
        else:
            self._init_bpe()
        self._compiled = self._compile() if hf is None else None
        if hf is not None and self.model_type == "unigram":
            # HF's Unigram: every piece in its trie with the file's score, in double precision
            raw = getattr(hf, "scores", None) or self.scores
            self.hf_scores = {p: (i, raw[i]) for p, i in self.vocab.items()}
            self.hf_unk_score = min(raw, default=0.0) - UNK_PENALTY
            self.hf_max_len = max(map(len, self.hf_scores), default=1)

    # ---------------------------------------------------------------- set-up
    def _init_pieces(self, name):
        """sentencepiece's InitializePieces: which pieces the segmenter sees, which ids are reserved."""
        self._normal_ids: dict = {}   # NORMAL, USER_DEFINED, UNUSED: what segmentation may produce
        self._reserved: dict = {}     # CONTROL, UNKNOWN, BYTE: looked up first, never produced by joins
        self.unk_id = None
        byte_ids = [None] * 256
        for i, (piece, ptype) in enumerate(zip(self.pieces, self.types)):
            table = self._normal_ids if ptype in (NORMAL, USER_DEFINED, UNUSED) else self._reserved
            if piece in table:
                raise TokenizerError(f"{name}: piece {piece!r} is defined twice; the model is damaged")
            table[piece] = i
            if ptype == UNKNOWN:
                if self.unk_id is not None:
                    raise TokenizerError(f"{name}: two unknown pieces; the model is damaged")
                self.unk_id = i
            if ptype == BYTE:
                b = piece_byte(piece)
                if not self.byte_fallback or b < 0:
                    raise TokenizerError(f"{name}: byte piece {piece!r} in a model without byte fallback or "
                                         f"not of the form <0xNN>; the model is damaged")
                byte_ids[b] = i
        if self.unk_id is None:
            raise TokenizerError(f"{name}: no unknown piece; the model is damaged")
        if self.byte_fallback and None in byte_ids:
            raise TokenizerError(f"{name}: byte fallback without all 256 byte pieces; the model is damaged")
        self._byte_ids = byte_ids
        self.unk_token = self.pieces[self.unk_id]

    def _compile(self):
        """The tables of the compiled helper, or None to run the Python reference."""
        if _spm is None:
            return None
        if self.model_type == "unigram":
            table = self._lattice
        else:
            if any(self.types[i] == UNUSED for i in self._normal_ids.values()):
                return None  # joins through unused pieces are split back in Python
            table = {p: (i, self.scores[i]) for p, i in self._normal_ids.items()}
        scores = array("f", [0.0] * len(self.pieces))
        for i, score in table.values():
            scores[i] = score
        users = [p for p, t in zip(self.pieces, self.types) if t == USER_DEFINED]
        byte_ids = array("i", [-1 if b is None else b for b in self._byte_ids])
        norm = self.normalizer
        rules = list(norm.rules)
        trainer = self.model.get("trainer_spec", {})
        spec = self.model.get("normalizer_spec", {})
        return _spm.Model(
            _spm.Trie([k.encode("utf-8") for k in rules], list(range(len(rules)))) if rules else None,
            [norm.rules[k].encode("utf-8") for k in rules],
            _spm.Trie([u.encode("utf-8") for u in users], [1] * len(users)) if users else None,
            _spm.Trie([p.encode("utf-8") for p in table], [i for i, _ in table.values()]), scores.tobytes(),
            byte_ids.tobytes(), self.model_type == "unigram", -1 if self.unk_id is None else self.unk_id,
            self._unk_score if self.model_type == "unigram" else 0.0, self.byte_fallback,
            bool(proto.field(spec, "add_dummy_prefix")), bool(proto.field(spec, "remove_extra_whitespaces")),
            bool(proto.field(spec, "escape_whitespaces")), bool(proto.field(trainer, "treat_whitespace_as_suffix")))

    def byte_id(self, b: int) -> int | None:
        return self._byte_ids[b] if self.byte_fallback else None

    def byte_value(self, i: int) -> int | None:
        return piece_byte(self.pieces[i]) if 0 <= i < len(self.types) and self.types[i] == BYTE else None

    def byte_fallback_ids(self) -> frozenset:
        return frozenset(i for i, t in enumerate(self.types) if t == BYTE)

    def piece_to_id(self, piece: str) -> int:
        """sentencepiece's PieceToId: reserved pieces first, then the others, else unknown."""
        i = self._reserved.get(piece)
        if i is None:
            i = self._normal_ids.get(piece, self.unk_id)
        return i

    def _init_unigram(self):
        normal = [s for s, t in zip(self.scores, self.types) if t == NORMAL]
        self._min_score = f32(min(normal, default=FLT_MAX))
        self._unk_score = f32(self._min_score - UNK_PENALTY)
        # piece -> (id, score as the Viterbi adds it); unused pieces take no part
        table = {}
        for piece, i in self._normal_ids.items():
            t = self.types[i]
            if t == UNUSED:
                continue
            if t == USER_DEFINED:  # >= 0, so that user pieces always win over scored ones
                score = f32(0.1 * (len(piece.encode("utf-8")) - 1))
            else:
                score = self.scores[i]
            table[piece] = (i, score)
        self._lattice = table
        self._max_len = max(map(len, table), default=1)

    def _init_bpe(self):
        self._max_len = max(map(len, self._normal_ids), default=1)

    # ---------------------------------------------------------------- encoding
    def encode(self, text: str) -> list[int]:
        if self.hf is None:
            return super().encode(text)
        # HF: added tokens first; only the part at offset 0 counts as the start of the text
        ids, start = [], 0
        for m in (self._splitter.finditer(text) if self._splitter is not None else ()):
            ids += self.hf.encode_part(self, text[start:m.start()], start == 0)
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        return ids + self.hf.encode_part(self, text[start:], start == 0)

    def encode_ordinary(self, text: str) -> list[int]:
        if self.hf is not None:
            return self.hf.encode_part(self, text, True)
        if self._compiled is not None:
            return self._compiled.encode(text)
        return self.ids_of(self.segment(self.normalizer.normalize(text)))

    def encode_batch(self, texts, threads: int = 0) -> list[list[int]]:
        """Ids of each text; the compiled helper shares them out to `threads` threads (0: one per CPU)."""
        if self._compiled is not None and self._splitter is None and self.hf is None:
            return self._compiled.encode_batch(list(texts), threads)
        return [self.encode(t) for t in texts]

    def encode_reference(self, text: str) -> list[int]:
        """The pure-Python path (no special tokens): the compiled helper's oracle."""
        return self.ids_of(self.segment(self.normalizer.normalize(text)))

    def sample_encode(self, text: str, *args, **kwargs):
        raise TokenizerError("sampling (subword regularization, BPE dropout) is not supported: convkit encodes "
                             "the one best segmentation; use encode")

    def encode_pieces(self, text: str) -> list[str]:
        """The pieces of text (unknown characters as they are, before byte fallback)."""
        return [p for p, _ in self.segment(self.normalizer.normalize(text))]

    def segment(self, normalized: str) -> list:
        """[(piece, id)] of a normalized string; id is the unknown id for unknown pieces."""
        if not normalized:
            return []
        if self.model_type == "unigram":
            return self._viterbi(normalized)
        return self._bpe(normalized)

    def ids_of(self, segments) -> list[int]:
        """Ids of segments: byte fallback for unknown pieces, or runs of them as one unknown id."""
        ids, unk, prev_unk = [], self.unk_id, False
        for piece, i in segments:
            is_unk = self.types[i] == UNKNOWN
            if is_unk and self.byte_fallback:
                ids += [self._byte_ids[b] for b in piece.encode("utf-8")]
            elif not (is_unk and prev_unk):
                ids.append(unk if is_unk else i)
            prev_unk = is_unk
        return ids

    def _viterbi(self, s: str) -> list:
        """sentencepiece's optimized Viterbi: for each end position the best path that
        ends there (the earliest start wins ties), from the pieces that start at each
        character, plus an unknown node where no one-character piece starts. Path scores
        are float32 sums, rebased to 0 whenever the score at the current start passes
        1e5 in size, exactly as sentencepiece (0.2.1 and later) keeps them, so that the
        near-ties of long inputs are resolved as it resolves them."""
        n = len(s)
        best = array("f", bytes(4 * (n + 1)))
        starts = [-1] * (n + 1)
        ids = [0] * (n + 1)
        get = self._lattice.get
        unk_id, unk_score, max_len = self.unk_id, self._unk_score, self._max_len
        frontier = 0
        tmp = array("f", [0.0])
        for i in range(n):
            here = best[i]
            if here < -RESET or here > RESET:
                for k in range(i, frontier + 1):
                    if k == i or starts[k] != -1:
                        best[k] -= here
                here = 0.0
            single = False
            for length in range(1, min(max_len, n - i) + 1):
                hit = get(s[i:i + length])
                if hit is None:
                    continue
                j = i + length
                if j > frontier:
                    frontier = j
                tmp[0] = hit[1] + here  # rounded to float32, as sentencepiece adds
                candidate = tmp[0]
                if starts[j] == -1 or candidate > best[j]:
                    best[j], starts[j], ids[j] = candidate, i, hit[0]
                if length == 1:
                    single = True
            if not single:
                j = i + 1
                if j > frontier:
                    frontier = j
                tmp[0] = unk_score + here
                candidate = tmp[0]
                if starts[j] == -1 or candidate > best[j]:
                    best[j], starts[j], ids[j] = candidate, i, unk_id
        out = []
        j = n
        while j > 0:
            i = starts[j]
            out.append((s[i:j], ids[j]))
            j = i
        out.reverse()
        return out

    def _initial_symbols(self, s: str) -> tuple[list, list]:
        """Characters, with user-defined pieces whole (and frozen: they never join)."""
        if not self._users:
            return list(s), [False] * len(s)
        symbols, frozen, i, n = [], [], 0, len(s)
        first = self._user_first
        while i < n:
            if s[i] in first:
                hit = next((u for u in self._users if s.startswith(u, i)), None)
                if hit is not None:
                    symbols.append(hit)
                    frozen.append(True)
                    i += len(hit)
                    continue
            symbols.append(s[i])
            frozen.append(False)
            i += 1
        return symbols, frozen

    def _bpe(self, s: str) -> list:
        symbols, frozen = self._initial_symbols(s)
        n = len(symbols)
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        pieces, scores, types = self._normal_ids, self.scores, self.types
        heap = []
        rev_merge = {}

        def add(left, right):
            if left < 0 or right < 0 or frozen[left] or frozen[right]:
                return
            joined = symbols[left] + symbols[right]
            i = pieces.get(joined)
            if i is None:
                return
            heapq.heappush(heap, (-scores[i], left, right, len(joined)))
            if types[i] == UNUSED:
                rev_merge[joined] = (symbols[left], symbols[right])

        for k in range(1, n):
            add(k - 1, k)
        while heap:
            _, left, right, size = heapq.heappop(heap)
            a, b = symbols[left], symbols[right]
            if not a or not b or len(a) + len(b) != size:
                continue
            symbols[left] = a + b
            symbols[right] = ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            add(prv[left], left)
            add(left, nxt[left])
        out = []
        k = 0
        while k != -1:
            self._resegment(symbols[k], rev_merge, out)
            k = nxt[k]
        return out

    def _resegment(self, piece, rev_merge, out, depth=0):
        """Split joins through unused pieces back into their halves (sentencepiece stops
        after 100 levels); a piece that is no normal piece reads as unknown."""
        i = self._normal_ids.get(piece, self.unk_id)
        if depth > 100:
            out.append((piece, i))
        elif self.types[i] != UNUSED:
            out.append((piece, i))
        elif piece in rev_merge:
            left, right = rev_merge[piece]
            self._resegment(left, rev_merge, out, depth + 1)
            self._resegment(right, rev_merge, out, depth + 1)
        else:
            out.append((piece, self.unk_id))

    # ---------------------------------------------------------------- decoding
    def decode(self, ids) -> str:
        """Text of ids as sentencepiece's Decode gives it: control pieces vanish, the
        unknown piece reads as unk_surface, byte pieces join into UTF-8 (an invalid byte
        is U+FFFD), `▁` is a space and the dummy prefix space is dropped. A model read
        from a tokenizer.json decodes as HF's decoders do."""
        if self.hf is not None:
            return self.hf.decode(self, ids)
        pieces, types = self.pieces, self.types
        n = len(pieces)
        norm = self.model.get("normalizer_spec", {})
        strip_first = proto.field(norm, "add_dummy_prefix") or proto.field(norm, "remove_extra_whitespaces")
        keep_looking = proto.field(norm, "remove_extra_whitespaces")
        text: list[str] = []
        length = 0
        pending = bytearray()
        bos_ws, seen = True, False
        for i in ids:
            if not (isinstance(i, int) and 0 <= i < n):
                raise self._bad_id(i)
            if types[i] == BYTE:
                pending.append(piece_byte(pieces[i]))
                continue
            if pending:
                decoded = _decode_bytes(pending)
                text.append(decoded)
                length += len(decoded)
                pending.clear()
            if seen or length:
                bos_ws = False
            piece, t, seen = pieces[i], types[i], False
            if t == CONTROL:
                continue
            if t == UNKNOWN:
                out = self.unk_surface
            else:
                if bos_ws and strip_first and piece.startswith(SPACE):
                    piece = piece[1:]
                    seen = not keep_looking
                out = piece.replace(SPACE, " ")
            text.append(out)
            length += len(out)
        if pending:
            text.append(_decode_bytes(pending))
        return "".join(text)

    # ---------------------------------------------------------------- files
    @classmethod
    def from_pieces(cls, entries, model_type: str, *, byte_fallback: bool = False, normalization: str = "nmt_nfkc",
                    add_dummy_prefix: bool = True, remove_extra_whitespaces: bool = True,
                    treat_whitespace_as_suffix: bool = False, unk_id: int = 0, bos_id: int = 1, eos_id: int = 2,
                    pad_id: int = -1) -> "SentencePiece":
        """A model from a trainer's [(piece, score, type)] in id order (types as
        sentencepiece numbers them), with sentencepiece's normalization rule of that name
        (its charsmap as the installed sentencepiece package ships it)."""
        kinds = {"unigram": 1, "bpe": 2}
        if model_type not in kinds:
            raise TokenizerError(f"model type {model_type!r}: use unigram or bpe")
        pieces = []
        for piece, score, ptype in entries:
            entry = {"piece": piece, "score": f32(score)}
            if ptype != NORMAL:
                entry["type"] = ptype
            pieces.append(entry)
        trainer = {"model_type": kinds[model_type], "vocab_size": len(pieces), "byte_fallback": byte_fallback,
                   "treat_whitespace_as_suffix": treat_whitespace_as_suffix,
                   "unk_id": unk_id, "bos_id": bos_id, "eos_id": eos_id, "pad_id": pad_id}
        norm = {"name": normalization, "add_dummy_prefix": add_dummy_prefix,
                "remove_extra_whitespaces": remove_extra_whitespaces, "escape_whitespaces": True}
        charsmap = builtin_charsmap(normalization)
        if charsmap:
            norm["precompiled_charsmap"] = charsmap
        return cls({"pieces": pieces, "trainer_spec": trainer, "normalizer_spec": norm}, "trained model")

    @classmethod
    def from_model_bytes(cls, data: bytes, name: str = "tokenizer.model") -> "SentencePiece":
        return cls(proto.read_model(data, name), name)

    def to_model_bytes(self) -> bytes:
        return proto.write_model(self.model)

    def convkit_fields(self) -> dict:
        model = self.model
        norm = dict(model.get("normalizer_spec", {}))
        if "precompiled_charsmap" in norm:
            norm["precompiled_charsmap"] = base64.b64encode(norm["precompiled_charsmap"]).decode("ascii")
        out = {"model_type": self.model_type, "trainer_spec": _jsonable(model.get("trainer_spec", {})),
               "normalizer_spec": _jsonable(norm)}
        if "denormalizer_spec" in model:
            raise TokenizerError("a sentencepiece model with a denormalizer cannot be written in convkit format")
        return out

    def convkit_tail(self) -> dict:
        return {"pieces": [[p, s, proto.PIECE_TYPES[t]] for p, s, t in zip(self.pieces, self.scores, self.types)]}

    def gguf_metadata(self) -> dict:
        """llama.cpp's "llama" (sentencepiece) vocab: pieces, scores, token types (BYTE
        pieces included; user-defined pieces kept whole as sentencepiece keeps them), the
        special ids of the trainer spec, add_space_prefix from the dummy prefix."""
        from .serial import (TOKEN_BYTE, TOKEN_CONTROL, TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_UNUSED,
                             TOKEN_USER_DEFINED)
        kinds = {NORMAL: TOKEN_NORMAL, UNKNOWN: TOKEN_UNKNOWN, CONTROL: TOKEN_CONTROL,
                 USER_DEFINED: TOKEN_USER_DEFINED, UNUSED: TOKEN_UNUSED, BYTE: TOKEN_BYTE}
        trainer = self.model.get("trainer_spec", {})
        norm = self.model.get("normalizer_spec", {})
        meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
                "tokenizer.ggml.tokens": list(self.pieces), "tokenizer.ggml.scores": list(self.scores),
                "tokenizer.ggml.token_type": [kinds[t] for t in self.types]}
        for role, key in (("bos", "bos_id"), ("eos", "eos_id"), ("unknown", "unk_id"), ("padding", "pad_id")):
            i = proto.field(trainer, key)
            if 0 <= i < len(self.pieces):
                meta[f"tokenizer.ggml.{role}_token_id"] = i
        meta["tokenizer.ggml.add_bos_token"] = "tokenizer.ggml.bos_token_id" in meta
        meta["tokenizer.ggml.add_eos_token"] = False
        meta["tokenizer.ggml.add_space_prefix"] = bool(proto.field(norm, "add_dummy_prefix"))
        return meta

    def to_hf(self) -> dict:
        """tokenizer.json as transformers lays out these models (see spm_hf); a model read
        from a tokenizer.json is written back with the stages it came with."""
        from .spm_hf import hf_document
        return hf_document(self)

    @classmethod
    def from_hf(cls, doc, model, vocab, specials, merges, name):
        from .spm_hf import layout_of

        layout = layout_of(doc, model, name)
        if layout is None:
            return None
        pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
        proto_model, ranks = _model_from_hf(doc, model, vocab, specials, pairs, layout, name)
        layout.merges = ranks
        layout.stages = {k: doc.get(k) for k in ("added_tokens", "normalizer", "pre_tokenizer", "post_processor",
                                                 "decoder")}
        layout.model_doc = model
        raw = layout.set_added_tokens(doc.get("added_tokens") or [])
        return cls(proto_model, name, raw, hf=layout, hf_merges=pairs)

    @classmethod
    def from_convkit(cls, doc, vocab, specials, name):
        types = {v: k for k, v in proto.PIECE_TYPES.items()}
        pieces = []
        for entry in doc["pieces"]:
            piece, score, ptype = entry
            if not isinstance(piece, str) or ptype not in types or not isinstance(score, (int, float)):
                raise TokenizerError(f"{name}: piece {str(entry)[:60]} is not [text, score, type]; "
                                     f"write the tokenizer again")
            entry = {"piece": piece, "score": float(score)}
            if types[ptype] != NORMAL:  # sentencepiece leaves the type of normal pieces unset
                entry["type"] = types[ptype]
            pieces.append(entry)
        norm = dict(doc.get("normalizer_spec") or {})
        if "precompiled_charsmap" in norm:
            try:
                norm["precompiled_charsmap"] = base64.b64decode(norm["precompiled_charsmap"], validate=True)
            except (ValueError, TypeError):
                raise TokenizerError(f"{name}: precompiled_charsmap is not base64; write the tokenizer again") from None
        model = {"pieces": pieces, "trainer_spec": dict(doc.get("trainer_spec") or {}), "normalizer_spec": norm}
        return cls(model, name, specials)


def _model_from_hf(doc, model, vocab, specials, merges, layout, name) -> tuple[dict, dict | None]:
    """A ModelProto for a tokenizer.json: pieces typed from the added tokens and byte
    pieces, scores (Unigram's own; BPE's from the merge ranks, as sentencepiece's BPE
    models score pieces by the order they were learned), the normalizer it implies."""
    size = max(list(vocab.values()) + list(specials.values())) + 1
    pieces = [None] * size
    for t, i in vocab.items():
        pieces[i] = t
    added = {e["id"]: e for e in doc.get("added_tokens") or []}
    for t, i in specials.items():
        pieces[i] = t
    if None in pieces:
        raise TokenizerError(f"{name}: ids {pieces.index(None)}.. have no token; a sentencepiece model has no gaps")
    unk_id = model.get("unk_id") if model["type"] == "Unigram" else vocab.get(model.get("unk_token"))
    layout.unk_id = unk_id
    if unk_id is None and "<unk>" in vocab:  # sentencepiece needs one: the usual piece
        unk_id = vocab["<unk>"]
    scores, ranks = [0.0] * size, None
    if model["type"] == "Unigram":
        scores = [float(entry[1]) for entry in model["vocab"]] + [0.0] * (size - len(model["vocab"]))
        layout.scores = scores  # HF adds the file's scores in double precision
    else:
        ranks = {}
        for r, (a, b) in enumerate(merges):
            ranks.setdefault((a, b), r)
        learned = {}
        for (a, b), r in ranks.items():
            learned.setdefault(a + b, r)
        scores = [-float(learned.get(p, 0)) for p in pieces]
    # HF falls back to bytes only where the vocab has them; sentencepiece wants all 256
    has_bytes = layout.byte_fallback and len({piece_byte(p) for p in pieces} - {-1}) == 256
    entries = []
    for i, p in enumerate(pieces):
        if i == unk_id:
            t = UNKNOWN
        elif has_bytes and piece_byte(p) >= 0:
            t = BYTE
        elif i in added:
            t = CONTROL if added[i].get("special", True) else USER_DEFINED
        else:
            t = NORMAL
        entry = {"piece": p, "score": f32(scores[i])}
        if t != NORMAL:
            entry["type"] = t
        entries.append(entry)
    trainer = {"model_type": 1 if model["type"] == "Unigram" else 2, "vocab_size": size,
               "byte_fallback": has_bytes}
    if unk_id is not None:
        trainer["unk_id"] = unk_id
    normalizer = {"name": "identity",
                  "add_dummy_prefix": layout.prepend or (layout.metaspace and layout.prepend_scheme != "never"),
                  "remove_extra_whitespaces": layout.whitespace_split or layout.collapse, "escape_whitespaces": True}
    if layout.charsmap is not None:
        normalizer["name"] = "nmt_nfkc"  # a name for the precompiled rules; the rules themselves travel
        normalizer["precompiled_charsmap"] = layout.charsmap
    return {"pieces": entries, "trainer_spec": trainer, "normalizer_spec": normalizer}, ranks


RULES = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity")


def builtin_charsmap(name: str) -> bytes:
    """The precompiled charsmap of one of sentencepiece's normalization rules, as the
    sentencepiece package ships it (package_data/<name>.bin); identity has none."""
    if name == "identity":
        return b""
    if name not in RULES:
        raise TokenizerError(f"normalization rule {name!r} is not one of sentencepiece's: {', '.join(RULES)}")
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sentencepiece")
    path = Path(spec.origin).parent / "package_data" / f"{name}.bin" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise TokenizerError(f"the {name} rules come from the sentencepiece package, which is not installed here "
                             f"(pip install sentencepiece), or use normalization 'identity'")
    return path.read_bytes()


def _jsonable(message: dict) -> dict:
    if "_unknown" in message:
        message = {k: v for k, v in message.items() if k != "_unknown"}
    return message


def _decode_bytes(data: bytes) -> str:
    """UTF-8 as sentencepiece decodes byte pieces: each invalid byte is one U+FFFD."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    out, i, n = [], 0, len(data)
    while i < n:
        b = data[i]
        size = 1 if b < 0x80 else 2 if 0xC2 <= b < 0xE0 else 3 if 0xE0 <= b < 0xF0 else 4 if 0xF0 <= b < 0xF5 else 0
        if size:
            try:
                out.append(data[i:i + size].decode("utf-8"))
                i += size
                continue
            except UnicodeDecodeError:
                pass
        out.append(REPLACEMENT)
        i += 1
    return "".join(out)
