"""llama.cpp's "llama" (SPM) tokenizer over a GGUF vocabulary: the ids llama.cpp's
llama_tokenize gives and the bytes llama_token_to_piece gives, for a file whose
tokenizer.ggml.model is "llama" (sentencepiece models converted by convert_hf_to_gguf.py).

llama.cpp does not run sentencepiece: it splits the text into characters and merges the
neighbouring pair whose joined text is a token of highest score (ties: leftmost), again
and again; symbols that are not tokens fall back to <0xNN> byte tokens. No normalization
is applied, only " " -> "▁" and a leading space (add_space_prefix) on each text fragment
that starts the text or follows a special token. Special tokens are cut out of the text
first (user-defined ones always, control/unknown ones only when parsing specials).
"""
import heapq

# llama.cpp token types (tokenizer.ggml.token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPACES = " \t\n\v\f\r"  # C isspace, for the lstrip/rstrip attributes


class UnknownByte(ValueError):
    """A byte the vocabulary has no <0xNN> (or single-character) token for."""


class LlamaSpm:
    def __init__(self, tokens, scores, types, *, add_space_prefix=True, model_name=""):
        # llama.cpp renames empty tokens so that each text maps to one id
        self.tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        self.scores = [float(s) for s in scores] if scores is not None else [0.0] * len(tokens)
        self.types = [int(k) for k in types] if types is not None else [NORMAL] * len(tokens)
        self.add_space_prefix = add_space_prefix
        self.ids = {t: i for i, t in enumerate(self.tokens)}  # later ids win, as token_to_id[word] = i
        specials = [i for i, k in enumerate(self.types) if k in (CONTROL, USER_DEFINED, UNKNOWN)]
        # longest first (llama.cpp's sort is not stable; equal lengths keep id order here)
        self.specials = sorted(specials, key=lambda i: -len(self.tokens[i].encode("utf-8")))
        self.lstrip, self.rstrip = set(), set()
        name = (model_name or "").lower()
        if "phi-3" in name or "phi3" in name:
            # llama.cpp sets these attributes by model name for Phi-3
            self.rstrip = set(specials)
            self.rstrip |= {self.ids[t] for t in ("</s>",) if t in self.ids}
            self.rstrip -= {self.ids[t] for t in ("<unk>", "<s>", "<|endoftext|>") if t in self.ids}
        self._pieces = None

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    # ------------------------------------------------------------------ encode
    def encode(self, text: str, parse_special: bool = True) -> list[int]:
        """llama_tokenize(text, add_special=false, parse_special): no BOS/EOS."""
        out, prev_special = [], True  # the first fragment gets the space prefix
        for frag in self._partition(text, parse_special):
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self.add_space_prefix and prev_special:
                frag = " " + frag
            self._encode_fragment(frag.replace(" ", "\u2581"), out)
            prev_special = False
        return out

    def _partition(self, text: str, parse_special: bool) -> list:
        """Text fragments (str) and special tokens (int), as tokenizer_st_partition cuts them:
        each special in turn, longest first, splits every text fragment left to right."""
        frags = [text] if text else []
        for sid in self.specials:
            if not parse_special and self.types[sid] in (CONTROL, UNKNOWN):
                continue
            piece = self.tokens[sid]
            out = []
            for frag in frags:
                if isinstance(frag, int) or piece not in frag:
                    out.append(frag)
                    continue
                start = 0
                while True:
                    at = frag.find(piece, start)
                    if at < 0:
                        if start < len(frag):
                            out.append(frag[start:])
                        break
                    left = frag[start:at]
                    if sid in self.lstrip:
                        left = left.rstrip(_SPACES)
                    if left:
                        out.append(left)
                    out.append(sid)
                    start = at + len(piece)
                    if sid in self.rstrip:
                        while start < len(frag) and frag[start] in _SPACES:
                            start += 1
            frags = out
        return frags

    def _encode_fragment(self, text: str, out: list) -> None:
        """llm_tokenizer_spm_session::tokenize on one escaped fragment."""
        n = len(text)
        if n == 0:
            return
        start = list(range(n))
        size = [1] * n  # characters; 0 once merged into the left neighbour
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n)) + [-1]
        ids, scores, heap = self.ids, self.scores, []

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            piece = text[start[left]:start[left] + size[left] + size[right]]
            tid = ids.get(piece)
            if tid is not None:
                # max score first, then the leftmost pair (llama.cpp's queue comparator)
                heapq.heappush(heap, (-scores[tid], left, right, size[left] + size[right]))

        for i in range(1, n):
            push(i - 1, i)
        while heap:
            _, left, right, total = heapq.heappop(heap)
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != total:
                continue  # one side changed since this pair was queued
            size[left] += size[right]
            size[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            push(prev[left], left)
            push(left, nxt[left])

        i = 0
        while i != -1:
            piece = text[start[i]:start[i] + size[i]]
            tid = ids.get(piece)
            if tid is not None:
                out.append(tid)
            else:  # a merged symbol is always a token; this is a lone character: its bytes
                out.extend(self._byte_token(b) for b in piece.encode("utf-8"))
            i = nxt[i]

    def _byte_token(self, byte: int) -> int:
        tid = self.ids.get(f"<0x{byte:02X}>")
        if tid is None and byte < 0x80:
            tid = self.ids.get(chr(byte))  # llama.cpp's fallback: the byte as a one-character token
        if tid is None:
            raise UnknownByte(byte)
        return tid

    # ------------------------------------------------------------------ decode
    def piece(self, tid: int, special: bool = True) -> bytes:
        """llama_token_to_piece(tid, lstrip=0, special)."""
        kind = self.types[tid]
        if kind in (CONTROL, UNKNOWN):
            return self.tokens[tid].encode("utf-8") if special else b""
        if kind == USER_DEFINED:
            return self.tokens[tid].encode("utf-8")
        if kind == NORMAL:
            return self.tokens[tid].replace("\u2581", " ").encode("utf-8")
        if kind == BYTE:
            return bytes([int(self.tokens[tid][3:5], 16)])
        return b""  # unused and undefined tokens print nothing

    def decode_bytes(self, ids, special: bool = True, bos_id: int | None = None) -> bytes:
        """The pieces joined; with `bos_id`, a space right after a leading BOS is dropped
        (llama-cpp-python's detokenize: the space add_space_prefix put there)."""
        ids = list(ids)
        if self._pieces is None:
            self._pieces = {}
        pieces = self._pieces
        out = []
        for tid in ids:
            key = (tid, special)
            if key not in pieces:
                if not 0 <= tid < len(self.tokens):
                    raise IndexError(tid)
                pieces[key] = self.piece(tid, special)
            out.append(pieces[key])
        data = b"".join(out)
        if ids and bos_id is not None and ids[0] == bos_id and data[:1] == b" ":
            data = data[1:]
        return data
