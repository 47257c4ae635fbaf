"""`convkit convert MODEL --outtype f16 -o OUT`: the converter without the quantization mix.

Like convert_hf_to_gguf.py: 1-D tensors (norms, biases) stay F32; 2-D weights take the
out type (q8_0 falls back to f16 where a row does not hold whole blocks).
"""
from pathlib import Path

import click
from quant.types import FILE_TYPE_BY_NAME, QuantType, block_size

from convkit.quantization import available_cores
from convkit.output import emit

# convert_hf_to_gguf keeps these 2-D tensors in float32 whatever the out type
ALWAYS_F32 = ("position_embd.weight", "token_types.weight", "ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")     # convert_hf_to_gguf's --outtype choices


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--outtype", type=click.Choice(sorted(OUTTYPES)), default="f16", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
@click.option("--threads", type=click.IntRange(1, 1024), default=available_cores,
              show_default="the cores this process may use")
@click.option("--dry-run", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True)
def convert(model, outtype, output, threads, dry_run, as_json, quiet):
    """Convert MODEL to GGUF at one precision."""
    from convkit import convert_pipeline as cp
    from convkit.quantization import render_done, render_plan

    info = FILE_TYPE_BY_NAME[outtype]
    qtype, file_type = info.default, int(info.ftype)
    source = cp.open_source(model)
    types = {}
    for name, shape, _ in source.tensors:
        t = qtype if len(shape) > 1 and name.endswith(".weight") and not name.endswith(ALWAYS_F32) else QuantType.F32
        if shape[-1] % block_size(t):
            t = QuantType.F16
        types[name] = int(t)
    plan = cp.make_plan(source, types)
    if dry_run:
        summary = cp.plan_summary(plan)
        emit(summary, as_json=as_json, text=render_plan(summary))
        return
    result = cp.run(source, plan, output, file_type=file_type, threads=threads, quiet=quiet or as_json)
    emit(result, as_json=as_json, text=render_done(result))
