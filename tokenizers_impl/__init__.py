"""Tokenizers written here: byte-level BPE, classic character BPE, WordPiece; each kind
is a `base.Tokenizer` subclass registered by name (base.KINDS).

Pipeline: special tokens are cut out, a pre-tokenizer (pretokenize.py) splits the rest
into pieces, a model (BPE merges) turns each piece into ids. The hot loops live in an
optional compiled helper (_bpe.c); the pure-Python paths are the readable reference.
"""
from .bpe import CharBPE
from .bytelevel import ByteLevelBPE
from .errors import TokenizerError
from .pretokenize import PRESETS
from .wordpiece import WordPiece

__all__ = ["ByteLevelBPE", "CharBPE", "WordPiece", "TokenizerError", "PRESETS"]
