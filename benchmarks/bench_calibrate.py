"""Calibrated quantization against llama.cpp at its best, at identical file size.

For each file type, two files of the same per-tensor types (so the same bytes on disk):
- llama.cpp's best: `convkit imatrix` over the calibration text, then `convkit quantize
  --imatrix` (byte-identical to llama-imatrix + llama_model_quantize);
- ours: `convkit quantize --calibrate` on the same calibration text (GPTQ error feedback
  inside ggml's blocks, quant/gptq.py);
- ours with type search: `convkit quantize --calibrate --target-bpw X` with X the bits per
  weight of llama.cpp's file (each weight's type chosen by its measured output error,
  convkit/allocate.py), at most that size.
Both are compared with the unquantized model on held-out text by our runtime (float32
products on the dequantized weights):
mean KL divergence (± its standard error), same top-1 token, ΔPPL; and the ratio of the
KLDs (ours / llama.cpp's; below 1 is better). llama.cpp's seconds include the imatrix run.

Texts: calibration = the first chunks of the pydoc topics' training part (the first 90%
by key, convkit.samples.split_pydoc_topics); held-out "other source" = Debian's Python 3.11
reStructuredText documentation sources (tests/realdata.py); held-out "same source" = the
pydoc topics' last 10% (which the sample model never saw).

    python benchmarks/bench_calibrate.py --model sample  [--types q4_k_m,q4_0,q3_k_m,q2_k]
    python benchmarks/bench_calibrate.py --model smollm2 --calib-chunks 40 --eval-chunks 10
    python benchmarks/bench_calibrate.py --model smollm2 --types q2_k --calib-chunks 4 --eval-chunks 4 --probe-chunks 1
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16") if f in flags]
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs, {' '.join(simd)}"


def convkit(*args):
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "convkit", *map(str, args), "--quiet"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def model_path(name: str) -> Path:
    if name == "sample":
        return ROOT / "samples" / "tiny-llama"
    from smollm2_fixture import smollm2_checkpoint
    return Path(smollm2_checkpoint())


class Compare:
    """Per held-out text: KLD, same-top-1 and NLL sums of each file against the base model."""

    def __init__(self, base, tokens, plan):
        self.base, self.tokens, self.plan = base, tokens, plan

    def logprobs(self, model, i):
        ids = torch.tensor([self.plan.chunk(self.tokens, i)])
        with torch.inference_mode():
            logits = model(ids, logits_for=slice(self.plan.first, self.plan.n_ctx - 1))[0]
        return torch.log_softmax(logits.double(), dim=-1)

    def run(self, models: dict) -> dict:
        kl = {k: [] for k in models}
        top = {k: [] for k in models}
        nll = {k: [] for k in ["base", *models]}
        for i in range(self.plan.n_chunks):
            target = torch.tensor(self.plan.targets(self.tokens, i))
            lb = self.logprobs(self.base, i)
            nll["base"].append(-lb.gather(1, target[:, None])[:, 0])
            for k, m in models.items():
                lq = self.logprobs(m, i)
                kl[k].append((lb.exp() * (lb - lq)).sum(-1))
                top[k].append((lb.argmax(-1) == lq.argmax(-1)).double())
                nll[k].append(-lq.gather(1, target[:, None])[:, 0])
        base_ppl = torch.cat(nll["base"]).mean().exp().item()
        out = {}
        for k in models:
            v = torch.cat(kl[k])
            out[k] = {"kld": v.mean().item(), "kld_err": (v.std() / len(v) ** 0.5).item(),
                      "top1": torch.cat(top[k]).mean().item(),
                      "dppl": torch.cat(nll[k]).mean().exp().item() - base_ppl}
        return out


def tensor_bpw(path) -> float:
    """Bits per weight of a GGUF's tensors, as llama.cpp (and --target-bpw) count them."""
    import gguf

    r = gguf.GGUFReader(path)
    return sum(int(t.n_bytes) for t in r.tensors) * 8 / sum(int(t.n_elements) for t in r.tensors)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["sample", "smollm2"], default="sample")
    ap.add_argument("--types", default="q4_k_m,q4_0,q3_k_m,q2_k")
    ap.add_argument("--ctx", type=int, default=None, help="default: 256 for the sample, 512 for SmolLM2")
    ap.add_argument("--calib-chunks", type=int, default=40)
    ap.add_argument("--eval-chunks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--no-search", action="store_true", help="skip the --target-bpw files")
    ap.add_argument("--probe-chunks", type=int, default=4, help="quantize --probe-chunks of the --target-bpw files")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from realdata import CACHE, python_docs_rst_text

    from convkit.eval.perplexity import plan_chunks, tokenize_for_perplexity
    from convkit.runtime import load_model
    from convkit.runtime.tokenizer import load_tokenizer
    from convkit.samples import split_pydoc_topics

    model = model_path(args.model)
    ctx = args.ctx or (256 if args.model == "sample" else 512)
    work = args.workdir or CACHE / "bench-calibrate" / args.model
    work.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(model)
    train, same_source = split_pydoc_topics()
    calib_tokens = tokenize_for_perplexity(tok, train)[: args.calib_chunks * ctx + 1]
    calib = work / "calib.txt"
    calib.write_text(tok.decode(calib_tokens[1 if tok.add_bos else 0:]), encoding="utf-8")
    texts = {"other source (Python rst docs)": python_docs_rst_text(2_000_000),
             "same source (pydoc held-out)": same_source}
    print(f"CPU: {cpu_model()}; torch threads {args.threads}")
    print(f"model {model.name}; calibration: {args.calib_chunks} chunks of {ctx} tokens of the pydoc topics "
          f"(training part); evaluation: {args.eval_chunks} chunks of {ctx} tokens per held-out text")
    imatrix = work / "imatrix.gguf"
    t_imatrix = convkit("imatrix", model, "--text", calib, "-o", imatrix, "--ctx", ctx)
    base = load_model(model, dequantize_all=True)
    rows = []
    for qtype in args.types.split(","):
        ref, ours = work / f"{qtype}.imatrix.gguf", work / f"{qtype}.calibrated.gguf"
        t_ref = t_imatrix + convkit("quantize", model, "--type", qtype, "--imatrix", imatrix, "-o", ref)
        t_ours = convkit("quantize", model, "--type", qtype, "--calibrate", calib, "-o", ours)
        assert ref.stat().st_size == ours.stat().st_size, "same types must give the same size"
        models = {"llama.cpp": load_model(ref, dequantize_all=True), "ours": load_model(ours, dequantize_all=True)}
        t_bpw = None
        if not args.no_search:
            searched = work / f"{qtype}.target-bpw.gguf"
            t_bpw = convkit("quantize", model, "--type", qtype, "--calibrate", calib, "--target-bpw",
                            f"{tensor_bpw(ref):.6f}", "--probe-chunks", args.probe_chunks, "-o", searched)
            assert searched.stat().st_size <= ref.stat().st_size * 1.0001, "the budget is a ceiling"
            models["ours+search"] = load_model(searched, dequantize_all=True)
        for label, text in texts.items():
            tokens = tokenize_for_perplexity(tok, text)
            plan = plan_chunks(len(tokens), ctx, args.eval_chunks, tok.bos_id if tok.add_bos else None)
            r = Compare(base, tokens, plan).run(models)
            rows.append((qtype, label, ref.stat().st_size, r, t_ref, t_ours, t_bpw))
            a, b = r["llama.cpp"], r["ours"]
            print(f"{qtype:7s} {label:32s} KLD llama.cpp {a['kld']:.6f} ± {a['kld_err']:.6f}"
                  f"  ours {b['kld']:.6f} ± {b['kld_err']:.6f}  ratio {b['kld'] / a['kld']:.3f}"
                  f" | top-1 {100 * a['top1']:.2f}% / {100 * b['top1']:.2f}%"
                  f" | ΔPPL {a['dppl']:+.4f} / {b['dppl']:+.4f}", flush=True)
            if "ours+search" in r:
                c = r["ours+search"]
                print(f"{'':7s} {'  with --target-bpw':32s} KLD {c['kld']:.6f} ± {c['kld_err']:.6f}  ratio "
                      f"{c['kld'] / a['kld']:.3f} | top-1 {100 * c['top1']:.2f}% | ΔPPL {c['dppl']:+.4f}", flush=True)
    print()
    print("| type | held-out text | size | KLD llama.cpp (imatrix) | KLD ours (calibrated) | ratio "
          "| same top-1 llama.cpp / ours | ΔPPL llama.cpp / ours | seconds llama.cpp / ours |")
    print("|---|---|---|---|---|---|---|---|---|")
    for qtype, label, size, r, t_ref, t_ours, _ in rows:
        a, b = r["llama.cpp"], r["ours"]
        print(f"| {qtype} | {label} | {size / 2**20:.2f} MiB | {a['kld']:.6f} ± {a['kld_err']:.6f} | "
              f"{b['kld']:.6f} ± {b['kld_err']:.6f} | {b['kld'] / a['kld']:.3f} | {100 * a['top1']:.2f} / "
              f"{100 * b['top1']:.2f} % | {a['dppl']:+.4f} / {b['dppl']:+.4f} | {t_ref:.1f} / {t_ours:.1f} |")
    searched = [row for row in rows if "ours+search" in row[3]]
    if searched:
        print()
        print("| type's size | held-out text | KLD llama.cpp (imatrix) | KLD ours, --target-bpw | ratio "
              "| same top-1 llama.cpp / ours | ΔPPL llama.cpp / ours | seconds ours |")
        print("|---|---|---|---|---|---|---|---|")
        for qtype, label, size, r, _, _, t_bpw in searched:
            a, c = r["llama.cpp"], r["ours+search"]
            print(f"| {qtype} ({size / 2**20:.2f} MiB) | {label} | {a['kld']:.6f} ± {a['kld_err']:.6f} | "
                  f"{c['kld']:.6f} ± {c['kld_err']:.6f} | {c['kld'] / a['kld']:.3f} | {100 * a['top1']:.2f} / "
                  f"{100 * c['top1']:.2f} % | {a['dppl']:+.4f} / {c['dppl']:+.4f} | {t_bpw:.1f} |")


if __name__ == "__main__":
    main()
