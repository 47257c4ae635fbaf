"""Quantizing a model: plan a file type's mix, then write it plainly, with an importance
matrix, or calibrated. `convkit quantize`, `drift` and `convert` call these; the commands
only parse options and print."""
import os
from pathlib import Path

from convkit.errors import ConvkitError


def available_cores() -> int:
    """The cores this process may run on (its affinity mask), as llama-quantize uses all of them."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity call on this platform
        return max(1, os.cpu_count() or 1)


def default_output(model: Path, label: str) -> Path:
    """Beside the input: <dir>/<dir name>-Q4_K_M.gguf, or <stem>-Q4_K_M.gguf next to a GGUF."""
    model = Path(model).resolve()
    if model.is_dir():
        return model / f"{model.name}-{label.upper()}.gguf"
    stem = model.stem if model.suffix == ".gguf" else model.parent.name
    return model.parent / f"{stem}-{label.upper()}.gguf"


def file_type_label(ftype: str) -> str:
    """q4_k_m -> Q4_K_M as llama.cpp's file names spell it."""
    from quant.mixes import parse_file_type

    return parse_file_type(ftype).name.replace("MOSTLY_", "").replace("ALL_", "")


def render_plan(summary) -> str:
    lines = [f"{t['name']:<32} {'x'.join(map(str, t['shape'])):>14} {t['type']:>6} {t['bytes']:>12}"
             for t in summary["tensors"]]
    lines.append(f"total {summary['total_bytes']} bytes ({summary['total_bytes'] / 2**20:.2f} MiB), "
                 f"{summary['bpw']} bits per weight")
    return "\n".join(lines)


def render_done(result) -> str:
    return (f"wrote {result['output']}: {result['bytes'] / 2**20:.2f} MiB, {result['bpw']} bpw, "
            f"{result['tensors']} tensors in {result['seconds']} s")


def make_plan(model, ftype, imatrix=None, tensor_types=(), output_type=None, token_embedding_type=None,
              calibrated=False):
    """(source, plan, importance vectors): MODEL opened, every tensor's type chosen by llama.cpp's mix rules."""
    from quant.mixes import parse_file_type, parse_tensor_type_option, parse_type_name, plan_types

    from convkit import convert_pipeline as cp

    if calibrated and imatrix is not None:
        raise ConvkitError("--calibrate computes its own statistics; give --calibrate or --imatrix, not both")
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


def quantize_model(model, ftype, target, *, imatrix=None, calibrate=None, calibration=None, tensor_types=(),
                   output_type=None, token_embedding_type=None, threads=1, quiet=False) -> dict:
    """MODEL quantized to `ftype` at `target` with llama.cpp's mix; the result summary.

    imatrix: an importance matrix file; calibrate: a calibration text (GPTQ rounding on the
    model's own activations); calibration: a function that returns the statistics collected
    on that text (convkit.calibrate.collect_hessians), when several files share them."""
    from quant.mixes import parse_file_type

    from convkit import convert_pipeline as cp

    source, plan, vectors = make_plan(model, ftype, imatrix, tensor_types, output_type, token_embedding_type,
                                      calibrated=calibrate is not None)
    file_type = int(parse_file_type(ftype))
    if calibrate is not None:
        from convkit.calibrate import run_calibrated
        return run_calibrated(source, plan, target, file_type=file_type, text_file=calibrate, stats=calibration,
                              threads=threads, quiet=quiet)
    return cp.run(source, plan, target, file_type=file_type, imatrix=vectors, threads=threads, quiet=quiet)
