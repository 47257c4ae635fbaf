"""`convkit tokenize ...`: train, encode, decode, stats, convert."""
import click


@click.group()
def tokenize():
    """Train and use BPE, byte-level BPE and WordPiece tokenizers."""
