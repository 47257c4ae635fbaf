"""`convkit quantize MODEL --type q4_k_m`: HF checkpoint or GGUF -> GGUF with llama.cpp's mix."""
import os
from pathlib import Path

import click

from convkit.output import emit


def available_cores() -> int:
    """The cores this process may run on (its affinity mask), as llama-quantize uses all of them."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity call on this platform
        return max(1, os.cpu_count() or 1)


def default_output(model: Path, label: str) -> Path:
    """Beside the input: <dir>/<dir name>-Q4_K_M.gguf, or <stem>-Q4_K_M.gguf next to a GGUF."""
    model = model.resolve()
    if model.is_dir():
        return model / f"{model.name}-{label.upper()}.gguf"
    stem = model.stem if model.suffix == ".gguf" else model.parent.name
    return model.parent / f"{stem}-{label.upper()}.gguf"


def render_plan(summary) -> str:
    lines = [f"{t['name']:<32} {'x'.join(map(str, t['shape'])):>14} {t['type']:>6} {t['bytes']:>12}"
             for t in summary["tensors"]]
    lines.append(f"total {summary['total_bytes']} bytes ({summary['total_bytes'] / 2**20:.2f} MiB), "
                 f"{summary['bpw']} bits per weight")
    return "\n".join(lines)


def render_done(result) -> str:
    return (f"wrote {result['output']}: {result['bytes'] / 2**20:.2f} MiB, {result['bpw']} bpw, "
            f"{result['tensors']} tensors in {result['seconds']} s")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--type", "ftype", required=True, help="file type as llama-quantize names it: q4_0, q4_k_m, "
              "q8_0, q6_k, iq4_xs, ... (an unknown name lists them all)")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="output GGUF (default: MODEL-TYPE.gguf)")
@click.option("--imatrix", type=click.Path(path_type=Path), help="importance matrix (llama-imatrix output)")
@click.option("--calibrate", type=click.Path(path_type=Path), help="calibration text: round with GPTQ error "
              "feedback on the model's own activations (same types and size; chunks of 512 tokens)")
@click.option("--tensor-type", "tensor_types", multiple=True, help="PATTERN=TYPE override (repeatable)")
@click.option("--output-type", help="type of output.weight")
@click.option("--token-embedding-type", help="type of token_embd.weight")
@click.option("--threads", type=click.IntRange(1, 1024), default=available_cores,
              show_default="the cores this process may use",
              help="threads for the block kernels; the bytes written do not depend on it")
@click.option("--dry-run", is_flag=True, help="print the per-tensor plan and write nothing")
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True)
def quantize(model, ftype, output, imatrix, calibrate, tensor_types, output_type, token_embedding_type, threads,
             dry_run, as_json, quiet):
    """Quantize MODEL (HF directory, model.safetensors or GGUF) with llama.cpp's type mix."""
    from quant.mixes import parse_file_type

    from convkit import convert_pipeline as cp

    if calibrate is not None and imatrix is not None:
        from convkit.errors import ConvkitError
        raise ConvkitError("--calibrate computes its own statistics; give --calibrate or --imatrix, not both")
    source, plan, vectors = make_plan(model, ftype, imatrix, tensor_types, output_type, token_embedding_type,
                                      calibrated=calibrate is not None)
    if dry_run:
        summary = cp.plan_summary(plan)
        emit(summary, as_json=as_json, text=render_plan(summary))
        return
    file_type = parse_file_type(ftype)
    target = output or default_output(model, file_type.name.replace("MOSTLY_", "").replace("ALL_", ""))
    if calibrate is not None:
        from convkit.calibrate import run_calibrated
        result = run_calibrated(source, plan, target, file_type=int(file_type), text_file=calibrate,
                                threads=threads, quiet=quiet or as_json)
    else:
        result = cp.run(source, plan, target, file_type=int(file_type), imatrix=vectors, threads=threads,
                        quiet=quiet or as_json)
    emit(result, as_json=as_json, text=render_done(result))


def make_plan(model, ftype, imatrix=None, tensor_types=(), output_type=None, token_embedding_type=None,
              calibrated=False):
    """(source, plan, importance vectors): MODEL opened, every tensor's type chosen by llama.cpp's mix rules."""
    from quant.mixes import parse_file_type, parse_tensor_type_option, parse_type_name, plan_types

    from convkit import convert_pipeline as cp

    # every type the user named is checked before the model is opened
    file_type = parse_file_type(ftype)
    tensor_types = [parse_tensor_type_option(t) for t in tensor_types]
    output_type = None if output_type is None else parse_type_name(output_type)
    token_embedding_type = None if token_embedding_type is None else parse_type_name(token_embedding_type)
    source = cp.open_source(model)
    vectors = None
    if imatrix is not None:
        from quant.imatrix import load_importance
        vectors = load_importance(imatrix)
    types = plan_types([(n, s, t) for n, s, t in source.tensors], file_type, arch=source.arch_name,
                       n_layer=source.hparams["n_layer"] or None, n_head=source.hparams["n_head"],
                       n_head_kv=source.hparams["n_head_kv"], n_expert=source.hparams.get("n_expert", 0),
                       tensor_types=tensor_types,
                       output_type=output_type, token_embedding_type=token_embedding_type,
                       has_imatrix=vectors is not None or calibrated)  # calibration holds an imatrix
    _check_writable(types, file_type)
    plan = cp.make_plan(source, types)
    if vectors is not None:  # a vector of the wrong length stops here, before any tensor is read
        from quant.imatrix import importance_for
        for t in plan:
            if t.qtype != 0:
                importance_for(vectors, t.name, t.shape)
    return source, plan, vectors


def _check_writable(types, file_type) -> None:
    """Every block type the mix picked can be quantized here, before any tensor is read (a mix
    may pick types other than its default: IQ3_XXS gives wide attn_q/attn_k IQ2_S)."""
    import quant
    from quant.errors import QuantError
    from quant.types import FILE_TYPE_BY_ID, is_quantized

    for name, qtype in types.items():
        if isinstance(qtype, int) and not isinstance(qtype, quant.QuantType):
            continue
        if is_quantized(qtype):
            try:
                quant.type_info(qtype)
            except QuantError:
                raise QuantError(f"{name}: file type {FILE_TYPE_BY_ID[file_type].name} gives it "
                                 f"{quant.QuantType(qtype).name.lower()}, which convkit cannot write yet; "
                                 "choose another --type or set its type with --tensor-type") from None


def quantize_model(model, ftype, target, *, threads=1, quiet=False) -> dict:
    """MODEL quantized to `ftype` (plain mix, no overrides) at `target`; the result summary."""
    from quant.mixes import parse_file_type

    from convkit import convert_pipeline as cp

    source, plan, _ = make_plan(model, ftype)
    return cp.run(source, plan, target, file_type=int(parse_file_type(ftype)), threads=threads, quiet=quiet)
