"""Architectures, one short module each, in a registry keyed by the HF `architectures` name."""
from convkit.errors import ConvkitError

from .base import GGUF_REGISTRY, REGISTRY, Architecture  # noqa: F401
# each module registers itself
from . import bert, gemma, gpt2, granite, llama, mixtral, olmo2, phi3, qwen2, qwen3, qwen3moe, smollm3  # noqa: F401


def architecture_class(config: dict, path="config.json"):
    """(HF name, class) of the first supported name in config.json's `architectures`."""
    names = config.get("architectures") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConvkitError(f"{path}: architectures must be a list of class names, e.g. [\"LlamaForCausalLM\"]")
    for name in names:
        if name in REGISTRY:
            return name, REGISTRY[name]
    raise ConvkitError(f"{path}: architecture {', '.join(names) or '(none given)'} is not supported; "
                       f"supported: {', '.join(sorted(REGISTRY))}")


def architecture_for(config: dict, path="config.json") -> Architecture:
    """The architecture with every hyperparameter read and checked."""
    name, cls = architecture_class(config, path)
    return cls(config, path, name)
