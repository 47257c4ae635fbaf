"""The embedded default: samples/tiny-llama and the text it was trained and measured on.

The sample is a llama model convkit made itself (samples/make_sample.py) from the standard
library's pydoc topics, so everything here runs with no download.
"""
import importlib.util
from pathlib import Path

from convkit.errors import ConvkitError

SAMPLE_NAME = "tiny-llama"
# In the source tree (and an editable install) the sample sits beside the package; a wheel
# or sdist install carries the same directory as the package convkit_samples (setup.py).
SOURCE_TREE_SAMPLE = Path(__file__).resolve().parent.parent / "samples" / SAMPLE_NAME
INSTALLED_PACKAGE = "convkit_samples"
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


def _candidates() -> list[Path]:
    found = [SOURCE_TREE_SAMPLE]
    spec = importlib.util.find_spec(INSTALLED_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec else []:
        found.append(Path(location) / SAMPLE_NAME)
    return found


def sample_model() -> Path:
    """The sample's directory: the source tree's when running from it, else the installed one."""
    candidates = _candidates()
    for path in candidates:
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            return path
    raise ConvkitError(f"{candidates[-1]}: the embedded sample model is missing from this install; "
                       f"reinstall convkit (its wheel and sdist carry it as {INSTALLED_PACKAGE})")
