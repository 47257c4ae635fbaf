"""Quantizing a model: plan a file type's mix, then write it plainly, with an importance
matrix, or calibrated. `convkit quantize`, `drift` and `convert` call these; the commands
only parse options and print."""
import os
from pathlib import Path

import numpy as np

from convkit.errors import ConvkitError


# calibration chunks on which each weight's effect on the output is measured (--target-bpw)
SENSITIVITY_CHUNKS = 4


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


def file_type_id(ftype: str) -> int:
    from quant.mixes import parse_file_type

    return int(parse_file_type(ftype))


def render_plan(summary) -> str:
    lines = [f"{t['name']:<32} {'x'.join(map(str, t['shape'])):>14} {t['type']:>6} {t['bytes']:>12}"
             for t in summary["tensors"]]
    lines.append(f"total {summary['total_bytes']} bytes ({summary['total_bytes'] / 2**20:.2f} MiB), "
                 f"{summary['bpw']} bits per weight")
    if "file_bytes" in summary:
        lines.append(f"file {summary['file_bytes']} bytes")
    a = summary.get("allocation")
    if a:
        mix = "" if a["mix_predicted_loss"] is None else f" (the mix's: {a['mix_predicted_loss']:.6g})"
        lines.append(f"types of {a['allocated_tensors']} weights chosen within {a['budget_bytes']} {a['budget']}; "
                     f"predicted loss {a['predicted_loss']:.6g}{mix}")
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


def file_bytes(source, plan, file_type: int) -> int:
    """The size of the GGUF `plan` makes: header, metadata, tensor table, tensors and padding."""
    import gguf

    from convkit.gguf_out import MetadataWriter, header_bytes

    w = MetadataWriter(source.arch_name)
    source.write_metadata(w)
    w.add_file_type(int(file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    align = w.alignment()
    return len(header_bytes(w, plan, source.path)) + sum(t.nbytes + (-t.nbytes % align) for t in plan)


def budget_plan(model, ftype, *, target_bpw=None, target_size=None, imatrix=None, calibrate=None, calibration=None,
                tensor_types=(), output_type=None, token_embedding_type=None, threads=1, quiet=False,
                sensitivity_chunks=SENSITIVITY_CHUNKS):
    """(source, plan, importance vectors, statistics or None, allocation report or None): the
    mix of `ftype`, and with a target, each measured weight's type chosen within it
    (convkit.allocate)."""
    from convkit import allocate

    if target_bpw is not None and target_size is not None:
        raise ConvkitError("give --target-bpw or --target-size, not both")
    budget = None
    if target_bpw is not None:
        if not 0 < float(target_bpw) <= 32:
            raise ConvkitError(f"--target-bpw {target_bpw}: give bits per weight between 0 and 32 (4.9 is about "
                               "Q4_K_M)")
    elif target_size is not None:
        limit = allocate.parse_size(target_size)
    if (target_bpw is not None or target_size is not None) and imatrix is None and calibrate is None:
        raise ConvkitError("--target-bpw and --target-size choose types by measured loss; give --calibrate TEXT "
                           "(or an --imatrix FILE of this model)")
    source, plan, vectors = make_plan(model, ftype, imatrix, tensor_types, output_type, token_embedding_type,
                                      calibrated=calibrate is not None)
    if target_bpw is None and target_size is None:
        return source, plan, vectors, None, None
    from quant.mixes import _compile, parse_file_type, parse_tensor_type_option

    from convkit.gguf_out import MetadataWriter, header_bytes

    file_type = int(parse_file_type(ftype))
    elements = sum(int(np.prod(t.shape, dtype=np.int64)) for t in plan)
    if target_bpw is not None:
        budget = allocate.Budget(int(float(target_bpw) * elements / 8), False, f"--target-bpw {target_bpw}")
    else:
        budget = allocate.Budget(limit, True, f"--target-size {target_size} ({limit} bytes)")
    # the user's own choices stay as given
    patterns = [_compile(p) for p, _ in (parse_tensor_type_option(o) for o in tensor_types)]
    fixed = {t.name for t in plan if any(rx.search(t.name) for rx in patterns)}
    if output_type is not None:
        fixed.add("output.weight")
    if token_embedding_type is not None:
        fixed.add("token_embd.weight")
    w = MetadataWriter(source.arch_name)
    source.write_metadata(w)
    w.add_file_type(file_type)
    w.add_quantization_version(2)
    header = len(header_bytes(w, plan, source.path))  # fixed width per tensor: the types do not change it
    allocate.check_reachable(plan, budget, header=header, align=w.alignment(), fixed=fixed)
    stats = None
    if calibrate is not None:
        if calibration is not None:
            stats = calibration()
        else:
            from convkit.calibrate import collect_hessians
            stats = collect_hessians(source.path, str(calibrate), quiet=quiet)
    from convkit.progress import progress

    sensitivity = None
    if calibrate is not None and sensitivity_chunks:
        from functools import partial

        from convkit.sensitivity import output_kld
        sensitivity = partial(output_kld, source.path, str(calibrate), n_chunks=sensitivity_chunks, quiet=quiet)
    bar = progress(total=len(plan), quiet=quiet, unit="tensor", desc="measure")
    try:
        plan, report = allocate.allocate(source, plan, budget, header=header, align=w.alignment(), fixed=fixed,
                                         stats=stats, vectors=vectors, sensitivity=sensitivity, threads=threads,
                                         progress_bar=bar)
    finally:
        bar.close()
    return source, plan, vectors, stats, report


def quantize_model(model, ftype, target, *, imatrix=None, calibrate=None, calibration=None, tensor_types=(),
                   output_type=None, token_embedding_type=None, target_bpw=None, target_size=None, threads=1,
                   quiet=False, sensitivity_chunks=SENSITIVITY_CHUNKS) -> dict:
    """MODEL quantized to `ftype` at `target` with llama.cpp's mix; the result summary.

    imatrix: an importance matrix file; calibrate: a calibration text (GPTQ rounding on the
    model's own activations); calibration: a function that returns the statistics collected
    on that text (convkit.calibrate.collect_hessians), when several files share them;
    target_bpw / target_size: each measured weight's type chosen within that budget."""
    from quant.mixes import parse_file_type

    from convkit import convert_pipeline as cp

    source, plan, vectors, stats, report = budget_plan(
        model, ftype, target_bpw=target_bpw, target_size=target_size, imatrix=imatrix, calibrate=calibrate,
        calibration=calibration, tensor_types=tensor_types, output_type=output_type,
        token_embedding_type=token_embedding_type, threads=threads, quiet=quiet,
        sensitivity_chunks=sensitivity_chunks)
    file_type = int(parse_file_type(ftype))
    if calibrate is not None:
        from convkit.calibrate import run_calibrated
        result = run_calibrated(source, plan, target, file_type=file_type, text_file=calibrate,
                                stats=calibration if stats is None else (lambda: stats), threads=threads,
                                quiet=quiet)
    else:
        result = cp.run(source, plan, target, file_type=file_type, imatrix=vectors, threads=threads, quiet=quiet)
    if report is not None:
        result["allocation"] = report
    return result
