"""Streaming conversion of a large synthetic checkpoint: wall time and peak RSS.

Writes a >= 4 GB float32 Llama-shaped checkpoint (random values, SmolLM2's tokenizer
files from the test fixture) into a temporary directory under /tmp, converts it to Q8_0
with `convkit quantize` and, when it runs here, with llama.cpp's convert_hf_to_gguf.py
(--outtype q8_0), each in a child process whose peak RSS is measured; everything is
deleted afterwards. Usage: python benchmarks/bench_convert.py [--layers 20]
"""
import argparse
import json
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from report import measure, result  # noqa: E402


def peer_command() -> list | None:
    """llama.cpp's convert_hf_to_gguf.py from the llama-cpp-python sdist (fetched as the tests
    do), with the pre-tokenizer of SmolLM2's rebuilt tokenizer.json named for it."""
    try:
        from realdata import llama_cpp_converter_command
        return llama_cpp_converter_command("smollm")
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        print(f"peer : convert_hf_to_gguf.py unavailable ({exc})")
        return None


def shapes(layers, hidden=2048, ff=5632, vocab=49152, n_head=32, n_kv=8):
    from synthetic import llama_shapes

    out = llama_shapes(layers, hidden, ff, vocab, n_head, n_kv)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": n_head,
              "num_key_value_heads": n_kv, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "vocab_size": vocab, "tie_word_embeddings": False, "torch_dtype": "float32",
              "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2}
    return dict(sorted(out.items())), config


def write_checkpoint(directory: Path, layers: int) -> int:
    """Write model.safetensors chunk by chunk so the generator itself stays small."""
    from smollm2_fixture import smollm2_checkpoint

    tensors, config = shapes(layers)
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    with open(directory / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in tensors.items():
            rows = shape[0] if len(shape) > 1 else 1
            cols = int(np.prod(shape)) // rows
            for start in range(0, rows, 4096):
                n = min(4096, rows - start)
                (rng.standard_normal((n, cols), dtype=np.float32) * 0.02).tofile(f)
    (directory / "config.json").write_text(json.dumps(config))
    src = smollm2_checkpoint()
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(src / name, directory / name)
    return (directory / "model.safetensors").stat().st_size


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="bench-convert-") as tmp:
        tmp = Path(tmp)
        model = tmp / "model"
        model.mkdir()
        t = time.perf_counter()
        size = write_checkpoint(model, args.layers)
        print(f"checkpoint: {size / 2**30:.2f} GiB float32 ({args.layers} layers), written in {time.perf_counter() - t:.1f} s")
        ours = measure([sys.executable, "-m", "convkit", "quantize", str(model), "--type", "q8_0",
                        "-o", str(tmp / "ours.gguf"), "--quiet"])
        print(f"ours : {ours[0]:.1f} s, peak RSS {ours[1]:.0f} MiB, exit {ours[2]}, "
              f"output {(tmp / 'ours.gguf').stat().st_size / 2**30:.2f} GiB")
        (tmp / "ours.gguf").unlink(missing_ok=True)
        peer = None
        command = peer_command()
        if command is not None:
            peer = measure(command + [str(model), "--outtype", "q8_0", "--outfile", str(tmp / "peer.gguf")])
            if peer[2] == 0:
                print(f"peer : {peer[0]:.1f} s, peak RSS {peer[1]:.0f} MiB (convert_hf_to_gguf.py --outtype q8_0)")
            else:
                print(f"peer : convert_hf_to_gguf.py failed here (exit {peer[2]}); no ratio")
                peer = None
        case = f"{size / 2**30:.2f} GiB f32 checkpoint -> Q8_0"
        peer_name = "convert_hf_to_gguf.py"
        result(f"{case}, wall time", ours[0], peer_name, peer and peer[0], "s", higher_is_better=False)
        result(f"{case}, peak RSS", ours[1], peer_name, peer and peer[1], "MiB", higher_is_better=False)


if __name__ == "__main__":
    main()
