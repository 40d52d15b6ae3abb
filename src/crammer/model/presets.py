"""Named model presets and `key=value` overrides -> a validated `CrammedBertConfig`."""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

from crammer.config import parse_value, pick_preset, split_assignment
from crammer.errors import CrammerError
from crammer.model.configuration_crammed_bert import CrammedBertConfig

# Every switch that turns the crammed recipe back into the original BERT architecture.
ORIGINAL_ARCHITECTURE: dict[str, Any] = {
    "norm_scheme": "post",
    "use_bias": True,
    "ffn_type": "mlp",
    "position_embedding": "learned",
    "type_vocab_size": 2,
    "mlm_head_transform": True,
}

# The switches that give ModernBERT's block (transformers' `modernbert`): rotary positions, no attention LayerNorm
# in the first block, BERT's head transform before the tied decoder (pre-LN, GLU and no token types as crammed).
MODERNBERT_ARCHITECTURE: dict[str, Any] = {
    "norm_scheme": "pre",
    "ffn_type": "glu",
    "position_embedding": "rotary",
    "type_vocab_size": 0,
    "first_layer_attn_norm": False,
    "mlm_head_transform": True,
}

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # The cramming paper's recipe: 16 layers, d=768, 12 heads, GLU 3072, seq 128 (the config defaults).
    "crammed-bert": {},
    # Small enough for CPU tests and the demo.
    "tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
    # The original BERT-base architecture (post-LN, biases, GELU MLP, learned positions, token types).
    "bert-base": {
        **ORIGINAL_ARCHITECTURE,
        "num_hidden_layers": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
    },
    # crammed BERT's size in ModernBERT's shape, so `cram export --to modernbert` gives a native folder: also
    # its LayerNorms (no bias, eps 1e-5). RoPE theta stays 10k, ModernBERT's for its short-range layers; its 160k
    # is for 8192-token contexts.
    "modernbert": {**MODERNBERT_ARCHITECTURE, "norm_bias": False, "layer_norm_eps": 1e-5},
}
# The name the docs and `from_hf_bert` use for the exact-BERT configuration.
MODEL_PRESETS["original"] = MODEL_PRESETS["bert-base"]

# The architecture keys an override may set, with their defaults (whose types drive parsing).
CONFIG_DEFAULTS: dict[str, Any] = {
    name: param.default
    for name, param in inspect.signature(CrammedBertConfig.__init__).parameters.items()
    if param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and name != "self"
}


# Keys that may also be set to None.
NULLABLE_KEYS = frozenset({"pad_token_id"})


def parse_model_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings -> the typed settings they make (a known key, a value of the key's type); the one
    parser of model overrides, so a typo fails the same way wherever they come from."""
    settings = {}
    for item in items:
        key, value = split_assignment(item, "model override")
        settings[key] = _parse(key, value)
    return settings


def _parse(key: str, text: str) -> Any:
    """Parse `text` as the type of the key's default value, with the same rules as every other override."""
    if key not in CONFIG_DEFAULTS:
        raise CrammerError(f"unknown model config key {key!r}; valid keys: {', '.join(sorted(CONFIG_DEFAULTS))}")
    text = text.strip()
    if text.lower() in ("none", "null"):
        if key in NULLABLE_KEYS:
            return None
        raise CrammerError(f"model config {key}: cannot be None")
    default = CONFIG_DEFAULTS[key]
    return parse_value(text, type(default) if default is not None else str, f"model config {key}")


def make_config(preset: str, vocab_size: int, overrides: Sequence[str] | Mapping[str, Any] = ()) -> CrammedBertConfig:
    """The config of a named preset (see MODEL_PRESETS) for a tokenizer's vocabulary, with overrides.

    Overrides are `key=value` strings on config attributes, e.g. `num_hidden_layers=4` or
    `position_embedding=rotary` (an unknown key or an invalid value is a one-line CrammerError), or settings
    already parsed by `parse_model_overrides` (`PretrainConfig.model_settings`).
    """
    settings = overrides if isinstance(overrides, Mapping) else parse_model_overrides(overrides)
    kwargs = {**pick_preset(MODEL_PRESETS, preset, "model preset"), "vocab_size": vocab_size, **settings}
    try:
        return CrammedBertConfig(**kwargs)
    except ValueError as e:
        raise CrammerError(f"model preset {preset!r}: {e}") from None


def check_positions(length: int, config, setting: str, model: str, remedy: str) -> None:
    """Fail before any work when `length` tokens exceed the model's position table (`config` may be any
    Hugging Face config): otherwise the first long batch fails, after minutes of compiling or training.
    `remedy` may name the limit as `{limit}`."""
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and length > limit:
        raise CrammerError(f"{setting}={length} exceeds the max_position_embeddings={limit} of {model}; "
                           + remedy.format(limit=limit))
