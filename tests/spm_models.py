"""SentencePiece test models, trained here with sentencepiece's own trainer on the Python
docs (small vocabularies, one thread, no shuffling: the same file every time) and cached
in the test cache. Never committed: each test trains what it needs the first time."""
import hashlib
import json

from realdata import CACHE, python_docs_text

# name -> trainer options; the variants cover both models, byte fallback and every
# normalization rule sentencepiece ships
VARIANTS = {
    "unigram": dict(model_type="unigram", vocab_size=1000),
    "unigram_bytes": dict(model_type="unigram", vocab_size=1000, byte_fallback=True,
                          character_coverage=0.995),
    "unigram_nfkc": dict(model_type="unigram", vocab_size=800, normalization_rule_name="nfkc",
                         user_defined_symbols=["<mask>", "::"], control_symbols=["<ctl>"]),
    "unigram_cf": dict(model_type="unigram", vocab_size=800, normalization_rule_name="nmt_nfkc_cf",
                       byte_fallback=True),
    "unigram_identity": dict(model_type="unigram", vocab_size=800, normalization_rule_name="identity",
                             remove_extra_whitespaces=False, byte_fallback=True),
    # T5's ids (pad 0, eos 1, unk 2, no bos), so that transformers' T5 converter reads it
    "unigram_t5": dict(model_type="unigram", vocab_size=1000, pad_id=0, eos_id=1, unk_id=2, bos_id=-1),
    "bpe": dict(model_type="bpe", vocab_size=1000),
    "bpe_bytes": dict(model_type="bpe", vocab_size=1000, byte_fallback=True, character_coverage=0.995),
    # the Llama 2 layout: BPE, byte fallback, identity, no whitespace cleanup, digits split
    "bpe_llama": dict(model_type="bpe", vocab_size=1200, byte_fallback=True, normalization_rule_name="identity",
                      remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
                      user_defined_symbols=["<tool>"]),
    "bpe_nfkc_cf": dict(model_type="bpe", vocab_size=800, normalization_rule_name="nmt_nfkc_cf",
                        add_dummy_prefix=False),
    # the Gemma layout: BPE, byte fallback, no dummy prefix, Gemma's special ids (pad 0, eos 1,
    # bos 2, unk 3) and its turn markers as user-defined pieces
    "bpe_gemma": dict(model_type="bpe", vocab_size=2048, byte_fallback=True, normalization_rule_name="identity",
                      remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
                      add_dummy_prefix=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
                      eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
                      user_defined_symbols=["<start_of_turn>", "<end_of_turn>"]),
}


def training_text() -> str:
    # the first 600 kB of the docs plus a little of several scripts, so that byte
    # fallback has characters both seen and unseen
    extra = ("Größe straße Ünïcödé café naïve — “quotes” ½ ① ｆｕｌｌｗｉｄｔｈ\n"
             "日本語のテキストです。中文文本。한국어 텍스트\nПривет мир. Ελληνικά κείμενα.\n") * 20
    return python_docs_text()[:600_000] + extra


def spm_model(name: str):
    """Path of the cached tokenizer.model of one variant (trained on first use)."""
    import sentencepiece as spm

    options = VARIANTS[name]
    key = hashlib.sha256(json.dumps([options, spm.__version__], sort_keys=True).encode()).hexdigest()[:12]
    target = CACHE / "spm-models" / f"{name}-{key}.model"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    corpus = target.with_suffix(".txt")
    corpus.write_text(training_text(), encoding="utf-8")
    prefix = target.with_suffix("")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix) + ".part", num_threads=1,
                                   shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2,
                                   **options)
    (prefix.parent / (prefix.name + ".part.vocab")).unlink(missing_ok=True)
    (prefix.parent / (prefix.name + ".part.model")).replace(target)
    corpus.unlink()
    return target
