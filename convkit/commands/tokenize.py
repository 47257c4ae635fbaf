"""`convkit tokenize ...`: train, encode, decode, stats, convert.

Tokenizer files are read in any of our formats (detected from the content) and written
in the one the output name asks for (`*.convkit.json`, `*.json` for HF tokenizer.json,
`*.txt` for vocab.txt) or `--format`. Outputs are written atomically.
"""
import json
import os
import sys
import time

import click

from convkit.atomic import atomic_open
from convkit.errors import ConvkitError
from convkit.output import emit
from convkit.progress import progress
from tokenizers_impl import formats
from tokenizers_impl.bpe import CharBPE
from tokenizers_impl.bytelevel import ByteLevelBPE
from tokenizers_impl.corpus import corpus_size, iter_corpus, pydoc_corpus, read_text_chunks
from tokenizers_impl.normalize import BertNormalizer
from tokenizers_impl.wordpiece import BERT_SPECIAL_TOKENS, SCORINGS, WordPiece

DEFAULT_SPECIAL_TOKENS = {
    "bytelevel": ("<|endoftext|>",),
    "bpe": ("[UNK]",),
    "wordpiece": BERT_SPECIAL_TOKENS,
    "unigram": (),   # sentencepiece's <unk>, <s>, </s> are always there
    "spm-bpe": (),
}
SPM_KINDS = {"unigram": "unigram", "spm-bpe": "bpe"}  # --type -> sentencepiece model type
PRETOKENIZERS = ("gpt2", "llama3", "smollm")


@click.group()
def tokenize():
    """Train and use BPE, byte-level BPE and WordPiece tokenizers; use sentencepiece models."""


# ------------------------------------------------------------------------ shared options
def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")(f)


def normalizer_options(scope: str):
    """BERT normalization switches; scope says where they apply (training, or reading a
    vocab.txt, which does not record them)."""
    def decorate(f):
        options = [
            click.option("--lowercase/--no-lowercase", default=True, show_default=True,
                         help=f"{scope}: lowercase the text (BERT uncased)."),
            click.option("--strip-accents/--no-strip-accents", default=None,
                         help=f"{scope}: remove accents (default: same as --lowercase)."),
            click.option("--clean-text/--no-clean-text", default=True, show_default=True,
                         help=f"{scope}: drop control characters, make all whitespace a space."),
            click.option("--chinese-chars/--no-chinese-chars", default=True, show_default=True,
                         help=f"{scope}: make every CJK ideograph a word of its own."),
        ]
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


VOCAB_TXT_SCOPE = "vocab.txt input"


def _normalizer(kw) -> BertNormalizer:
    return BertNormalizer(clean_text=kw.pop("clean_text"), handle_chinese_chars=kw.pop("chinese_chars"),
                          strip_accents=kw.pop("strip_accents"), lowercase=kw.pop("lowercase"))


def tokenizer_option(f):
    return click.option("-t", "--tokenizer", "tokenizer_path", required=True, metavar="FILE",
                        help="Tokenizer file: .convkit.json, HF tokenizer.json, sentencepiece tokenizer.model or vocab.txt.")(f)


def _load(path, normalizer=None):
    return formats.load(path, normalizer=normalizer)


def _special_tokens(values, kind) -> list:
    if not values:
        return list(DEFAULT_SPECIAL_TOKENS[kind])
    tokens = [t.strip() for v in values for t in v.split(",")]
    return list(dict.fromkeys(t for t in tokens if t))


def _check_output(output, fmt, kind):
    """Fail before any work when the output cannot be written in the asked format."""
    fmt = formats.format_for_path(output, fmt)
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise ConvkitError(f"{output}: directory {parent} does not exist")
    if fmt == "vocab.txt" and kind != "wordpiece":
        raise ConvkitError(f"{output}: vocab.txt holds only WordPiece vocabularies; "
                           f"name the output .json or .convkit.json")
    if fmt == "sentencepiece" and kind not in ("sentencepiece", *SPM_KINDS):
        raise ConvkitError(f"{output}: tokenizer.model holds only sentencepiece models (Unigram, BPE with "
                           f"byte fallback); name the output .json or .convkit.json")
    return fmt


def _write(tok, output, fmt, inputs=()):
    data = formats.dumps(tok, fmt)
    if isinstance(data, bytes):
        with atomic_open(output, "wb", inputs=inputs) as f:
            f.write(data)
        return
    with atomic_open(output, "w", encoding="utf-8", inputs=inputs) as f:
        f.write(data)


def _unk_id(tok):
    return tok.unknown_id()


# ------------------------------------------------------------------------ train
@tokenize.command()
@click.option("--type", "kind", type=click.Choice(sorted(DEFAULT_SPECIAL_TOKENS)), required=True,
              help="bytelevel: GPT-2 style byte-level BPE; bpe: character BPE; wordpiece: BERT WordPiece; "
                   "unigram / spm-bpe: sentencepiece's Unigram / BPE (write .model, .json or .convkit.json).")
@click.option("--vocab-size", type=click.IntRange(min=1), required=True, help="Tokens in the vocab, specials included.")
@click.option("--min-frequency", type=click.IntRange(min=0), default=0, show_default=True,
              help="Merge only pairs seen at least this often.")
@click.option("--pretokenizer", type=click.Choice(PRETOKENIZERS), default=None,
              help="bytelevel: the pre-tokenizer preset (default gpt2).")
@click.option("--special-tokens", multiple=True, metavar="TOKENS",
              help="Comma-separated (or repeated) special tokens; they get the first ids. "
                   "Default: <|endoftext|> (bytelevel), [UNK] (bpe), [PAD],[UNK],[CLS],[SEP],[MASK] (wordpiece).")
@normalizer_options("wordpiece")
@click.option("--scoring", type=click.Choice(SCORINGS), default="likelihood", show_default=True,
              help="wordpiece: merge by likelihood gain, or by pair frequency as HF's WordPieceTrainer.")
@click.option("--character-coverage", type=click.FloatRange(0.0, 1.0), default=0.9995, show_default=True,
              help="unigram / spm-bpe: share of the corpus's characters the alphabet keeps.")
@click.option("--byte-fallback", is_flag=True,
              help="unigram / spm-bpe: characters outside the vocab become <0xNN> byte pieces.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the tokenizer.")
@click.option("--format", "fmt", type=click.Choice(formats.FORMATS), default=None,
              help="Output format (default: from the -o name).")
@click.option("--pydoc", is_flag=True, help="Train on the standard library's pydoc topics (no download).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@json_option
@click.argument("corpus", nargs=-1)
def train(kind, vocab_size, min_frequency, pretokenizer, special_tokens, scoring, character_coverage, byte_fallback,
          output, fmt, pydoc, quiet, as_json, corpus, **norm_kw):
    """Train a tokenizer on CORPUS files (`-` reads stdin) or --pydoc."""
    if not corpus and not pydoc:
        raise ConvkitError("no corpus: give one or more text files (- for stdin) or --pydoc")
    if pretokenizer is not None and kind != "bytelevel":
        raise ConvkitError("--pretokenizer applies to --type bytelevel only")
    if byte_fallback and kind not in SPM_KINDS:
        raise ConvkitError("--byte-fallback applies to --type unigram and spm-bpe only")
    fmt = _check_output(output, fmt, kind)
    specials = _special_tokens(special_tokens, kind)
    normalizer = _normalizer(norm_kw)

    reading = progress(total=corpus_size(corpus) if not pydoc else None, unit="B", unit_scale=True,
                       desc="reading", quiet=quiet)

    def texts():
        try:
            if pydoc:
                for text in pydoc_corpus():
                    reading.update(len(text.encode()))
                    yield text
            yield from iter_corpus(corpus, on_bytes=reading.update)
        finally:
            reading.close()

    bars = {}

    def on_merges(n):
        # opened on the first report, once reading is done, so the two bars never nest
        if "merges" not in bars:
            reading.close()
            bars["merges"] = progress(desc="merges", unit=" merges", quiet=quiet)
        bars["merges"].update(max(0, n - bars["merges"].n))

    start = time.perf_counter()
    try:
        if kind == "bytelevel":
            tok = ByteLevelBPE.train(texts(), vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                     pretokenizer=pretokenizer or "gpt2", progress=on_merges)
        elif kind == "bpe":
            tok = CharBPE.train(texts(), vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                progress=on_merges)
        elif kind in SPM_KINDS:
            tok = _train_sentencepiece(kind, texts(), vocab_size, specials, character_coverage, byte_fallback)
        else:
            tok = WordPiece.train(texts(), vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  normalizer=normalizer, scoring=scoring, progress=on_merges)
    finally:
        reading.close()
        for bar in bars.values():
            bar.close()
    seconds = time.perf_counter() - start
    inputs = [p for p in corpus if p != "-"]
    _write(tok, output, fmt, inputs)
    result = {"output": str(output), "format": fmt, "type": kind, "vocab_size": tok.vocab_size,
              "special_tokens": list(tok.special_tokens), "seconds": round(seconds, 3)}
    has_merges = kind in ("bytelevel", "bpe")
    if has_merges:
        result["merges"] = len(tok.merges)
    text = (f"wrote {output}: {kind} tokenizer, {tok.vocab_size} tokens"
            + (f", {len(tok.merges)} merges" if has_merges else "") + f" ({fmt}, {seconds:.1f} s)")
    emit(result, as_json=as_json, text=text)


def _train_sentencepiece(kind, texts, vocab_size, specials, character_coverage, byte_fallback):
    """sentencepiece's Unigram or BPE trainer on the corpus's lines, normalized by the
    exact nmt_nfkc rules the model then carries; special tokens become user-defined pieces."""
    from tokenizers_impl.sentencepiece import SentencePiece, builtin_charsmap
    from tokenizers_impl.spm_normalize import Normalizer, read_charsmap
    from tokenizers_impl.spm_train_input import SpmTrainOptions

    def lines():
        rest = ""
        for chunk in texts:  # lines as sentencepiece reads them: split at newlines only
            parts = (rest + chunk).split("\n")
            rest = parts.pop()
            yield from parts
        if rest:
            yield rest

    options = SpmTrainOptions(vocab_size=vocab_size, character_coverage=character_coverage,
                              byte_fallback=byte_fallback, user_defined_symbols=tuple(specials))
    normalizer = Normalizer(read_charsmap(builtin_charsmap("nmt_nfkc")), user_defined=specials)
    if kind == "unigram":
        from tokenizers_impl.unigram_train import train_unigram as trainer
    else:
        from tokenizers_impl.spm_bpe_train import train_spm_bpe as trainer
    entries = trainer(lines(), options, normalizer.normalize)
    return SentencePiece.from_pieces(entries, SPM_KINDS[kind], byte_fallback=byte_fallback)


# ------------------------------------------------------------------------ encode / decode
def _input_texts(text, inputs):
    """The text argument, else the chunks of the --input files, else stdin."""
    if text is not None:
        if inputs:
            raise ConvkitError("give either TEXT or --input, not both")
        return [text]
    return iter_corpus(inputs or ["-"])


@tokenize.command()
@tokenizer_option
@click.option("-i", "--input", "inputs", multiple=True, metavar="FILE",
              help="Encode the text of these files (- for stdin) instead of TEXT.")
@click.option("--tokens", "show_tokens", is_flag=True, help="Also show the token strings.")
@click.option("--add-special-tokens", is_flag=True,
              help="WordPiece: wrap in [CLS] ... [SEP] as the tokenizer's post-processor says.")
@normalizer_options(VOCAB_TXT_SCOPE)
@json_option
@click.argument("text", required=False)
def encode(tokenizer_path, inputs, show_tokens, add_special_tokens, as_json, text, **norm_kw):
    """Print the token ids of TEXT (or of --input files, or of stdin)."""
    tok = _load(tokenizer_path, _normalizer(norm_kw))
    ids = []
    for chunk in _input_texts(text, inputs):
        ids += tok.encode(chunk)
    if add_special_tokens and isinstance(tok, WordPiece):
        ids = tok.post_process(ids)
    result = {"ids": ids, "count": len(ids)}
    if show_tokens:
        result["tokens"] = [tok.id_to_token(i) for i in ids]
    human = " ".join(map(str, ids))
    if show_tokens:
        human += "\n" + " ".join(result["tokens"])
    emit(result, as_json=as_json, text=human)


def _parse_ids(values) -> list[int]:
    words = []
    for v in values:
        v = v.strip()
        if v.startswith("["):
            try:
                words += [str(x) for x in json.loads(v)]
            except json.JSONDecodeError:
                raise ConvkitError(f"ids {v[:40]!r}... are not a JSON list of integers") from None
        else:
            words += v.replace(",", " ").split()
    try:
        ids = [int(w) for w in words]
    except ValueError as exc:
        raise ConvkitError(f"not a token id: {exc.args[0].split(': ')[-1]} (give integers)") from None
    if any(i < 0 for i in ids):
        raise ConvkitError("token ids are never negative")
    return ids


@tokenize.command()
@tokenizer_option
@click.option("--skip-special-tokens", is_flag=True, help="Leave special tokens out of the text.")
@json_option
@click.argument("ids", nargs=-1)
def decode(tokenizer_path, skip_special_tokens, as_json, ids):
    """Print the text of token IDS (arguments, or stdin: spaces, commas or a JSON list)."""
    tok = _load(tokenizer_path)
    id_list = _parse_ids(ids if ids else [sys.stdin.read()])
    if skip_special_tokens:
        specials = set(tok.special_tokens.values())
        id_list = [i for i in id_list if i not in specials]
    text = tok.decode(id_list)
    emit({"text": text, "count": len(id_list)}, as_json=as_json, text=text)


# ------------------------------------------------------------------------ stats
@tokenize.command()
@tokenizer_option
@click.option("--text", "text", default=None, help="Measure on this text instead of files.")
@click.option("--pydoc", is_flag=True, help="Measure on the standard library's pydoc topics.")
@normalizer_options(VOCAB_TXT_SCOPE)
@json_option
@click.argument("files", nargs=-1)
def stats(tokenizer_path, text, pydoc, as_json, files, **norm_kw):
    """Tokens per word, bytes per token, unknown rate and vocab usage on a text.

    These are the figures to compare when choosing a vocab size: fewer tokens per word
    and more bytes per token mean shorter sequences; a high unknown rate or a low vocab
    usage means the vocab does not fit the text."""
    tok = _load(tokenizer_path, _normalizer(norm_kw))
    if text is not None:
        chunks = [text]
    elif pydoc:
        chunks = pydoc_corpus()
    elif files:
        chunks = iter_corpus(files)
    else:
        chunks = read_text_chunks("-")
    unk = _unk_id(tok)
    byte_ids = tok.byte_fallback_ids()
    n_tokens = n_words = n_bytes = n_chars = n_unk = n_byte = 0
    used = set()
    for chunk in chunks:
        ids = tok.encode(chunk)
        n_tokens += len(ids)
        n_words += len(chunk.split())
        n_bytes += len(chunk.encode("utf-8"))
        n_chars += len(chunk)
        used.update(ids)
        if unk is not None:
            n_unk += ids.count(unk)
        if byte_ids:
            n_byte += sum(1 for i in ids if i in byte_ids)
    if n_tokens == 0:
        raise ConvkitError("no tokens: the text is empty")
    result = {
        "tokens": n_tokens, "words": n_words, "bytes": n_bytes, "chars": n_chars,
        "tokens_per_word": round(n_tokens / max(n_words, 1), 4),
        "bytes_per_token": round(n_bytes / n_tokens, 4),
        "chars_per_token": round(n_chars / n_tokens, 4),
        "unknown_tokens": n_unk, "unknown_rate": round(n_unk / n_tokens, 6),
        "byte_fallback_tokens": n_byte, "byte_fallback_rate": round(n_byte / n_tokens, 6),
        "vocab_size": tok.vocab_size, "vocab_used": len(used),
        "vocab_usage": round(len(used) / tok.vocab_size, 4),
    }
    human = (f"{n_tokens} tokens for {n_words} words, {n_bytes} bytes\n"
             f"tokens per word  {result['tokens_per_word']:.3f}\n"
             f"bytes per token  {result['bytes_per_token']:.3f}\n"
             f"unknown rate     {result['unknown_rate']:.4%} ({n_unk} tokens)\n"
             f"byte fallback    {result['byte_fallback_rate']:.4%} ({n_byte} tokens)\n"
             f"vocab usage      {result['vocab_usage']:.2%} ({len(used)} of {tok.vocab_size} tokens)")
    emit(result, as_json=as_json, text=human)


# ------------------------------------------------------------------------ convert
@tokenize.command()
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write.")
@click.option("--format", "fmt", type=click.Choice(formats.FORMATS), default=None,
              help="Output format (default: from the -o name).")
@normalizer_options(VOCAB_TXT_SCOPE)
@json_option
def convert(source, output, fmt, as_json, **norm_kw):
    """Convert SOURCE between our format, HF tokenizer.json, sentencepiece tokenizer.model and vocab.txt.

    Normalization options apply when SOURCE is a vocab.txt (which does not record them)."""
    tok = _load(source, _normalizer(norm_kw))
    kind = formats.kind_of(tok)
    fmt = _check_output(output, fmt, kind)
    _write(tok, output, fmt, inputs=[source])
    emit({"output": str(output), "format": fmt, "type": kind, "vocab_size": tok.vocab_size},
         as_json=as_json, text=f"wrote {output}: {kind} tokenizer, {tok.vocab_size} tokens ({fmt})")
