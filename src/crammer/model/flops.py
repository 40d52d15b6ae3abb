"""Parameter counts and training FLOPs per token, the denominators of throughput and MFU."""

from __future__ import annotations

import torch
from torch import nn

from crammer.model.configuration_crammed_bert import CrammedBertConfig
from crammer.model.modeling_crammed_bert import CrammedBertModel, ScaledSinusoidalPositions


def count_parameters(model: nn.Module, include_embeddings: bool = True) -> int:
    """Number of parameters, each shared (tied) tensor counted once.

    `include_embeddings=False` leaves out the token, position and token-type embeddings (and therefore a
    decoder tied to the token embedding), the convention of scaling-law papers for "non-embedding" N.
    """
    embedding_ids: set[int] = set()
    if not include_embeddings:
        for module in model.modules():
            if isinstance(module, (nn.Embedding, ScaledSinusoidalPositions)):
                embedding_ids.update(id(p) for p in module.parameters(recurse=False))
    unique = {id(p): p for p in model.parameters()}
    return sum(p.numel() for key, p in unique.items() if key not in embedding_ids)


def training_flops_per_token(config: CrammedBertConfig, seq_len: int, masked_fraction: float = 0.25) -> float:
    """Forward + backward FLOPs per input token of one MLM training step.

    - 6·N: each non-embedding weight does one multiply-add (2 FLOPs) per token forward and twice that
      backward (gradients w.r.t. inputs and weights).
    - 12·L·d·S: attention scores QKᵀ and the weighted sum AV are 2·S·d multiply-adds per token per layer
      forward (4·S·d FLOPs), times 3 with the backward pass.
    - 6·(d·V [+ d² head transform])·masked_fraction: with sparse prediction the MLM head and decoder run
      only on the masked positions; pass masked_fraction=1.0 for a dense head.
    Embedding lookups, norms, activations and softmax are ignored, as in the usual 6·N estimate.
    """
    if not 0.0 <= masked_fraction <= 1.0:
        raise ValueError(f"masked_fraction={masked_fraction} must be in [0, 1]")
    with torch.device("meta"):
        encoder = CrammedBertModel(config, add_pooling_layer=False)
    n_body = count_parameters(encoder, include_embeddings=False)
    d, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    head = d * vocab + (d * d if config.mlm_head_transform else 0)
    return 6.0 * n_body + 12.0 * layers * d * seq_len + 6.0 * head * masked_fraction
