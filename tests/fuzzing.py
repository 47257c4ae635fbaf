"""Seeded mutations of every input convkit reads, and the checks every run must pass.

Inputs: a GGUF made from the sample model (`convkit convert`), the sample's
model.safetensors (header and data), config.json, tokenizer.json, and a vocab.txt.
Each mutation class is a function `(rng, inputs) -> Mutation`: the files to write into a
fresh copy of the inputs, the commands to run on them, and which parts of the input the
mutation touched (so that a run that succeeds can be compared with the unmutated input's
result on everything else).

Every run is checked for: exit 0 or 2, no traceback, no warning, one line on stderr for
exit 2, no output file or temporary left after a failure, inputs unchanged, a bounded
time (a watchdog, not a timing assertion) and memory, and for exit 0 of a conversion,
an output equal to the unmutated input's except where the mutation touched it.

Used by tests/test_fuzz.py (a few hundred runs) and benchmarks/fuzz_campaign.py (more).
"""
import contextlib
import copy
import functools
import hashlib
import io
import json
import random
import resource
import shutil
import signal
import struct
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "tiny-llama"
MAX_RUN_SECONDS = 120          # a watchdog for runaway loops, far above any honest run
MAX_RSS_GROWTH_KIB = 1_500_000  # the sample is 10 MB; GBs mean an allocation driven by a bad value
TEXT = ("The quick brown fox jumps over the lazy dog. " * 40)
VOCAB_TXT = "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz.,")
                      + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + ["the", "quick", "brown", "fox",
                                                                           "##s", "jump", "over", "lazy", "dog"]) + "\n"


# ------------------------------------------------------------------ GGUF locations
@dataclass
class GGUFMap:
    """Byte positions inside a GGUF, found by walking its header (little-endian, v3)."""
    kv: dict = field(default_factory=dict)       # key -> (type, value start, value end)
    ti: dict = field(default_factory=dict)       # tensor -> {"name": (s, e), "ndims": s, "dims": [s..], "type": s, "offset": s}
    data: dict = field(default_factory=dict)     # tensor -> (absolute start, end) of its data
    data_start: int = 0


def map_gguf(data: bytes) -> GGUFMap:
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    m = GGUFMap()
    pos = 24
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)

    def string(p):
        (n,) = struct.unpack_from("<Q", data, p)
        return data[p + 8:p + 8 + n].decode("utf-8"), p + 8 + n

    def value(p, vtype):
        if vtype in sizes:
            return p + sizes[vtype]
        if vtype == 8:
            return string(p)[1]
        etype, count = struct.unpack_from("<IQ", data, p)
        p += 12
        for _ in range(count):
            p = value(p, etype)
        return p

    alignment = 32
    for _ in range(n_kv):
        key, pos = string(pos)
        (vtype,) = struct.unpack_from("<I", data, pos)
        start = pos + 4
        pos = value(start, vtype)
        m.kv[key] = (vtype, start, pos)
        if key == "general.alignment":
            alignment = struct.unpack_from("<I", data, start)[0]
    infos = []
    for _ in range(n_tensors):
        name_at = pos
        name, pos = string(pos)
        ndims_at = pos
        (ndims,) = struct.unpack_from("<I", data, pos)
        dims = [pos + 4 + 8 * i for i in range(ndims)]
        pos += 4 + 8 * ndims
        m.ti[name] = {"name": (name_at, ndims_at), "ndims": ndims_at, "dims": dims, "type": pos, "offset": pos + 4}
        infos.append(name)
        pos += 12
    m.data_start = -(-pos // alignment) * alignment
    import gguf
    for name in infos:
        t = m.ti[name]
        shape = [struct.unpack_from("<Q", data, d)[0] for d in t["dims"]]
        (qtype,) = struct.unpack_from("<I", data, t["type"])
        (offset,) = struct.unpack_from("<Q", data, t["offset"])
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
        count = 1
        for d in shape:
            count *= d
        m.data[name] = (m.data_start + offset, m.data_start + offset + count // block * size)
    return m


def _put(data: bytearray, at: int, fmt: str, value) -> None:
    data[at:at + struct.calcsize(fmt)] = struct.pack(fmt, value)


# ------------------------------------------------------------------ mutations
@dataclass
class Mutation:
    cls: str
    files: dict                   # file name (in the model directory or beside it) -> bytes
    commands: list                # "inspect" | "quantize" | "perplexity" | "encode"
    touched: set = field(default_factory=set)  # tensor names / metadata keys whose values may differ
    note: str = ""
    reference: str = ""           # which unmutated input's output to compare with (default: by file kind)


class Inputs:
    """The unmutated inputs and the reference outputs, made once."""

    def __init__(self, workdir: Path):
        from convkit.cli import main

        self.workdir = workdir
        base = workdir / "pristine"
        self.model_dir = base / "tiny-llama"
        shutil.copytree(SAMPLE, self.model_dir, ignore=shutil.ignore_patterns("*.md", "generation_config.json"))
        self.gguf_path = base / "tiny-llama-f16.gguf"
        for args in (["convert", str(self.model_dir), "--outtype", "f16", "-o", str(self.gguf_path), "--quiet"],):
            with contextlib.redirect_stdout(io.StringIO()):
                with contextlib.suppress(SystemExit):
                    main(args)
        self.files = {p.name: p.read_bytes() for p in self.model_dir.iterdir()}
        self.gguf = self.gguf_path.read_bytes()
        self.gguf_map = map_gguf(self.gguf)
        self.gguf_q_path = base / "tiny-llama-q4_k_m.gguf"  # quantized blocks: scales, mins, packed bits
        with contextlib.redirect_stdout(io.StringIO()):
            with contextlib.suppress(SystemExit):
                main(["quantize", str(self.gguf_path), "--type", "q4_k_m", "-o", str(self.gguf_q_path), "--quiet"])
        self.gguf_q = self.gguf_q_path.read_bytes()
        self.gguf_q_map = map_gguf(self.gguf_q)
        self.vocab_txt = VOCAB_TXT.encode()
        (base / "text.txt").write_text(TEXT)
        self.text = base / "text.txt"
        st = self.files["model.safetensors"]
        (n,) = struct.unpack("<Q", st[:8])
        self.st_header = json.loads(st[8:8 + n])
        self.st_data_start = 8 + n
        self.reference = {}
        for kind, src in (("hf", self.model_dir), ("gguf", self.gguf_path), ("gguf_q", self.gguf_q_path)):
            out = base / f"ref-{kind}.gguf"
            with contextlib.redirect_stdout(io.StringIO()):
                with contextlib.suppress(SystemExit):
                    main(["quantize", str(src), "--type", "q8_0", "-o", str(out), "--quiet"])
            self.reference[kind] = read_output(out)

    def st_bytes(self, header: dict, length_delta: int = 0, raw: bytes | None = None) -> bytes:
        raw = json.dumps(header).encode() if raw is None else raw
        body = self.files["model.safetensors"][self.st_data_start:]
        return struct.pack("<Q", len(raw) + length_delta) + raw + body


def read_output(path: Path) -> dict:
    """A GGUF as {"fields": {...}, "tensors": {name: (shape, type, sha256)}} for comparison."""
    from convkit.gguf_check import read_layout

    layout = read_layout(path)
    data = path.read_bytes()
    tensors = {t.name: (t.shape, t.qtype, hashlib.sha256(data[t.offset:t.offset + t.nbytes]).hexdigest())
               for t in layout.tensors}
    return {"fields": layout.fields, "tensors": tensors}


# ---- GGUF
def _gguf(inputs: Inputs, data: bytearray, cls: str, touched=(), commands=("inspect", "quantize"), note=""):
    return Mutation(cls, {"model.gguf": bytes(data)}, list(commands), set(touched), note)


def _pick_tensor(rng, inputs, kind=None):
    names = [n for n in inputs.gguf_map.ti if kind is None or kind in n]
    return rng.choice(sorted(names))


def gguf_header_flips(rng, inputs):
    data = bytearray(inputs.gguf)
    touched = set()
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(inputs.gguf_map.data_start)
        data[at] = rng.randrange(256)
        touched |= _what_is_at(inputs.gguf_map, at)
    return _gguf(inputs, data, "gguf_header_flips", touched, note=f"flips in header, touched {sorted(touched)[:3]}")


def _what_is_at(m: GGUFMap, at: int) -> set:
    out = set()
    for key, (_, s, e) in m.kv.items():
        if s - 12 - len(key) <= at < e:
            out.add(key)
    for name, t in m.ti.items():
        if t["name"][0] <= at < t["offset"] + 8:
            out.add(name)
    for name, (s, e) in m.data.items():
        if s <= at < e:
            out.add(name)
    return out or {"*padding*"}


def gguf_not_utf8(rng, inputs):
    data = bytearray(inputs.gguf)
    key = rng.choice(["general.architecture", "general.name", "tokenizer.ggml.model", "tokenizer.ggml.tokens"])
    _, s, e = inputs.gguf_map.kv[key]
    at = s + 8 if key != "tokenizer.ggml.tokens" else s + 12 + 8 * (1 + rng.randrange(3))
    data[at:at + 2] = b"\xff\xfe"
    return _gguf(inputs, data, "gguf_not_utf8", {key}, note=key)


def gguf_zero_dim(rng, inputs):
    data = bytearray(inputs.gguf)
    name = _pick_tensor(rng, inputs)
    _put(data, rng.choice(inputs.gguf_map.ti[name]["dims"]), "<Q", 0)
    return _gguf(inputs, data, "gguf_zero_dim", {name}, commands=("inspect", "quantize", "perplexity"), note=name)


def gguf_swap_dims(rng, inputs):
    data = bytearray(inputs.gguf)
    name = _pick_tensor(rng, inputs, rng.choice(["attn_k", "attn_q", "ffn_up", "ffn_down", "token_embd"]))
    dims = inputs.gguf_map.ti[name]["dims"]
    a, b = data[dims[0]:dims[0] + 8], data[dims[1]:dims[1] + 8]
    data[dims[0]:dims[0] + 8], data[dims[1]:dims[1] + 8] = b, a
    return _gguf(inputs, data, "gguf_swap_dims", {name}, commands=("quantize", "perplexity"), note=name)


def gguf_bad_dims(rng, inputs):
    data = bytearray(inputs.gguf)
    name = _pick_tensor(rng, inputs)
    t = inputs.gguf_map.ti[name]
    choice = rng.randrange(4)
    if choice == 0:
        _put(data, rng.choice(t["dims"]), "<Q", rng.choice([2**63, 2**64 - 1, 2**32 + 32, 3]))
    elif choice == 1:
        _put(data, t["ndims"], "<I", rng.choice([0, 5, 2**31]))
    else:
        _put(data, rng.choice(t["dims"]), "<Q", struct.unpack_from("<Q", data, t["dims"][0])[0] * 2)
    return _gguf(inputs, data, "gguf_bad_dims", {name}, note=name)


def gguf_offsets(rng, inputs):
    data = bytearray(inputs.gguf)
    names = sorted(inputs.gguf_map.ti)
    name = rng.choice(names)
    t = inputs.gguf_map.ti[name]
    kind = rng.randrange(5)
    if kind == 0:
        value = 2**64 - 32  # wraps around to the header
    elif kind == 1:  # the same offset as another tensor
        other = rng.choice([n for n in names if n != name])
        value = struct.unpack_from("<Q", data, inputs.gguf_map.ti[other]["offset"])[0]
    elif kind == 2:
        value = struct.unpack_from("<Q", data, t["offset"])[0] + rng.choice([1, 16, 31])  # misaligned
    elif kind == 3:
        value = len(data)  # past the end
    else:
        value = struct.unpack_from("<Q", data, t["offset"])[0] + 32  # overlaps the next tensor or the end
    _put(data, t["offset"], "<Q", value)
    return _gguf(inputs, data, "gguf_offsets", {name}, commands=("inspect", "quantize", "perplexity"), note=f"{name} {kind}")


def gguf_types(rng, inputs):
    data = bytearray(inputs.gguf)
    if rng.random() < 0.5:
        name = _pick_tensor(rng, inputs)
        _put(data, inputs.gguf_map.ti[name]["type"], "<I", rng.choice([4, 5, 99, 2**31, 1, 0, 30, 8, 12]))
        touched = {name}
    else:
        key = rng.choice(sorted(inputs.gguf_map.kv))
        _, s, _ = inputs.gguf_map.kv[key]
        _put(data, s - 4, "<I", rng.choice([13, 99, 9, 8, 0, 10]))
        touched = {key}
    return _gguf(inputs, data, "gguf_types", touched, note=str(touched))


def gguf_hparams(rng, inputs):
    data = bytearray(inputs.gguf)
    key = rng.choice(["llama.block_count", "llama.attention.head_count", "llama.attention.head_count_kv",
                      "llama.embedding_length", "llama.feed_forward_length", "llama.context_length",
                      "llama.rope.dimension_count", "llama.vocab_size"])
    vtype, s, e = inputs.gguf_map.kv[key]
    value = rng.choice([0, 1, 3, 5, 2**31 - 1, 2**32 - 1, 255, 4097])
    _put(data, s, "<I", value)
    return _gguf(inputs, data, "gguf_hparams", {key}, commands=("quantize", "perplexity"), note=f"{key}={value}")


def gguf_float_hparams(rng, inputs):
    data = bytearray(inputs.gguf)
    key = rng.choice(sorted(k for k in inputs.gguf_map.kv if inputs.gguf_map.kv[k][0] == 6))
    _, s, _ = inputs.gguf_map.kv[key]
    _put(data, s, "<f", rng.choice([float("nan"), float("inf"), -1.0, 0.0, 3e38]))
    return _gguf(inputs, data, "gguf_float_hparams", {key}, commands=("quantize", "perplexity"), note=key)


def gguf_token_ids(rng, inputs):
    data = bytearray(inputs.gguf)
    keys = [k for k in inputs.gguf_map.kv if k.endswith("_token_id")]
    key = rng.choice(sorted(keys))
    _, s, _ = inputs.gguf_map.kv[key]
    value = rng.choice([4096, 10**6, 2**32 - 1])
    _put(data, s, "<I", value)
    return _gguf(inputs, data, "gguf_token_ids", {key}, commands=("quantize", "perplexity"), note=f"{key}={value}")


def gguf_lengths(rng, inputs):
    data = bytearray(inputs.gguf)
    key = rng.choice(sorted(inputs.gguf_map.kv))
    vtype, s, _ = inputs.gguf_map.kv[key]
    if vtype == 9:
        _put(data, s + 4, "<Q", rng.choice([2**62, 2**40, 10**7]))
    elif vtype == 8:
        _put(data, s, "<Q", rng.choice([2**63, 2**40, 10**7]))
    else:
        _put(data, 8, "<Q", rng.choice([2**20, 10**6, 40, 0]))  # the tensor count
        key = "*count*"
    return _gguf(inputs, data, "gguf_lengths", {key}, note=key)


def gguf_truncate(rng, inputs):
    cut = rng.choice([rng.randrange(24, inputs.gguf_map.data_start), rng.randrange(len(inputs.gguf))])
    return _gguf(inputs, bytearray(inputs.gguf[:cut]), "gguf_truncate", {"*all*"},
                 commands=("inspect", "quantize", "perplexity"), note=f"cut at {cut}")


def gguf_block_count(rng, inputs):
    data = bytearray(inputs.gguf)
    _, s, _ = inputs.gguf_map.kv["llama.block_count"]
    value = rng.choice([2**31 - 1, 5, 64, 2**32 - 1])
    _put(data, s, "<I", value)
    return _gguf(inputs, data, "gguf_block_count", {"llama.block_count"}, commands=("quantize", "perplexity"),
                 note=str(value))


def gguf_names(rng, inputs):
    """Tensor and key names: a duplicate, a layer that does not exist, a name ggml cannot hold."""
    data = bytearray(inputs.gguf)
    m = inputs.gguf_map
    kind = rng.randrange(4)
    if kind == 0:  # blk.0.X -> blk.1.X: two tensors of one name
        name = _pick_tensor(rng, inputs, "blk.0.")
        s, _ = m.ti[name]["name"]
        data[s + 8 + 4] = ord("1")
        touched = {name, name.replace("blk.0.", "blk.1.")}
    elif kind == 1:  # blk.3.X -> blk.7.X: a layer beyond block_count
        name = _pick_tensor(rng, inputs, "blk.3.")
        s, _ = m.ti[name]["name"]
        data[s + 8 + 4] = ord("7")
        touched = {name}
    elif kind == 2:  # a metadata key renamed to the key before it
        keys = list(m.kv)
        i = rng.randrange(1, len(keys))
        a, b = keys[i - 1], keys[i]
        if len(a) == len(b):
            s = m.kv[b][1] - 4 - len(b.encode())
            data[s:s + len(a)] = a.encode()
        touched = {a, b}
    else:  # the tensor name's length past the end of the name
        name = _pick_tensor(rng, inputs)
        s, _ = m.ti[name]["name"]
        _put(data, s, "<Q", rng.choice([64, 200, 2**40]))
        touched = {name}
    return _gguf(inputs, data, "gguf_names", touched, commands=("inspect", "quantize", "perplexity"),
                 note=f"kind {kind} {sorted(touched)[:2]}")


def gguf_alignment(rng, inputs):
    """general.alignment added in place of general.name's value: 0, not a power of two, huge."""
    data = bytearray(inputs.gguf)
    key = "general.name" if "general.name" in inputs.gguf_map.kv else sorted(inputs.gguf_map.kv)[0]
    _, s, e = inputs.gguf_map.kv[key]
    key_at = s - 4 - len(key.encode())
    new_key = b"general.alignment"
    if len(key.encode()) == len(new_key):
        data[key_at:key_at + len(new_key)] = new_key
    _put(data, s - 4, "<I", 4)  # uint32
    _put(data, s, "<I", rng.choice([0, 3, 48, 64, 1 << 20]))
    # the rest of the old string value stays as junk: the parser must notice
    return _gguf(inputs, data, "gguf_alignment", {"*all*"}, note=key)


def gguf_data_flips(rng, inputs):
    data = bytearray(inputs.gguf)
    touched = set()
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(inputs.gguf_map.data_start, len(data))
        data[at] ^= 1 << rng.randrange(8)
        touched |= _what_is_at(inputs.gguf_map, at)
    return _gguf(inputs, data, "gguf_data_flips", touched, commands=("quantize",), note=str(sorted(touched)))


def gguf_q_flips(rng, inputs):
    """Flips in a Q4_K_M file, header or blocks (an f16 scale of inf or NaN, say)."""
    data = bytearray(inputs.gguf_q)
    m = inputs.gguf_q_map
    touched = set()
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(m.data_start) if rng.random() < 0.3 else rng.randrange(m.data_start, len(data))
        if at < m.data_start:
            data[at] = rng.randrange(256)
        else:
            data[at] ^= 1 << rng.randrange(8)
        touched |= _what_is_at(m, at)
    return Mutation("gguf_q_flips", {"model.gguf": bytes(data)}, ["inspect", "quantize", "perplexity"], touched,
                    note=str(sorted(touched)[:3]), reference="gguf_q")


# ---- safetensors
def _st(inputs, data: bytes, cls, touched=(), commands=("inspect", "quantize"), note=""):
    return Mutation(cls, {"model.safetensors": data}, list(commands), set(touched), note)


def _st_touched(old: dict, new) -> set:
    """GGUF names of the tensors whose header entries differ (all, if the header is not an object)."""
    if not isinstance(new, dict):
        return {"*all*"}
    names = (set(old) | set(new)) - {"__metadata__"}
    return {_gguf_name(n) or n for n in names if old.get(n) != new.get(n)}


def st_header_json(rng, inputs):
    h = copy.deepcopy(inputs.st_header)
    names = sorted(k for k in h if k != "__metadata__")
    name = rng.choice(names)
    kind = rng.randrange(12)
    if kind == 0:
        h = {}
    elif kind == 1:
        del h[name]
    elif kind == 2:
        h[name]["dtype"] = rng.choice([["BF16"], "F8_E4M3", "F64x", None, 3, "I32", "F16", "BOOL"])
    elif kind == 3:
        h[name]["shape"] = list(reversed(h[name]["shape"])) if len(h[name]["shape"]) > 1 else [1, *h[name]["shape"]]
    elif kind == 4:
        h[name]["shape"] = [rng.choice([0, -1, True, 1.5, "8", 2**63])] + h[name]["shape"][1:]
    elif kind == 5:
        b, e = h[name]["data_offsets"]
        h[name]["data_offsets"] = rng.choice([[b + 2, e + 2], [b - 2, e - 2], [e, b], [b, 2**64], [b], [-1, e]])
    elif kind == 6:
        h["__metadata__"] = rng.choice([[], "x", 5])
    elif kind == 7:
        h["model.layers.9.self_attn.q_proj.weight"] = h.pop(name)
    elif kind == 8:
        h["not.a.weight"] = h.pop(name)
    elif kind == 9:
        h[name] = rng.choice([None, [], "x", {"dtype": "BF16"}])
    elif kind == 10:
        other = rng.choice([n for n in names if n != name])
        h[other]["data_offsets"] = list(h[name]["data_offsets"])
    else:
        h[name]["shape"] = [d // 2 for d in h[name]["shape"]] + [2, 2]
    return _st(inputs, inputs.st_bytes(h), "st_header_json", _st_touched(inputs.st_header, h) if kind else {"*all*"},
               commands=("inspect", "quantize", "perplexity") if kind in (0, 1, 2) else ("inspect", "quantize"),
               note=f"kind {kind} {name}")


def st_header_length(rng, inputs):
    raw = json.dumps(inputs.st_header).encode() + b"  "
    delta = rng.choice([-1, -2, 1, 2, 2**40, -len(raw)])
    return _st(inputs, inputs.st_bytes(inputs.st_header, delta, raw=raw), "st_header_length", {"*all*"},
               commands=("inspect", "quantize", "perplexity"), note=str(delta))


def st_header_bytes(rng, inputs):
    st = bytearray(inputs.files["model.safetensors"])
    for _ in range(rng.randint(1, 3)):
        st[rng.randrange(8, inputs.st_data_start)] = rng.randrange(256)
    try:
        touched = _st_touched(inputs.st_header, json.loads(st[8:inputs.st_data_start]))
    except ValueError:
        touched = {"*all*"}
    return _st(inputs, bytes(st), "st_header_bytes", touched, note=f"flips, touched {sorted(touched)[:3]}")


def st_truncate(rng, inputs):
    st = inputs.files["model.safetensors"]
    cut = rng.choice([rng.randrange(0, inputs.st_data_start), rng.randrange(inputs.st_data_start, len(st))])
    return _st(inputs, st[:cut], "st_truncate", {"*all*"}, commands=("inspect", "quantize", "perplexity"),
               note=str(cut))


def st_data_flips(rng, inputs):
    st = bytearray(inputs.files["model.safetensors"])
    touched = set()
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(inputs.st_data_start, len(st))
        st[at] ^= 1 << rng.randrange(8)
        rel = at - inputs.st_data_start
        touched |= {_gguf_name(n) for n, v in inputs.st_header.items()
                    if n != "__metadata__" and v["data_offsets"][0] <= rel < v["data_offsets"][1]}
    return _st(inputs, bytes(st), "st_data_flips", touched, commands=("quantize",), note=str(sorted(touched)))


def st_data_nonfinite(rng, inputs):
    """A NaN or infinity among the bf16 weights: llama.cpp's quantize refuses such rows."""
    st = bytearray(inputs.files["model.safetensors"])
    name = rng.choice(sorted(n for n in inputs.st_header if n != "__metadata__"))
    begin, end = inputs.st_header[name]["data_offsets"]
    at = inputs.st_data_start + begin + 2 * rng.randrange((end - begin) // 2)
    st[at:at + 2] = struct.pack("<H", rng.choice([0x7FC0, 0x7F80, 0xFF80]))
    return _st(inputs, bytes(st), "st_data_nonfinite", {_gguf_name(name)}, commands=("quantize",), note=name)


def st_index(rng, inputs):
    """A sharded checkpoint's index beside the one file: valid, or pointing nowhere."""
    names = sorted(n for n in inputs.st_header if n != "__metadata__")
    weight_map = {n: "model.safetensors" for n in names}
    kind = rng.randrange(6)
    if kind == 1:
        weight_map[names[0]] = "model-00002-of-00002.safetensors"
    elif kind == 2:
        weight_map[names[0]] = rng.choice([5, None, ["x"], {}])
    elif kind == 3:
        weight_map[names[0]] = rng.choice(["../tiny-llama/model.safetensors", "/etc/passwd", ""])
    doc = {"metadata": {}, "weight_map": weight_map}
    if kind == 4:
        doc = rng.choice([[], {"weight_map": []}, {"metadata": {}}])
    data = json.dumps(doc).encode() if kind != 5 else b"\xff\xfe{"
    return Mutation("st_index", {"model.safetensors.index.json": data}, ["quantize", "perplexity"],
                    set(), note=f"kind {kind}")


def _gguf_name(hf_name: str) -> str | None:
    """The converter's GGUF name for one of the sample's HF tensors (None for other names)."""
    from convkit.errors import ConvkitError

    try:
        return _sample_architecture().gguf_name(hf_name)
    except ConvkitError:
        return None


@functools.cache
def _sample_architecture():
    from convkit.arch import architecture_for

    return architecture_for(json.loads((SAMPLE / "config.json").read_text()))


# ---- config.json
CONFIG_VALUES = [[256], "", {}, None, True, -1, 0, 3, 2**63, -256, 1e300, 1.5, "4", float("nan")]


def _config(inputs, doc_or_bytes, cls, key, commands=("quantize", "perplexity")):
    data = doc_or_bytes if isinstance(doc_or_bytes, bytes) else json.dumps(doc_or_bytes).encode()
    return Mutation(cls, {"config.json": data}, list(commands), {"*metadata*"}, note=key)


def _config_value(rng, inputs, keys, cls):
    doc = json.loads(inputs.files["config.json"])
    key = rng.choice(keys)
    value = rng.choice(CONFIG_VALUES)
    doc[key] = value
    return _config(inputs, doc, cls, f"{key}={value!r}")


def config_layers(rng, inputs):
    return _config_value(rng, inputs, ["num_hidden_layers"], "config_layers")


def config_heads(rng, inputs):
    return _config_value(rng, inputs, ["num_attention_heads", "num_key_value_heads", "head_dim"], "config_heads")


def config_sizes(rng, inputs):
    return _config_value(rng, inputs, ["hidden_size", "intermediate_size", "vocab_size",
                                       "max_position_embeddings"], "config_sizes")


def config_floats(rng, inputs):
    return _config_value(rng, inputs, ["rms_norm_eps", "rope_theta"], "config_floats")


def config_token_ids(rng, inputs):
    return _config_value(rng, inputs, ["bos_token_id", "eos_token_id"], "config_token_ids")


def config_rope_scaling(rng, inputs):
    doc = json.loads(inputs.files["config.json"])
    value = rng.choice([{"type": "linear"}, {"rope_type": "linear", "factor": "x"}, {"rope_type": "yarn", "factor": 2},
                        [], "linear", {"rope_type": "llama3", "factor": 8.0}])
    doc[rng.choice(["rope_scaling", "rope_parameters"])] = value
    return _config(inputs, doc, "config_rope_scaling", f"rope {value!r}")


def config_structure(rng, inputs):
    raw = inputs.files["config.json"]
    kind = rng.randrange(5)
    if kind == 0:
        data = bytes(rng.randrange(256) for _ in range(64))
    elif kind == 1:
        data = raw[:rng.randrange(len(raw))]
    elif kind == 2:
        data = b"[1, 2, 3]"
    elif kind == 3:
        doc = json.loads(raw)
        del doc[rng.choice(sorted(doc))]
        data = json.dumps(doc).encode()
    else:
        doc = json.loads(raw)
        doc["architectures"] = rng.choice([[], "LlamaForCausalLM", [None], ["BertModel"], None])
        data = json.dumps(doc).encode()
    return _config(inputs, data, "config_structure", f"kind {kind}")


# ---- tokenizer.json
def _tok(inputs, doc_or_bytes, cls, note, commands=("encode", "quantize", "perplexity")):
    data = doc_or_bytes if isinstance(doc_or_bytes, bytes) else json.dumps(doc_or_bytes).encode()
    return Mutation(cls, {"tokenizer.json": data}, list(commands), {"*metadata*"}, note=note)


def tokenizer_values(rng, inputs):
    doc = json.loads(inputs.files["tokenizer.json"])
    kind = rng.randrange(9)
    vocab = doc["model"]["vocab"]
    token = rng.choice(sorted(vocab))
    if kind == 0:
        vocab[token] = str(vocab[token])
    elif kind == 1:
        vocab[token] = -1
    elif kind == 2:
        vocab[token] = rng.choice([10**9, 2**32, 4096, True, 1.5, None])
    elif kind == 3:
        doc["model"] = [doc["model"]]
    elif kind == 4:
        doc["added_tokens"] = "<|endoftext|>"
    elif kind == 5:
        doc["added_tokens"] = [{"id": 5}]
    elif kind == 6:
        doc["added_tokens"] = [{"id": rng.choice([10**9, -1, "0", 4096]), "content": "<x>", "special": True}]
    elif kind == 7:
        doc["model"]["merges"] = rng.choice([["ab"], "a b", [["a"]], [[1, 2]], [" a"]])
    else:
        del vocab[token]
    return _tok(inputs, doc, "tokenizer_values", f"kind {kind} {token!r}")


def tokenizer_structure(rng, inputs):
    raw = inputs.files["tokenizer.json"]
    kind = rng.randrange(6)
    doc = json.loads(raw)
    if kind == 0:
        data = raw[:rng.randrange(len(raw))]
    elif kind == 1:
        data = bytes(rng.randrange(256) for _ in range(128))
    elif kind == 2:
        doc["pre_tokenizer"] = rng.choice([None, [], "ByteLevel", {"type": "Split"}, {"type": "Sequence"}])
        data = json.dumps(doc).encode()
    elif kind == 3:
        doc["post_processor"] = rng.choice([{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "x"}}],
                                             "special_tokens": {"x": {"ids": [10**9]}}},
                                            {"type": "TemplateProcessing", "single": "x"},
                                            {"type": "Sequence", "processors": "x"}, []])
        data = json.dumps(doc).encode()
    elif kind == 4:
        doc["model"]["type"] = rng.choice(["Unigram", None, 5, "WordPiece"])
        data = json.dumps(doc).encode()
    else:
        data = b"[]"
    return _tok(inputs, data, "tokenizer_structure", f"kind {kind}")


def tokenizer_config(rng, inputs):
    doc = json.loads(inputs.files["tokenizer_config.json"])
    kind = rng.randrange(4)
    if kind == 0:
        data = b"\xff\xfe garbage"
    elif kind == 1:
        data = b"[]"
    elif kind == 2:
        doc["bos_token"] = rng.choice([[], {"content": 5}, "<no such token>"])
        data = json.dumps(doc).encode()
    else:
        doc["added_tokens_decoder"] = rng.choice([[], {"x": {}}, {"99999999": {"content": "a"}}])
        data = json.dumps(doc).encode()
    return Mutation("tokenizer_config", {"tokenizer_config.json": data}, ["quantize", "perplexity"],
                    {"*metadata*"}, note=f"kind {kind}")


# ---- vocab.txt
def vocab_txt(rng, inputs):
    lines = inputs.vocab_txt.decode().split("\n")
    kind = rng.randrange(7)
    if kind == 0:
        data = bytes(rng.randrange(256) for _ in range(100))
    elif kind == 1:
        data = "\n".join(line for line in lines if line != "[UNK]").encode()
    elif kind == 2:
        data = "\r\n".join(lines).encode()
    elif kind == 3:
        data = b""
    elif kind == 4:
        data = ("\n".join(lines) + "x" * 100000).encode()
    elif kind == 5:
        rng.shuffle(lines)
        data = "\n".join(lines).encode()
    else:
        data = "\n".join(lines + lines).encode()
    return Mutation("vocab_txt", {"vocab.txt": data}, ["encode"], set(), note=f"kind {kind}")


CLASSES = {f.__name__: f for f in [
    gguf_header_flips, gguf_not_utf8, gguf_zero_dim, gguf_swap_dims, gguf_bad_dims, gguf_offsets, gguf_types,
    gguf_hparams, gguf_float_hparams, gguf_token_ids, gguf_lengths, gguf_truncate, gguf_block_count,
    gguf_data_flips, gguf_q_flips, gguf_names, gguf_alignment,
    st_header_json, st_header_length, st_header_bytes, st_truncate, st_data_flips, st_data_nonfinite, st_index,
    config_layers, config_heads, config_sizes, config_floats, config_token_ids, config_rope_scaling,
    config_structure,
    tokenizer_values, tokenizer_structure, tokenizer_config, vocab_txt,
]}


# ------------------------------------------------------------------ running
@dataclass
class Outcome:
    cls: str
    seed: int
    command: str
    code: object
    stderr: str
    problems: list
    note: str = ""


class _Runaway(BaseException):
    pass


def _alarm(signum, frame):
    raise _Runaway()


def run_cli(args, max_seconds: int = MAX_RUN_SECONDS) -> tuple:
    """convkit's main in this process: (exit code or the exception, stderr, warnings)."""
    from convkit.cli import main

    err = io.StringIO()
    code = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(max_seconds)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                main(args)
        except SystemExit as exc:
            code = exc.code
        except _Runaway:
            code = f"still running after {max_seconds} s"
        except BaseException as exc:  # noqa: BLE001 - a traceback is what the fuzzer looks for
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            code = f"{type(exc).__name__}: {str(exc)[:200]} (at {Path(frame.filename).name}:{frame.lineno})"
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    return code, err.getvalue(), [f"{w.category.__name__}: {w.message}" for w in caught]


def materialize(inputs: Inputs, mutation: Mutation, rundir: Path) -> dict:
    """Write the mutated inputs under rundir; return the paths each command needs."""
    model_dir = rundir / "tiny-llama"
    model_dir.mkdir(parents=True)
    for name, data in inputs.files.items():
        target = model_dir / name
        if name == "model.safetensors" and name not in mutation.files:
            target.symlink_to(inputs.model_dir / name)  # 10 MB not copied for runs that do not change it
        else:
            target.write_bytes(mutation.files.get(name, data))
    for name, data in mutation.files.items():  # files the sample does not have (a shard index)
        if name not in inputs.files and name not in ("model.gguf", "vocab.txt"):
            (model_dir / name).write_bytes(data)
    gguf_path = rundir / "model.gguf"
    gguf_path.write_bytes(mutation.files.get("model.gguf", inputs.gguf))
    vocab = rundir / "vocab.txt"
    vocab.write_bytes(mutation.files.get("vocab.txt", inputs.vocab_txt))
    return {"dir": model_dir, "gguf": gguf_path, "vocab": vocab}


def command_args(command: str, mutation: Mutation, paths: dict, out: Path, text: Path) -> list:
    gguf_input = "model.gguf" in mutation.files
    model = paths["gguf"] if gguf_input else paths["dir"]
    if command == "inspect":
        return ["inspect", str(paths["gguf"] if gguf_input else paths["dir"] / "model.safetensors")]
    if command == "quantize":
        return ["quantize", str(model), "--type", "q8_0", "-o", str(out), "--quiet"]
    if command == "perplexity":
        return ["perplexity", str(model), "--text", str(text), "--ctx", "64", "--chunks", "1", "-q"]
    if command == "encode":
        tok = paths["vocab"] if "vocab.txt" in mutation.files else paths["dir"] / "tokenizer.json"
        return ["tokenize", "encode", "-t", str(tok), TEXT[:200]]
    raise ValueError(command)


def _digest(paths) -> dict:
    out = {}
    for p in paths:
        for f in ([p] if p.is_file() else sorted(p.iterdir())):
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def output_is_valid(out: Path) -> list:
    """What convkit writes, convkit must accept as input: a value out of range that slipped
    through (a negative epsilon from config.json, say) shows up here."""
    from convkit import gguf_model
    from convkit.errors import ConvkitError
    from convkit.gguf_check import read_layout

    try:
        gguf_model.check_model(read_layout(out), out)
    except ConvkitError as exc:
        return [f"the output is not a valid GGUF: {exc}"]
    return []


def compare_output(inputs: Inputs, mutation: Mutation, out: Path) -> list:
    """What differs between this output and the unmutated input's, outside what was touched."""
    if {"*all*", "*header*", "*padding*"} & mutation.touched:
        return [] if not out.exists() else _compare(inputs, mutation, out, strict_tensors=False)
    return _compare(inputs, mutation, out, strict_tensors=True)


def _compare(inputs, mutation, out, strict_tensors):
    ref = inputs.reference[mutation.reference or ("gguf" if "model.gguf" in mutation.files else "hf")]
    got = read_output(out)
    problems = []
    touched = mutation.touched
    if strict_tensors:
        names = set(ref["tensors"]) | set(got["tensors"])
        for name in sorted(names - touched):
            if ref["tensors"].get(name) != got["tensors"].get(name):
                problems.append(f"tensor {name} differs from the unmutated input's output "
                                f"({ref['tensors'].get(name, 'absent')[:2] if name in ref['tensors'] else 'absent'} vs "
                                f"{got['tensors'].get(name, ('absent',))[:2]})")
        if "*metadata*" not in touched:
            for key in sorted((set(ref["fields"]) | set(got["fields"])) - touched):
                if ref["fields"].get(key) != got["fields"].get(key):
                    problems.append(f"metadata {key} differs from the unmutated input's output")
    elif set(got["tensors"]) != set(ref["tensors"]):
        problems.append(f"the output holds {len(got['tensors'])} tensors, the unmutated input's "
                        f"{len(ref['tensors'])}")
    return problems


def run_mutation(inputs: Inputs, cls: str, seed: int, rundir: Path, commands=None,
                 max_seconds: int = MAX_RUN_SECONDS) -> list:
    """Apply class `cls` with `seed`, run its commands; one Outcome per command."""
    rng = random.Random(f"{cls}:{seed}")
    mutation = CLASSES[cls](rng, inputs)
    paths = materialize(inputs, mutation, rundir)
    outcomes = []
    for command in commands or mutation.commands:
        if command not in mutation.commands:
            continue
        outdir = rundir / f"out-{command}"
        outdir.mkdir()
        out = outdir / "out.gguf"
        watched = [paths["dir"], paths["gguf"], paths["vocab"]]
        before = _digest(watched)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        code, stderr, warned = run_cli(command_args(command, mutation, paths, out, inputs.text), max_seconds)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
        problems = []
        if code not in (0, 2, None):
            problems.append(f"exit {code!r}" if not isinstance(code, str) else f"crash: {code}")
        if "Traceback" in stderr:
            problems.append("traceback on stderr")
        if warned:
            problems.append(f"warnings: {warned[:3]}")
        if code == 2 and (not stderr.startswith("convkit: error:") or stderr.strip().count("\n")):
            problems.append(f"not one error line: {stderr[:300]!r}")
        if grown > MAX_RSS_GROWTH_KIB:
            problems.append(f"peak memory grew by {grown // 1024} MiB")
        if _digest(watched) != before:
            problems.append("an input file changed")
        left = sorted(p.name for p in outdir.iterdir())
        if code != 0 and left:
            problems.append(f"left behind after failure: {left}")
        if code in (0, None) and command == "quantize":
            if not out.exists():
                problems.append("exit 0 without an output file")
            else:
                invalid = output_is_valid(out)
                problems += invalid or compare_output(inputs, mutation, out)
        if code in (0, None) and [n for n in left if n != "out.gguf"]:
            problems.append(f"temporary files left: {left}")
        outcomes.append(Outcome(cls, seed, command, code, stderr.strip()[:400], problems, mutation.note))
    return outcomes
