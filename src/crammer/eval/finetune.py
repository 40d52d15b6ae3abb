"""Fine-tune one model on one task for one seed, then score it on the evaluation split(s).

Any Hugging Face encoder works: the model is loaded through `AutoModelForSequenceClassification` (or
`AutoModelForTokenClassification` for tagging; `import crammer.model` registers crammed BERT with both), with a
new head sized for the task and `config.problem_type` saying the loss (cross-entropy, MSE, or per-label BCE
for multi-label), as Hugging Face's own heads read it. Batches come from `batching` (bucketed by length,
dynamically padded).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

import crammer.model  # noqa: F401  (registers model_type "crammed_bert" with the Auto classes)

from crammer.errors import CrammerError
from crammer.eval.batching import IGNORE, Encoded, bucketed_batches, collate
from crammer.eval.config import FinetuneConfig
from crammer.eval.metrics import compute_metrics
from crammer.eval.spec import TaskSpec
from crammer.model.presets import check_positions
from crammer.runtime import autocast, cpu_has_native_bf16, parameter_groups, resolve_precision, should_compile

# How trial files name the autocast dtype.
TORCH_DTYPE_NAMES = {"bf16": "bfloat16", "fp32": "float32"}
# Steps between two readings of the training loss for the progress bar.
LOSS_EVERY = 50
# Config fields that hold dropout probabilities across common encoders (BERT, crammed BERT, DistilBERT, ...).
DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout",
                  "attention_dropout", "seq_classif_dropout")
# Weight files `from_pretrained` reads from a local folder (one of them must be there).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# Every file that holds weights, shards included: what the trial key fingerprints.
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")


def check_model_source(model: str) -> None:
    """Fail early, with one line, on a local folder that is not a Hugging Face model, or on a path
    that does not exist (rather than asking the hub, with a minute of retries, for a folder name)."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise CrammerError(f"--model {model}: not a model folder (no config.json)")
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            raise CrammerError(f"--model {model}: no weights in the folder "
                               f"(expected one of {', '.join(WEIGHT_FILES)})")
    elif _looks_like_path(model):
        raise CrammerError(f"no such model folder: {model}")


def _looks_like_path(model: str) -> bool:
    """A hub name is `name` or `org/name`; anything else with a separator, or whose first part is a
    local folder (`runs/demo-final` beside `runs/`), is meant as a path."""
    if model.startswith((".", "~")) or os.path.isabs(model):
        return True
    parts = model.replace(os.sep, "/").split("/")
    return len(parts) > 2 or (len(parts) == 2 and (not all(parts) or Path(parts[0]).expanduser().is_dir()))


def model_identity(model: str) -> str:
    """What trials are keyed on: for a local folder, the content of its config.json and weight files (so
    any spelling of the folder, a moved or copied folder, resumes, but a model retrained in place does not);
    a hub name is its own identity."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return model
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted({f for pattern in _WEIGHT_PATTERNS for f in path.glob(pattern) if f.is_file()}):
        digest.update(f"\0{f.name}\0".encode())
        with open(f, "rb") as weights:  # ~1 s for BERT-base's 440 MB: cheap next to one fine-tuning trial
            for block in iter(lambda: weights.read(1 << 22), b""):
                digest.update(block)
    return f"local-folder@{digest.hexdigest()[:16]}"


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    check_model_source(model)
    try:
        return AutoTokenizer.from_pretrained(model)
    except Exception as e:  # OSError, ValueError, hub errors: all mean "no usable tokenizer here"
        raise CrammerError(f"--model {model}: cannot load its tokenizer ({_first_line(e)})") from None


def load_model_config(model: str):
    """The model's Hugging Face config (read before any data work, to check settings against it)."""
    from transformers import AutoConfig

    check_model_source(model)
    try:
        return AutoConfig.from_pretrained(model)
    except Exception as e:
        raise CrammerError(f"--model {model}: not a loadable model config ({_first_line(e)})") from None


def check_max_length(max_length: int, model_config, source: str, setting: str = "glue config: max_length") -> None:
    """Longer inputs than the position table would crash the first long batch, mid-training."""
    check_positions(max_length, model_config, setting, source, "use max_length={limit} or less")


def load_model(model: str, spec: TaskSpec, dropout: float) -> torch.nn.Module:
    """The pretrained encoder with a fresh head of `spec.num_labels` outputs, the label names in its config
    (so a saved fine-tuned model keeps them)."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    config = load_model_config(model)
    config.num_labels = spec.num_labels
    config.problem_type = spec.problem_type
    if spec.labels:
        config.id2label = dict(enumerate(spec.labels))
        config.label2id = {name: i for i, name in enumerate(spec.labels)}
    for name in DROPOUT_FIELDS:
        if hasattr(config, name):
            setattr(config, name, dropout)
    auto = AutoModelForTokenClassification if spec.is_token_level else AutoModelForSequenceClassification
    # Loaded once per trial: keep the log to our own lines ("newly initialized classifier" is the point here).
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        # fp32 master weights whatever the checkpoint's dtype (bf16 comes from autocast); a head saved with
        # another label count (a fine-tuned checkpoint) is replaced by a fresh one
        return auto.from_pretrained(model, config=config, dtype=torch.float32, ignore_mismatched_sizes=True)
    except Exception as e:
        what = "token" if spec.is_token_level else "sequence"
        raise CrammerError(f"--model {model}: cannot load it for {what} classification "
                           f"({type(e).__name__}: {_first_line(e)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]



def optimizer_and_schedule(model: torch.nn.Module, cfg: FinetuneConfig, total_steps: int, device: torch.device):
    """AdamW (the protocol's betas and eps) with the same decay groups as pretraining (matrices decay; norms,
    biases and scales do not), and `cfg.schedule` after a linear warm-up over `cfg.warmup_fraction` of the
    steps. Fused on CPU too: the per-tensor loop was half of a CPU fine-tuning step for MiniLM."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.adam_betas,
                                  eps=cfg.adam_eps, fused=True)
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=round(cfg.warmup_fraction * total_steps),
                              num_training_steps=total_steps)
    return optimizer, scheduler


OptimizerFactory = Callable[[torch.nn.Module, FinetuneConfig, int, torch.device], tuple]


def maybe_compile(model: torch.nn.Module, setting: bool | None, device: torch.device):
    """torch.compile as pretraining decides it (None = on CUDA only). `dynamic=True` because every
    bucket has its own length: one graph for all of them instead of a recompile per new length."""
    return torch.compile(model, dynamic=True) if should_compile(setting, device) else model


def sparse_lookup_gradient(model: torch.nn.Module) -> bool:
    """Let the word-embedding lookup produce a sparse gradient (the rows of the batch's tokens) and densify it
    into one buffer kept for the whole trial, before the optimizer sees it: the same update, as fused AdamW gets
    the same dense gradient. PyTorch's dense embedding backward allocates and zero-fills a fresh vocabulary x
    hidden matrix every step (MiniLM: 30,522 x 384, 47 MB, each page faulted in anew), 10-15% of a CPU step.
    Not for a lookup whose weight is tied to an output layer (its gradient is dense anyway). True if done."""
    embedding, output = _module(model, "get_input_embeddings"), _module(model, "get_output_embeddings")
    if not isinstance(embedding, torch.nn.Embedding) or embedding.sparse or not embedding.weight.requires_grad:
        return False
    if output is not None and getattr(output, "weight", None) is embedding.weight:
        return False
    embedding.sparse = True
    buffer = torch.zeros_like(embedding.weight)

    def densify(weight: torch.Tensor) -> None:
        if weight.grad is not None and weight.grad.is_sparse:  # a second backward adds into the dense one
            grad = weight.grad.coalesce()
            buffer.zero_()
            buffer.index_add_(0, grad.indices()[0], grad.values())
            weight.grad = buffer

    embedding.weight.register_post_accumulate_grad_hook(densify)
    return True


def _module(model: torch.nn.Module, getter: str) -> torch.nn.Module | None:
    """`model.get_input_embeddings()` and the like, or None where the model has no such module."""
    try:
        return getattr(model, getter)() if hasattr(model, getter) else None
    except NotImplementedError:  # Hugging Face's base class, for a model that does not say
        return None


def pad_multiple(cfg: FinetuneConfig, device: torch.device) -> int:
    """`pad_multiple=None`: 8 on CUDA, where tensor cores want it; 1 on CPU, where padding is only waste."""
    return cfg.pad_multiple or (8 if device.type == "cuda" else 1)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Copies that overlap with the GPU's work: `non_blocking` only is asynchronous from pinned memory."""
    pin = device.type == "cuda"
    return {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in batch.items()}


def run_trial(
    model_path: str,
    spec: TaskSpec,
    train: Encoded,
    evals: dict[str, Encoded],
    pad_id: int,
    cfg: FinetuneConfig,
    seed: int,
    device: torch.device,
    desc: str = "",
    make_optimizer: OptimizerFactory = optimizer_and_schedule,
    finished: Callable[[torch.nn.Module, dict], None] | None = None,
) -> dict:
    """Fine-tune for `cfg.epochs` epochs with seed `seed`; return the metrics after the last epoch.
    `finished(model, result)` sees the fine-tuned model before it is dropped (to save it)."""
    from transformers import set_seed

    set_seed(seed)  # the new head's init, dropout masks and the batch order all follow the seed
    model = load_model(model_path, spec, cfg.dropout).to(device)
    forward = maybe_compile(model, cfg.compile, device)
    if device.type == "cpu" and forward is model:  # on a GPU the dense gradient costs a memset; compile: dense
        sparse_lookup_gradient(model)
    # no gradient scaler here; bf16 on a CPU that multiplies it natively (a MiniLM step 1.5x faster on a Zen CPU)
    precision = resolve_precision(cfg.precision, device, fp16=False, cpu_bf16=cpu_has_native_bf16())
    multiple = pad_multiple(cfg, device)
    generator = torch.Generator().manual_seed(seed)

    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer, scheduler = make_optimizer(model, cfg, total_steps, device)

    start = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        epoch_loss = torch.zeros((), device=device)
        batches = bucketed_batches(train.lengths, cfg.batch_size, cfg.bucket_batches, generator)
        bar = tqdm(batches, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None)
        for step, indices in enumerate(bar):
            batch = to_device(collate(train, indices, pad_id, multiple), device)
            with autocast(precision, device):
                loss = forward(**batch).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            epoch_loss += loss.detach()
            if not bar.disable and step % LOSS_EVERY == 0:  # .item() waits for the GPU: rarely, and only to show it
                bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.perf_counter() - start

    start = time.perf_counter()
    metrics = {}
    classes_predicted = {}
    for split_name, data in evals.items():
        predictions = predict(forward, data, spec, pad_id, cfg.eval_batch_size, multiple, device, precision)
        values = compute_metrics(spec.metric, predictions, data.targets, spec.labels)
        metrics.update({f"{k}_{split_name}" if split_name else k: v for k, v in values.items()})
        if spec.labels and spec.kind != "multi-label":  # a collapsed classifier predicts one class for all
            classes_predicted[split_name or "dev"] = len(set(
                (t for row in predictions for t in row) if spec.is_token_level else predictions))
    result = {
        "metrics": metrics,
        "seed": seed,
        "epochs": cfg.epochs,
        "steps": total_steps,
        "last_epoch_train_loss": epoch_loss.item() / steps_per_epoch,
        "train_examples": len(train),
        "eval_examples": {name or "dev": len(d) for name, d in evals.items()},
        "classes_predicted": classes_predicted,
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(time.perf_counter() - start, 2),
        "device": str(device),
        "compiled": forward is not model,
        "precision": TORCH_DTYPE_NAMES[precision],
    }
    if finished is not None:
        finished(model, result)
    return result


@torch.inference_mode()
def predict(forward, data: Encoded, spec: TaskSpec, pad_id: int, batch_size: int, multiple: int,
            device: torch.device, precision: str) -> list:
    """Predictions in the split's order (computed in length-sorted batches), in the form the metric takes:
    a float (regression), a class index, a 0/1 row (multi-label: logit > 0), or one tag per word (words cut
    off by `max_length` get the tag `O` if there is one, else the first: counted as misses, not dropped)."""
    forward.eval()
    order = np.argsort(data.lengths, kind="stable")
    out: list = [None] * len(order)
    fallback = spec.labels.index("O") if "O" in spec.labels else 0
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size].tolist()
        batch = collate(data, indices, pad_id, multiple)
        labels = batch.pop("labels")
        with autocast(precision, device):
            logits = forward(**to_device(batch, device)).logits.float()
        if spec.kind == "regression":
            values = logits.squeeze(-1).tolist()
        elif spec.kind == "multi-label":
            values = (logits > 0).long().tolist()
        elif spec.is_token_level:
            tags, first = logits.argmax(-1).cpu(), labels != IGNORE
            values = []
            for row, i in enumerate(indices):
                words = tags[row][first[row]].tolist()
                values.append(words + [fallback] * (len(data.targets[i]) - len(words)))
        else:
            values = logits.argmax(-1).tolist()
        for i, v in zip(indices, values):
            out[i] = v
    forward.train()
    return out
