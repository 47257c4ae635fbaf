"""SentencePiece models: our encoder and sentencepiece's, side by side in one run, on the
Python documentation sources (one string, and line by line), for a Unigram and a BPE
model that sentencepiece trains here. Both must give the same ids; the script says so.

Each case is timed `--repeat` times on each side and the best run counts.
Run: python benchmarks/bench_spm.py [--mb 11] [--vocab 8000] [--repeat 3]
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from report import result as report_result  # noqa: E402


def _text(mb):
    from realdata import python_docs_rst_text

    want = int(mb * 1_000_000)
    text = python_docs_rst_text(want)
    text = text * max(1, -(-want // len(text.encode())))
    return text.encode()[:want].decode("utf-8", "ignore")


def _model(kind, vocab, corpus, workdir):
    import sentencepiece as spm

    prefix = workdir / f"bench-{kind}-{vocab}"
    if not (prefix.parent / (prefix.name + ".model")).is_file():
        src = workdir / "bench-corpus.txt"
        src.write_text(corpus[:3_000_000], encoding="utf-8")
        options = dict(byte_fallback=True, character_coverage=0.9995, hard_vocab_limit=False)
        if kind == "bpe":  # the Llama layout
            options.update(normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True)
        spm.SentencePieceTrainer.train(input=str(src), model_prefix=str(prefix), model_type=kind, vocab_size=vocab,
                                       num_threads=2, minloglevel=2, **options)
    return prefix.parent / (prefix.name + ".model")


def _time(fn, repeat):
    """The best of `repeat` runs (the machine is shared: the best run is the least disturbed)."""
    best, out = None, None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        took = time.perf_counter() - t
        best = took if best is None else min(best, took)
    return best, out


def main():
    from convkit.sysinfo import cpu_info
    from realdata import CACHE
    import sentencepiece as spm
    from tokenizers_impl import formats
    from tokenizers_impl import sentencepiece as ours_module

    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=11)
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each case; the best counts")
    args = ap.parse_args()
    cpu = cpu_info()
    print(f"CPU: {cpu.get('model')}, {cpu.get('logical_cores')} CPUs; sentencepiece {spm.__version__}; "
          f"compiled helper: {'yes' if ours_module.compiled() else 'no (pure Python)'}")
    text = _text(args.mb)
    lines = text.splitlines()
    mb = len(text.encode()) / 1e6
    workdir = CACHE / "bench-spm"
    workdir.mkdir(parents=True, exist_ok=True)
    for kind in ("unigram", "bpe"):
        path = _model(kind, args.vocab, text, workdir)
        sp = spm.SentencePieceProcessor(model_file=str(path))
        tok = formats.load(path)
        for case, run_sp, run_ours in (
            ("one string", lambda: sp.encode(text), lambda: tok.encode(text)),
            ("line by line", lambda: sp.encode(lines), lambda: tok.encode_batch(lines)),
            # both batch calls use every CPU by default; one thread each compares the code alone
            ("line by line, 1 thread", lambda: sp.encode(lines, num_threads=1),
             lambda: tok.encode_batch(lines, threads=1)),
        ):
            t_sp, ids_sp = _time(run_sp, args.repeat)
            t_ours, ids_ours = _time(run_ours, args.repeat)
            same = ids_sp == ids_ours
            print(f"{kind:8s} {case:22s} {mb:.1f} MB: sentencepiece {mb / t_sp:7.2f} MB/s, "
                  f"convkit {mb / t_ours:7.2f} MB/s, ratio {t_sp / t_ours:.2f}x, same ids: {same}")
            report_result(f"sentencepiece {kind} encode ({case})", mb / t_ours, "sentencepiece", mb / t_sp, "MB/s")
            if not same:
                raise SystemExit(f"{kind} {case}: ids differ from sentencepiece's")


if __name__ == "__main__":
    main()
