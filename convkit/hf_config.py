"""config.json, read once for the converter and the runtime.

Checkpoints state the same hyperparameters in several layouts: transformers 4 writes
`rope_theta` and `rope_scaling` at the top level, transformers 5 nests them in
`rope_parameters`, multimodal checkpoints keep the text model under `text_config`.
`ConfigFields` folds these layouts together and reads each value with its type and
range checked; `read_rope` turns either RoPE layout into one `Rope`. The architectures
(convkit/arch) read their hyperparameters through it, and the runtime takes them from
the architecture, so converter and runtime cannot read a config differently.

A value of the wrong type or range, or a key that changes the computation in a way
convkit does not implement, is a ConvkitError naming the file and the key.
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

from convkit.errors import ConvkitError
from convkit.json_files import read_json_object

# Keys under which other checkpoints nest their text model's config (as llama.cpp's converter reads them).
TEXT_CONFIG_KEYS = ("text_config", "llm_config", "lm_config", "language_config")

MAX_DIM = 1 << 20        # hidden sizes, head counts, layer counts: far above any released model
MAX_TOKENS = (1 << 31) - 1  # GGUF stores vocab sizes and context lengths as uint32; ids as int32


def shown(value) -> str:
    """A config value as it appears in the file, cut short for a one-line message."""
    return json.dumps(value)[:60]


def read_config_file(path) -> dict:
    """config.json as a dict, with a nested text config folded into the top level."""
    path = Path(path)
    if not path.is_file():
        raise ConvkitError(f"{path}: missing; a Hugging Face checkpoint needs its config.json beside the weights")
    return merge_text_config(read_json_object(path), path)


def merge_text_config(raw: dict, path="config.json") -> dict:
    """The text model's keys over the top level's; the outer `architectures` first, then the
    text model's own (as llama.cpp's converter looks a text model up)."""
    for key in TEXT_CONFIG_KEYS:
        nested = raw.get(key)
        if nested is None:
            continue
        if not isinstance(nested, dict):
            raise ConvkitError(f"{path}: {key} must be a JSON object, not {type(nested).__name__}")
        names = [n for part in (raw.get("architectures"), nested.get("architectures"))
                 for n in (part if isinstance(part, list) else [part] if part else [])]
        return {**raw, **nested, "architectures": names}
    return raw


class ConfigFields:
    """Typed, range-checked access to config.json values; every failure names the key."""

    def __init__(self, raw: dict, path="config.json"):
        self.raw, self.path = raw, path

    def _find(self, keys):
        for key in keys:
            if self.raw.get(key) is not None:
                return key, self.raw[key]
        return keys[0], None

    def _missing(self, keys):
        names = " or ".join(repr(k) for k in keys)
        return ConvkitError(f"{self.path}: missing key {names}; add it (see the model card) and retry")

    def _bad(self, key, value, expected):
        return ConvkitError(f"{self.path}: {key} = {shown(value)} is not {expected}; "
                            f"fix the value (see the model card)")

    def has(self, key) -> bool:
        return self.raw.get(key) is not None

    def int(self, *keys, lo=1, hi=MAX_DIM, default=None):
        key, value = self._find(keys)
        if value is None:
            if default is None:
                raise self._missing(keys)
            return default
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self._bad(key, value, f"an integer in {lo}..{hi}")
        return value

    def float(self, *keys, lo=0.0, hi=math.inf, default=None, open_low=True):
        key, value = self._find(keys)
        if value is None:
            if default is None:
                raise self._missing(keys)
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not (lo < value if open_low else lo <= value) or not value <= hi:
            raise self._bad(key, value, f"a finite number in {'(' if open_low else '['}{lo}, {hi}]")
        return value

    def bool(self, key, default: bool) -> bool:
        value = self.raw.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._bad(key, value, "true or false")
        return value

    def str(self, key, default=None):
        value = self.raw.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self._bad(key, value, "a string")
        return value

    def token_id(self, key):
        """A token id or None (some configs give a list for eos; the first is the id)."""
        ids = self.token_ids(key)
        return ids[0] if ids else None

    def token_ids(self, key) -> list:
        value = self.raw.get(key)
        if value is None:
            return []
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_TOKENS for v in values):
            raise self._bad(key, value, f"a token id (or a list of ids) in 0..{MAX_TOKENS}")
        return list(values)

    def require_neutral(self, neutral: dict, why: str) -> None:
        """Keys that change the computation when set: each must be absent or its neutral value."""
        for key, accepted in neutral.items():
            value = self.raw.get(key)
            if value is not None and value not in accepted:
                raise ConvkitError(f"{self.path}: {key} = {shown(value)} changes the computation "
                                   f"in a way convkit does not implement for {why}")


# ---------------------------------------------------------------------- RoPE
ROPE_KINDS = ("default", "linear", "llama3", "yarn", "dynamic", "longrope")


@dataclass(frozen=True)
class Rope:
    """Rotary position settings in one layout, whichever layout config.json used."""

    kind: str = "default"  # one of ROPE_KINDS
    theta: float = 10000.0
    factor: float | None = None
    original_context: int | None = None   # original_max_position_embeddings
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None
    beta_fast: float | None = None        # yarn
    beta_slow: float | None = None
    attention_factor: float | None = None
    extrapolation_factor: float | None = None
    partial: float = 1.0                  # partial_rotary_factor: the share of each head that rotates
    short_factor: tuple | None = None     # longrope: per-frequency divisors within original_context
    long_factor: tuple | None = None      # ... and beyond it

    def as_hf(self) -> dict | None:
        """transformers' rope_parameters form, or None for plain RoPE."""
        if self.kind == "default":
            return None
        keys = {"factor": self.factor, "original_max_position_embeddings": self.original_context,
                "low_freq_factor": self.low_freq_factor, "high_freq_factor": self.high_freq_factor,
                "beta_fast": self.beta_fast, "beta_slow": self.beta_slow,
                "attention_factor": self.attention_factor, "extrapolation_factor": self.extrapolation_factor,
                "short_factor": list(self.short_factor) if self.short_factor else None,
                "long_factor": list(self.long_factor) if self.long_factor else None}
        return {"rope_type": self.kind, "rope_theta": self.theta, **{k: v for k, v in keys.items() if v is not None}}


# the keys of the rope settings each kind understands; any other key is refused
_ROPE_KEYS = {"default": set(), "dynamic": {"factor", "original_max_position_embeddings"},
              "linear": {"factor"},
              "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
              "yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "attention_factor",
                       "attn_factor", "extrapolation_factor"},
              "longrope": {"short_factor", "long_factor", "original_max_position_embeddings", "factor",
                           "attention_factor"}}
_ROPE_COMMON = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}


def read_rope(f: ConfigFields, *, supported=("default", "linear", "llama3", "yarn", "dynamic"),
              arch_name="this architecture", partial_ok=False) -> Rope:
    """RoPE from transformers 5's rope_parameters or transformers 4's rope_theta + rope_scaling.
    `partial_ok`: the architecture rotates part of each head (partial_rotary_factor below 1)."""
    # transformers 5 takes a non-empty legacy rope_scaling over rope_parameters
    params, key = f.raw.get("rope_scaling"), "rope_scaling"
    if not params:
        params, key = f.raw.get("rope_parameters"), "rope_parameters"
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConvkitError(f"{f.path}: {key} must be a JSON object, not {type(params).__name__}")
    if "full_attention" in params or "sliding_attention" in params:
        raise ConvkitError(f"{f.path}: {key} gives separate RoPE settings per attention kind, "
                           f"which {arch_name} does not have; the config does not match its architecture")
    p = ConfigFields(params, f"{f.path}: {key}")
    kind = p.str("rope_type") or p.str("type") or "default"
    if kind == "su":  # Phi-3's early name for longrope
        kind = "longrope"
    if kind not in ROPE_KINDS:
        raise ConvkitError(f"{f.path}: {key}.rope_type = {kind!r} is not a RoPE scaling convkit knows; "
                           f"known: {', '.join(ROPE_KINDS)}")
    if kind not in supported:
        raise ConvkitError(f"{f.path}: {key}.rope_type = {kind!r} is not supported for {arch_name}; "
                           f"supported: {', '.join(supported)}")
    partial = p.float("partial_rotary_factor", default=f.float("partial_rotary_factor", default=1.0))
    if partial != 1.0 and not (partial_ok and partial < 1.0):
        raise ConvkitError(f"{f.path}: partial_rotary_factor = {partial} (rotary on part of each head) "
                           f"is not implemented for {arch_name}")
    # transformers 5 keeps rope_theta inside rope_parameters; 4 keeps it at the top level
    theta = p.float("rope_theta", default=f.float("rope_theta", default=10000.0))
    unknown = sorted(set(params) - _ROPE_COMMON - _ROPE_KEYS[kind])
    if params.get("truncate") in (True, None) and "truncate" in unknown:
        unknown.remove("truncate")  # transformers 5's yarn default, which is what llama.cpp computes
    if unknown:
        raise ConvkitError(f"{f.path}: {key} has {', '.join(unknown)} for rope_type {kind!r}, which convkit "
                           f"does not implement; it changes the computation, so the config is refused")
    rope = {"kind": kind, "theta": theta, "partial": partial}
    if kind in ("linear", "dynamic"):
        rope["factor"] = p.float("factor")
    if kind in ("llama3", "yarn", "longrope"):
        # transformers' rule: a top-level value wins (Phi-3 keeps it there), then the
        # rope settings', then the context length itself
        rope["original_context"] = f.int("original_max_position_embeddings", hi=MAX_TOKENS, default=-1) \
            if f.has("original_max_position_embeddings") else p.int(
                "original_max_position_embeddings", hi=MAX_TOKENS, default=f.int("max_position_embeddings", hi=MAX_TOKENS))
    if kind == "llama3":
        rope.update(factor=p.float("factor"), low_freq_factor=p.float("low_freq_factor"),
                    high_freq_factor=p.float("high_freq_factor"))
        if rope["low_freq_factor"] >= rope["high_freq_factor"]:
            raise ConvkitError(f"{f.path}: {key}: low_freq_factor must be below high_freq_factor")
    if kind == "yarn":  # optional values stay None: llama.cpp writes only those given
        factor = _optional(p, "factor")
        rope.update(factor=factor if factor is not None else
                    f.int("max_position_embeddings", hi=MAX_TOKENS) / rope["original_context"],
                    beta_fast=_optional(p, "beta_fast"), beta_slow=_optional(p, "beta_slow"),
                    attention_factor=_optional(p, "attention_factor", "attn_factor"),
                    extrapolation_factor=_optional(p, "extrapolation_factor"))
        # llama.cpp always scales attention by 0.1 ln(factor) + 1 and transformers ignores
        # extrapolation_factor: other values would give a file that runs differently
        default_scale = 0.1 * math.log(rope["factor"]) + 1.0 if rope["factor"] > 1 else 1.0
        if rope["attention_factor"] is not None and not math.isclose(rope["attention_factor"], default_scale,
                                                                     rel_tol=1e-6):
            raise ConvkitError(f"{f.path}: {key}.attention_factor = {rope['attention_factor']} differs from YaRN's "
                               f"0.1 ln(factor) + 1 = {default_scale:.6g}, which llama.cpp always uses; "
                               "such a file would not run as the checkpoint does")
        if rope["extrapolation_factor"] not in (None, 1, 1.0):
            raise ConvkitError(f"{f.path}: {key}.extrapolation_factor = {rope['extrapolation_factor']} is not 1; "
                               "transformers ignores it and llama.cpp applies it, so the two would disagree")
    if kind == "longrope":
        rope.update(short_factor=_factor_list(p, "short_factor"), long_factor=_factor_list(p, "long_factor"),
                    factor=_optional(p, "factor"), attention_factor=_optional(p, "attention_factor"))
    return Rope(**rope)


def _factor_list(p: ConfigFields, key) -> tuple:
    """LongRoPE's per-frequency divisors: a non-empty list of positive finite numbers."""
    value = p.raw.get(key)
    if not isinstance(value, list) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value):
        raise ConvkitError(f"{p.path}.{key} = {shown(value)} is not a list of positive numbers, which "
                           "rope_type 'longrope' needs; fix config.json")
    return tuple(float(v) for v in value)


def _optional(p: ConfigFields, *keys):
    return p.float(*keys) if any(p.has(k) for k in keys) else None
