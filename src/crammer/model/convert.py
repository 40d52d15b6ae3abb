"""Load Hugging Face BERT checkpoints into the `original` crammed-BERT configuration, weight for weight."""

from __future__ import annotations

import os

import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from crammer.errors import CrammerError
from crammer.model.configuration_crammed_bert import ACTIVATIONS, CrammedBertConfig
from crammer.model.modeling_crammed_bert import CrammedBertForMaskedLM, CrammedBertModel
from crammer.model.presets import ORIGINAL_ARCHITECTURE


def config_from_hf_bert(bert_config: BertConfig) -> CrammedBertConfig:
    """The `original`-architecture config with the sizes, activation, eps and dropouts of a BertConfig."""
    position_type = getattr(bert_config, "position_embedding_type", "absolute")
    if position_type != "absolute":
        raise CrammerError(f"from_hf_bert: position_embedding_type={position_type!r} is not supported (only absolute)")
    if getattr(bert_config, "is_decoder", False):
        raise CrammerError("from_hf_bert: decoder BERT checkpoints (is_decoder=True) are not supported")
    if bert_config.hidden_act not in ACTIVATIONS:
        raise CrammerError(
            f"from_hf_bert: hidden_act={bert_config.hidden_act!r} is not one of {', '.join(ACTIVATIONS)}"
        )
    architecture = {**ORIGINAL_ARCHITECTURE, "type_vocab_size": bert_config.type_vocab_size}
    return CrammedBertConfig(
        **architecture,
        vocab_size=bert_config.vocab_size,
        hidden_size=bert_config.hidden_size,
        num_hidden_layers=bert_config.num_hidden_layers,
        num_attention_heads=bert_config.num_attention_heads,
        intermediate_size=bert_config.intermediate_size,
        hidden_act=bert_config.hidden_act,
        max_position_embeddings=bert_config.max_position_embeddings,
        hidden_dropout_prob=bert_config.hidden_dropout_prob,
        attention_probs_dropout_prob=bert_config.attention_probs_dropout_prob,
        layer_norm_eps=bert_config.layer_norm_eps,
        initializer_range=bert_config.initializer_range,
        pad_token_id=bert_config.pad_token_id,
        tie_word_embeddings=getattr(bert_config, "tie_word_embeddings", True),
    )


def _encoder_state(hf: dict[str, torch.Tensor], num_layers: int, prefix: str) -> dict[str, torch.Tensor]:
    """Rename a BertModel state dict (keys under `prefix`) to CrammedBertModel's names."""
    src = lambda name: hf[prefix + name]  # noqa: E731
    out = {
        "embeddings.word_embeddings.weight": src("embeddings.word_embeddings.weight"),
        "embeddings.position_embeddings.weight": src("embeddings.position_embeddings.weight"),
        "embeddings.token_type_embeddings.weight": src("embeddings.token_type_embeddings.weight"),
        "embeddings.norm.weight": src("embeddings.LayerNorm.weight"),
        "embeddings.norm.bias": src("embeddings.LayerNorm.bias"),
    }
    renames = {
        "attention.out": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "ffn.up": "intermediate.dense",
        "ffn.down": "output.dense",
        "ffn_norm": "output.LayerNorm",
    }
    for i in range(num_layers):
        theirs, ours = f"encoder.layer.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            out[f"{ours}attention.qkv.{kind}"] = torch.cat(
                [src(f"{theirs}attention.self.{name}.{kind}") for name in ("query", "key", "value")]
            )
            for mine, hf_name in renames.items():
                out[f"{ours}{mine}.{kind}"] = src(f"{theirs}{hf_name}.{kind}")
    return out


def _load_hf(source: str | os.PathLike) -> BertModel | BertForMaskedLM:
    """A BertForMaskedLM when the checkpoint has an MLM head, else a BertModel; safetensors only (no pickle)."""
    try:
        bert_config = BertConfig.from_pretrained(source)
        has_head = any("MaskedLM" in a or "PreTraining" in a for a in (bert_config.architectures or []))
        cls = BertForMaskedLM if has_head else BertModel
        return cls.from_pretrained(source, config=bert_config, use_safetensors=True)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CrammerError(f"from_hf_bert: cannot load a BERT checkpoint from {source}: {reason}") from None


@torch.no_grad()
def from_hf_bert(source: BertModel | BertForMaskedLM | str | os.PathLike) -> CrammedBertModel | CrammedBertForMaskedLM:
    """Convert a Hugging Face BERT (a model, or a folder / Hub id) into the `original` configuration.

    A `BertModel` becomes a `CrammedBertModel`; a `BertForMaskedLM` becomes a `CrammedBertForMaskedLM` with
    the MLM head transform and decoder bias. Outputs are identical up to float rounding (the QKV projections
    are fused into one matrix).
    """
    hf = source if isinstance(source, (BertModel, BertForMaskedLM)) else _load_hf(source)
    config = config_from_hf_bert(hf.config)
    weights = {k: v.detach().float() for k, v in hf.state_dict().items()}
    if isinstance(hf, BertModel):
        model = CrammedBertModel(config)
        state = _encoder_state(weights, config.num_hidden_layers, prefix="")
    else:
        model = CrammedBertForMaskedLM(config)
        state = {f"bert.{k}": v for k, v in _encoder_state(weights, config.num_hidden_layers, "bert.").items()}
        state.update({
            "head_transform.dense.weight": weights["cls.predictions.transform.dense.weight"],
            "head_transform.dense.bias": weights["cls.predictions.transform.dense.bias"],
            "head_transform.norm.weight": weights["cls.predictions.transform.LayerNorm.weight"],
            "head_transform.norm.bias": weights["cls.predictions.transform.LayerNorm.bias"],
            "decoder.weight": weights["cls.predictions.decoder.weight"],
            "decoder.bias": weights["cls.predictions.bias"],
        })
    model.load_state_dict(state, strict=True)
    return model.eval()
