class TokenizerError(ValueError):
    """Input a tokenizer cannot take: empty corpus, bad file, vocab too small; the message says which."""
