"""WordPiece side by side with HF tokenizers: encoding with MiniLM's real vocab (BERT
uncased normalization) and training, on the Python documentation.

Both sides get the same text and produce the same ids (checked). HF tokenizers runs
with 2 threads (RAYON_NUM_THREADS=2, the machine's cores); ours is single-threaded.
Training: on the pydoc topics (vocab --vocab, both our scorings; HF's WordPieceTrainer
merges by frequency), best of --rounds, the two sides taking turns; and on --train-mb MB
(bench_spm_train's corpus: the .rst documentation, then standard library sources) at vocab
--big-vocab, each run a child process of its own so that its peak memory (RSS) is its own,
the time being the training call reading the file line by line.
Printed per case: our seconds, HF's seconds, and ratio = ours / HF (below 1: faster).
Run: python benchmarks/bench_wordpiece.py [--mb 11] [--vocab 8000] [--train-mb 20] [--big-vocab 30522]
     [--rounds 3] [--train-only]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers  # noqa: E402

from realdata import minilm_dir, python_docs_rst_text, python_docs_text  # noqa: E402
from tokenizers_impl import WordPiece  # noqa: E402
from tokenizers_impl.formats import load  # noqa: E402
from tokenizers_impl.wordpiece import BERT_SPECIAL_TOKENS  # noqa: E402
from report import result  # noqa: E402


def best_of(fn, repeat):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def report(case, ours, peer, note=""):
    print(f"{case:<44} ours {ours:8.3f} s   hf {peer:8.3f} s   ratio {ours / peer:6.2f}  {note}", flush=True)
    flag = " (IDS DIFFER)" if "IDS DIFFER" in note else ""
    result(case + flag, ours, "HF tokenizers", peer, "s", higher_is_better=False)


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def hf_train(lines, vocab_size):
    t = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer()
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.train_from_iterator(lines, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(BERT_SPECIAL_TOKENS), show_progress=False))
    return t


def child(which: str, path: str, vocab_size: int, out: str) -> None:
    """One training run on the lines of path, read as they are needed (so that the peak
    memory is the trainer's): seconds, peak MiB and vocab size to out."""
    t0 = time.perf_counter()
    with open(path, encoding="utf-8") as lines:
        if which == "hf":
            n = hf_train(lines, vocab_size).get_vocab_size()
        else:
            n = WordPiece.train(lines, vocab_size, scoring=which).vocab_size
    seconds = time.perf_counter() - t0
    Path(out).write_text(json.dumps({"seconds": seconds, "peak_mib": peak_mib(), "vocab_size": n}))


def peak_mib() -> float:
    """This process's peak RSS. ru_maxrss would carry over the parent's peak at fork (Linux
    keeps it across exec); the kernel's VmHWM belongs to this program's own memory map."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(which: str, path: Path, vocab_size: int, tmp: str) -> dict:
    out = Path(tmp) / f"{which}.json"
    subprocess.run([sys.executable, __file__, "--child", which, str(path), str(vocab_size), str(out)], check=True)
    return json.loads(out.read_text())


def train_cases(args):
    lines = python_docs_text().split("\n")
    for scoring in ("frequency", "likelihood"):
        times = {"ours": [], "hf": []}
        for _ in range(args.rounds):
            t_ours, model = best_of(lambda: WordPiece.train(lines, args.vocab, scoring=scoring), 1)
            t_hf, trained = best_of(lambda: hf_train(lines, args.vocab), 1)
            times["ours"].append(t_ours)
            times["hf"].append(t_hf)
        report(f"train {scoring} vocab {args.vocab} on pydoc", min(times["ours"]), min(times["hf"]),
               f"{model.vocab_size} vs {trained.get_vocab_size()} tokens (HF: frequency)")

    from bench_spm_train import corpus

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        corpus(path, args.train_mb)
        mb = path.stat().st_size / 1e6
        for scoring in ("frequency", "likelihood"):
            runs = {"ours": [], "hf": []}
            for _ in range(args.rounds):
                runs["ours"].append(run_child(scoring, path, args.big_vocab, tmp))
                runs["hf"].append(run_child("hf", path, args.big_vocab, tmp))
            ours = min(runs["ours"], key=lambda r: r["seconds"])
            peer = min(runs["hf"], key=lambda r: r["seconds"])
            case = f"train {scoring} vocab {args.big_vocab} on {mb:.0f} MB"
            report(case, ours["seconds"], peer["seconds"],
                   f"peak {ours['peak_mib']:.0f} MiB vs {peer['peak_mib']:.0f} MiB; "
                   f"{ours['vocab_size']} vs {peer['vocab_size']} tokens (HF: frequency)")
            result(case + " (peak memory)", ours["peak_mib"], "HF tokenizers", peer["peak_mib"], "MiB",
                   higher_is_better=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=11.0, help="MB of .rst documentation to encode")
    ap.add_argument("--vocab", type=int, default=8000, help="vocab size for the pydoc training cases")
    ap.add_argument("--train-mb", type=float, default=20.0, help="MB of text for the large training cases")
    ap.add_argument("--big-vocab", type=int, default=30522, help="vocab size for the large training cases")
    ap.add_argument("--rounds", type=int, default=3, help="training rounds per side (the best counts)")
    ap.add_argument("--train-only", action="store_true", help="skip the encoding cases")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        which, path, vocab_size, out = args.child
        child(which, path, int(vocab_size), out)
        return

    print(f"CPU: {cpu_model()}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if not args.train_only:
        encode_cases(args)
    train_cases(args)
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


def encode_cases(args):
    d = minilm_dir()
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    hf.no_truncation()
    hf.no_padding()
    vocab_txt = d / "vocab.txt"

    docs = python_docs_text()
    rst = python_docs_rst_text(int(args.mb * 1_000_000))
    for name, text in (("pydoc topics", docs), (f"{len(rst.encode()) / 1e6:.1f} MB .rst docs", rst)):
        mb = len(text.encode()) / 1e6

        def ours_cold():
            return load(vocab_txt).encode(text)  # a fresh tokenizer: empty word cache

        t_ours, ids = best_of(ours_cold, 3)
        t_hf, enc = best_of(lambda: hf.encode(text, add_special_tokens=False), 3)
        same = "same ids" if ids == enc.ids else "IDS DIFFER"
        report(f"encode {name}, one text ({mb:.1f} MB)", t_ours, t_hf, f"{mb / t_ours:.1f} MB/s ours, {same}")

        lines = text.split("\n")
        tok = load(vocab_txt)
        t_ours, ids = best_of(lambda: tok.encode_batch(lines), 3)
        t_hf, encs = best_of(lambda: hf.encode_batch(lines, add_special_tokens=False), 3)
        same = "same ids" if ids == [e.ids for e in encs] else "IDS DIFFER"
        report(f"encode {name}, {len(lines)} lines (warm)", t_ours, t_hf, same)


if __name__ == "__main__":
    main()
