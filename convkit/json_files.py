"""The JSON files beside a checkpoint (config.json, tokenizer files): read, checked, one error each."""
import json
from pathlib import Path

from convkit.errors import ConvkitError


def read_json_object(path) -> dict:
    """The file's JSON object; a file that is not JSON or not an object is one ConvkitError."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConvkitError(f"{path}: not valid JSON ({str(exc)[:80]}); restore it from the model's source") from None
    if not isinstance(doc, dict):
        raise ConvkitError(f"{path}: expected a JSON object, found {type(doc).__name__}; restore it from the "
                           "model's source")
    return doc


def checked_token_id(value, n_tokens: int, source) -> int:
    """A token id from a tokenizer or config file, inside the vocabulary of `n_tokens`."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n_tokens:
        raise ConvkitError(f"{source}: token id {str(value)[:40]} is outside the vocabulary of {n_tokens} tokens; "
                           "restore the file from the model's source")
    return value
