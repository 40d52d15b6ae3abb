"""A ModernBERT-shaped crammer model -> a native `modernbert` folder (transformers' own classes, no remote code).

The `modernbert` preset's block is ModernBERT's: pre-LN, rotary positions, no attention LayerNorm in the first
block, GLU feed-forward, final LayerNorm, head transform (dense -> act -> norm) before the tied decoder. What
remains are names and layouts: ModernBERT's GLU is `act(first half) * second half` where ours is
`act(second half) * first half`, and its `intermediate_size` counts one half. The export swaps the halves and
writes every layer as full attention with our rotary theta, so outputs agree to float rounding.
"""

from __future__ import annotations

import os

import torch
from transformers import ModernBertConfig, ModernBertForMaskedLM, ModernBertModel

from crammer.errors import CrammerError
from crammer.io import atomic_dir, atomic_write_json, read_json
from crammer.model.configuration_crammed_bert import CrammedBertConfig
from crammer.model.modeling_crammed_bert import CrammedBertForMaskedLM, CrammedBertModel
from crammer.model.native import copy_model_card, export_source, replaceable_output, save_native_tokenizer
from crammer.model.presets import MODERNBERT_ARCHITECTURE

# Our parameter names -> ModernBERT's, as (prefix, replacement) applied to a name inside the encoder.
ENCODER_RENAMES = (
    ("embeddings.word_embeddings.", "embeddings.tok_embeddings."),
    ("embeddings.norm.", "embeddings.norm."),
    ("final_norm.", "final_norm."),
)
LAYER_RENAMES = (
    ("attn_norm.", "attn_norm."),
    ("attention.qkv.", "attn.Wqkv."),
    ("attention.out.", "attn.Wo."),
    ("ffn_norm.", "mlp_norm."),
    ("ffn.up.", "mlp.Wi."),
    ("ffn.down.", "mlp.Wo."),
)
HEAD_RENAMES = (
    ("head_transform.dense.", "head.dense."),
    ("head_transform.norm.", "head.norm."),
    ("decoder.", "decoder."),
)


def check_modernbert_expressible(config: CrammedBertConfig) -> None:
    """A one-line CrammerError naming every setting a native ModernBERT cannot reproduce."""
    wrong = [f"{k}={getattr(config, k)!r} (ModernBERT: {v!r})" for k, v in MODERNBERT_ARCHITECTURE.items()
             if getattr(config, k) != v]
    if wrong:
        raise CrammerError("export --to modernbert: this model is not expressible as a native ModernBERT ("
                           + ", ".join(wrong) + "); pretrain with the `modernbert` preset (or these model.* "
                           "settings), or export --to onnx, which takes every architecture")


def modernbert_config_from(config: CrammedBertConfig, special_ids: dict[str, int | None]) -> ModernBertConfig:
    """The ModernBertConfig of a ModernBERT-shaped config; `special_ids` maps pad/cls/sep to the tokenizer's ids.

    All layers are full attention (crammer has no sliding window); our one theta serves both of ModernBERT's. Our
    dropouts map onto ModernBERT's nearest ones (they sit at slightly different places, which only training sees).
    `sparse_prediction` stays off: crammer predicts sparsely only when given `masked_positions`, and with labels
    alone returns dense logits, as ModernBERT does without it.
    """
    theta = float(config.rope_theta)
    return ModernBertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size // 2,  # ModernBERT counts one GLU half
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        hidden_activation=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        norm_eps=config.layer_norm_eps,
        norm_bias=config.norm_bias,
        pad_token_id=special_ids.get("pad", config.pad_token_id),
        cls_token_id=special_ids.get("cls"),
        sep_token_id=special_ids.get("sep"),
        bos_token_id=special_ids.get("cls"),
        eos_token_id=special_ids.get("sep"),
        attention_bias=config.use_bias,
        mlp_bias=config.use_bias,
        decoder_bias=config.use_bias,
        classifier_bias=config.use_bias,
        classifier_activation=config.hidden_act,
        classifier_dropout=config.classifier_dropout,
        attention_dropout=config.attention_probs_dropout_prob,
        embedding_dropout=config.hidden_dropout_prob,
        mlp_dropout=config.hidden_dropout_prob,
        layer_types=["full_attention"] * config.num_hidden_layers,
        rope_parameters={kind: {"rope_type": "default", "rope_theta": theta}
                         for kind in ("full_attention", "sliding_attention")},
        sparse_prediction=False,
        tie_word_embeddings=config.tie_word_embeddings,
    )


def _rename(name: str, renames: tuple[tuple[str, str], ...]) -> str | None:
    return next((theirs + name[len(mine):] for mine, theirs in renames if name.startswith(mine)), None)


def modernbert_state(ours: dict[str, torch.Tensor], encoder_prefix: str, target_prefix: str) -> dict[str, torch.Tensor]:
    """Our tensors under ModernBERT's names, GLU halves swapped; every tensor must find a place (a pooler does not:
    ModernBERT has none)."""
    out = {}
    for name, tensor in ours.items():
        if name.startswith(encoder_prefix):
            inner = name[len(encoder_prefix):]
            if inner.startswith("layers."):
                index, rest = inner[len("layers."):].split(".", 1)
                renamed = _rename(rest, LAYER_RENAMES)
                theirs = None if renamed is None else f"layers.{index}.{renamed}"
                if rest.startswith("ffn.up."):  # ours: act(second) * first; ModernBERT: act(first) * second
                    value, gate = tensor.chunk(2, dim=0)
                    tensor = torch.cat((gate, value), dim=0)
            else:
                theirs = _rename(inner, ENCODER_RENAMES)
            theirs = None if theirs is None else target_prefix + theirs
        else:
            theirs = _rename(name, HEAD_RENAMES)
        if theirs is None:
            raise CrammerError(f"export --to modernbert: weight {name} has no ModernBERT counterpart")
        out[theirs] = tensor
    return out


@torch.no_grad()
def to_hf_modernbert(source: CrammedBertModel | CrammedBertForMaskedLM | str | os.PathLike,
                     save_directory: str | os.PathLike | None = None,
                     tokenizer=None) -> tuple[ModernBertModel | ModernBertForMaskedLM, list[str]]:
    """Export a ModernBERT-shaped model to transformers' native ModernBERT; (the model, tokenizer notes).

    A `CrammedBertForMaskedLM` becomes a `ModernBertForMaskedLM`, a `CrammedBertModel` a `ModernBertModel`. With
    `save_directory` the folder is written atomically with the tokenizer (`tokenizer`, or the one beside a
    `source` folder) as a `BertTokenizerFast` and the source folder's model card; the notes list what that
    tokenizer cannot reproduce (see `crammer.model.native`). Another architecture is a one-line CrammerError.
    """
    model, tokenizer, folder = export_source(source, tokenizer, "export --to modernbert",
                                             lambda config, is_mlm: check_modernbert_expressible(config))
    config = model.config
    check_modernbert_expressible(config)
    special = ({"pad": tokenizer.pad_token_id, "cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id}
               if tokenizer is not None else {})
    hf_config = modernbert_config_from(config, special)
    ours = {k: v.detach().float() for k, v in model.state_dict().items()}
    if isinstance(model, CrammedBertForMaskedLM):
        hf = ModernBertForMaskedLM(hf_config)
        state = modernbert_state(ours, "bert.", "model.")
    else:
        if model.pooler is not None and model.pooler.dense is not None:
            raise CrammerError("export --to modernbert: ModernBERT has no pooler; export the MLM (or an encoder "
                               "without a pooler)")
        hf = ModernBertModel(hf_config)
        state = modernbert_state(ours, "", "")
    hf.load_state_dict(state, strict=True)
    hf.eval()
    notes: list[str] = []
    if save_directory is not None:
        with atomic_dir(save_directory, check_existing=replaceable_output("export")) as tmp:
            hf.save_pretrained(tmp)
            # transformers 4.x reads the rotary theta and the attention pattern from these keys (5.x from
            # rope_parameters and layer_types): every layer global, one theta.
            written = read_json(tmp / "config.json")
            written.update(global_rope_theta=float(config.rope_theta), local_rope_theta=float(config.rope_theta),
                           global_attn_every_n_layers=1)
            atomic_write_json(tmp / "config.json", written)
            if tokenizer is not None:
                notes = save_native_tokenizer(tokenizer, tmp, config.max_position_embeddings,
                                              ("input_ids", "attention_mask"))
            copy_model_card(folder, tmp)
    return hf, notes


# ------------------------------------------------------------------------------------------------------------
# The way back: a native `modernbert` folder (ours, or any ModernBERT crammer's block can express) -> crammer.


def config_from_hf_modernbert(mb: ModernBertConfig, source: str = "modernbert") -> CrammedBertConfig:
    """The crammer config of a ModernBertConfig (the inverse of `modernbert_config_from`). What crammer's block
    cannot compute is a one-line CrammerError naming it: sliding-window layers, two rotary thetas, biases that
    differ between sub-layers."""
    layer_types = list(getattr(mb, "layer_types", None) or [])
    windowed = [i for i, kind in enumerate(layer_types) if kind != "full_attention"]
    if windowed or (not layer_types and getattr(mb, "global_attn_every_n_layers", 1) != 1):
        raise CrammerError(f"{source}: ModernBERT layers with sliding-window attention ({len(windowed)} of "
                           f"{mb.num_hidden_layers}) cannot be loaded: crammer attends over the whole sequence")
    rope = getattr(mb, "rope_parameters", None) or {}
    full = rope.get("full_attention", rope) if isinstance(rope, dict) else {}
    theta = full.get("rope_theta", getattr(mb, "global_rope_theta", 10000.0))
    biases = {name: getattr(mb, name) for name in ("attention_bias", "mlp_bias", "decoder_bias", "classifier_bias")}
    if len(set(biases.values())) > 1:
        raise CrammerError(f"{source}: ModernBERT biases differ between sub-layers ({biases}); crammer's use_bias "
                           "is one switch for all")
    if mb.classifier_activation != mb.hidden_activation:
        raise CrammerError(f"{source}: classifier_activation={mb.classifier_activation!r} differs from "
                           f"hidden_activation={mb.hidden_activation!r}; crammer's head uses the one activation")
    try:
        return CrammedBertConfig(
            **MODERNBERT_ARCHITECTURE, vocab_size=mb.vocab_size, hidden_size=mb.hidden_size,
            intermediate_size=2 * mb.intermediate_size, num_hidden_layers=mb.num_hidden_layers,
            num_attention_heads=mb.num_attention_heads, hidden_act=mb.hidden_activation,
            max_position_embeddings=mb.max_position_embeddings, rope_theta=float(theta),
            initializer_range=mb.initializer_range, layer_norm_eps=mb.norm_eps, norm_bias=mb.norm_bias,
            use_bias=biases["attention_bias"], hidden_dropout_prob=mb.mlp_dropout,
            attention_probs_dropout_prob=mb.attention_dropout, classifier_dropout=mb.classifier_dropout,
            pad_token_id=mb.pad_token_id, tie_word_embeddings=mb.tie_word_embeddings)
    except ValueError as e:
        raise CrammerError(f"{source}: {e}") from None


def crammer_state(theirs: dict[str, torch.Tensor], source_prefix: str) -> dict[str, torch.Tensor]:
    """ModernBERT's tensors (the encoder's under `source_prefix`) under our names, GLU halves swapped back (the
    inverse of `modernbert_state`, for an MLM: our encoder sits under `bert.`)."""
    back = lambda renames: tuple((t, m) for m, t in renames)  # noqa: E731
    out = {}
    for name, tensor in theirs.items():
        if name.startswith(source_prefix + "layers."):
            index, rest = name[len(source_prefix + "layers."):].split(".", 1)
            renamed = _rename(rest, back(LAYER_RENAMES))
            ours = None if renamed is None else f"bert.layers.{index}.{renamed}"
            if rest.startswith("mlp.Wi."):
                first, second = tensor.chunk(2, dim=0)
                tensor = torch.cat((second, first), dim=0)
        elif name.startswith(source_prefix) and source_prefix:
            renamed = _rename(name[len(source_prefix):], back(ENCODER_RENAMES))
            ours = None if renamed is None else "bert." + renamed
        else:
            ours = _rename(name, back(HEAD_RENAMES))
        if ours is None:
            raise CrammerError(f"modernbert: weight {name} has no crammer counterpart")
        out[ours] = tensor
    return out


@torch.no_grad()
def from_hf_modernbert(source: str | os.PathLike) -> CrammedBertForMaskedLM:
    """A native `modernbert` folder (a `ModernBertForMaskedLM`, or a bare `ModernBertModel`) as a crammer MLM;
    a bare encoder's head transform and decoder bias are left at their fresh initialisation (the decoder is tied
    to the word embeddings). Outputs agree with transformers' ModernBERT to float rounding."""
    try:
        mb_config = ModernBertConfig.from_pretrained(source)
        has_head = any("MaskedLM" in a for a in (mb_config.architectures or []))
        hf = (ModernBertForMaskedLM if has_head else ModernBertModel).from_pretrained(
            source, config=mb_config, use_safetensors=True, dtype=torch.float32)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CrammerError(f"{source}: cannot load a ModernBERT checkpoint: {reason}") from None
    model = CrammedBertForMaskedLM(config_from_hf_modernbert(hf.config, str(source)))
    theirs = hf.state_dict()
    if has_head:
        state = crammer_state(theirs, "model.")
    else:
        state = crammer_state({f"model.{k}": v for k, v in theirs.items()}, "model.")
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {"decoder.weight"} | {k for k in model.state_dict() if k.startswith(("head_transform.", "decoder."))}
    if unexpected or set(missing) - (allowed if not has_head else {"decoder.weight"}):
        raise CrammerError(f"{source}: ModernBERT weights do not fit crammer's model (missing "
                           f"{sorted(set(missing))[:3]}, unexpected {sorted(unexpected)[:3]})")
    return model.eval()
