"""SentencePiece's `tokenizer.model`: the protobuf message ModelProto, read and written
without a protobuf library.

Only the wire format is needed (varints, 32-bit floats, length-delimited strings and
sub-messages). The field numbers and types are those of sentencepiece's
`sentencepiece_model.proto`. A message is read into a dict holding the fields the file
sets (proto2 presence: a field the file leaves out stays out, so that writing the dict
back gives the same bytes, fields in number order as protobuf's C++ writer does);
fields we do not know are kept as raw bytes and written back after the known ones.
"""
import struct

from .errors import TokenizerError

# wire types
VARINT, I64, LEN, I32 = 0, 1, 2, 5

# field kinds: how a value is stored on the wire and shown in Python
INT32, UINT64, BOOL, ENUM, FLOAT, STRING, BYTES = "int32", "uint64", "bool", "enum", "float", "string", "bytes"
_WIRE = {INT32: VARINT, UINT64: VARINT, BOOL: VARINT, ENUM: VARINT, FLOAT: I32, STRING: LEN, BYTES: LEN}

# name -> (number, kind, repeated); a kind that is a dict is a sub-message schema
PIECE = {"piece": (1, STRING, False), "score": (2, FLOAT, False), "type": (3, ENUM, False)}
TRAINER_SPEC = {
    "input": (1, STRING, True), "input_format": (7, STRING, False), "model_prefix": (2, STRING, False),
    "model_type": (3, ENUM, False), "vocab_size": (4, INT32, False), "accept_language": (5, STRING, True),
    "self_test_sample_size": (6, INT32, False), "character_coverage": (10, FLOAT, False),
    "input_sentence_size": (11, UINT64, False), "mining_sentence_size": (12, INT32, False),
    "training_sentence_size": (13, INT32, False), "seed_sentencepiece_size": (14, INT32, False),
    "shrinking_factor": (15, FLOAT, False), "num_threads": (16, INT32, False),
    "num_sub_iterations": (17, INT32, False), "max_sentence_length": (18, INT32, False),
    "shuffle_input_sentence": (19, BOOL, False), "max_sentencepiece_length": (20, INT32, False),
    "split_by_unicode_script": (21, BOOL, False), "split_by_whitespace": (22, BOOL, False),
    "split_by_number": (23, BOOL, False), "treat_whitespace_as_suffix": (24, BOOL, False),
    "split_digits": (25, BOOL, False), "allow_whitespace_only_pieces": (26, BOOL, False),
    "control_symbols": (30, STRING, True), "user_defined_symbols": (31, STRING, True),
    "vocabulary_output_piece_score": (32, BOOL, False), "hard_vocab_limit": (33, BOOL, False),
    "use_all_vocab": (34, BOOL, False), "byte_fallback": (35, BOOL, False),
    "required_chars": (36, STRING, False), "unk_id": (40, INT32, False), "bos_id": (41, INT32, False),
    "eos_id": (42, INT32, False), "pad_id": (43, INT32, False), "unk_surface": (44, STRING, False),
    "unk_piece": (45, STRING, False), "bos_piece": (46, STRING, False), "eos_piece": (47, STRING, False),
    "pad_piece": (48, STRING, False), "train_extremely_large_corpus": (49, BOOL, False),
    "enable_differential_privacy": (50, BOOL, False), "differential_privacy_noise_level": (51, FLOAT, False),
    "differential_privacy_clipping_threshold": (52, UINT64, False),
    "pretokenization_delimiter": (53, STRING, False), "seed_sentencepieces_file": (54, STRING, False),
    "auto_character_coverage": (55, BOOL, False),
}
NORMALIZER_SPEC = {
    "name": (1, STRING, False), "precompiled_charsmap": (2, BYTES, False), "add_dummy_prefix": (3, BOOL, False),
    "remove_extra_whitespaces": (4, BOOL, False), "escape_whitespaces": (5, BOOL, False),
    "normalization_rule_tsv": (6, STRING, False),
}
SAMPLE = {"input": (1, STRING, False), "expected": (2, STRING, False)}
SELF_TEST = {"samples": (1, SAMPLE, True)}
MODEL = {"pieces": (1, PIECE, True), "trainer_spec": (2, TRAINER_SPEC, False),
         "normalizer_spec": (3, NORMALIZER_SPEC, False), "self_test_data": (4, SELF_TEST, False),
         "denormalizer_spec": (5, NORMALIZER_SPEC, False)}

# enum values
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
PIECE_TYPES = {NORMAL: "normal", UNKNOWN: "unknown", CONTROL: "control", USER_DEFINED: "user_defined",
               UNUSED: "unused", BYTE: "byte"}
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
# defaults of the fields we read (proto2 defaults of sentencepiece_model.proto)
DEFAULTS = {"model_type": 1, "byte_fallback": False, "treat_whitespace_as_suffix": False,
            "unk_surface": " \u2047 ", "add_dummy_prefix": True, "remove_extra_whitespaces": True,
            "escape_whitespaces": True, "score": 0.0, "type": NORMAL, "piece": "", "name": "",
            "precompiled_charsmap": b"", "unk_piece": "<unk>", "bos_piece": "<s>", "eos_piece": "</s>",
            "pad_piece": "<pad>", "unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1,
            "allow_whitespace_only_pieces": False, "split_digits": False}


class ProtoError(ValueError):
    """Bytes that are not a valid message of the expected schema."""


def field(message: dict, name: str):
    """A field's value, or its proto2 default when the file leaves it out."""
    if name in message:
        return message[name]
    return DEFAULTS[name]


# ---------------------------------------------------------------------------- reading
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    n = len(buf)
    while True:
        if i >= n:
            raise ProtoError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7
        if shift >= 70:
            raise ProtoError("varint longer than 10 bytes")


def _signed32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def decode(buf: bytes, schema: dict, depth: int = 0) -> dict:
    """The fields of one message (sub-messages decoded by their schemas)."""
    by_number = {number: (name, kind, repeated) for name, (number, kind, repeated) in schema.items()}
    out: dict = {}
    unknown = []
    i, n = 0, len(buf)
    while i < n:
        start = i
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError("field number 0")
        if wire == VARINT:
            value, i = _varint(buf, i)
        elif wire == I64:
            if i + 8 > n:
                raise ProtoError("truncated 64-bit field")
            value, i = buf[i:i + 8], i + 8
        elif wire == LEN:
            length, i = _varint(buf, i)
            if i + length > n:
                raise ProtoError(f"field {number} runs {i + length - n} bytes past the end")
            value, i = buf[i:i + length], i + length
        elif wire == I32:
            if i + 4 > n:
                raise ProtoError("truncated 32-bit field")
            value, i = buf[i:i + 4], i + 4
        else:
            raise ProtoError(f"wire type {wire} of field {number} does not exist")
        spec = by_number.get(number)
        if spec is None:
            unknown.append(buf[start:i])
            continue
        name, kind, repeated = spec
        expected = LEN if isinstance(kind, dict) else _WIRE[kind]
        if wire != expected:
            raise ProtoError(f"field {name} has wire type {wire}, expected {expected}")
        if isinstance(kind, dict):
            if depth > 8:
                raise ProtoError("messages nested too deep")
            value = decode(value, kind, depth + 1)
        elif kind == FLOAT:
            value = struct.unpack("<f", value)[0]
        elif kind == STRING:
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtoError(f"field {name} is not UTF-8 text") from None
        elif kind == BOOL:
            value = bool(value)
        elif kind in (INT32, ENUM):
            value = _signed32(value)
        if repeated:
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    if unknown:
        out["_unknown"] = unknown
    return out


# ---------------------------------------------------------------------------- writing
def _put_varint(out: bytearray, v: int) -> None:
    if v < 0:
        v += 1 << 64  # int32 negatives take ten bytes, as in protobuf
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def encode(message: dict, schema: dict) -> bytes:
    out = bytearray()
    for name, (number, kind, repeated) in sorted(schema.items(), key=lambda kv: kv[1][0]):
        if name not in message:
            continue
        for value in (message[name] if repeated else [message[name]]):
            if isinstance(kind, dict):
                body = encode(value, kind)
                _put_varint(out, number << 3 | LEN)
                _put_varint(out, len(body))
                out += body
            elif kind == FLOAT:
                _put_varint(out, number << 3 | I32)
                out += struct.pack("<f", value)
            elif kind in (STRING, BYTES):
                data = value.encode("utf-8") if kind == STRING else bytes(value)
                _put_varint(out, number << 3 | LEN)
                _put_varint(out, len(data))
                out += data
            else:
                _put_varint(out, number << 3 | VARINT)
                _put_varint(out, int(value))
    for raw in message.get("_unknown", ()):
        out += raw
    return bytes(out)


def read_model(data: bytes, name: str) -> dict:
    """A ModelProto from the bytes of a tokenizer.model, checked to be one."""
    try:
        model = decode(data, MODEL)
    except ProtoError as exc:
        raise TokenizerError(f"{name}: not a sentencepiece model, or a truncated one ({exc}); "
                             f"pass the model's complete tokenizer.model") from None
    pieces = model.get("pieces")
    if not pieces or "trainer_spec" not in model:
        raise TokenizerError(f"{name}: protobuf without sentencepiece pieces and trainer spec, so not a "
                             f"sentencepiece tokenizer.model")
    for i, p in enumerate(pieces):
        if not p.get("piece"):
            raise TokenizerError(f"{name}: piece {i} is empty; the model is damaged")
        if field(p, "type") not in PIECE_TYPES:
            raise TokenizerError(f"{name}: piece {i} has unknown type {p.get('type')}; the model is damaged")
    return model


def write_model(model: dict) -> bytes:
    return encode(model, MODEL)
