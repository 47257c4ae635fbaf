"""Streaming GGUF output: header, metadata and tensor table first, then one tensor at a time.

Built on gguf.GGUFWriter; the file appears only when complete (convkit.atomic).
"""
import struct
from dataclasses import dataclass

import gguf
import numpy as np

import quant
from convkit.atomic import atomic_path
from convkit.errors import ConvkitError


@dataclass
class PlannedTensor:
    name: str
    shape: tuple          # numpy order (row length last)
    qtype: int            # ggml type id

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(self.qtype)]
        n = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        return n // block * size


def encode(values: np.ndarray, qtype: int, imatrix=None, threads: int = 1) -> np.ndarray:
    """float32 numpy-order tensor -> the bytes ggml stores for `qtype` (uint8, flat)."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint8)
    rows = values.reshape(-1, values.shape[-1]) if values.ndim else values.reshape(1, 1)
    return np.asarray(quant.quantize(rows, int(qtype), imatrix=imatrix, threads=threads)).reshape(-1)


def write_gguf(target, arch_name: str, write_metadata, plan, produce, *, inputs=(), on_tensor=None):
    """write_metadata(writer) adds the KV pairs; produce(planned) returns its uint8 bytes."""
    # metadata and tensor table are built in memory first: an error in them (a damaged
    # tokenizer file, say) stops the run before the output file is opened
    w = gguf.GGUFWriter(None, arch_name)
    write_metadata(w)
    for t in plan:
        qtype = gguf.GGMLQuantizationType(t.qtype)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        shape = tuple(t.shape) or (1,)
        byte_shape = shape[:-1] + (shape[-1] // block * size,)  # gguf-py wants bytes per row
        w.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=qtype)
    _check_values(w, target)
    with atomic_path(target, inputs=inputs) as tmp:
        try:
            w.write_header_to_file(path=tmp)
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            for t in plan:
                data = produce(t)
                if data.nbytes != t.nbytes:
                    raise AssertionError(f"{t.name}: produced {data.nbytes} bytes, planned {t.nbytes}")
                w.write_tensor_data(data)
                if on_tensor:
                    on_tensor(t)
        finally:
            w.close()


def _check_values(w: gguf.GGUFWriter, target) -> None:
    """Every metadata value fits its GGUF type (a negative count in a uint32, a float32 of
    1e300): packed once here, so that such a value is an error before the output opens."""
    for key, val in w.kv_data[0].items():
        try:
            w._pack_val(val.value, val.type, add_vtype=True, sub_type=val.sub_type)
        except (struct.error, OverflowError, ValueError, TypeError) as exc:
            raise ConvkitError(f"{target}: metadata {key} = {str(val.value)[:60]} does not fit GGUF type "
                               f"{val.type.name} ({exc}); the input's config.json or tokenizer files hold a "
                               "value out of range") from None
