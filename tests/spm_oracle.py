"""sentencepiece as the oracle for the trainers: train it, read its pieces, and put our
pieces into one of its models so that its own encoder segments text with them.

A model file is a protobuf (ModelProto): field 1 repeats the pieces (each: 1 piece,
2 score as float32, 3 type), the other fields hold the trainer and normalizer specs.
Swapping field 1 keeps sentencepiece's normalizer, so both vocabularies see the same
normalized text. No protobuf package is needed for that.
"""
import io
import struct
from pathlib import Path

import sentencepiece as spm


def train(corpus: Path, model_type: str, vocab_size: int, **kwargs) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(input=str(corpus), model_writer=model, model_type=model_type,
                                   vocab_size=vocab_size, minloglevel=2, **kwargs)
    return model.getvalue()


def pieces(model: bytes) -> list[tuple[str, float, int]]:
    """(piece, score, type) of every piece of a model, read from its protobuf (the
    processor's API cannot tell user-defined pieces from normal ones)."""
    out = []
    for num, raw in _fields(model):
        if num != 1:
            continue
        _, i = _read_varint(raw, 0)  # the field's key
        _, i = _read_varint(raw, i)  # its length
        piece, score, kind = None, 0.0, 1
        for field, body in _fields(raw[i:]):
            if field == 1:
                n, j = _read_varint(body, 1)
                piece = body[j:j + n].decode("utf-8")
            elif field == 2:
                score = struct.unpack("<f", body[1:5])[0]
            elif field == 3:
                kind = _read_varint(body, 1)[0]
        out.append((piece, score, kind))
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def _fields(buf: bytes):
    """(field number, raw bytes of the whole field) of a protobuf message."""
    i = 0
    while i < len(buf):
        start = i
        key, i = _read_varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _read_varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            n, i = _read_varint(buf, i)
            i += n
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
        yield key >> 3, buf[start:i]


def _piece_message(piece: str, score: float, kind: int) -> bytes:
    raw = piece.encode("utf-8")
    body = b"\x0a" + _varint(len(raw)) + raw + b"\x15" + struct.pack("<f", score)
    if kind != 1:
        body += b"\x18" + _varint(kind)
    return b"\x0a" + _varint(len(body)) + body


def with_pieces(model: bytes, vocab: list[tuple[str, float, int]]) -> bytes:
    """The model with its pieces replaced by vocab (specs kept)."""
    rest = b"".join(raw for num, raw in _fields(model) if num != 1)
    return b"".join(_piece_message(*v) for v in vocab) + rest


def token_stats(model: bytes, lines: list[str]) -> tuple[int, float]:
    """(number of tokens, mean log-probability per token under the model's scores) over lines."""
    sp = spm.SentencePieceProcessor(model_proto=model)
    n_tokens = 0
    total = 0.0
    for ids in sp.encode(lines):
        n_tokens += len(ids)
        total += sum(sp.get_score(i) for i in ids)
    return n_tokens, total / max(n_tokens, 1)
