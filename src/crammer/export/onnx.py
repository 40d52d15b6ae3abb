"""ONNX export with torch's own exporter (`torch.onnx.export(..., dynamo=True)`), verified in ONNX Runtime on CPU.

Every crammer architecture exports: `encoder.onnx` (input_ids, attention_mask -> last_hidden_state) and, for an
MLM, `mlm.onnx` (-> logits), batch and sequence axes dynamic. Two files rather than one graph with both outputs:
ONNX Runtime runs the whole graph whatever outputs are asked for, so an embedding user would pay for the decoder.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from crammer.errors import CrammerError
from crammer.export.verify import check_lengths, max_difference, sample_batches
from crammer.io import atomic_dir
from crammer.model import CrammedBertForMaskedLM, CrammedBertModel
from crammer.model.native import save_native_tokenizer

TOLERANCE = 1e-4
INPUTS = ("input_ids", "attention_mask")


class EncoderGraph(nn.Module):
    """input_ids, attention_mask -> last_hidden_state (after the final LayerNorm)."""

    def __init__(self, encoder: CrammedBertModel):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask, return_dict=True).last_hidden_state


class MaskedLMGraph(nn.Module):
    """input_ids, attention_mask -> logits (B, S, V) at every position."""

    def __init__(self, mlm: CrammedBertForMaskedLM):
        super().__init__()
        self.mlm = mlm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.mlm(input_ids, attention_mask, return_dict=True).logits


def graphs(model: CrammedBertModel | CrammedBertForMaskedLM) -> dict[str, tuple[nn.Module, str]]:
    """{file name: (module, output name)} for a model."""
    if isinstance(model, CrammedBertForMaskedLM):
        return {"encoder.onnx": (EncoderGraph(model.bert), "last_hidden_state"),
                "mlm.onnx": (MaskedLMGraph(model), "logits")}
    return {"encoder.onnx": (EncoderGraph(model), "last_hidden_state")}


def _replaceable(path: Path) -> None:
    if not path.is_dir() or (any(path.iterdir()) and not (path / "encoder.onnx").is_file()):
        raise CrammerError(f"export: {path} exists and is not an ONNX export folder; choose another output")


@contextmanager
def _quiet(name: str):
    """Only errors from the logger `name` while exporting."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _runtime():
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError as e:
        raise CrammerError(f"export --to onnx needs onnx, onnxscript and onnxruntime ({e.name} is missing): "
                           "pip install 'crammer[onnx]'") from None
    return onnxruntime


@torch.no_grad()
def export_onnx(model: CrammedBertModel | CrammedBertForMaskedLM, tokenizer, out: str | Path) -> dict[str, float]:
    """Write the ONNX files and the tokenizer to `out` (atomically); return {file: the largest difference from
    PyTorch over the sample batches}. A difference over TOLERANCE is a CrammerError and writes nothing."""
    ort = _runtime()
    model = model.float().eval()
    batches = sample_batches(tokenizer, check_lengths(model.config.max_position_embeddings))
    _, example_ids, example_mask = batches[1]  # a padded batch: the mask path is traced, not specialised away
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    worst: dict[str, float] = {}
    with atomic_dir(out, check_existing=_replaceable) as tmp:
        for file, (module, output) in graphs(model).items():
            with warnings.catch_warnings(), _quiet("torch.onnx"):
                warnings.simplefilter("ignore")  # the exporter's notes on its own internals (no torchvision, ...)
                torch.onnx.export(module, (example_ids, example_mask), str(tmp / file), input_names=list(INPUTS),
                                  output_names=[output], dynamic_axes={**axes, output: {0: "batch", 1: "sequence"}},
                                  dynamo=True, verbose=False)
            session = ort.InferenceSession(str(tmp / file), providers=["CPUExecutionProvider"])
            worst[file] = 0.0
            for name, ids, mask in batches:
                (got,) = session.run([output], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
                diff = max_difference(module(ids, mask), torch.from_numpy(got), mask)
                if not diff <= TOLERANCE:
                    raise CrammerError(f"export --to onnx: {file} differs from PyTorch by {diff:.2e} > {TOLERANCE:g} "
                                       f"({name}); nothing written")
                worst[file] = max(worst[file], diff)
        save_native_tokenizer(tokenizer, tmp, model.config.max_position_embeddings, INPUTS)
    return worst
