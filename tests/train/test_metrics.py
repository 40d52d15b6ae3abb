import sys
import types

import pytest
import torch

from crammer.train.metrics import GpuMonitor, peak_flops

GPU = torch.device("cuda", 0)


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989),
    ("NVIDIA H100 NVL", 835),
    ("NVIDIA H100 PCIe", 756),
    ("NVIDIA GH200 480GB", 989),
    ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A10", 125),
    ("NVIDIA L40", 181),
    ("NVIDIA L40S", 362),
    ("NVIDIA L4", 121),
    ("NVIDIA RTX A4000", 76.7),
    ("NVIDIA GeForce RTX 4090", 165.2),
    ("NVIDIA GeForce RTX 3060 Ti", 32.4),
    ("NVIDIA GeForce RTX 2080 Ti", 53.8),
    ("Tesla T4", 65),
    ("Some Future GPU", None),
])
def test_peak_flops_takes_the_longest_matching_name(name, tflops, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(GPU, None) == (None if tflops is None else pytest.approx(tflops * 1e12))
    assert peak_flops(GPU, 100.0) == pytest.approx(100e12)  # logging.peak_tflops wins over the table


class FakeCudaUuid:
    """What torch.cuda.get_device_properties(...).uuid is: not a str, but prints as bare hex groups."""

    def __str__(self):
        return "5a3e4c1f-0b2d-4f6a-9c8e-7d1b2a3c4e5f"


class FakeNVMLError(Exception):
    pass


def fake_nvml(asked: list, known_prefix: str = "GPU-"):
    def by_uuid(uuid):
        asked.append(uuid)
        if not uuid.startswith(known_prefix):
            raise FakeNVMLError(uuid)
        return "handle"

    return types.SimpleNamespace(
        NVMLError=FakeNVMLError,
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByUUID=by_uuid,
        nvmlDeviceGetHandleByIndex=lambda index: pytest.fail("NVML indices are physical, not CUDA's"),
        nvmlDeviceGetMemoryInfo=lambda handle: types.SimpleNamespace(used=2e9, total=80e9),
    )


def test_gpu_monitor_finds_the_gpu_by_uuid_not_by_cuda_index(monkeypatch):
    """Under CUDA_VISIBLE_DEVICES=3 CUDA's device 0 is NVML's device 3: only the UUID names it in both."""
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(
        uuid=FakeCudaUuid()))
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(asked))
    monitor = GpuMonitor(GPU)
    assert asked == ["GPU-5a3e4c1f-0b2d-4f6a-9c8e-7d1b2a3c4e5f"]
    assert monitor.sample() == {"gpu_mem_used_gb": 2.0, "gpu_mem_total_gb": 80.0}  # unsupported readings left out


def test_gpu_monitor_finds_a_mig_slice_by_its_mig_uuid(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: types.SimpleNamespace(
        uuid=FakeCudaUuid()))
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(asked, known_prefix="MIG-"))
    assert GpuMonitor(GPU).sample() == {"gpu_mem_used_gb": 2.0, "gpu_mem_total_gb": 80.0}
    assert asked == ["GPU-5a3e4c1f-0b2d-4f6a-9c8e-7d1b2a3c4e5f", "MIG-5a3e4c1f-0b2d-4f6a-9c8e-7d1b2a3c4e5f"]


def test_gpu_monitor_without_nvml_or_gpu_reports_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    assert GpuMonitor(GPU).sample() == {}
    assert GpuMonitor(torch.device("cpu")).sample() == {}
