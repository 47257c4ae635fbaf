"""`convkit quantize MODEL --type q4_k_m`: HF checkpoint or GGUF -> GGUF with llama.cpp's mix."""
from pathlib import Path

import click

from convkit.output import emit
from convkit.quantization import available_cores


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--type", "ftype", help="file type as llama-quantize names it: q4_0, q4_k_m, "
              "q8_0, q6_k, iq4_xs, ... (an unknown name lists them all); required")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="output GGUF (default: MODEL-TYPE.gguf)")
@click.option("--imatrix", type=click.Path(path_type=Path), help="importance matrix (llama-imatrix output)")
@click.option("--calibrate", type=click.Path(path_type=Path), help="calibration text: round with GPTQ error "
              "feedback on the model's own activations (same types and size; chunks of 512 tokens)")
@click.option("--target-bpw", type=float, help="bits per weight (tensor bytes, as llama.cpp counts them): "
              "each measured weight's type is chosen from llama.cpp's standard set to minimize the loss measured "
              "on --calibrate's text (or --imatrix) within it; --type gives the file type and the other tensors")
@click.option("--target-size", help="as --target-bpw, for the whole file's size: 80M, 1.5G (binary), 500MB, "
              "or bytes")
@click.option("--probe-chunks", type=click.IntRange(0, 10000), default=4, show_default=True,
              help="with --target-bpw/--target-size and --calibrate: chunks of the calibration text on which each "
              "weight's effect on the output KLD is measured (0: the layers' own output errors only)")
@click.option("--tensor-type", "tensor_types", multiple=True, help="PATTERN=TYPE override (repeatable)")
@click.option("--output-type", help="type of output.weight")
@click.option("--token-embedding-type", help="type of token_embd.weight")
@click.option("--threads", type=click.IntRange(1, 1024), default=available_cores,
              show_default="the cores this process may use",
              help="threads for the block kernels; the bytes written do not depend on it")
@click.option("--dry-run", is_flag=True, help="print the per-tensor plan and write nothing")
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True)
def quantize(model, ftype, output, imatrix, calibrate, target_bpw, target_size, probe_chunks, tensor_types,
             output_type, token_embedding_type, threads, dry_run, as_json, quiet):
    """Quantize MODEL (HF directory, model.safetensors or GGUF) with llama.cpp's type mix."""
    from convkit import quantization as q
    from convkit.errors import ConvkitError

    if ftype is None:
        raise ConvkitError("give --type (the file type, e.g. q4_k_m); --target-bpw and --target-size start "
                           "from its mix")
    overrides = dict(tensor_types=tensor_types, output_type=output_type, token_embedding_type=token_embedding_type,
                     target_bpw=target_bpw, target_size=target_size, sensitivity_chunks=probe_chunks)
    if dry_run:
        from convkit.convert_pipeline import plan_summary

        source, plan, _, _, report = q.budget_plan(model, ftype, imatrix=imatrix, calibrate=calibrate,
                                                   threads=threads, quiet=quiet or as_json, **overrides)
        summary = plan_summary(plan)
        summary["file_bytes"] = q.file_bytes(source, plan, q.file_type_id(ftype))
        if report is not None:
            summary["allocation"] = report
        emit(summary, as_json=as_json, text=q.render_plan(summary))
        return
    target = output or q.default_output(model, q.file_type_label(ftype))
    result = q.quantize_model(model, ftype, target, imatrix=imatrix, calibrate=calibrate, threads=threads,
                              quiet=quiet or as_json, **overrides)
    emit(result, as_json=as_json, text=q.render_done(result))
