"""`optim.name` picks the optimizer's builder: one entry per optimizer, checked like every other choice."""

import pytest
import torch

from crammer.errors import CrammerError
from crammer.model import CrammedBertForMaskedLM, make_config
from crammer.train.config import make_pretrain_config
from crammer.train.optimizers import OPTIMIZERS, build_optimizer


def test_adamw_is_built_by_name_with_decay_on_matrices_only():
    cfg = make_pretrain_config("tiny", ["optim.name=adamw", "optim.weight_decay=0.05"], budget_tokens=1000)
    model = CrammedBertForMaskedLM(make_config("tiny", 100))
    optimizer = build_optimizer(model, cfg.optim)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"] is True
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and all(p.ndim >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim < 2 for p in no_decay["params"])
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters())


def test_every_name_the_config_accepts_has_a_builder_and_others_are_refused():
    import typing

    from crammer.train.config import OptimConfig

    assert set(typing.get_args(typing.get_type_hints(OptimConfig)["name"])) == set(OPTIMIZERS)
    with pytest.raises(CrammerError, match="optim.name"):
        make_pretrain_config("tiny", ["optim.name=sgd"], budget_tokens=1000)
