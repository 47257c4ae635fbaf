"""Imatrix files against llama.cpp.

GGUF format: ggml's own gguf writer (libggml-base.so, called the way llama-imatrix's
save_imatrix calls it) writes the reference file; ours must be byte-identical and our
reader must read it. Legacy .dat: built byte by byte from save_imatrix_legacy's layout.
The vectors we derive go into llama_model_quantize (params.imatrix) and must give the same
bytes as ggml_quantize_chunk with that vector, and different bytes than without it.
"""
import ctypes
import struct

import gguf
import numpy as np
import pytest

from quant.errors import QuantError
from quant.imatrix import (from_statistics, gguf_bytes, importance_for, legacy_bytes,
                           load_importance, read_imatrix, write_imatrix)
from realdata import ggml_base_library


# ---------------------------------------------------------------- ggml's gguf writer via ctypes

class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p),
                ("no_alloc", ctypes.c_bool)]


@pytest.fixture(scope="module")
def ggml():
    lib = ctypes.CDLL(str(ggml_base_library()))
    P = ctypes.c_void_p
    sig = {
        "ggml_init": (P, [_InitParams]),
        "ggml_free": (None, [P]),
        "ggml_tensor_overhead": (ctypes.c_size_t, []),
        "ggml_new_tensor_2d": (P, [P, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]),
        "ggml_set_name": (P, [P, ctypes.c_char_p]),
        "ggml_get_data": (P, [P]),
        "gguf_init_empty": (P, []),
        "gguf_free": (None, [P]),
        "gguf_set_val_str": (None, [P, ctypes.c_char_p, ctypes.c_char_p]),
        "gguf_set_arr_str": (None, [P, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t]),
        "gguf_set_val_u32": (None, [P, ctypes.c_char_p, ctypes.c_uint32]),
        "gguf_add_tensor": (None, [P, P]),
        "gguf_write_to_file": (ctypes.c_bool, [P, ctypes.c_char_p, ctypes.c_bool]),
        "ggml_quantize_chunk": (ctypes.c_size_t, [ctypes.c_int, P, P, ctypes.c_int64, ctypes.c_int64,
                                                  ctypes.c_int64, P]),
        "ggml_row_size": (ctypes.c_size_t, [ctypes.c_int, ctypes.c_int64]),
    }
    for name, (res, args) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def ggml_write_imatrix(lib, path, stats, datasets, chunk_count, chunk_size):
    """IMatrixCollector::save_imatrix's sequence of ggml/gguf calls, on stats {name: (values, counts)}."""
    names = sorted(stats, key=str.encode)
    size = sum(2 * lib.ggml_tensor_overhead() + 4 * (stats[n][0].size + stats[n][1].size) + 64
               for n in names)
    ctx = lib.ggml_init(_InitParams(size + 1024, None, False))
    ctx_gguf = lib.gguf_init_empty()
    try:
        lib.gguf_set_val_str(ctx_gguf, b"general.type", b"imatrix")
        arr = (ctypes.c_char_p * len(datasets))(*[d.encode() for d in datasets])
        lib.gguf_set_arr_str(ctx_gguf, b"imatrix.datasets", arr, len(datasets))
        lib.gguf_set_val_u32(ctx_gguf, b"imatrix.chunk_count", chunk_count)
        lib.gguf_set_val_u32(ctx_gguf, b"imatrix.chunk_size", chunk_size)
        for name in names:
            values, counts = stats[name]
            nmat = counts.size
            sums_t = lib.ggml_new_tensor_2d(ctx, 0, values.size // nmat, nmat)
            counts_t = lib.ggml_new_tensor_2d(ctx, 0, 1, nmat)
            lib.ggml_set_name(sums_t, f"{name}.in_sum2".encode())
            lib.ggml_set_name(counts_t, f"{name}.counts".encode())
            ctypes.memmove(lib.ggml_get_data(sums_t), values.astype(np.float32).ctypes.data, 4 * values.size)
            ctypes.memmove(lib.ggml_get_data(counts_t), counts.astype(np.float32).ctypes.data, 4 * nmat)
            lib.gguf_add_tensor(ctx_gguf, sums_t)
            lib.gguf_add_tensor(ctx_gguf, counts_t)
        assert lib.gguf_write_to_file(ctx_gguf, str(path).encode(), False)
    finally:
        lib.gguf_free(ctx_gguf)
        lib.ggml_free(ctx)


def sample_stats(seed=0):
    """Raw statistics as llama-imatrix collects them: dense weights and an expert weight."""
    rng = np.random.default_rng(seed)
    stats = {}
    for layer in (0, 1, 10, 2):
        for part, ne0 in (("attn_q", 64), ("ffn_down", 96)):
            calls = int(rng.integers(1, 5)) * 512
            sums = (rng.random(ne0, dtype=np.float32) * calls).astype(np.float32)
            stats[f"blk.{layer}.{part}.weight"] = (sums, np.array([calls], np.int64))
    experts = np.array([1024, 0, 77, 3000], np.int64)                  # one expert never ran
    sums = rng.random((4, 32), dtype=np.float32) * 100
    sums[1] = 0
    stats["blk.0.ffn_up_exps.weight"] = (sums.reshape(-1), experts)
    return stats


DATASETS = ["wiki.train.raw", "code.txt"]


# ---------------------------------------------------------------- GGUF format

def test_gguf_bytes_equal_ggml_writer(ggml, tmp_path):
    stats = sample_stats()
    reference = tmp_path / "ref.gguf"
    ggml_write_imatrix(ggml, reference, stats, DATASETS, 7, 512)
    ours = gguf_bytes(from_statistics(stats, DATASETS, chunk_count=7, chunk_size=512))
    assert ours == reference.read_bytes()


def test_read_ggml_written_gguf(ggml, tmp_path):
    stats = sample_stats(1)
    path = tmp_path / "ref.gguf"
    ggml_write_imatrix(ggml, path, stats, DATASETS, 3, 256)
    imatrix = read_imatrix(path)
    assert not imatrix.legacy and imatrix.has_metadata
    assert imatrix.datasets == DATASETS
    assert (imatrix.chunk_count, imatrix.chunk_size) == (3, 256)
    assert set(imatrix.sums) == set(stats)
    for name, (values, counts) in stats.items():
        assert np.array_equal(imatrix.sums[name].reshape(-1), values)
        assert np.array_equal(imatrix.counts[name], counts)

    # llama-quantize's load_imatrix: in_sum2 / counts per matrix, 1 where a matrix has no count
    vectors = load_importance(path)
    for name, (values, counts) in stats.items():
        rows = values.reshape(counts.size, -1)
        expected = np.concatenate([r / np.float32(c) if c > 0 else np.ones_like(r)
                                   for r, c in zip(rows, counts)])
        assert vectors[name].dtype == np.float32
        assert np.array_equal(vectors[name], expected)
    assert np.all(vectors["blk.0.ffn_up_exps.weight"][32:64] == 1)


def test_gguf_py_reads_ours(tmp_path):
    stats = sample_stats(2)
    path = tmp_path / "ours.gguf"
    write_imatrix(path, from_statistics(stats, ["d"], 5, 512))
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 * len(stats)
    assert reader.fields["imatrix.chunk_size"].contents() == 512
    assert reader.fields["imatrix.datasets"].contents() == ["d"]
    values, counts = stats["blk.0.ffn_up_exps.weight"]
    assert list(tensors["blk.0.ffn_up_exps.weight.in_sum2"].shape) == [32, 4]
    assert np.array_equal(np.asarray(tensors["blk.0.ffn_up_exps.weight.in_sum2"].data).reshape(-1), values)
    assert np.array_equal(np.asarray(tensors["blk.0.ffn_up_exps.weight.counts"].data).reshape(-1),
                          counts.astype(np.float32))


def test_gguf_round_trip_is_identical(ggml, tmp_path):
    path = tmp_path / "ref.gguf"
    ggml_write_imatrix(ggml, path, sample_stats(3), DATASETS, 9, 512)
    again = tmp_path / "again.gguf"
    write_imatrix(again, read_imatrix(path))
    assert again.read_bytes() == path.read_bytes()


# ---------------------------------------------------------------- legacy .dat format

def legacy_file_by_hand(entries, last_call, dataset):
    """save_imatrix_legacy's layout: entries [(name, ncall, values already scaled)]."""
    out = struct.pack("<i", len(entries))
    for name, ncall, values in entries:
        out += struct.pack("<i", len(name)) + name.encode()
        out += struct.pack("<i", ncall) + struct.pack("<i", len(values))
        out += struct.pack(f"<{len(values)}f", *values)
    out += struct.pack("<i", last_call)
    out += struct.pack("<i", len(dataset)) + dataset.encode()
    return out


def test_legacy_bytes_follow_save_imatrix_legacy():
    """Per entry: ncall = ceil(max count / chunk), values (sum / count) * ncall, 1 for empty experts."""
    stats = sample_stats(4)
    chunk = 512
    entries = []
    for name in sorted(stats):
        values, counts = stats[name]
        ncall = (int(counts.max()) + chunk - 1) // chunk
        per = np.repeat(counts.astype(np.float32), values.size // counts.size)
        scaled = [float((np.float32(1) / np.float32(1) if c == 0 else np.float32(v) / c) * np.float32(ncall))
                  for v, c in zip(values, per)]
        entries.append((name, ncall, scaled))
    expected = legacy_file_by_hand(entries, 11, DATASETS[-1])
    ours = legacy_bytes(from_statistics(stats, DATASETS, chunk_count=11, chunk_size=chunk))
    assert ours == expected


def test_read_legacy_file(tmp_path):
    entries = [("blk.0.attn_k.weight", 4, [8.0, 2.0, 0.5]),
               ("output.weight", 0, [3.0, 1.5]),
               ("blk.1.attn_k.weight", 3, [1.0, 2.0, 4.0])]
    path = tmp_path / "imatrix.dat"
    path.write_bytes(legacy_file_by_hand(entries, 40, "calibration.txt"))
    imatrix = read_imatrix(path)
    assert imatrix.legacy
    assert imatrix.chunk_count == 40 and imatrix.datasets == ["calibration.txt"]
    vectors = load_importance(path)
    assert list(vectors) == sorted(name for name, _, _ in entries)
    assert np.array_equal(vectors["blk.0.attn_k.weight"], np.float32([2.0, 0.5, 0.125]))
    assert np.array_equal(vectors["output.weight"], np.float32([3.0, 1.5]))     # ncall 0: as stored
    assert np.array_equal(vectors["blk.1.attn_k.weight"],
                          np.float32([1.0, 2.0, 4.0]) / np.float32(3))
    # written back, byte for byte (entries sorted by name, as llama-imatrix sorts them)
    again = tmp_path / "again.dat"
    write_imatrix(again, imatrix, fmt="dat")
    assert again.read_bytes() == legacy_file_by_hand(sorted(entries), 40, "calibration.txt")
    # and as GGUF, the way llama-imatrix --in-file converts: values and counts times the chunk size
    as_gguf = tmp_path / "converted.gguf"
    write_imatrix(as_gguf, imatrix, chunk_size=512)
    raw = read_imatrix(as_gguf)
    assert raw.chunk_size == 512 and raw.chunk_count == 4
    assert np.array_equal(raw.counts["blk.0.attn_k.weight"], [4 * 512])
    assert np.array_equal(load_importance(as_gguf)["blk.0.attn_k.weight"], np.float32([2.0, 0.5, 0.125]))


def test_legacy_without_trailer_and_selection(tmp_path):
    body = legacy_file_by_hand([("a.weight", 2, [4.0]), ("b.weight", 2, [6.0])], 0, "")[:-8]
    path = tmp_path / "short.dat"
    path.write_bytes(body)
    imatrix = read_imatrix(path)
    assert imatrix.chunk_count == 0 and imatrix.datasets == []
    assert list(load_importance(path, include=["a."])) == ["a.weight"]
    assert list(load_importance(path, exclude=["a."])) == ["b.weight"]
    with pytest.raises(QuantError):
        load_importance(path, include=["a"], exclude=["b"])


# ---------------------------------------------------------------- errors a user can cause

def test_damaged_files_are_one_line_errors(ggml, tmp_path):
    good = tmp_path / "good.gguf"
    ggml_write_imatrix(ggml, good, sample_stats(5), DATASETS, 1, 512)
    cases = {
        "empty.dat": b"",
        "zero.dat": struct.pack("<i", 0),
        "truncated.dat": legacy_file_by_hand([("a.weight", 1, [1.0, 2.0])], 1, "x")[:20],
        "truncated.gguf": good.read_bytes()[:200],
    }
    for fname, blob in cases.items():
        path = tmp_path / fname
        path.write_bytes(blob)
        with pytest.raises(QuantError, match=fname):
            load_importance(path)
    with pytest.raises(QuantError, match="missing.gguf"):
        load_importance(tmp_path / "missing.gguf")


def test_gguf_without_metadata_is_refused(tmp_path):
    """llama-quantize refuses a GGUF imatrix that lacks datasets, chunk count or chunk size."""
    path = tmp_path / "nometa.gguf"
    writer = gguf.GGUFWriter(path, arch=None)
    writer.add_string("general.type", "imatrix")
    writer.add_uint32("imatrix.chunk_count", 1)
    writer.add_tensor("a.weight.in_sum2", np.ones((1, 32), np.float32))
    writer.add_tensor("a.weight.counts", np.ones((1, 1), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    imatrix = read_imatrix(path)
    assert not imatrix.has_metadata and imatrix.chunk_count == 1
    with pytest.raises(QuantError, match="metadata"):
        load_importance(path)


def test_importance_for_a_tensor():
    vectors = {"blk.0.ffn_up_exps.weight": np.arange(4 * 32, dtype=np.float32),
               "blk.0.attn_q.weight": np.ones(64, np.float32),
               "token_embd.weight": np.ones(10, np.float32)}
    assert importance_for(vectors, "blk.0.ffn_up_exps.weight", (4, 16, 32)).shape == (4, 32)
    assert importance_for(vectors, "blk.0.attn_q.weight", (8, 64)).shape == (1, 64)
    assert importance_for(vectors, "blk.0.attn_k.weight", (8, 64)) is None
    assert importance_for(vectors, "token_embd.weight", (100, 64)) is None   # llama.cpp: ignored
    with pytest.raises(QuantError, match="blk.0.attn_q.weight"):
        importance_for(vectors, "blk.0.attn_q.weight", (8, 128))


def test_non_finite_importance_is_refused(tmp_path):
    path = tmp_path / "nan.gguf"
    write_imatrix(path, from_statistics({"a.weight": (np.float32([1, np.inf]), [1])}))
    with pytest.raises(QuantError, match="non-finite"):
        load_importance(path)


# ---------------------------------------------------------------- the vectors in llama.cpp's quantizer

PURE_FILE_TYPE = {gguf.GGMLQuantizationType.Q4_K: gguf.LlamaFileType.MOSTLY_Q4_K_S,
                  gguf.GGMLQuantizationType.Q3_K: gguf.LlamaFileType.MOSTLY_Q3_K_S,
                  gguf.GGMLQuantizationType.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0}


def llama_quantize_bytes(tmp_path, weights, qtype, vectors):
    """Quantize float32 weights with llama_model_quantize (--pure, with an imatrix); their bytes."""
    from test_mixes import _quiet_llama

    llama_cpp = _quiet_llama()
    src, dst = tmp_path / "src.gguf", tmp_path / "dst.gguf"
    writer = gguf.GGUFWriter(src, "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(256)
    writer.add_feed_forward_length(512)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-5)
    for name, w in weights.items():
        writer.add_tensor(name, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(PURE_FILE_TYPE[qtype])
    params.nthread = 2
    params.pure = True
    keep = [np.ascontiguousarray(v, np.float32) for v in vectors.values()]
    arr = (llama_cpp.llama_model_imatrix_data * (len(keep) + 1))()
    for slot, name, values in zip(arr, vectors, keep):
        slot.name = name.encode()
        slot.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        slot.size = values.size
    arr[len(keep)].name = None
    params.imatrix = arr
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    reader = gguf.GGUFReader(dst)
    out = {}
    for t in reader.tensors:
        assert t.tensor_type == qtype, t.name
        out[t.name] = np.asarray(t.data).tobytes()
    del reader
    return out


def test_llama_model_quantize_uses_our_vectors(ggml, tmp_path):
    """Our file -> our vectors -> llama_model_quantize: the bytes ggml_quantize_chunk gives with them."""
    rng = np.random.default_rng(7)
    weights = {"blk.0.ffn_down.weight": rng.standard_normal((8, 512)).astype(np.float32),
               "blk.0.attn_q.weight": rng.standard_normal((8, 256)).astype(np.float32)}
    stats = {name: ((rng.random(w.shape[1], dtype=np.float32) ** 4) * 3000, np.array([3000]))
             for name, w in weights.items()}
    path = tmp_path / "imatrix.gguf"
    write_imatrix(path, from_statistics(stats, ["d"], 6, 512))
    vectors = load_importance(path)

    for qtype in (gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q3_K,
                  gguf.GGMLQuantizationType.Q4_0):
        quantized = llama_quantize_bytes(tmp_path, weights, qtype, vectors)
        for name, w in weights.items():
            def chunk(imatrix):
                out = np.zeros(w.shape[0] * ggml.ggml_row_size(int(qtype), w.shape[1]), np.uint8)
                ggml.ggml_quantize_chunk(int(qtype), w.ctypes.data, out.ctypes.data, 0, w.shape[0],
                                         w.shape[1], None if imatrix is None else imatrix.ctypes.data)
                return out.tobytes()
            assert quantized[name] == chunk(vectors[name]), f"{qtype.name} {name}"
            assert quantized[name] != chunk(None), f"{qtype.name} {name}: the imatrix made no difference"
