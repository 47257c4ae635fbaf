"""quant.quantize_source: F16/BF16/F32 bytes quantized without a float32 copy give the bytes
quantize() gives for the same values (themselves checked against ggml elsewhere), and find
the first row holding an infinite or NaN value; and `convkit quantize` of a GGUF streams its
tensors through it with the same output as the float32 path."""
import gguf
import numpy as np
import pytest

import quant
from quant import iqgrid
from quant.types import requires_imatrix
from quant.backend import has_compiled

pytestmark = pytest.mark.skipif(not has_compiled(), reason="quant._kquants is not built")

SOURCES = {1: np.float16, 0: np.float32}   # BF16 (30) is built from float32 bits below


def _stored(values: np.ndarray, src_type: int) -> np.ndarray:
    if src_type == 30:
        bits = values.astype(np.float32).view(np.uint32)
        return (bits >> 16).astype(np.uint16).view(np.uint8)
    return values.astype(SOURCES[src_type]).view(np.uint8)


def _widened(stored: np.ndarray, src_type: int) -> np.ndarray:
    if src_type == 30:
        return (stored.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return stored.view(SOURCES[src_type]).astype(np.float32)


def test_widen_is_numpy_for_every_half():
    from quant.backend import compiled

    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = np.isfinite(halves.view(np.float16))
    out = np.empty(int(finite.sum()), np.float32)
    assert compiled.widen(1, halves[finite], out, out.size) is False
    expected = halves[finite].view(np.float16).astype(np.float32)
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))
    out = np.empty(1 << 16, np.float32)
    assert compiled.widen(1, halves, out, out.size) is True     # the infinities and NaNs are seen
    bf = halves[(halves & 0x7F80) != 0x7F80]
    out = np.empty(bf.size, np.float32)
    assert compiled.widen(30, bf, out, bf.size) is False
    np.testing.assert_array_equal(out.view(np.uint32), bf.astype(np.uint32) << 16)


# every type the compiled helper streams, so a kernel added to it is checked here too
STREAMED = [t.qtype.name for t in quant.types() if quant.reads_source(t.qtype, 1)]
GRID_TYPES = {t.name for t in iqgrid.GRID_TYPES}


@pytest.mark.parametrize("src_type", [1, 30, 0])
@pytest.mark.parametrize("qtype", STREAMED)
@pytest.mark.parametrize("threads", [1, 3])
def test_same_bytes_as_quantize(src_type, qtype, threads):
    rng = np.random.default_rng(7)
    n, rows = 512, 37   # rows not a multiple of the slices the helper widens at a time
    values = (rng.standard_normal((rows, n)) * rng.choice([1e-3, 0.05, 3.0], size=(rows, 1))).astype(np.float32)
    values[3] = 0.0
    # grid types refuse 1e30 (its square overflows; ggml aborts): tests/test_quant_iqgrid.py
    values[5, 17] = 60000.0 if src_type == 1 or qtype in GRID_TYPES else 1e30
    values[6, ::7] = 6e-8     # F16 subnormals
    stored = _stored(values, src_type)
    exact = _widened(stored, src_type).reshape(rows, n)
    imatrix = rng.random(n).astype(np.float32) + 0.1
    for weights in ((imatrix,) if requires_imatrix(quant.type_info(qtype).qtype) else (None, imatrix)):
        expected = quant.quantize(exact, qtype, imatrix=weights)
        got, bad = quant.quantize_source(stored, src_type, qtype, n, imatrix=weights, threads=threads)
        assert bad == -1
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("src_type", [1, 30, 0])
def test_first_non_finite_row(src_type):
    rows, n = 70, 256
    values = np.ones((rows, n), np.float32)
    values[41, 200] = np.inf
    values[66, 3] = np.nan
    _, bad = quant.quantize_source(_stored(values, src_type), src_type, "Q4_K", n, threads=2)
    assert bad == 41


def test_types_it_does_not_hold():
    assert quant.quantize_source(np.zeros(64, np.uint8), 1, "F32", 32) is None
    assert quant.quantize_source(np.zeros(64, np.uint8), 8, "Q4_0", 32) is None   # a Q8_0 source


def _f16_gguf(tmp_path, model):
    from convkit.cli import main

    out = tmp_path / "f16.gguf"
    with pytest.raises(SystemExit) as exit_:
        main(["convert", str(model), "--outtype", "f16", "-o", str(out), "--quiet"])
    assert exit_.value.code == 0
    return out


@pytest.fixture
def model(tmp_path):
    from test_bad_checkpoints import _tiny_model

    d = tmp_path / "model"
    d.mkdir()
    return _tiny_model(d)


@pytest.mark.parametrize("ftype", ["q8_0", "q4_k_m", "f16"])
@pytest.mark.parametrize("slice_bytes", [None, 640])
def test_gguf_input_streams_to_the_float32_paths_bytes(model, tmp_path, monkeypatch, ftype, slice_bytes):
    """The streamed path against the path that widens whole tensors with numpy and encodes them
    with quantize(): the same file, metadata and tensor table included; with slices of five rows
    (an odd count of them in some tensors) and a slow disk, the two reused output buffers
    alternate across tensors and a buffer reused while still being written would show."""
    from convkit import convert_pipeline as cp
    from convkit.quantization import quantize_model

    src = _f16_gguf(tmp_path, model)
    if slice_bytes:
        import time

        from convkit import gguf_out

        monkeypatch.setattr(cp, "STREAM_BYTES", slice_bytes)
        write = gguf_out._write_all
        # a slow disk: a buffer reused before its write is done would show in the bytes
        monkeypatch.setattr(gguf_out, "_write_all", lambda f, data: (time.sleep(0.002), write(f, data)))
    streamed = tmp_path / "streamed.gguf"
    quantize_model(src, ftype, streamed, threads=2, quiet=True)
    monkeypatch.setattr(cp.quant, "reads_source", lambda *a: False)
    whole = tmp_path / "whole.gguf"
    quantize_model(src, ftype, whole, threads=1, quiet=True)
    assert streamed.read_bytes() == whole.read_bytes()
    reader = gguf.GGUFReader(streamed)
    original = gguf.GGUFReader(src)
    for key, field in original.fields.items():
        if not key.startswith(("GGUF.", "general.file_type")):
            assert reader.fields[key].contents() == field.contents(), key


def test_gguf_input_with_a_nan_stops_with_one_line(model, tmp_path, capsys):
    from convkit.cli import main

    src = _f16_gguf(tmp_path, model)
    t = {t.name: t for t in gguf.GGUFReader(src).tensors}["blk.0.ffn_up.weight"]
    data = bytearray(src.read_bytes())
    at = int(t.data_offset) + 2 * 100
    data[at:at + 2] = np.array([0x7E00], np.uint16).tobytes()
    src.write_bytes(bytes(data))
    out = tmp_path / "o.gguf"
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", str(src), "--type", "q4_0", "-o", str(out), "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "blk.0.ffn_up.weight" in err and "NaN" in err
    assert not out.exists() and list(tmp_path.glob("o.gguf*")) == []


def test_gguf_input_with_an_imatrix_streams_to_the_float32_paths_bytes(model, tmp_path, monkeypatch):
    """An importance vector for every weight reaches the streamed kernels as it reaches quantize()."""
    from quant.imatrix import from_statistics, write_imatrix

    from convkit import convert_pipeline as cp
    from convkit.quantization import make_plan

    src = _f16_gguf(tmp_path, model)
    rng = np.random.default_rng(3)
    stats = {t.name: ((rng.random(int(t.shape[0])) * 5 + 0.01).astype(np.float32), np.array([10]))
             for t in gguf.GGUFReader(src).tensors if len(t.shape) == 2}
    imatrix = tmp_path / "imatrix.gguf"
    write_imatrix(imatrix, from_statistics(stats, ["x"], 1, 512))
    monkeypatch.setattr(cp, "STREAM_BYTES", 640)
    outs = []
    for streamed in (True, False):
        if not streamed:
            monkeypatch.setattr(cp.quant, "reads_source", lambda *a: False)
        source, plan, vectors = make_plan(src, "q4_k_m", imatrix)
        assert vectors is not None
        out = tmp_path / f"{streamed}.gguf"
        cp.run(source, plan, out, file_type=15, imatrix=vectors, threads=2, quiet=True)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    source, plan, _ = make_plan(src, "q4_k_m")
    cp.run(source, plan, tmp_path / "plain.gguf", file_type=15, threads=2, quiet=True)
    assert (tmp_path / "plain.gguf").read_bytes() != outs[0]   # the vectors did change the blocks
