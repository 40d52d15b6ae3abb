"""Micro-batch sizing (the probe itself needs a GPU; the search and the evening are plain functions)."""

import dataclasses

import pytest
import torch

from crammer.errors import CrammerError
from crammer.train.setup import build_training, check_micro_batch, model_config_for
from crammer.train.sizing import auto_micro_batch, even_micro_batch, largest_fitting
from tests.train.conftest import tiny

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
CPU = torch.device("cpu")


def test_largest_fitting_micro_batch_search():
    for capacity in (1, 8, 37, 100, 1000, 5000):
        probed = []

        def fits(n):
            probed.append(n)
            return n <= capacity

        found = largest_fitting(fits, limit=8192)
        assert found <= capacity and (found == capacity or capacity - found < 8)
        assert len(probed) < 25
    assert largest_fitting(lambda n: True, limit=300) == 300
    with pytest.raises(Exception, match="not even a micro-batch of 1"):
        largest_fitting(lambda n: False, limit=64)


@pytest.mark.parametrize("fitting, target, expected", [(1080, 8192, 1024), (80, 8192, 80), (8192, 8192, 8192),
                                                        (9000, 8192, 8192), (1000, 8192, 912), (5, 8192, 5)])
def test_even_micro_batch_keeps_steps_and_avoids_overshoot(fitting, target, expected):
    size = even_micro_batch(fitting, target)
    assert size == expected
    assert size <= fitting
    assert -(-target // size) == -(-target // min(fitting, target))  # same number of accumulation steps


def test_auto_micro_batch_is_the_largest_fit_evened_to_the_target():
    """One rule for pretrain, plan and bench: 1080 fits, 8192 is the target -> 8 x 1024, not 8 x 1080."""
    probed = []

    def fits(n):
        probed.append(n)
        return n <= 1080

    assert auto_micro_batch(fits, 8192, CPU) == 1024
    assert max(probed) > 1080  # it searched past the limit before settling
    assert auto_micro_batch(fits, 100, CPU) == 100


def test_the_sizing_probe_peak_is_not_logged_as_training_peak(monkeypatch):
    """The micro-batch probe fills the GPU on purpose; cuda_max_allocated_gb must measure training."""
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append(("reset", device)))
    gpu = torch.device("cuda", 0)
    assert auto_micro_batch(lambda n: calls.append("probe") or n <= 64, 64, gpu) == 64
    assert calls[-1] == ("reset", gpu) and calls.count(("reset", gpu)) == 1 and "probe" in calls


def test_micro_batch_is_the_configured_one_or_needs_a_gpu_to_size():
    cfg = tiny()
    training = build_training(cfg, model_config_for(cfg, 500, 32, "seq_len"), SPECIAL, CPU)
    assert training.micro_batch(32) == 8
    auto = dataclasses.replace(cfg, batch=dataclasses.replace(cfg.batch, micro_batch=None))
    training = build_training(auto, model_config_for(auto, 500, 32, "seq_len"), SPECIAL, CPU)
    with pytest.raises(CrammerError, match=r"^batch.micro_batch must be set without a GPU \(auto-sizing needs CUDA\), "
                                           r"e.g. batch.micro_batch=16$"):
        training.micro_batch(32)
    with pytest.raises(CrammerError, match=r"^pretrain.batch.micro_batch must be set"):
        check_micro_batch(auto, cuda=False, prefix="pretrain.")
    check_micro_batch(auto, cuda=True)


def test_model_config_for_names_the_setting_and_the_fix():
    cfg = tiny(["model.max_position_embeddings=32"])
    with pytest.raises(CrammerError, match=r"^--seq-len=64 exceeds the max_position_embeddings=32 of the 'tiny' "
                                           r"model; pass model.max_position_embeddings=64 or use sequences of at "
                                           r"most 32 tokens$"):
        model_config_for(cfg, 500, 64, "--seq-len")
    assert model_config_for(cfg, 500, 32, "--seq-len").max_position_embeddings == 32
