"""HF tokenizer files -> the GGUF tokenizer keys, as llama.cpp's converter writes them.

tokenizer.json (BPE -> "gpt2", WordPiece -> "bert") or tokenizer.model (sentencepiece ->
"llama"). The pre-tokenizer name (`tokenizer.ggml.pre`) is llama.cpp's: its converter
decides it by hashing the HF tokenization of a fixed text. convkit must not need HF
tokenizers at run time, so it recognises known vocabularies by a fingerprint (sha256 of
the tokens in id order, the first 1000 of them) from a small table, and otherwise
derives the name from the pre-tokenizer's configuration: our byte-level presets map to
the llama.cpp names that run the same regex ("default" for anything else).
"""
import hashlib
from pathlib import Path

import gguf

from convkit.errors import ConvkitError
from convkit.json_files import checked_token_id, read_json_object
from tokenizers_impl.errors import TokenizerError
from tokenizers_impl.formats import GGUF_PRE, bytelevel_preset, check_hf_document

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

def vocab_fingerprint(tokens) -> str:
    return hashlib.sha256("\n".join(tokens[:1000]).encode("utf-8")).hexdigest()[:16]


def _pre_name(tokenizer: dict, tokens) -> str:
    fp = vocab_fingerprint(tokens)
    for known_fp, name in FINGERPRINTS.items():
        if fp == known_fp:
            return name
    try:
        preset = bytelevel_preset(tokenizer.get("pre_tokenizer"), "tokenizer.json")
    except TokenizerError:
        preset = None  # byte-level with a pattern of its own: llama.cpp's generic split
    # our presets are the regexes llama.cpp runs for these names (plain ByteLevel is GPT-2's)
    return GGUF_PRE.get(preset, "default")


# sha256 prefixes of known vocabularies (see vocab_fingerprint)
FINGERPRINTS = {
    "e540bc9a0797b3ba": "smollm",  # SmolLM / SmolLM2 (49152 tokens)
}


def write_vocab(w: gguf.GGUFWriter, directory: Path, config: dict, reads_prefix_space: bool = False,
                sentencepiece: str | None = None) -> None:
    """The tokenizer's metadata. `reads_prefix_space`: write tokenizer_config.json's
    add_prefix_space as add_space_prefix (llama.cpp's llama converter does; others do not).
    `sentencepiece`: "first" reads tokenizer.model before tokenizer.json, "required" reads
    only tokenizer.model (llama.cpp's Gemma converters), None tokenizer.json first."""
    directory = Path(directory)
    tok_path = directory / "tokenizer.json"
    if sentencepiece == "required" and not (directory / "tokenizer.model").is_file():
        raise ConvkitError(f"{directory}: no tokenizer.model; this architecture's GGUF vocabulary is its "
                           "sentencepiece model, copy it from the model's source")
    if sentencepiece and (directory / "tokenizer.model").is_file():
        write_sentencepiece(w, directory / "tokenizer.model", directory, config)
        return
    if reads_prefix_space and (directory / "tokenizer.model").is_file():
        # llama.cpp's llama converter tries the sentencepiece model first (and copies
        # tokenizer_config's add_prefix_space before it)
        tcfg_path = directory / "tokenizer_config.json"
        tcfg = read_json_object(tcfg_path) if tcfg_path.is_file() else {}
        if isinstance(tcfg.get("add_prefix_space"), bool):
            w.add_add_space_prefix(tcfg["add_prefix_space"])
        write_sentencepiece(w, directory / "tokenizer.model", directory, config)
        return
    if tok_path.is_file():
        tokenizer = read_json_object(tok_path)
        model, _, _, _ = check_hf_document(tokenizer, str(tok_path))  # types and id ranges
        kind = model["type"]
        if kind == "BPE":
            _write_bpe(w, tokenizer, directory, config, tok_path, reads_prefix_space)
        elif kind == "WordPiece":
            _write_wordpiece(w, tokenizer, directory, config, tok_path)
        else:
            raise ConvkitError(f"{tok_path}: tokenizer model {kind!r} is not supported (BPE, WordPiece)")
        return
    if (directory / "tokenizer.model").is_file():
        write_sentencepiece(w, directory / "tokenizer.model", directory, config)
        return
    raise ConvkitError(f"{directory}: no tokenizer.json or tokenizer.model beside the weights")


def _tokens_and_types(tokenizer, vocab_size, tok_path):
    _, vocab, _, _ = check_hf_document(tokenizer, str(tok_path))
    by_id = {i: t for t, i in vocab.items()}
    added = {}
    for entry in tokenizer.get("added_tokens") or []:
        by_id[entry["id"]] = entry["content"]
        added[entry["id"]] = entry
    # ids are inside the file's own count (check_hf_document); vocab_size is config.json's,
    # which the converter has checked against the embedding's rows: one token per row
    top = max(by_id, default=-1)
    if vocab_size and top >= vocab_size:
        raise ConvkitError(f"{tok_path}: token id {top} ({by_id[top]!r}) is beyond the model's vocabulary of "
                           f"{vocab_size} (config.json vocab_size, the embedding's rows); the tokenizer belongs "
                           "to another model")
    size = max(vocab_size, top + 1)
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    return tokens, types


def _special_ids(w, tokens, directory, config, by_name=True):
    """bos/eos/... ids: tokenizer_config.json's token names looked up in the vocab (when
    by_name: llama.cpp finds them through tokenizer.json's added tokens), else config.json."""
    cfg_path = directory / "tokenizer_config.json"
    tcfg = read_json_object(cfg_path) if cfg_path.is_file() and by_name else {}
    index = {t: i for i, t in enumerate(tokens)}

    def token_id(key):
        value = tcfg.get(f"{key}_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str) and value in index:
            return index[value]
        cid = config.get(f"{key}_token_id")
        if isinstance(cid, int) and not isinstance(cid, bool):
            return checked_token_id(cid, len(tokens), directory / "config.json")
        return None

    K = gguf.Keys.Tokenizer
    for key, gguf_key in (("bos", K.BOS_ID), ("eos", K.EOS_ID), ("unk", K.UNK_ID), ("sep", K.SEP_ID),
                          ("pad", K.PAD_ID), ("mask", K.MASK_ID)):
        value = token_id(key)
        if value is not None:
            w.add_uint32(gguf_key, int(value))
    return tcfg


def _token_text(entry):
    return entry.get("content") if isinstance(entry, dict) else entry


def added_special_tokens(tokenizer: dict, tcfg: dict) -> dict:
    """Whether encoding adds BOS / EOS / SEP, as llama.cpp's converter (gguf.SpecialVocab)
    decides it: from tokenizer.json's post-processor first, tokenizer_config.json's
    add_*_token flags where the post-processor says nothing."""
    flags = {}
    bos, eos = _token_text(tcfg.get("bos_token")) or _token_text(tcfg.get("cls_token")), \
        _token_text(tcfg.get("eos_token")) or _token_text(tcfg.get("sep_token"))
    post = tokenizer.get("post_processor") or {}
    for processor in post.get("processors", [post]) if isinstance(post, dict) else []:
        kind = processor.get("type") if isinstance(processor, dict) else None
        if kind == "ByteLevel":
            flags.setdefault("bos", False)
            flags.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            flags.update(bos=True, eos=True, sep=True)
        elif kind == "TemplateProcessing":
            single = processor.get("single") or []
            first = last = None
            if len(single) > 1:
                first = (single[0].get("SpecialToken") or {}).get("id")
                last = (single[-1].get("SpecialToken") or {}).get("id")
                if first:
                    flags["bos"] = first == bos or not tcfg
                if last:
                    flags["eos"] = last == eos or not tcfg
            sep = _pair_separator(processor.get("pair") or [], first, last,
                                  (_token_text(tcfg.get("sep_token")), eos))
            if sep is not None:
                flags["sep"] = sep
    for kind in ("bos", "eos"):
        if isinstance(tcfg.get(f"add_{kind}_token"), bool):
            flags.setdefault(kind, tcfg[f"add_{kind}_token"])
    return flags


def _pair_separator(pair: list, first, last, separators) -> bool | None:
    """Whether a pair template (A ... B) puts a separator between the sequences, as
    gguf.SpecialVocab reads it: None when the template says nothing about it."""
    def special(item):
        return (item.get("SpecialToken") or {}).get("id") if isinstance(item, dict) else None

    def sequence(item):
        return (item.get("Sequence") or {}).get("id") if isinstance(item, dict) else None

    if not pair:
        return None
    start = 1 if first and special(pair[0]) == first else 0
    stop = -1 if last and special(pair[-1]) == last else None
    pair = pair[start:stop]
    if not pair or sequence(pair[0]) != "A" or sequence(pair[-1]) != "B" or len(pair) < 3:
        return None
    inner = pair[1:-1]
    add = bool(special(inner[0]) and special(inner[0]) in separators and not last)
    if len(inner) == 2 and special(inner[1]) in separators and special(inner[1]):
        add = True
    return add


def _write_bpe(w, tokenizer, directory, config, tok_path, reads_prefix_space=False):
    tokens, types = _tokens_and_types(tokenizer, int(config.get("vocab_size", 0)), tok_path)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"].get("merges") or []]
    if not merges:
        raise ConvkitError(f"{tok_path}: a BPE tokenizer without merges cannot be loaded by llama.cpp; "
                           "use the model's complete tokenizer.json")
    tcfg_path = directory / "tokenizer_config.json"
    tcfg = read_json_object(tcfg_path) if tcfg_path.is_file() else {}
    if reads_prefix_space and isinstance(tcfg.get("add_prefix_space"), bool):
        w.add_add_space_prefix(tcfg["add_prefix_space"])
    flags = added_special_tokens(tokenizer, tcfg)
    for kind, add in (("bos", w.add_add_bos_token), ("eos", w.add_add_eos_token), ("sep", w.add_add_sep_token)):
        if kind in flags:
            add(flags[kind])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_name(tokenizer, tokens))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    _special_ids(w, tokens, directory, config)
    if isinstance(tcfg.get("chat_template"), str):
        w.add_chat_template(tcfg["chat_template"])


def _write_wordpiece(w, tokenizer, directory, config, tok_path):
    tokens, types = _tokens_and_types(tokenizer, int(config.get("vocab_size", 0)), tok_path)
    # llama.cpp's BERT vocab ("phantom space"): every non-control piece that starts a word
    # gets a leading ▁, continuation pieces lose their ## prefix
    tokens = [t if types[i] == CONTROL else t[2:] if t.startswith("##") else "\u2581" + t
              for i, t in enumerate(tokens)]
    lowercase = _normalizer_lowercase(tokenizer.get("normalizer"))
    w.add_tokenizer_model("bert")
    # llama.cpp names the uncased BERT pre-tokenization "jina-v2-en" (same hash)
    w.add_tokenizer_pre("jina-v2-en" if lowercase else "default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_type_count(int(config.get("type_vocab_size", 1)))
    _special_ids(w, tokens, directory, config)
    _template_specials(w, tokenizer.get("post_processor"), len(tokens), tok_path)
    if lowercase is not None:
        w.add_bool("tokenizer.ggml.normalizer.lowercase", lowercase)


def _normalizer_lowercase(normalizer):
    """True/False when the normalizer says whether it lowercases, else None."""
    if not isinstance(normalizer, dict):
        return None
    kind = normalizer.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer" and isinstance(normalizer.get("lowercase"), bool):
        return normalizer["lowercase"]
    if kind == "Sequence":
        found = [_normalizer_lowercase(n) for n in normalizer.get("normalizers") or []]
        return True if True in found else False if False in found else None
    return None


def _template_specials(w, post, n_tokens: int, source):
    """[CLS] $A [SEP] templates: the leading special token is BOS, the trailing one EOS,
    both added; a separator is added only when the single template has no trailing one."""
    if not isinstance(post, dict) or post.get("type") != "TemplateProcessing":
        return
    single, pair = post.get("single") or [], post.get("pair") or []
    if not isinstance(single, list) or not isinstance(pair, list):
        raise ConvkitError(f"{source}: post_processor templates must be lists; restore the file")
    special_tokens = post.get("special_tokens") or {}

    def special(item):
        ref = item.get("SpecialToken") if isinstance(item, dict) else None
        name = ref.get("id") if isinstance(ref, dict) else None
        entry = special_tokens.get(name) if isinstance(special_tokens, dict) and isinstance(name, str) else None
        ids = entry.get("ids") if isinstance(entry, dict) else None
        return checked_token_id(ids[0], n_tokens, source) if isinstance(ids, list) and ids else None

    def written(key):
        return any(key in kv for kv in w.kv_data)

    first, last = (special(single[0]), special(single[-1])) if single else (None, None)
    if first is not None:
        if not written(gguf.Keys.Tokenizer.BOS_ID):
            w.add_uint32(gguf.Keys.Tokenizer.BOS_ID, int(first))
        w.add_add_bos_token(True)
    if last is not None:
        if not written(gguf.Keys.Tokenizer.EOS_ID):
            w.add_uint32(gguf.Keys.Tokenizer.EOS_ID, int(last))
        w.add_add_eos_token(True)
    middle = [special(item) for item in pair[1:-1]] if pair else []
    w.add_add_sep_token(last is None and any(m is not None for m in middle))


def _looks_special(token: str) -> bool:
    """Added tokens llama.cpp's converter makes control tokens although HF calls them not special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
            or (token.startswith("<unused") and token.endswith(">")))


def sentencepiece_vocab(model_path, directory, config, added_tokens=None) -> tuple[list, list, list]:
    """tokens, scores and token types of a tokenizer.model as llama.cpp's converter builds
    them: the model's pieces (user-defined ones count as normal), padded to config.json's
    vocab_size with [PADn] (score -10000, unused), then the checkpoint's added tokens on top
    by `added_tokens(tokens, scores, types, directory)` (llama's rule by default)."""
    from tokenizers_impl import formats
    from tokenizers_impl import spm_proto as proto

    tok = formats.load(model_path)
    if tok.kind != "sentencepiece":
        raise ConvkitError(f"{model_path}: not a sentencepiece model")
    n = int(config.get("vocab_size") or len(tok.pieces))
    tokens, scores, types = [f"[PAD{i}]" for i in range(n)], [-10000.0] * n, [UNUSED] * n
    kinds = {proto.UNKNOWN: UNKNOWN, proto.CONTROL: CONTROL, proto.UNUSED: UNUSED, proto.BYTE: BYTE}
    for i in range(min(n, len(tok.pieces))):
        tokens[i], scores[i] = tok.pieces[i], tok.scores[i]
        types[i] = kinds.get(tok.types[i], NORMAL)
    (added_tokens or llama_added_tokens)(tokens, scores, types, directory)
    return tokens, scores, types


def _added_tokens_json(tokens, scores, types, directory):
    """added_tokens.json: user-defined, score -1000 (ids beyond the vocabulary are ignored)."""
    added_path = directory / "added_tokens.json"
    if added_path.is_file():
        for key, i in read_json_object(added_path).items():
            if isinstance(i, int) and 0 <= i < len(tokens):
                tokens[i], scores[i], types[i] = key, -1000.0, USER_DEFINED


def _decoder_entries(directory):
    """tokenizer_config.json's added_tokens_decoder as (id, entry) pairs."""
    tcfg_path = directory / "tokenizer_config.json"
    tcfg = read_json_object(tcfg_path) if tcfg_path.is_file() else {}
    decoder = tcfg.get("added_tokens_decoder") or {}
    return [(int(key) if isinstance(key, str) and key.isdigit() else -1, entry)
            for key, entry in (decoder.items() if isinstance(decoder, dict) else ())]


def llama_added_tokens(tokens, scores, types, directory):
    """llama's converter: added_tokens.json, then added_tokens_decoder (control if special
    or special-looking, else user-defined with ▁ read as a space; ids beyond are skipped)."""
    _added_tokens_json(tokens, scores, types, directory)
    for i, entry in _decoder_entries(directory):
        if not 0 <= i < len(tokens) or not isinstance(entry, dict) or not isinstance(entry.get("content"), str):
            continue
        token = entry["content"]
        if entry.get("special") or _looks_special(token):
            types[i] = CONTROL
        else:
            token = token.replace("\u2581", " ")
            types[i] = USER_DEFINED
        tokens[i], scores[i] = token, -1000.0


def phi3_added_tokens(tokens, scores, types, directory):
    """Phi-3's converter: added_tokens.json, then added_tokens_decoder, then tokenizer.json's
    added_tokens, each token as written, control if special else user-defined (score -1000).
    An id beyond config.json's vocab_size stops llama.cpp's converter; here it is an error."""
    _added_tokens_json(tokens, scores, types, directory)
    entries = [(i, e, directory / "tokenizer_config.json") for i, e in _decoder_entries(directory)]
    tok_json = directory / "tokenizer.json"
    if tok_json.is_file():
        added = read_json_object(tok_json).get("added_tokens") or []
        entries += [(e.get("id") if isinstance(e, dict) else -1, e, tok_json) for e in added]
    for i, entry, source in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) or \
                not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(tokens):
            raise ConvkitError(f"{source}: added token {shown_entry(entry)} has no id inside the model's vocabulary "
                               f"of {len(tokens)} (config.json vocab_size); the tokenizer belongs to another model")
        tokens[i], scores[i] = entry["content"], -1000.0
        types[i] = CONTROL if entry.get("special") else USER_DEFINED


def shown_entry(entry) -> str:
    return repr(entry.get("content") if isinstance(entry, dict) else entry)[:40]


def write_sentencepiece(w, model_path, directory, config, added_tokens=None):
    """tokenizer.model -> model "llama", read with our own sentencepiece reader."""
    tokens, scores, types = sentencepiece_vocab(model_path, directory, config, added_tokens)
    tcfg_path = directory / "tokenizer_config.json"
    tcfg = read_json_object(tcfg_path) if tcfg_path.is_file() else {}
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    # without a tokenizer.json llama.cpp's converter takes the special ids from config.json;
    # with one, the added-token flags come from its post-processor first (gguf.SpecialVocab)
    tok_json = directory / "tokenizer.json"
    _special_ids(w, tokens, directory, config, by_name=tok_json.is_file())
    flags = added_special_tokens(read_json_object(tok_json) if tok_json.is_file() else {}, tcfg)
    for kind, add in (("bos", w.add_add_bos_token), ("eos", w.add_add_eos_token), ("sep", w.add_add_sep_token)):
        if kind in flags:
            add(flags[kind])
    if isinstance(tcfg.get("chat_template"), str):
        w.add_chat_template(tcfg["chat_template"])
