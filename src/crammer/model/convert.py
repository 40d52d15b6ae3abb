"""Hugging Face BERT <-> the `original` crammed-BERT configuration, weight for weight, in both directions."""

from __future__ import annotations

import os

import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from crammer.errors import CrammerError
from crammer.io import atomic_dir
from crammer.model.configuration_crammed_bert import ACTIVATIONS, CrammedBertConfig
from crammer.model.modeling_crammed_bert import CrammedBertForMaskedLM, CrammedBertModel
from crammer.model.native import copy_model_card, export_source, replaceable_output, save_native_tokenizer
from crammer.model.presets import ORIGINAL_ARCHITECTURE

# The config fields BertConfig and CrammedBertConfig share, under the same names and meanings.
SHARED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "hidden_act", "max_position_embeddings", "hidden_dropout_prob", "attention_probs_dropout_prob",
                 "layer_norm_eps", "initializer_range", "pad_token_id", "type_vocab_size")


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
    return CrammedBertConfig(
        **{**ORIGINAL_ARCHITECTURE, **{name: getattr(bert_config, name) for name in SHARED_FIELDS}},
        tie_word_embeddings=getattr(bert_config, "tie_word_embeddings", True),
    )


def _encoder_pairs(num_layers: int) -> list[tuple[str, str]]:
    """(our name, BertModel's name) of every encoder tensor but the fused QKV, which is split/joined apart."""
    pairs = [
        ("embeddings.word_embeddings.weight", "embeddings.word_embeddings.weight"),
        ("embeddings.position_embeddings.weight", "embeddings.position_embeddings.weight"),
        ("embeddings.token_type_embeddings.weight", "embeddings.token_type_embeddings.weight"),
        ("embeddings.norm.weight", "embeddings.LayerNorm.weight"),
        ("embeddings.norm.bias", "embeddings.LayerNorm.bias"),
    ]
    renames = {
        "attention.out": "attention.output.dense",
        "attn_norm": "attention.output.LayerNorm",
        "ffn.up": "intermediate.dense",
        "ffn.down": "output.dense",
        "ffn_norm": "output.LayerNorm",
    }
    for i in range(num_layers):
        for kind in ("weight", "bias"):
            pairs += [(f"layers.{i}.{mine}.{kind}", f"encoder.layer.{i}.{theirs}.{kind}")
                      for mine, theirs in renames.items()]
    return pairs


QKV = ("query", "key", "value")
POOLER_PAIRS = [("pooler.dense.weight", "pooler.dense.weight"), ("pooler.dense.bias", "pooler.dense.bias")]
MLM_HEAD_PAIRS = [
    ("head_transform.dense.weight", "cls.predictions.transform.dense.weight"),
    ("head_transform.dense.bias", "cls.predictions.transform.dense.bias"),
    ("head_transform.norm.weight", "cls.predictions.transform.LayerNorm.weight"),
    ("head_transform.norm.bias", "cls.predictions.transform.LayerNorm.bias"),
    ("decoder.weight", "cls.predictions.decoder.weight"),
    ("decoder.bias", "cls.predictions.bias"),
]


def _encoder_state(hf: dict[str, torch.Tensor], num_layers: int, prefix: str) -> dict[str, torch.Tensor]:
    """Rename a BertModel state dict (keys under `prefix`) to CrammedBertModel's names."""
    out = {mine: hf[prefix + theirs] for mine, theirs in _encoder_pairs(num_layers)}
    for i in range(num_layers):
        for kind in ("weight", "bias"):
            out[f"layers.{i}.attention.qkv.{kind}"] = torch.cat(
                [hf[f"{prefix}encoder.layer.{i}.attention.self.{name}.{kind}"] for name in QKV]
            )
    return out


def _bert_state(ours: dict[str, torch.Tensor], num_layers: int, prefix: str) -> dict[str, torch.Tensor]:
    """The inverse of `_encoder_state`: CrammedBertModel's tensors (keys under `prefix`) under BertModel's names."""
    out = {theirs: ours[prefix + mine] for mine, theirs in _encoder_pairs(num_layers)}
    for i in range(num_layers):
        for kind in ("weight", "bias"):
            parts = ours[f"{prefix}layers.{i}.attention.qkv.{kind}"].chunk(3, dim=0)
            out.update({f"encoder.layer.{i}.attention.self.{name}.{kind}": t for name, t in zip(QKV, parts)})
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
        model = CrammedBertModel(config, add_pooling_layer=hf.pooler is not None)
        state = _encoder_state(weights, config.num_hidden_layers, prefix="")
        if hf.pooler is not None:
            state.update({mine: weights[theirs] for mine, theirs in POOLER_PAIRS})
    else:
        model = CrammedBertForMaskedLM(config)
        state = {f"bert.{k}": v for k, v in _encoder_state(weights, config.num_hidden_layers, "bert.").items()}
        state.update({mine: weights[theirs] for mine, theirs in MLM_HEAD_PAIRS})
    model.load_state_dict(state, strict=True)
    return model.eval()


# What `original` sets and BERT cannot do otherwise (type_vocab_size only needs to be >= 1).
BERT_ARCHITECTURE = {k: v for k, v in ORIGINAL_ARCHITECTURE.items() if k != "type_vocab_size"}


def check_bert_expressible(config: CrammedBertConfig, with_mlm_head: bool) -> None:
    """A one-line CrammerError listing every setting a native BERT cannot reproduce (e.g. a crammed-BERT model)."""
    required = dict(BERT_ARCHITECTURE) if with_mlm_head else {k: v for k, v in BERT_ARCHITECTURE.items()
                                                            if k != "mlm_head_transform"}
    wrong = [f"{k}={getattr(config, k)!r} (BERT: {v!r})" for k, v in required.items() if getattr(config, k) != v]
    if config.type_vocab_size < 1:
        wrong.append("type_vocab_size=0 (BERT: >= 1)")
    if wrong:
        raise CrammerError("to_hf_bert: this model is not expressible as a native BERT (" + ", ".join(wrong)
                           + "); only the `original`/`bert-base` architecture exports; other models load with "
                           "trust_remote_code=True")


def bert_config_from(config: CrammedBertConfig) -> BertConfig:
    """The BertConfig of an `original`-architecture config (the inverse of `config_from_hf_bert`)."""
    return BertConfig(
        **{name: getattr(config, name) for name in SHARED_FIELDS},
        classifier_dropout=config.classifier_dropout,
        tie_word_embeddings=config.tie_word_embeddings,
        position_embedding_type="absolute",
    )


@torch.no_grad()
def to_hf_bert(source: CrammedBertModel | CrammedBertForMaskedLM | str | os.PathLike,
               save_directory: str | os.PathLike | None = None, tokenizer=None) -> BertModel | BertForMaskedLM:
    """Export an `original`-architecture model to native Hugging Face BERT (`model_type: bert`), outputs identical.

    A `CrammedBertForMaskedLM` becomes a `BertForMaskedLM`, a `CrammedBertModel` a `BertModel` (with its pooler
    when it has one). The result needs no remote code, so every BERT head, serving stack and transformers version
    takes it. With `save_directory` the folder is written atomically, with the tokenizer: `tokenizer`, or the
    one saved beside a `source` folder, written as a `BertTokenizerFast` with `vocab.txt`, see
    `crammer.model.native`) and the source folder's model card. A crammed-BERT model (pre-LN, GLU, no biases, ...)
    is a CrammerError.
    """
    model, tokenizer, folder = export_source(source, tokenizer, "to_hf_bert", check_bert_expressible)
    config = model.config
    with_head = isinstance(model, CrammedBertForMaskedLM)
    check_bert_expressible(config, with_mlm_head=with_head)
    ours = {k: v.detach().float() for k, v in model.state_dict().items()}
    if with_head:
        hf = BertForMaskedLM(bert_config_from(config))
        state = {f"bert.{k}": v for k, v in _bert_state(ours, config.num_hidden_layers, "bert.").items()}
        state.update({theirs: ours[mine] for mine, theirs in MLM_HEAD_PAIRS})
        state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]  # one tensor, two names
    else:
        has_pooler = model.pooler is not None and model.pooler.dense is not None
        hf = BertModel(bert_config_from(config), add_pooling_layer=has_pooler)
        state = _bert_state(ours, config.num_hidden_layers, "")
        if has_pooler:
            state.update({theirs: ours[mine] for mine, theirs in POOLER_PAIRS})
    hf.load_state_dict(state, strict=True)
    hf.eval()
    if save_directory is not None:
        with atomic_dir(save_directory, check_existing=replaceable_output("to_hf_bert")) as tmp:
            hf.save_pretrained(tmp)
            if tokenizer is not None:
                save_native_tokenizer(tokenizer, tmp, config.max_position_embeddings,
                                      ("input_ids", "token_type_ids", "attention_mask"))
            copy_model_card(folder, tmp)
    return hf
