"""WordPiece side by side with HF tokenizers: encoding with MiniLM's real vocab (BERT
uncased normalization) and training, on the Python documentation.

Both sides get the same text and produce the same ids (checked). HF tokenizers runs
with 2 threads (RAYON_NUM_THREADS=2, the machine's cores); ours is single-threaded.
Printed per case: our seconds, HF's seconds, and ratio = ours / HF (below 1: faster).
Run: python benchmarks/bench_wordpiece.py [--mb 11] [--vocab 8000]
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=11.0, help="MB of .rst documentation to encode")
    ap.add_argument("--vocab", type=int, default=8000, help="vocab size for the training cases")
    args = ap.parse_args()

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

    lines = docs.split("\n")
    for scoring in ("frequency", "likelihood"):
        t_ours, model = best_of(lambda: WordPiece.train(lines, args.vocab, scoring=scoring), 1)

        def hf_train():
            t = Tokenizer(models.WordPiece(unk_token="[UNK]"))
            t.normalizer = normalizers.BertNormalizer()
            t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            t.train_from_iterator(lines, trainers.WordPieceTrainer(
                vocab_size=args.vocab, special_tokens=list(BERT_SPECIAL_TOKENS), show_progress=False))
            return t

        t_hf, trained = best_of(hf_train, 1)
        report(f"train {scoring} vocab {args.vocab} on pydoc", t_ours, t_hf,
               f"{model.vocab_size} vs {trained.get_vocab_size()} tokens (HF: frequency)")


if __name__ == "__main__":
    main()
