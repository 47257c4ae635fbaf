"""The embedded default: samples/tiny-llama and the text it was trained and measured on.

The sample is a llama model convkit made itself (samples/make_sample.py) from the standard
library's pydoc topics, so everything here runs with no download.
"""
from pathlib import Path

from convkit.errors import ConvkitError

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "samples" / "tiny-llama"
HELD_OUT_FRACTION = 0.10
SAMPLE_VOCAB_SIZE = 4096
SAMPLE_SPECIAL_TOKEN = "<|endoftext|>"


def split_pydoc_topics() -> tuple[str, str]:
    """(training text, held-out text): topics sorted by key, the last 10% held out."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    cut = len(keys) - max(1, int(len(keys) * HELD_OUT_FRACTION))

    def join(ks):
        return "".join(topics[k] + "\n\n" for k in ks)

    return join(keys[:cut]), join(keys[cut:])


def sample_model() -> Path:
    if not (SAMPLE_DIR / "config.json").is_file():
        raise ConvkitError(f"{SAMPLE_DIR}: the embedded sample model is missing; "
                           f"install convkit from its source tree (pip install -e .)")
    return SAMPLE_DIR
