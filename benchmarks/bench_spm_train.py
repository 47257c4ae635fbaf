"""sentencepiece's two trainers side by side with ours: Unigram and BPE, same corpus,
same settings (sentencepiece's defaults: nmt_nfkc, character coverage 0.9995).

The corpus: Debian's python3.11-doc .rst sources (about 11 MB) and then Python's own
standard library sources, cut at --mb megabytes, one file. Each run is a child process
of its own, so that its peak memory (RSS) is its own; the time is the training call
inside the child (reading the file included, imports not). sentencepiece runs with its
default 16 threads on however many cores there are; ours is single-threaded. Ours
normalizes with sentencepiece's nmt_nfkc normalizer (the rule both sides must apply).
Each case also checks the result: BPE vocabularies must be identical; Unigram's pieces
are compared as sets, with the token count on held-out text (other standard library
sources) segmented by each vocabulary.
Printed per case: seconds and peak MiB for both, and ratio = sentencepiece's time / ours
(above 1: faster).
Run: python benchmarks/bench_spm_train.py [--mb 20] [--vocab 32000]
"""
import argparse
import io
import json
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def corpus(path: Path, mb: float) -> None:
    from realdata import python_docs_rst_text

    limit = int(mb * 1_000_000)
    text = python_docs_rst_text(limit)
    parts, size = [text], len(text.encode())
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for src in sorted(stdlib.rglob("*.py")):
        if size >= limit:
            break
        if "test" in src.parts:  # the held-out text comes from the tests
            continue
        try:
            chunk = src.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(chunk)
        size += len(chunk.encode())
    path.write_bytes("".join(parts).encode()[:limit].decode("utf-8", "ignore").encode())


def held_out() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((stdlib / "test").glob("test_*.py"))[:60]
    return "".join(f.read_text(encoding="utf-8", errors="replace") for f in files).split("\n")


def child(which: str, kind: str, path: str, vocab: int, out: str) -> None:
    """One training run; writes the vocabulary and the seconds to out."""
    import resource

    import sentencepiece as spm

    t0 = time.perf_counter()
    if which == "sentencepiece":
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(input=path, model_writer=model, model_type=kind, vocab_size=vocab,
                                       minloglevel=2)
        seconds = time.perf_counter() - t0
        import spm_oracle
        vocab_out = spm_oracle.pieces(model.getvalue())
        model_hex = model.getvalue().hex()
    else:
        from tokenizers_impl.spm_bpe_train import train_spm_bpe
        from tokenizers_impl.spm_train_input import SpmTrainOptions
        from tokenizers_impl.unigram_train import train_unigram

        normalize = spm.SentencePieceNormalizer(rule_name="nmt_nfkc").normalize
        train = train_unigram if kind == "unigram" else train_spm_bpe
        with open(path, encoding="utf-8") as f:
            vocab_out = train(f, SpmTrainOptions(vocab_size=vocab), normalize=normalize)
        seconds = time.perf_counter() - t0
        model_hex = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out).write_text(json.dumps({"seconds": seconds, "peak_mib": peak, "vocab": vocab_out, "model": model_hex}))


def run(which, kind, path, vocab, tmp):
    out = Path(tmp) / f"{which}-{kind}.json"
    subprocess.run([sys.executable, __file__, "--child", which, kind, str(path), str(vocab), str(out)], check=True)
    return json.loads(out.read_text())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=20.0)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        which, kind, path, vocab, out = args.child
        child(which, kind, path, int(vocab), out)
        return

    import spm_oracle
    from report import result
    from run_all import machine

    print(machine(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        corpus(path, args.mb)
        mb = path.stat().st_size / 1e6
        held = held_out()
        for kind in ("unigram", "bpe"):
            peer = run("sentencepiece", kind, path, args.vocab, tmp)
            ours = run("ours", kind, path, args.vocab, tmp)
            theirs_v = [tuple(v) for v in peer["vocab"]]
            ours_v = [tuple(v) for v in ours["vocab"]]
            if kind == "bpe":
                note = "vocabulary identical" if ours_v == theirs_v else "VOCABULARY DIFFERS"
            else:
                model = bytes.fromhex(peer["model"])
                n_theirs, ll_theirs = spm_oracle.token_stats(model, held)
                n_ours, ll_ours = spm_oracle.token_stats(spm_oracle.with_pieces(model, ours_v), held)
                common = len({p for p, _, _ in ours_v} & {p for p, _, _ in theirs_v})
                note = (f"{common}/{len(theirs_v)} pieces shared; held-out tokens ours/theirs "
                        f"{n_ours / n_theirs:.4f}, log-prob/token {ll_ours:.4f} vs {ll_theirs:.4f}")
            case = f"spm train {kind}, {mb:.1f} MB, vocab {args.vocab}"
            print(f"{case:<40} ours {ours['seconds']:7.2f} s {ours['peak_mib']:6.0f} MiB   "
                  f"sentencepiece {peer['seconds']:7.2f} s {peer['peak_mib']:6.0f} MiB   "
                  f"ratio {peer['seconds'] / ours['seconds']:5.2f}   {note}", flush=True)
            result(case, ours["seconds"], "sentencepiece", peer["seconds"], "s", higher_is_better=False)
            result(case + " (peak memory)", ours["peak_mib"], "sentencepiece", peer["peak_mib"], "MiB",
                   higher_is_better=False)


if __name__ == "__main__":
    main()
