"""Byte-level BPE side by side with the peers: training (HF tokenizers, sentencepiece) and
encoding (tiktoken, HF tokenizers, sentencepiece), on the Python documentation sources.

sentencepiece runs its own algorithm (BPE over whitespace-marked pieces, byte fallback,
digits split like our smollm preset), so its figures compare throughput and memory at
the same vocab size, not identical output.

Each case runs in its own process. Memory is the peak resident size while the measured
call runs (Linux VmHWM, reset after the input is loaded), so loading the corpus, which
both sides share, does not hide the difference.
Run: python benchmarks/bench_tokenizers.py [--train-mb 20] [--vocab 32000]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from report import result as report_result  # noqa: E402


def _status_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _start_measure():
    """Reset the peak-RSS mark so that it counts only what follows."""
    global _BASE_KB
    Path("/proc/self/clear_refs").write_text("5")
    _BASE_KB = _status_kb("VmRSS")
    return time.perf_counter()


_BASE_KB = 0


def _done(t0, **result):
    result["seconds"] = time.perf_counter() - t0
    result["peak_mb"] = _status_kb("VmHWM") / 1024
    result["added_mb"] = result["peak_mb"] - _BASE_KB / 1024
    return result


def _lines(mb):
    from realdata import python_docs_rst_text

    # the sources hold about 11 MB: beyond that the corpus is repeated to the size asked
    want = int(mb * 1_000_000)
    text = python_docs_rst_text(want)
    size = len(text.encode())
    text = text * max(1, -(-want // size))
    text = text.encode()[:want].decode("utf-8", "ignore")
    return text, text.splitlines(keepends=True)


def case_train_ours(mb, vocab):
    from tokenizers_impl import ByteLevelBPE

    text, lines = _lines(mb)
    t0 = _start_measure()
    tok = ByteLevelBPE.train(lines, vocab, special_tokens=["<|endoftext|>"])
    return _done(t0, bytes=len(text.encode()), merges=[list(m) for m in tok.merges])


def case_train_hf(mb, vocab):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    text, lines = _lines(mb)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab, show_progress=False, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t0 = _start_measure()
    tok.train_from_iterator(lines, trainer)
    result = _done(t0, bytes=len(text.encode()))
    merges = json.loads(tok.to_str())["model"]["merges"]
    result["merges"] = [m if isinstance(m, list) else m.split(" ") for m in merges]
    return result


def _train_spm(lines, vocab):
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, model_type="bpe",
                                   vocab_size=vocab, character_coverage=1.0, byte_fallback=True,
                                   split_digits=True, num_threads=2, max_sentence_length=1 << 16,
                                   minloglevel=2)
    return model.getvalue()


def case_train_spm(mb, vocab):
    text, lines = _lines(mb)
    t0 = _start_measure()
    _train_spm(lines, vocab)
    return _done(t0, bytes=len(text.encode()), merges=[])


def case_encode_spm(_mb, vocab):
    """sentencepiece encoding the docs with a BPE model of `vocab` pieces trained on them."""
    import sentencepiece as spm
    from realdata import python_docs_rst_text

    text = python_docs_rst_text()
    sp = spm.SentencePieceProcessor(model_proto=_train_spm(text.splitlines(keepends=True), vocab))
    t0 = _start_measure()
    ids = sp.encode(text)
    return _done(t0, bytes=len(text.encode()), ids=ids)


def _smollm2():
    from smollm2_fixture import smollm2_tokenizer_json

    path = smollm2_tokenizer_json()
    return path, json.loads(path.read_text())


def case_encode_ours(_mb, _vocab):
    from realdata import python_docs_rst_text
    from tokenizers_impl import ByteLevelBPE

    _, j = _smollm2()
    merges = [m if isinstance(m, list) else m.split(" ") for m in j["model"]["merges"]]
    tok = ByteLevelBPE(j["model"]["vocab"], merges, "smollm",
                       {t["content"]: t["id"] for t in j["added_tokens"] if t["special"]})
    text = python_docs_rst_text()
    t0 = _start_measure()
    ids = tok.encode(text)
    return _done(t0, bytes=len(text.encode()), ids=ids)


def case_encode_hf(_mb, _vocab):
    from realdata import python_docs_rst_text
    from tokenizers import Tokenizer

    path, _ = _smollm2()
    tok = Tokenizer.from_file(str(path))
    text = python_docs_rst_text()
    t0 = _start_measure()
    ids = tok.encode(text, add_special_tokens=False).ids
    return _done(t0, bytes=len(text.encode()), ids=ids)


def case_encode_tiktoken(_mb, _vocab):
    """tiktoken with the same vocab and a pattern of the same shape (digits split singly)."""
    import tiktoken
    from realdata import python_docs_rst_text
    from tokenizers_impl.bytelevel import token_to_bytes

    _, j = _smollm2()
    ranks = {token_to_bytes(t): i for t, i in j["model"]["vocab"].items()}
    pat = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    enc = tiktoken.Encoding("smollm2", pat_str=pat, mergeable_ranks=ranks, special_tokens={})
    text = python_docs_rst_text()
    t0 = _start_measure()
    ids = enc.encode_ordinary(text)
    return _done(t0, bytes=len(text.encode()), ids=ids)


CASES = {f.__name__[5:]: f for f in (case_train_ours, case_train_hf, case_train_spm, case_encode_ours,
                                     case_encode_hf, case_encode_tiktoken, case_encode_spm)}


def run_case(name, mb, vocab):
    out = subprocess.run([sys.executable, __file__, "--case", name, "--train-mb", str(mb), "--vocab", str(vocab)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-mb", type=float, default=20)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--case")
    args = ap.parse_args()
    if args.case:
        try:
            result = CASES[args.case](args.train_mb, args.vocab)
        except ImportError as exc:  # a peer that is not installed: reported, not fatal
            result = {"missing": exc.name}
        print(json.dumps(result))
        return

    def row(what, ours, peer, peer_name, case):
        mbps = lambda r: r["bytes"] / r["seconds"] / 1e6  # noqa: E731
        if "missing" in peer:
            report_result(f"{case} speed", mbps(ours), f"{peer_name} (not installed)", None, "MB/s")
            print(f"{what:<32} ours {mbps(ours):6.2f} MB/s | {peer_name}: not installed ({peer['missing']})")
            return
        report_result(f"{case} speed", mbps(ours), peer_name, mbps(peer), "MB/s")
        report_result(f"{case} peak memory", ours["peak_mb"], peer_name, peer["peak_mb"], "MB",
                      higher_is_better=False)
        print(f"{what:<32} ours {mbps(ours):6.2f} MB/s {ours['seconds']:6.2f} s peak {ours['peak_mb']:4.0f} MB (+{ours['added_mb']:.0f}) | "
              f"{peer_name} {mbps(peer):6.2f} MB/s {peer['seconds']:6.2f} s peak {peer['peak_mb']:4.0f} MB (+{peer['added_mb']:.0f}) | "
              f"speed x{mbps(ours) / mbps(peer):.2f} peak memory x{ours['peak_mb'] / peer['peak_mb']:.2f}")

    ours, hf = run_case("train_ours", args.train_mb, args.vocab), run_case("train_hf", args.train_mb, args.vocab)
    train = f"train vocab {args.vocab}, {ours['bytes'] / 1e6:.0f} MB"
    row(train, ours, hf, "HF tokenizers", train)
    if "missing" not in hf:
        same = sum(a == b for a, b in zip(ours["merges"], hf["merges"]))
        print(f"  merges: {len(ours['merges'])} ours, {len(hf['merges'])} HF, same at the same rank {same}")
    sp = run_case("train_spm", args.train_mb, args.vocab)
    row("", ours, sp, "sentencepiece (BPE)", train)
    ours, hf, tk = (run_case(c, 0, 0) for c in ("encode_ours", "encode_hf", "encode_tiktoken"))
    encode = f"encode SmolLM2 vocab, {ours['bytes'] / 1e6:.0f} MB"
    row(encode, ours, tk, "tiktoken", encode)
    row("", ours, hf, "HF tokenizers", encode)
    sp = run_case("encode_spm", 0, args.vocab)
    row("", ours, sp, f"sentencepiece (BPE, {args.vocab} pieces)", encode)
    if "missing" in hf:
        return
    print(f"  ids identical to HF: {ours['ids'] == hf['ids']} ({len(ours['ids'])} ids)")
    if "missing" not in tk:
        print(f"  tiktoken's pattern differs slightly from HF's Digits+ByteLevel, its ids: {len(tk['ids'])}, "
              f"identical: {tk['ids'] == hf['ids']}")


if __name__ == "__main__":
    main()
