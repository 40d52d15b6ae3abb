"""Configuration of the crammed BERT model.

This file is self-contained (it imports only `transformers`) because `save_pretrained` copies it next to
the weights: a saved folder then loads with `trust_remote_code=True` in a process that has never heard of
`crammer`.

The defaults are the crammed-BERT recipe (Geiping & Goldstein, 2022): pre-LayerNorm blocks, no linear
biases, a gated feed-forward layer, scaled sinusoidal positions and a bare tied decoder. Setting
`norm_scheme="post"`, `use_bias=True`, `ffn_type="mlp"`, `position_embedding="learned"`,
`type_vocab_size=2` and `mlm_head_transform=True` gives exactly the original BERT architecture; rotary
positions, `first_layer_attn_norm=False`, `mlm_head_transform=True` give ModernBERT's (see the `modernbert` preset).
"""

from __future__ import annotations

from transformers import PretrainedConfig

POSITION_EMBEDDINGS = ("scaled_sinusoidal", "learned", "rotary")
NORM_SCHEMES = ("pre", "post")
FFN_TYPES = ("glu", "mlp")
CLASSIFIER_POOLERS = ("dense_tanh", "first_token")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu")

# Written into every config.json, so a saved folder loads through *any* of these Auto classes with
# `trust_remote_code=True`, not only through the class that happened to save it.
AUTO_MAP = {
    "AutoConfig": "configuration_crammed_bert.CrammedBertConfig",
    "AutoModel": "modeling_crammed_bert.CrammedBertModel",
    "AutoModelForMaskedLM": "modeling_crammed_bert.CrammedBertForMaskedLM",
    "AutoModelForPreTraining": "modeling_crammed_bert.CrammedBertForMaskedLM",  # MLM is all of its pretraining
    "AutoModelForSequenceClassification": "modeling_crammed_bert.CrammedBertForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_crammed_bert.CrammedBertForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_crammed_bert.CrammedBertForQuestionAnswering",
    "AutoModelForMultipleChoice": "modeling_crammed_bert.CrammedBertForMultipleChoice",
}


class CrammedBertConfig(PretrainedConfig):
    """Architecture of a crammed (or original) BERT encoder; every field is read by the model.

    Args:
        vocab_size: rows of the token embedding (= the decoder's outputs, they are tied).
        hidden_size: width `d` of the residual stream.
        num_hidden_layers: number of transformer blocks.
        num_attention_heads: heads per attention layer; must divide `hidden_size`.
        intermediate_size: output width of the first feed-forward Linear. With `ffn_type="glu"` it is
            split into a value half and a gate half, so the second Linear maps `intermediate_size // 2 -> d`.
        hidden_act: activation of the feed-forward layer (and of the MLM head transform).
        max_position_embeddings: longest sequence the position encoding supports.
        position_embedding: "scaled_sinusoidal" (fixed sinusoid times one learned scalar), "learned"
            (absolute embedding table) or "rotary" (RoPE applied to queries and keys).
        rope_theta: base of the rotary frequencies (ModernBERT's `rope_theta`); read with rotary positions only.
        type_vocab_size: number of token types (segment ids); 0 = no token-type embedding.
        norm_scheme: "pre" (LayerNorm before each sub-layer, plus a final LayerNorm) or "post"
            (LayerNorm after each residual addition, as in the original BERT).
        ffn_type: "glu" (GELU-gated linear unit) or "mlp" (Linear, activation, Linear).
        use_bias: biases in every Linear layer (attention, feed-forward, MLM head, pooler).
        mlm_head_transform: BERT's Linear + activation + LayerNorm before the decoder.
        hidden_dropout_prob: dropout on embeddings and on each sub-layer's output.
        attention_probs_dropout_prob: dropout on the attention weights.
        classifier_pooler: how sequence classification pools the first token: "dense_tanh" (BERT's
            pooler) or "first_token" (its hidden state as is).
        classifier_dropout: dropout before the classification layer.
        layer_norm_eps: epsilon of every LayerNorm.
        norm_bias: whether every LayerNorm has an additive bias (ModernBERT's have none).
        first_layer_attn_norm: whether the first block normalises its attention input; pre-LN only. Without it
            the embedding LayerNorm serves (ModernBERT), one LayerNorm fewer.
        initializer_range: standard deviation of the normal init of Linear and Embedding weights.
    """

    model_type = "crammed_bert"

    def __init__(
        self,
        vocab_size: int = 32768,
        hidden_size: int = 768,
        num_hidden_layers: int = 16,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        max_position_embeddings: int = 128,
        position_embedding: str = "scaled_sinusoidal",
        rope_theta: float = 10000.0,
        type_vocab_size: int = 0,
        norm_scheme: str = "pre",
        ffn_type: str = "glu",
        use_bias: bool = False,
        mlm_head_transform: bool = False,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        classifier_pooler: str = "dense_tanh",
        classifier_dropout: float = 0.1,
        layer_norm_eps: float = 1e-12,
        norm_bias: bool = True,
        first_layer_attn_norm: bool = True,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        pad_token_id: int | None = 0,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.position_embedding = position_embedding
        self.rope_theta = rope_theta
        self.type_vocab_size = type_vocab_size
        self.norm_scheme = norm_scheme
        self.ffn_type = ffn_type
        self.use_bias = use_bias
        self.mlm_head_transform = mlm_head_transform
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.classifier_pooler = classifier_pooler
        self.classifier_dropout = classifier_dropout
        self.layer_norm_eps = layer_norm_eps
        self.norm_bias = norm_bias
        self.first_layer_attn_norm = first_layer_attn_norm
        self.initializer_range = initializer_range
        self.tie_word_embeddings = tie_word_embeddings
        # A config saved by an older version gains the heads added since; entries it has win (the Hub rewrites
        # them to point at the repository the code came from).
        kwargs["auto_map"] = {**AUTO_MAP, **(kwargs.get("auto_map") or {})}
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.validate_architecture()

    def validate_architecture(self) -> None:
        """Raise ValueError naming the field at fault, so a bad config fails before building a model."""
        choices = {
            "position_embedding": POSITION_EMBEDDINGS,
            "norm_scheme": NORM_SCHEMES,
            "ffn_type": FFN_TYPES,
            "classifier_pooler": CLASSIFIER_POOLERS,
            "hidden_act": ACTIVATIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size={self.type_vocab_size} must be >= 0")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        head_dim = self.hidden_size // self.num_attention_heads
        if self.position_embedding == "rotary" and head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got {head_dim}")
        if self.position_embedding == "scaled_sinusoidal" and self.hidden_size % 2:
            raise ValueError(f"sinusoidal positions need an even hidden_size, got {self.hidden_size}")
        if self.position_embedding == "rotary" and not float(self.rope_theta) > 0:
            raise ValueError(f"rope_theta={self.rope_theta} must be positive")
        if not self.first_layer_attn_norm and self.norm_scheme != "pre":
            raise ValueError("first_layer_attn_norm=False needs norm_scheme='pre' (the embedding LayerNorm then "
                             "normalises the first block's input)")
        if self.ffn_type == "glu" and self.intermediate_size % 2:
            raise ValueError(f"ffn_type='glu' needs an even intermediate_size, got {self.intermediate_size}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")
