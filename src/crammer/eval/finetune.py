"""Fine-tune one model on one task for one seed, then score it on the dev split(s).

Any Hugging Face encoder with a sequence-classification head works: the model is loaded through
`AutoModelForSequenceClassification` (`import crammer.model` registers crammed BERT with it), with
a new head sized for the task. Batches are bucketed by length and padded only to a multiple of
`pad_multiple`, so short GLUE sentences do not pay for 128-token padding.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

import crammer.model  # noqa: F401  (registers model_type "crammed_bert" with the Auto classes)

from crammer.errors import CrammerError
from crammer.eval.config import GlueConfig
from crammer.model.presets import check_positions
from crammer.runtime import autocast, parameter_groups, resolve_precision, should_compile
from crammer.eval.metrics import compute_metrics
from crammer.eval.tasks import GlueTask, Split

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


def load_classifier(model: str, task: GlueTask, dropout: float) -> torch.nn.Module:
    """The pretrained encoder with a fresh `task.num_labels`-way head (1 output = MSE regression)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    config = load_model_config(model)
    config.num_labels = task.num_labels
    config.problem_type = "regression" if task.is_regression else "single_label_classification"
    if not task.is_regression:
        config.id2label = dict(enumerate(task.labels))
        config.label2id = {name: i for i, name in enumerate(task.labels)}
    for name in DROPOUT_FIELDS:
        if hasattr(config, name):
            setattr(config, name, dropout)
    # Loaded once per trial: keep the log to our own lines ("newly initialized classifier" is the point here).
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        # fp32 master weights whatever the checkpoint's dtype (bf16 comes from autocast); a head saved with
        # another label count (a fine-tuned checkpoint) is replaced by a fresh one
        return AutoModelForSequenceClassification.from_pretrained(model, config=config, dtype=torch.float32,
                                                                  ignore_mismatched_sizes=True)
    except Exception as e:
        raise CrammerError(f"--model {model}: cannot load it for sequence classification "
                           f"({type(e).__name__}: {_first_line(e)})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


@dataclass
class Encoded:
    """A tokenized split: one list of token ids (and segment ids) per example."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[float]

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def encode(tokenizer, split: Split, max_length: int) -> Encoded:
    enc = tokenizer(split.text_a, split.text_b, truncation=True, max_length=max_length)
    types = enc.get("token_type_ids") if "token_type_ids" in tokenizer.model_input_names else None
    return Encoded(list(enc["input_ids"]), list(types) if types is not None else None, list(split.labels))


def bucketed_batches(lengths: list[int], batch_size: int, window: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffled batches of similar-length examples.

    A random order is cut into windows of `window` batches; each window is sorted by length and split
    into batches, and the batches are shuffled, so every epoch sees new batch compositions but a batch
    rarely mixes a 10-token and a 120-token example.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    span = batch_size * window
    batches = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lengths.__getitem__)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def collate(data: Encoded, indices: list[int], pad_id: int, pad_multiple: int, regression: bool) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example, rounded up to a multiple of `pad_multiple`."""
    longest = max(len(data.input_ids[i]) for i in indices)
    width = math.ceil(longest / pad_multiple) * pad_multiple
    input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
    token_type_ids = torch.zeros((len(indices), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(data.input_ids[i])
        input_ids[row, :n] = torch.tensor(data.input_ids[i])
        attention_mask[row, :n] = 1
        if data.token_type_ids is not None:
            token_type_ids[row, :n] = torch.tensor(data.token_type_ids[i])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if data.token_type_ids is not None:
        batch["token_type_ids"] = token_type_ids
    labels = [data.labels[i] for i in indices]
    batch["labels"] = torch.tensor(labels, dtype=torch.float32 if regression else torch.long)
    return batch


def optimizer_and_schedule(model: torch.nn.Module, cfg: GlueConfig, total_steps: int, device: torch.device):
    """AdamW with the same decay groups as pretraining (matrices decay; norms, biases and scales do not),
    and `cfg.schedule` after a linear warm-up over `cfg.warmup_fraction` of the steps."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, fused=device.type == "cuda")
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=round(cfg.warmup_fraction * total_steps),
                              num_training_steps=total_steps)
    return optimizer, scheduler


def maybe_compile(model: torch.nn.Module, setting: bool | None, device: torch.device):
    """torch.compile as pretraining decides it (None = on CUDA only). `dynamic=True` because every
    bucket has its own length: one graph for all of them instead of a recompile per new length."""
    return torch.compile(model, dynamic=True) if should_compile(setting, device) else model


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Copies that overlap with the GPU's work: `non_blocking` only is asynchronous from pinned memory."""
    pin = device.type == "cuda"
    return {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in batch.items()}


def run_trial(
    model_path: str,
    task: GlueTask,
    train: Encoded,
    evals: dict[str, Encoded],
    pad_id: int,
    cfg: GlueConfig,
    seed: int,
    device: torch.device,
    desc: str = "",
) -> dict:
    """Fine-tune for `cfg.epochs` epochs with seed `seed`; return the metrics after the last epoch."""
    from transformers import set_seed

    set_seed(seed)  # the new head's init, dropout masks and the batch order all follow the seed
    model = load_classifier(model_path, task, cfg.dropout).to(device)
    forward = maybe_compile(model, cfg.compile, device)
    precision = resolve_precision(cfg.precision, device, fp16=False)  # no gradient scaler here
    generator = torch.Generator().manual_seed(seed)

    steps_per_epoch = math.ceil(len(train.labels) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer, scheduler = optimizer_and_schedule(model, cfg, total_steps, device)

    start = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        epoch_loss = torch.zeros((), device=device)
        batches = bucketed_batches(train.lengths, cfg.batch_size, cfg.bucket_batches, generator)
        bar = tqdm(batches, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None)
        for step, indices in enumerate(bar):
            batch = to_device(collate(train, indices, pad_id, cfg.pad_multiple, task.is_regression), device)
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
    for split_name, data in evals.items():
        predictions = predict(forward, data, pad_id, cfg, task.is_regression, device, precision)
        values = compute_metrics(task.metric, predictions, data.labels)
        metrics.update({f"{k}_{split_name}" if split_name else k: v for k, v in values.items()})
    return {
        "metrics": metrics,
        "seed": seed,
        "epochs": cfg.epochs,
        "steps": total_steps,
        "last_epoch_train_loss": epoch_loss.item() / steps_per_epoch,
        "train_examples": len(train.labels),
        "eval_examples": {name or "dev": len(d.labels) for name, d in evals.items()},
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(time.perf_counter() - start, 2),
        "device": str(device),
        "compiled": forward is not model,
        "precision": TORCH_DTYPE_NAMES[precision],
    }


@torch.inference_mode()
def predict(forward, data: Encoded, pad_id: int, cfg: GlueConfig, regression: bool, device: torch.device,
            precision: str) -> list[float]:
    """Predictions in the split's order (computed in length-sorted batches)."""
    forward.eval()
    order = sorted(range(len(data.labels)), key=data.lengths.__getitem__)
    out: list[float] = [0.0] * len(order)
    for start in range(0, len(order), cfg.eval_batch_size):
        indices = order[start:start + cfg.eval_batch_size]
        batch = collate(data, indices, pad_id, cfg.pad_multiple, regression)
        batch.pop("labels")
        with autocast(precision, device):
            logits = forward(**to_device(batch, device)).logits.float()
        values = logits.squeeze(-1) if regression else logits.argmax(-1)
        for i, v in zip(indices, values.tolist()):
            out[i] = v
    forward.train()
    return out
