"""What a person watches on a day-long run: metrics.jsonl, a status line, GPU stats, MFU.

`RUN_DIR/metrics.jsonl` gets one JSON object per logged step (flushed at once, so `tail -f` and
`cram plot` work mid-run). GPU utilisation, memory, temperature and power come from NVML
(`pynvml`, package nvidia-ml-py). TensorBoard and Weights & Biases are optional mirrors.
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import Any

import torch

from crammer.errors import CrammerError
from crammer.io import atomic_write_text, disk_full_as_error
from crammer.runfiles import METRICS_FILE, read_metrics
from crammer.train.config import LoggingConfig

# Dense tensor-core peaks (FLOP/s) of what autocast runs: bf16, or fp16 with fp32 accumulation where
# there is no bf16 (Volta, Turing); GeForce cards accumulate in fp32 at half their fp16-accumulate rate.
# Looked up by substring of the GPU name, longest key first ("L40S" before "L40" before "L4").
PEAK_FLOPS = {
    "GH200": 989e12,
    "H200": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "A6000": 155e12,
    "A4000": 76.7e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10": 125e12,
    "4090": 165.2e12,
    "3090": 71e12,
    "3060 Ti": 32.4e12,
    "2080 Ti": 53.8e12,
    "V100": 125e12,
    "T4": 65e12,
}


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """Peak FLOP/s of one accelerator for MFU, or None where unknown (CPU, unlisted GPU)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((PEAK_FLOPS[key] for key in sorted(PEAK_FLOPS, key=len, reverse=True) if key in name), None)


def _handle_by_uuid(pynvml, uuid: str):
    """A whole GPU is `GPU-<uuid>` to NVML, a MIG slice `MIG-<uuid>`."""
    try:
        return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
    except pynvml.NVMLError:
        return pynvml.nvmlDeviceGetHandleByUUID(f"MIG-{uuid}")


class GpuMonitor:
    """NVML readings for one GPU; an empty dict where NVML is unavailable (CPU runs).

    The GPU is found by UUID: NVML numbers all physical GPUs, CUDA only the visible ones
    (CUDA_VISIBLE_DEVICES=2 makes physical GPU 2 CUDA's device 0).
    """

    def __init__(self, device: torch.device):
        self.handle = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            uuid = str(torch.cuda.get_device_properties(device).uuid)  # NVML spells it "GPU-" or "MIG-" + this
            self.handle = _handle_by_uuid(pynvml, uuid)
            self.nvml = pynvml
        except Exception:  # no driver library, or a GPU that NVML cannot see: run on without stats
            self.handle = None

    def sample(self) -> dict[str, float]:
        if self.handle is None:
            return {}
        nvml, h = self.nvml, self.handle
        out: dict[str, float] = {}
        for key, read in (
            ("gpu_util", lambda: nvml.nvmlDeviceGetUtilizationRates(h).gpu),
            ("gpu_mem_used_gb", lambda: nvml.nvmlDeviceGetMemoryInfo(h).used / 1e9),
            ("gpu_mem_total_gb", lambda: nvml.nvmlDeviceGetMemoryInfo(h).total / 1e9),
            ("gpu_temp_c", lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)),
            ("gpu_power_w", lambda: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
        ):
            try:
                out[key] = float(read())
            except Exception:  # a reading this GPU does not support
                pass
        return out


WANDB_ID_FILE = "wandb_id.txt"


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of this run folder, made once and kept in it, so a resumed run continues the same W&B
    run (and the TensorBoard files continue in RUN_DIR/tensorboard) instead of starting a second one."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(8)
    atomic_write_text(path, run_id + "\n")
    return run_id


class MetricsLog:
    """Appends records to metrics.jsonl (rank 0 only) and mirrors them to TensorBoard / W&B."""

    def __init__(self, run_dir: Path, cfg: LoggingConfig, enabled: bool, config: dict[str, Any]):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self.tensorboard = self.wandb_run = None
        if not enabled:
            return
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise CrammerError("logging.tensorboard=true needs TensorBoard: pip install 'crammer[tensorboard]'") from None
            self.tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if cfg.wandb:
            try:
                import wandb
            except ImportError:
                raise CrammerError("logging.wandb=true needs Weights & Biases: pip install 'crammer[wandb]'") from None
            self.wandb_run = wandb.init(project=cfg.wandb_project, name=Path(run_dir).name, config=config,
                                        id=wandb_run_id(Path(run_dir)), resume="allow")

    def truncate_after(self, step: int) -> None:
        """On resume: drop records the interrupted run wrote after its last checkpoint."""
        if self.enabled and self.path.is_file():
            kept = [json.dumps(r) for r in read_metrics(self.path.parent) if r["step"] <= step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with disk_full_as_error(self.path), open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        numbers = {k: v for k, v in clean.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tensorboard:
            for key, value in numbers.items():
                self.tensorboard.add_scalar(key, value, record["step"])
        if self.wandb_run:
            self.wandb_run.log(numbers, step=record["step"])

    def close(self) -> None:
        if self.tensorboard:
            self.tensorboard.close()
        if self.wandb_run:
            self.wandb_run.finish()


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def status_line(record: dict[str, Any]) -> str:
    """One line: step, loss, lr, batch, tokens/s, MFU, elapsed/remaining."""
    loss = record.get("loss")
    parts = [
        f"step {record['step']}",
        f"loss {loss:.4f}" if loss is not None else "loss n/a",
        f"lr {record['lr']:.2e}",
        f"batch {record['batch_size']}",
        f"{record['tokens_per_s']:,.0f} tok/s" if record.get("tokens_per_s") else None,
        f"MFU {100 * record['mfu']:.1f}%" if record.get("mfu") else None,
        f"{_duration(record['elapsed_s'])} elapsed",
        f"{_duration(record['remaining_s'])} left" if record.get("remaining_s") is not None else None,
    ]
    return " | ".join(p for p in parts if p)
