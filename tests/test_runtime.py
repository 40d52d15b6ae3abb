"""The machine-facing decisions every stage shares: device, precision, autocast, compile, decay groups."""

import platform
from pathlib import Path

import pytest
import torch
from torch import nn

from crammer.errors import CrammerError
from crammer.runtime import (autocast, cpu_has_native_bf16, parameter_groups, resolve_device, resolve_precision,
                             should_compile, synchronize)

CPU = torch.device("cpu")


def test_compile_defaults_to_cuda_only():
    assert should_compile(None, torch.device("cuda")) and not should_compile(None, torch.device("cpu"))
    assert should_compile(True, torch.device("cpu")) and not should_compile(False, torch.device("cuda"))


def test_precision_auto_is_fp32_on_cpu_and_an_explicit_choice_is_kept():
    assert resolve_precision("auto", CPU) == "fp32" and resolve_precision("auto", CPU, fp16=False) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16" and resolve_precision("fp16", CPU) == "fp16"
    assert resolve_precision("fp32", CPU, cpu_bf16=True) == "fp32"


def test_precision_auto_on_cpu_is_bf16_where_the_caller_says_it_is_native():
    assert resolve_precision("auto", CPU, fp16=False, cpu_bf16=True) == "bf16"
    assert resolve_precision("auto", CPU, fp16=False, cpu_bf16=False) == "fp32"


@pytest.mark.skipif(platform.machine() != "x86_64" or not Path("/proc/cpuinfo").exists(),
                    reason="reads the x86 CPU flags from /proc/cpuinfo")
def test_native_bf16_is_what_the_cpu_flags_say():
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    assert cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16"} & set(flags))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_precision_auto_on_a_gpu_is_bf16_or_fp16_where_a_scaler_exists():
    gpu = torch.device("cuda")
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert resolve_precision("auto", gpu) == expected
    assert resolve_precision("auto", gpu, fp16=False) == ("bf16" if expected == "bf16" else "fp32")


def test_autocast_follows_the_resolved_precision():
    layer = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast("fp32", CPU):
        assert layer(x).dtype == torch.float32
    with autocast("bf16", CPU):
        assert layer(x).dtype == torch.bfloat16


def test_device_settings_are_checked_with_the_setting_named():
    assert resolve_device("cpu", "x") == CPU
    assert resolve_device("auto", "x").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(CrammerError, match=r"glue.device='tpu' is not a torch device"):
        resolve_device("tpu", "glue.device")
    if not torch.cuda.is_available():
        with pytest.raises(CrammerError, match="--device=cuda but CUDA is not available"):
            resolve_device("cuda", "--device")
    synchronize(CPU)  # nothing to wait for


def test_weight_decay_groups_split_matrices_from_vectors_and_count_tied_tensors_once():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 10))
    model[2].weight = model[0].weight  # tied, like a decoder and its embedding
    decay, no_decay = parameter_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([10, 4])]
    assert sorted(p.numel() for p in no_decay["params"]) == [4, 4, 10]
