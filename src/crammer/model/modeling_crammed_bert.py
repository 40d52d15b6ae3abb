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
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    ModelOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from .configuration_crammed_bert import CrammedBertConfig

SINUSOID_BASE = 10000.0


# ----------------------------------------------------------------------------------------------------------
# Positions. Both encodings are computed on the fly in float32 from the sequence length: they are cheap,
# have static shapes under torch.compile, never lose precision when the model is cast to bf16, and leave
# no non-persistent buffers to rebuild after `from_pretrained`.


def _positions(seq_len: int, device: torch.device, position_ids: torch.Tensor | None) -> torch.Tensor:
    """float32 positions: 0..seq_len-1 (the static-shape default), or the caller's `position_ids` (B, S)."""
    if position_ids is None:
        return torch.arange(seq_len, device=device, dtype=torch.float32)
    return position_ids.to(device=device, dtype=torch.float32)


def sinusoid_table(seq_len: int, dim: int, device: torch.device,
                   position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The fixed sinusoid of "Attention is all you need" (sin on even, cos on odd features): (seq_len, dim),
    or (B, S, dim) at the given `position_ids`."""
    position = _positions(seq_len, device, position_ids)[..., None]
    inv_freq = SINUSOID_BASE ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angles = position * inv_freq
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


def rotary_cos_sin(seq_len: int, head_dim: int, device: torch.device, position_ids: torch.Tensor | None = None,
                   theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE's angles for one half of a head, shaped to broadcast over the projection's
    (B, S, 3, H, head_dim / 2) layout: (S, 1, 1, head_dim / 2), or (B, S, 1, 1, head_dim / 2) at the given
    `position_ids`. The frequencies are computed as Hugging Face's RoPE computes them (1 / theta^(2i/d)), so that a
    ModernBERT export agrees to the last bit of the angles."""
    position = _positions(seq_len, device, position_ids)[..., None]
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = (position * inv_freq)[..., None, None, :]
    return angles.cos(), angles.sin()


def rotate_half_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """RoPE in the rotate-half layout (Hugging Face's): feature i and i + head_dim/2 of each head turn by one angle,
    (x1, x2) -> (x1·cos - x2·sin, x2·cos + x1·sin); given -sin, by minus the angle (the backward pass: the rotation
    is orthogonal). Into `out` when given (in two fused passes per half), else as a new float32 tensor."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    if out is None:
        x1, x2 = x1.float(), x2.float()
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    torch.mul(x1, cos, out=out[..., :half]).addcmul_(x2, sin, value=-1.0)
    torch.mul(x2, cos, out=out[..., half:]).addcmul_(x1, sin)
    return out


class _RotaryQKV(torch.autograd.Function):
    """The projection's (B, S, 3, H, head_dim) output -> rotated queries, rotated keys, values, each (B, H, S,
    head_dim), with a hand-written backward that rotates the gradients straight into the projection's layout.

    For eager float32 on a CPU (CPU pretraining): autograd's version of the same arithmetic (slices, a
    concatenation, their zero-filled gradients) cost a tenth of a small model's step. One batch row at a time, so
    that the half-width passes run in the core's own cache (a third faster at d=256). Under torch.compile, and on a
    GPU (where a launch per row would cost more than it saves), the plain expression is used instead (`rotary_qkv`)."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        ctx.save_for_backward(cos, sin)
        rotated = qkv.new_empty(qkv[:, :, :2].shape)
        for row in range(qkv.shape[0]):
            rotate_half_pairs(qkv[row, :, :2], *_row_tables(cos, sin, row), out=rotated[row])
        q, k = rotated.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, qkv[:, :, 2].transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor):
        cos, sin = ctx.saved_tensors
        minus_sin = -sin  # the gradient turns back by minus the angle
        batch, heads, seq_len, head_dim = grad_q.shape
        grad = grad_q.new_empty(batch, seq_len, 3, heads, head_dim)
        for row in range(batch):
            # the tables (S, 1, 1, half) as (1, S, half), to broadcast over a row's (H, S, half)
            row_cos, row_sin = (t.flatten(-3, -2).transpose(0, 1) for t in _row_tables(cos, minus_sin, row))
            for i, grad_rotated in enumerate((grad_q, grad_k)):
                rotate_half_pairs(grad_rotated[row], row_cos, row_sin, out=grad[row, :, i].transpose(0, 1))
        grad[:, :, 2].copy_(grad_v.transpose(1, 2))
        return grad, None, None


def _row_tables(cos: torch.Tensor, sin: torch.Tensor, row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch row's (S, 1, 1, half) tables: the shared ones, or that row's under per-row `position_ids`."""
    return (cos[row], sin[row]) if cos.dim() == 5 else (cos, sin)


def rotary_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Queries and keys of the projection's (B, S, 3, H, head_dim) output rotated by RoPE, and the values; each
    (B, H, S, head_dim). Computed in float32 whatever the input dtype, returned in it."""
    if qkv.dtype == torch.float32 and qkv.device.type == "cpu" and not torch.compiler.is_compiling():
        return _RotaryQKV.apply(qkv, cos, sin)
    q, k = rotate_half_pairs(qkv[:, :, :2], cos, sin).to(qkv.dtype).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, qkv[:, :, 2].transpose(1, 2)


class ScaledSinusoidalPositions(nn.Module):
    """A fixed sinusoid times one learned scalar: nearly free, and lets the model tune how loud positions are."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        self.dim = config.hidden_size
        self.scale = nn.Parameter(torch.full((1,), self.dim**-0.5))

    def forward(self, seq_len: int, device: torch.device, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.scale * sinusoid_table(seq_len, self.dim, device, position_ids)


# ----------------------------------------------------------------------------------------------------------
# Building blocks


def layer_norm(config: CrammedBertConfig) -> nn.LayerNorm:
    """Every LayerNorm of the model: width d, the config's eps, with or without a bias (`norm_bias`)."""
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.norm_bias)


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
        self.norm = layer_norm(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`inputs_embeds` (B, S, d) replaces the token lookup; `position_ids` (B, S) replace 0..S-1."""
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        seq_len = x.shape[1]
        if position_ids is None and seq_len > self.max_positions:
            raise ValueError(f"sequence length {seq_len} exceeds max_position_embeddings={self.max_positions}")
        if isinstance(self.position_embeddings, nn.Embedding):
            if position_ids is None:
                x = x + self.position_embeddings.weight[:seq_len]
            else:
                x = x + self.position_embeddings(position_ids)
        elif self.position_embeddings is not None:
            x = x + self.position_embeddings(seq_len, x.device, position_ids).to(x.dtype)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:  # a single segment, as BERT assumes
                x = x + self.token_type_embeddings.weight[0]
            else:
                x = x + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(x))


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
                    dropout_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(QKᵀ/√d)·V written out, the non-fused path that can return the weights (B, H, S, S).

    Masked keys get the dtype's most negative score rather than -inf, so a row with no key left is uniform, not NaN.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    weights = F.dropout(weights, p=dropout_p)
    return torch.matmul(weights, v), weights


class CrammedBertAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection, through `F.scaled_dot_product_attention`, or
    written out (`eager=True`) when the attention weights are wanted."""

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
        eager: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The output (B, S, d) and, on the eager path, the attention weights (B, H, S, S) (else None)."""
        batch, seq_len, width = x.shape
        qkv = self.qkv(x).view(batch, seq_len, 3, self.num_heads, self.head_dim)
        if rotary is None:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, S, head_dim)
        else:
            q, k, v = rotary_qkv(qkv, *rotary)
        dropout_p = self.dropout_p if self.training else 0.0
        if eager:
            y, weights = eager_attention(q, k, v, attn_mask, dropout_p)
        else:
            y, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p), None
        return self.out(y.transpose(1, 2).reshape(batch, seq_len, width)), weights


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


class CrammedBertLayer(GradientCheckpointingLayer):
    """One transformer block; pre-LN (crammed: stable at high learning rates) or post-LN (original BERT).

    A `GradientCheckpointingLayer`: after `model.activation_checkpointing_enable()` its activations are recomputed in
    the backward pass instead of stored (the residual stream `x` is the first positional argument, as it must be).
    """

    def __init__(self, config: CrammedBertConfig, index: int = 0):
        super().__init__()
        self.pre_norm = config.norm_scheme == "pre"
        # ModernBERT's first block attends to the embedding LayerNorm's output as is (`first_layer_attn_norm=False`).
        skip = index == 0 and not config.first_layer_attn_norm
        self.attn_norm = nn.Identity() if skip else layer_norm(config)
        self.attention = CrammedBertAttention(config)
        self.ffn_norm = layer_norm(config)
        self.ffn = CrammedBertFeedForward(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x, attn_mask=None, rotary=None, eager=False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's output and its attention weights (None unless `eager`)."""
        if self.pre_norm:
            attended, weights = self.attention(self.attn_norm(x), attn_mask, rotary, eager)
            x = x + self.dropout(attended)
            return x + self.dropout(self.ffn(self.ffn_norm(x))), weights
        attended, weights = self.attention(x, attn_mask, rotary, eager)
        x = self.attn_norm(x + self.dropout(attended))
        return self.ffn_norm(x + self.dropout(self.ffn(x))), weights


class CrammedBertHeadTransform(nn.Module):
    """The original BERT MLM head's Linear + activation + LayerNorm (absent in the crammed recipe)."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.act = ACT2FN[config.hidden_act]
        self.norm = layer_norm(config)

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



def returned(output: ModelOutput, return_dict: bool) -> ModelOutput | tuple[torch.Tensor, ...]:
    """`output`, or as Hugging Face models give it with `return_dict=False`: a tuple of its non-None fields."""
    return output if return_dict else output.to_tuple()


def sequence_classification_loss(config: CrammedBertConfig, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss Hugging Face BERT picks: `config.problem_type`, or the one it infers from the labels (1 output:
    regression, integer labels: single-label, float labels: multi-label). Computed in float32; the inferred type
    is not written back into the config (a side effect inside a compiled forward)."""
    num_labels = logits.shape[-1]
    problem = config.problem_type
    if problem is None:
        if num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        target = labels.to(torch.float32)
        if num_labels == 1:
            return F.mse_loss(logits.squeeze().float(), target.squeeze())
        return F.mse_loss(logits.float(), target)
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels).float(), labels.view(-1).long())
    if problem == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.to(torch.float32))
    raise ValueError(f"problem_type={problem!r} is not regression, single_label_classification or "
                     "multi_label_classification")


class CrammedBertPreTrainedModel(PreTrainedModel):
    config_class = CrammedBertConfig
    config: CrammedBertConfig
    base_model_prefix = "bert"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True  # "sdpa" (the default) and "eager" (the written-out path that returns weights)
    _no_split_modules = ["CrammedBertLayer"]
    # Our losses are means over the batch: `Trainer` then divides by the accumulation steps itself instead of
    # passing `num_items_in_batch` (which a **kwargs forward would otherwise be taken to handle).
    accepts_loss_kwargs = False

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """The model reads `config._attn_implementation` on every call, so `set_attn_implementation` may switch it."""
        return True

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

    def _return_dict(self, return_dict: bool | None) -> bool:
        return self.config.return_dict if return_dict is None else return_dict


class CrammedBertModel(CrammedBertPreTrainedModel):
    """The encoder: embeddings, a stack of blocks, (for pre-LN) a final LayerNorm and (optionally) BERT's pooler.

    `forward` takes Hugging Face BertModel's arguments and returns its output class; `hidden_states` are the
    embedding output and each block's output, the last one after the final LayerNorm (= `last_hidden_state`).
    """

    def __init__(self, config: CrammedBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = CrammedBertEmbeddings(config)
        self.layers = nn.ModuleList(CrammedBertLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = layer_norm(config) if config.norm_scheme == "pre" else nn.Identity()
        self.pooler = CrammedBertPooler(config) if add_pooling_layer else None
        self.rotary = config.position_embedding == "rotary"
        self.rope_theta = float(config.rope_theta)
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def encode(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The residual stream *before* the final LayerNorm (what the blocks compute)."""
        return self._run(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)[0]

    def _run(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None]:
        """(residual stream *before* the final LayerNorm, hidden states or None, attentions or None): the blocks
        over the embeddings; the flags default to the config's, as in Hugging Face models.

        `attention_mask` (B, S) of 1 (token) / 0 (padding) becomes a boolean key mask; without one no mask is
        passed to SDPA at all, which keeps the Flash kernel available in pretraining. Attention runs written out
        (eager) when `config._attn_implementation == "eager"` or when its weights are asked for.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (self.config.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        eager = bool(output_attentions) or self.config._attn_implementation == "eager"
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        if torch.is_autocast_enabled(x.device.type):
            # Keep the residual stream in the autocast dtype (as Megatron does) instead of the float32 that
            # autocast's LayerNorm returns: every elementwise pass moves half the bytes (7% of an H100 step).
            # LayerNorm still computes its statistics in float32.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        attn_mask = None
        if attention_mask is not None:
            attn_mask = attention_mask[:, None, None, :].to(torch.bool)  # (B, 1, 1, S): may attend to key
        rotary = (rotary_cos_sin(x.shape[1], self.head_dim, x.device, position_ids, self.rope_theta)
                  if self.rotary else None)
        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for layer in self.layers:
            x, weights = layer(x, attn_mask, rotary, eager)
            if hidden_states is not None:
                hidden_states.append(x)
            if attentions is not None:
                attentions.append(weights)
        if hidden_states is not None:
            hidden_states[-1] = self.final_norm(x)  # the last one is the model's output, as in Hugging Face models
        return (x, tuple(hidden_states) if hidden_states is not None else None,
                tuple(attentions) if attentions is not None else None)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        *,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        positions: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple[torch.Tensor, ...]:
        """`last_hidden_state` (B, S, d), `pooler_output` (B, d; None without a pooler), and on request
        `hidden_states` (L + 1 of (B, S, d)) and `attentions` (L of (B, H, S, S)). Other keyword arguments are
        accepted and unused, as Hugging Face attention layers ignore what they do not know.

        `positions` (B, M): `last_hidden_state` only at those positions, (B, M, d), the final LayerNorm applied
        to them alone (what the MLM head needs for sparse prediction); there is no pooled output then."""
        stream, hidden_states, attentions = self._run(input_ids, attention_mask, token_type_ids, position_ids,
                                                      inputs_embeds, output_attentions, output_hidden_states)
        if positions is not None:
            gathered = stream.gather(1, positions.unsqueeze(-1).expand(-1, -1, stream.shape[-1]))
            output = BaseModelOutputWithPooling(last_hidden_state=self.final_norm(gathered),
                                                hidden_states=hidden_states, attentions=attentions)
            return returned(output, self._return_dict(return_dict))
        hidden = hidden_states[-1] if hidden_states is not None else self.final_norm(stream)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        output = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled,
                                            hidden_states=hidden_states, attentions=attentions)
        return returned(output, self._return_dict(return_dict))


class CrammedBertForMaskedLM(CrammedBertPreTrainedModel):
    """Encoder + MLM head whose decoder is tied to the token embedding.

    With `masked_positions` (B, M) the final norm, head and loss run only on those positions (sparse
    prediction): static shapes, no `nonzero`, so it compiles cleanly and skips ~85% of the decoder work.
    Also `AutoModelForPreTraining`'s class: MLM is the whole of crammed pretraining (no next-sentence head).
    """

    _tied_weights_keys = {"decoder.weight": "bert.embeddings.word_embeddings.weight"}

    def __init__(self, config: CrammedBertConfig):
        super().__init__(config)
        self.bert = CrammedBertModel(config, add_pooling_layer=False)
        self.head_transform = CrammedBertHeadTransform(config) if config.mlm_head_transform else nn.Identity()
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=config.use_bias)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.decoder = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        *,
        labels: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
        **kwargs,
    ) -> MaskedLMOutput | tuple[torch.Tensor, ...]:
        """MLM logits and (with `labels`, (B, S), -100 = ignore) the mean cross-entropy.

        The first five arguments are positional in Hugging Face BERT's order; the rest are keyword-only, since
        BertForMaskedLM's next positional ones (`encoder_hidden_states`, ...) belong to a decoder. `**kwargs` take
        `output_attentions`, `output_hidden_states` and `return_dict`, as in transformers' models.

        `masked_positions` (B, M) selects the positions to predict in each row; logits are then (B, M, V)
        and the loss covers the B*M labels gathered at those positions (rows with fewer masks can pad with
        any position whose label is -100). Without it, logits are (B, S, V) and the loss covers every
        position whose label is not -100.
        """
        encoded = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                            output_attentions=kwargs.get("output_attentions"),
                            output_hidden_states=kwargs.get("output_hidden_states"), return_dict=True,
                            positions=masked_positions)
        if masked_positions is not None and labels is not None:
            labels = labels.gather(1, masked_positions)
        logits = self.decoder(self.head_transform(encoded.last_hidden_state))
        hidden_states, attentions = encoded.hidden_states, encoded.attentions
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100)
        output = MaskedLMOutput(loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions)
        return returned(output, self._return_dict(kwargs.get("return_dict")))


class CrammedBertHead(CrammedBertPreTrainedModel):
    """A task head over the encoder (`self.bert`), by default with BertForSequenceClassification's
    `forward(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, labels, **kwargs)`: a subclass
    says what the encoder's output becomes (`head_logits`, `head_loss`) and in which output class. `**kwargs` take
    `output_attentions`, `output_hidden_states` and `return_dict`, as in transformers' models."""

    output_class: type[ModelOutput]

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                kwargs: dict) -> BaseModelOutputWithPooling:
        """The encoder's output for a head. The head's `**kwargs` (`output_attentions`, `output_hidden_states`,
        ... as transformers passes them) go on to the encoder, except `return_dict`, which the head applies."""
        kwargs = {k: v for k, v in kwargs.items() if k != "return_dict"}
        return self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, return_dict=True,
                         **kwargs)

    def _output(self, cls: type[ModelOutput], encoded: BaseModelOutputWithPooling, kwargs: dict, **fields):
        """`cls(**fields)` with the encoder's hidden states and attentions; a tuple when `return_dict` is off."""
        output = cls(**fields, hidden_states=encoded.hidden_states, attentions=encoded.attentions)
        return returned(output, self._return_dict(kwargs.get("return_dict")))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> ModelOutput | tuple[torch.Tensor, ...]:
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
        shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        logits = self.head_logits(outputs, shape)
        loss = self.head_loss(logits, labels) if labels is not None else None
        return self._output(self.output_class, outputs, kwargs, loss=loss, logits=logits)

    def head_logits(self, outputs: BaseModelOutputWithPooling, input_shape: torch.Size) -> torch.Tensor:
        """The head's logits from the encoder's output; `input_shape` is that of `input_ids` (or `inputs_embeds`
        without its last dimension)."""
        raise NotImplementedError(f"{type(self).__name__} defines its own forward")

    def head_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of `logits` against `labels`."""
        raise NotImplementedError(f"{type(self).__name__} defines its own forward")


class CrammedBertForSequenceClassification(CrammedBertHead):
    """Encoder + pooler + dropout + Linear: logits (B, num_labels). The loss follows `config.problem_type` as in
    BertForSequenceClassification (regression for one output, e.g. STS-B; single-label; multi-label with BCE)."""

    output_class = SequenceClassifierOutput

    def __init__(self, config: CrammedBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = CrammedBertModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def head_logits(self, outputs: BaseModelOutputWithPooling, input_shape: torch.Size) -> torch.Tensor:
        return self.classifier(self.dropout(outputs.pooler_output))

    def head_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sequence_classification_loss(self.config, logits, labels)


class CrammedBertForTokenClassification(CrammedBertHead):
    """Encoder + dropout + Linear on every token (NER, POS tagging): logits (B, S, num_labels); labels (B, S),
    cross-entropy over those that are not -100."""

    output_class = TokenClassifierOutput

    def __init__(self, config: CrammedBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = CrammedBertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def head_logits(self, outputs: BaseModelOutputWithPooling, input_shape: torch.Size) -> torch.Tensor:
        return self.classifier(self.dropout(outputs.last_hidden_state))

    def head_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1), ignore_index=-100)


class CrammedBertForMultipleChoice(CrammedBertHead):
    """Scores each of C (prompt, choice) pairs with pooler + dropout + Linear(d, 1): inputs (B, C, S)
    (`inputs_embeds` (B, C, S, d)), logits (B, C), labels (B,) the right choice, cross-entropy. Hidden states and
    attentions are those of the B*C flattened sequences, as in BERT."""

    output_class = MultipleChoiceModelOutput

    def __init__(self, config: CrammedBertConfig):
        super().__init__(config)
        self.bert = CrammedBertModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def _encode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                kwargs: dict) -> BaseModelOutputWithPooling:
        flat = lambda t, dims=1: None if t is None else t.reshape(-1, *t.shape[-dims:])  # noqa: E731
        return super()._encode(flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
                               flat(inputs_embeds, 2), kwargs)

    def head_logits(self, outputs: BaseModelOutputWithPooling, input_shape: torch.Size) -> torch.Tensor:
        return self.classifier(self.dropout(outputs.pooler_output)).view(-1, input_shape[1])

    def head_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels.view(-1))


class CrammedBertForQuestionAnswering(CrammedBertHead):
    """Encoder + Linear to start/end logits per token (extractive QA, SQuAD-style), as BertForQuestionAnswering."""

    output_class = QuestionAnsweringModelOutput

    def __init__(self, config: CrammedBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = CrammedBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput | tuple[torch.Tensor, ...]:
        """Start and end logits (B, S); with both position tensors (B,), the mean of the two cross-entropies.
        Positions outside the sequence are clamped to S and ignored, as BERT does for answers cut off."""
        outputs = self._encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, kwargs)
        logits = self.qa_outputs(outputs.last_hidden_state)
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[1]
            start = start_positions.reshape(-1).clamp(0, ignored)
            end = end_positions.reshape(-1).clamp(0, ignored)
            loss = (F.cross_entropy(start_logits.float(), start, ignore_index=ignored)
                    + F.cross_entropy(end_logits.float(), end, ignore_index=ignored)) / 2
        return self._output(self.output_class, outputs, kwargs, loss=loss, start_logits=start_logits,
                            end_logits=end_logits)
