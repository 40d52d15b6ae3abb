"""Crammed BERT: a BERT-style masked language model built for pretraining on one GPU in a day.

The recipe follows "Cramming: Training a Language Model on a Single GPU in One Day" (Geiping & Goldstein,
2022): pre-LayerNorm blocks, no linear biases, a gated GELU feed-forward layer, scaled sinusoidal positions,
an MLM head that is just the tied decoder, and *sparse prediction*: the decoder and the loss run only on the
masked positions. The `original` configuration switches every one of those choices back to the original
BERT, so that a Hugging Face BERT checkpoint loads into this code with identical outputs.

This file imports only torch, transformers and its configuration module: `save_pretrained` copies it next
to the weights, so a saved folder loads with `trust_remote_code=True` without `crammer` installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput, SequenceClassifierOutput

from .configuration_crammed_bert import CrammedBertConfig

ROPE_BASE = 10000.0
SINUSOID_BASE = 10000.0


# ----------------------------------------------------------------------------------------------------------
# Positions. Both encodings are computed on the fly in float32 from the sequence length: they are cheap,
# have static shapes under torch.compile, never lose precision when the model is cast to bf16, and leave
# no non-persistent buffers to rebuild after `from_pretrained`.


def sinusoid_table(seq_len: int, dim: int, device: torch.device) -> torch.Tensor:
    """The fixed (seq_len, dim) sinusoid of "Attention is all you need": sin on even, cos on odd features."""
    position = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None]
    inv_freq = SINUSOID_BASE ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angles = position * inv_freq
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


def rotary_cos_sin(seq_len: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (seq_len, head_dim) for RoPE, in the rotate-half layout."""
    position = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None]
    inv_freq = ROPE_BASE ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.cat((position * inv_freq, position * inv_freq), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate query/key features (B, H, S, head_dim) pairwise by position-dependent angles."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class ScaledSinusoidalPositions(nn.Module):
    """A fixed sinusoid times one learned scalar: nearly free, and lets the model tune how loud positions are."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        self.dim = config.hidden_size
        self.scale = nn.Parameter(torch.full((1,), self.dim**-0.5))

    def forward(self, seq_len: int, device: torch.device) -> torch.Tensor:
        return self.scale * sinusoid_table(seq_len, self.dim, device)


# ----------------------------------------------------------------------------------------------------------
# Building blocks


class CrammedBertEmbeddings(nn.Module):
    """Token (+ absolute position) (+ token type) embeddings, then LayerNorm and dropout."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        self.max_positions = config.max_position_embeddings
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        if config.position_embedding == "learned":
            self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        elif config.position_embedding == "scaled_sinusoidal":
            self.position_embeddings = ScaledSinusoidalPositions(config)
        else:  # rotary positions act inside attention
            self.position_embeddings = None
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        if seq_len > self.max_positions:
            raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings={self.max_positions}")
        x = self.word_embeddings(input_ids)
        if isinstance(self.position_embeddings, nn.Embedding):
            x = x + self.position_embeddings.weight[:seq_len]
        elif self.position_embeddings is not None:
            x = x + self.position_embeddings(seq_len, x.device).to(x.dtype)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:  # a single segment, as BERT assumes
                x = x + self.token_type_embeddings.weight[0]
            else:
                x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(x))


class CrammedBertAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection, through `F.scaled_dot_product_attention`."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.use_bias)
        self.out = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        batch, seq_len, width = x.shape
        qkv = self.qkv(x).view(batch, seq_len, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, S, head_dim)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout_p if self.training else 0.0
        )
        return self.out(y.transpose(1, 2).reshape(batch, seq_len, width))


class CrammedBertFeedForward(nn.Module):
    """Position-wise feed-forward: GLU (act(gate) * value, half the width out) or a plain MLP."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        self.gated = config.ffn_type == "glu"
        inner = config.intermediate_size // 2 if self.gated else config.intermediate_size
        self.up = nn.Linear(config.hidden_size, config.intermediate_size, bias=config.use_bias)
        self.act = ACT2FN[config.hidden_act]
        self.down = nn.Linear(inner, config.hidden_size, bias=config.use_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gated:
            return self.down(self.act(self.up(x)))
        # Two products off the halves of one weight rather than one product then a split: the backward then
        # writes the two half-width gradients directly instead of concatenating them (2% of an H100 step).
        value_weight, gate_weight = self.up.weight.chunk(2, dim=0)
        value_bias, gate_bias = self.up.bias.chunk(2) if self.up.bias is not None else (None, None)
        return self.down(self.act(F.linear(x, gate_weight, gate_bias)) * F.linear(x, value_weight, value_bias))


class CrammedBertLayer(nn.Module):
    """One transformer block; pre-LN (crammed: stable at high learning rates) or post-LN (original BERT)."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        self.pre_norm = config.norm_scheme == "pre"
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = CrammedBertAttention(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = CrammedBertFeedForward(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, attn_mask=None, rotary=None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.attention(self.attn_norm(x), attn_mask, rotary))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attn_norm(x + self.dropout(self.attention(x, attn_mask, rotary)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class CrammedBertHeadTransform(nn.Module):
    """The original BERT MLM head's Linear + activation + LayerNorm (absent in the crammed recipe)."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.act = ACT2FN[config.hidden_act]
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


class CrammedBertPooler(nn.Module):
    """Pools a sequence into its first token's state, optionally through BERT's Linear + tanh."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        dense = config.classifier_pooler == "dense_tanh"
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias) if dense else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        first = hidden[:, 0]
        return torch.tanh(self.dense(first)) if self.dense is not None else first


# ----------------------------------------------------------------------------------------------------------
# Hugging Face models


class CrammedBertPreTrainedModel(PreTrainedModel):
    config_class = CrammedBertConfig
    config: CrammedBertConfig
    base_model_prefix = "bert"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _no_split_modules = ["CrammedBertLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """normal(0, initializer_range) for Linear/Embedding, (1, 0) for LayerNorm, 1/sqrt(d) position scale.

        Uses `transformers.initialization`, whose functions skip tensors already loaded from a checkpoint.
        """
        super()._init_weights(module)
        if isinstance(module, ScaledSinusoidalPositions):
            init.constant_(module.scale, module.dim**-0.5)

    def save_pretrained(self, save_directory, *args, tokenizer=None, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus `tokenizer`'s files when one is given: the folder then
        loads whole with `AutoTokenizer` and `pipeline(..., model=folder)`. Not atomic by itself (use
        `crammer.io.atomic_dir` for an all-or-nothing folder)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(save_directory))


class CrammedBertModel(CrammedBertPreTrainedModel):
    """The encoder: embeddings, a stack of blocks and (for pre-LN) a final LayerNorm."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__(config)
        self.embeddings = CrammedBertEmbeddings(config)
        self.layers = nn.ModuleList(CrammedBertLayer(config) for _ in range(config.num_hidden_layers))
        pre_norm = config.norm_scheme == "pre"
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if pre_norm else nn.Identity()
        self.rotary = config.position_embedding == "rotary"
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states *before* the final LayerNorm, so the MLM head can normalise only the positions it needs.

        `attention_mask` (B, S) of 1 (token) / 0 (padding) becomes a boolean key mask; without one no mask is
        passed to SDPA at all, which keeps the Flash kernel available in pretraining.
        """
        x = self.embeddings(input_ids, token_type_ids)
        if torch.is_autocast_enabled(x.device.type):
            # Keep the residual stream in the autocast dtype (as Megatron does) instead of the float32 that
            # autocast's LayerNorm returns: every elementwise pass moves half the bytes (7% of an H100 step).
            # LayerNorm still computes its statistics in float32.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        attn_mask = None
        if attention_mask is not None:
            attn_mask = attention_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, S): may attend to key
        rotary = rotary_cos_sin(x.shape[1], self.head_dim, x.device) if self.rotary else None
        for layer in self.layers:
            x = layer(x, attn_mask, rotary)
        return x

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> BaseModelOutput | tuple[torch.Tensor]:
        hidden = self.final_norm(self.encode(input_ids, attention_mask, token_type_ids))
        return BaseModelOutput(last_hidden_state=hidden) if return_dict else (hidden,)


class CrammedBertForMaskedLM(CrammedBertPreTrainedModel):
    """Encoder + MLM head whose decoder is tied to the token embedding.

    With `masked_positions` (B, M) the final norm, head and loss run only on those positions (sparse
    prediction): static shapes, no `nonzero`, so it compiles cleanly and skips ~85% of the decoder work.
    """

    _tied_weights_keys = {"decoder.weight": "bert.embeddings.word_embeddings.weight"}

    def __init__(self, config: CrammedBertConfig):
        super().__init__(config)
        self.bert = CrammedBertModel(config)
        self.head_transform = CrammedBertHeadTransform(config) if config.mlm_head_transform else nn.Identity()
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.use_bias)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.decoder = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> MaskedLMOutput | tuple[torch.Tensor, ...]:
        """MLM logits and (with `labels`, (B, S), -100 = ignore) the mean cross-entropy.

        The first three arguments are positional in Hugging Face BERT's order; the rest are keyword-only,
        since BERT's fourth positional argument (`position_ids`) has no counterpart here.

        `masked_positions` (B, M) selects the positions to predict in each row; logits are then (B, M, V)
        and the loss covers the B*M labels gathered at those positions (rows with fewer masks can pad with
        any position whose label is -100). Without it, logits are (B, S, V) and the loss covers every
        position whose label is not -100.
        """
        hidden = self.bert.encode(input_ids, attention_mask, token_type_ids)
        if masked_positions is not None:
            index = masked_positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
            hidden = hidden.gather(1, index)
            if labels is not None:
                labels = labels.gather(1, masked_positions)
        logits = self.decoder(self.head_transform(self.bert.final_norm(hidden)))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100)
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return MaskedLMOutput(loss=loss, logits=logits)


class CrammedBertForSequenceClassification(CrammedBertPreTrainedModel):
    """Encoder + first-token pooler + dropout + Linear; MSE regression when `num_labels == 1` (STS-B)."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = CrammedBertModel(config)
        self.pooler = CrammedBertPooler(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SequenceClassifierOutput | tuple[torch.Tensor, ...]:
        """Logits and (with `labels`) the loss; arguments after the first three are keyword-only, as for MLM."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        logits = self.classifier(self.dropout(self.pooler(hidden)))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.to(torch.float32))
            else:
                loss = F.cross_entropy(logits.float(), labels.long())
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return SequenceClassifierOutput(loss=loss, logits=logits)

