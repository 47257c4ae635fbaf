"""A 4.35 GiB mixture-of-experts checkpoint converts and quantizes in under 1.5 GB.

The checkpoint (moe_checkpoint.py: Qwen3-MoE layout, bf16, 2 layers of 112 experts) holds
one layer's experts of one kind in 112 tensors that GGUF stacks into one; gathered as
float32 that stack alone is 1.41 GB. `convkit convert --outtype q8_0` and `convkit quantize
--type q4_k_m` each run in a child process whose peak RSS (os.wait4) must stay under
1.5 GB: the experts are read and quantized one at a time. The stacked output is checked
against ggml's own quantizer on an expert in the middle of the stack.

Marked `large`: about 2 minutes on 2 cores, 4.7 GB of test cache, 2.5 GB of output for a
moment (removed after each run).
"""
import json
import struct
import subprocess
import sys

import numpy as np
import pytest

import gguf_lite
from moe_checkpoint import CONFIG, large_moe_checkpoint
from oracle import ggml_quantize

pytestmark = pytest.mark.large

PEAK_RSS_LIMIT = 1_500_000_000  # bytes
N_EXPERT, FF, HIDDEN = CONFIG["num_experts"], CONFIG["moe_intermediate_size"], CONFIG["hidden_size"]


# A child forked (or vforked) from the test process starts with that process's pages, and
# Linux carries the high-water mark across exec: the test process (torch, transformers, a
# few hundred MB) would count as convkit's. A small Python process in between starts
# convkit, and its RUSAGE_CHILDREN is convkit's own peak.
_MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
print(json.dumps([done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  done.stderr.decode(errors="replace")]))
"""


def _peak_rss(argv) -> int:
    """Run convkit in a child process; its peak resident set in bytes (Linux: ru_maxrss in KiB)."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "convkit", *argv, "--quiet"],
                         capture_output=True, text=True, check=True).stdout
    returncode, max_rss_kib, err = json.loads(out)
    assert returncode == 0, err
    return max_rss_kib * 1024


def _expert(directory, layer, expert, kind):
    """One expert's matrix from the checkpoint, as float32 (bf16 widened), read by the
    safetensors header's offsets."""
    path = directory / "model.safetensors"
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        info = json.loads(f.read(n))[f"model.layers.{layer}.mlp.experts.{expert}.{kind}_proj.weight"]
    begin, end = info["data_offsets"]
    raw = np.fromfile(path, dtype=np.uint16, count=(end - begin) // 2, offset=8 + n + begin)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


@pytest.mark.parametrize("argv", [["convert", "--outtype", "q8_0"], ["quantize", "--type", "q4_k_m"]],
                         ids=["convert-q8_0", "quantize-q4_k_m"])
def test_large_moe_streams_its_experts(argv, tmp_path):
    directory = large_moe_checkpoint()
    assert (directory / "model.safetensors").stat().st_size >= 4 << 30
    target = tmp_path / "out.gguf"
    try:
        peak = _peak_rss([argv[0], str(directory), *argv[1:], "-o", str(target)])
        assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"
        _, tensors = gguf_lite.read(target)
        for layer, kind, rows, row in ((1, "down", HIDDEN, FF), (0, "gate", FF, HIDDEN)):
            qtype, shape, data = tensors[f"blk.{layer}.ffn_{kind}_exps.weight"]
            assert shape == (row, rows, N_EXPERT)  # ggml order: stacked on the outermost axis
            per_expert = data.size // N_EXPERT
            middle = N_EXPERT // 2 + 1
            expected = ggml_quantize(_expert(directory, layer, middle, kind), qtype).reshape(-1)
            assert np.array_equal(data[middle * per_expert:(middle + 1) * per_expert], expected)
    finally:
        target.unlink(missing_ok=True)
