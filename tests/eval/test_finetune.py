"""One trial's pieces: model checks and identity, and that every recipe setting reaches the training loop."""

from __future__ import annotations

import io
import math
import re
import shutil
import sys

import pytest
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, BertConfig

import crammer.eval.finetune as finetune
from crammer.errors import CrammerError
from crammer.eval.batching import collate, encode
from crammer.eval.config import make_glue_config
from crammer.eval.finetune import (check_max_length, check_model_source, maybe_compile, model_identity,
                                   optimizer_and_schedule, pad_multiple, run_trial, to_device)
from crammer.eval.tasks import TASKS, load_task


@pytest.fixture(scope="module")
def rte_small(tiny_bert, glue_dir):
    """16 training and 8 dev examples of RTE, tokenized for the tiny BERT, and its padding id."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    data = load_task("rte", glue_dir)
    train = encode(tokenizer, data.train.subset(range(16)), max_length=64, spec=TASKS["rte"].spec)
    evals = {"": encode(tokenizer, data.evals[""].subset(range(8)), max_length=64, spec=TASKS["rte"].spec)}
    return train, evals, tokenizer.pad_token_id


def _trial(model, rte_small, overrides, **kwargs):
    train, evals, pad_id = rte_small
    cfg = make_glue_config("sane", ["device=cpu", "batch_size=4", *overrides])
    return run_trial(str(model), TASKS["rte"].spec, train, evals, pad_id, cfg, seed=0, device=torch.device("cpu"),
                     **kwargs)


def test_model_source_checks(tiny_bert, tmp_path, monkeypatch):
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(tiny_bert / "config.json", config_only)
    with pytest.raises(CrammerError, match=r"config-only: no weights in the folder \(expected one of model.safetensors"):
        check_model_source(str(config_only))

    # A missing path is not sent to the hub (a minute of retries, then a message about the network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for path in ("runs/demo-final", "runs/demo/final", "./final", "~/no-such-model-here", str(tmp_path / "x"),
                 "org/"):
        with pytest.raises(CrammerError, match=f"^no such model folder: {re.escape(path)}$"):
            check_model_source(path)
    for hub_name in ("bert-base-uncased", "google/electra-small-discriminator"):
        check_model_source(hub_name)  # left to the hub


def test_model_identity_follows_the_folder_and_its_files(tiny_bert, tmp_path, monkeypatch):
    model = tmp_path / "runs" / "x" / "final"
    shutil.copytree(tiny_bert, model)
    monkeypatch.chdir(tmp_path)
    same = {model_identity(m) for m in ("runs/x/final", "runs/x/final/", "./runs/x/final", str(model),
                                         "runs/x/../x/final")}
    assert len(same) == 1 and same.pop().startswith("local-folder@")
    assert model_identity("bert-base-uncased") == "bert-base-uncased"
    before = model_identity(str(model))
    shutil.move(tmp_path / "runs", tmp_path / "moved")  # a moved run folder keeps its trials
    assert model_identity("moved/x/final") == before
    model = tmp_path / "moved" / "x" / "final"

    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one weight changed: a retrained model
    weights.write_bytes(bytes(data))
    assert model_identity(str(model)) != before
    before = model_identity(str(model))
    config = model / "config.json"
    config.write_text(config.read_text().replace('"hidden_dropout_prob": 0.1', '"hidden_dropout_prob": 0.2'))
    assert model_identity(str(model)) != before


def test_check_max_length():
    config = BertConfig(max_position_embeddings=128)
    check_max_length(128, config, "m")
    with pytest.raises(CrammerError, match="max_length=129 exceeds the max_position_embeddings=128 of m; use max_length="
                                           "128 or less"):
        check_max_length(129, config, "m")
    check_max_length(4096, object(), "a model without a position table")


def test_compile_is_auto_on_cuda_only():
    model = torch.nn.Linear(2, 2)
    assert maybe_compile(model, None, torch.device("cpu")) is model
    assert maybe_compile(model, False, torch.device("cuda")) is model
    for setting, device in ((None, "cuda"), (True, "cpu")):
        compiled = maybe_compile(model, setting, torch.device(device))  # lazy: compiles at the first call
        assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule) and compiled._orig_mod is model


def _spy_on_optimizer() -> tuple[dict, callable]:
    """An optimizer factory that records the model and optimizer `run_trial` builds, and the lr of each step."""
    seen: dict = {"lrs": []}

    def spy(model, cfg, total_steps, device):
        optimizer, scheduler = optimizer_and_schedule(model, cfg, total_steps, device)
        step = scheduler.step

        def recording_step():
            seen["lrs"].append(optimizer.param_groups[0]["lr"])
            step()

        scheduler.step = recording_step
        seen.update(model=model, optimizer=optimizer, total_steps=total_steps)
        return optimizer, scheduler

    return seen, spy


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_trial_follows_schedule_and_warmup(tiny_bert, rte_small, schedule):
    seen, spy = _spy_on_optimizer()
    _trial(tiny_bert, rte_small, ["epochs=2", "lr=1e-3", f"schedule={schedule}", "warmup_fraction=0.25"],
           make_optimizer=spy)
    total, warmup = 8, 2  # 16 examples / 4 per batch x 2 epochs; a quarter of them warming up
    assert seen["total_steps"] == total and len(seen["lrs"]) == total
    for step, lr in enumerate(seen["lrs"]):
        progress = (step - warmup) / (total - warmup)
        if step < warmup:
            expected = step / warmup
        elif schedule == "cosine":
            expected = 0.5 * (1 + math.cos(math.pi * progress))
        else:
            expected = 1 - progress
        assert lr == pytest.approx(1e-3 * expected), step


def test_trial_uses_weight_decay_and_dropout(tiny_bert, rte_small):
    seen, spy = _spy_on_optimizer()
    _trial(tiny_bert, rte_small, ["epochs=1", "weight_decay=0.05", "dropout=0.3"], make_optimizer=spy)
    decay = {id(p): group["weight_decay"] for group in seen["optimizer"].param_groups for p in group["params"]}
    model = seen["model"]
    assert all(decay[id(p)] == (0.05 if p.ndim >= 2 else 0.0) for p in model.parameters())  # matrices only
    assert decay[id(model.classifier.weight)] == 0.05 and decay[id(model.classifier.bias)] == 0.0
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
    assert model.config.hidden_dropout_prob == model.config.attention_probs_dropout_prob == 0.3


@pytest.mark.parametrize("protocol, betas, eps", [("sane", (0.9, 0.98), 1e-6), ("full", (0.9, 0.999), 1e-8)])
def test_adamw_follows_the_protocol(tiny_bert, rte_small, protocol, betas, eps):
    """`sane` is cramming's `optim/adam.yaml` (betas 0.9/0.98, eps 1e-6); AdamW is fused on CPU too."""
    seen, spy = _spy_on_optimizer()
    train, evals, pad_id = rte_small
    cfg = make_glue_config(protocol, ["device=cpu", "epochs=1", "batch_size=8"])
    result = run_trial(str(tiny_bert), TASKS["rte"].spec, train, evals, pad_id, cfg, seed=0,
                       device=torch.device("cpu"), make_optimizer=spy)
    for group in seen["optimizer"].param_groups:
        assert group["betas"] == betas and group["eps"] == eps and group["fused"] is True
    assert result["steps"] == 2


def test_pad_multiple_is_auto_per_device():
    cfg = make_glue_config("sane")
    assert pad_multiple(cfg, torch.device("cpu")) == 1 and pad_multiple(cfg, torch.device("cuda")) == 8
    assert pad_multiple(make_glue_config("sane", ["pad_multiple=16"]), torch.device("cpu")) == 16


def test_loss_is_read_only_to_show_it(tiny_bert, rte_small, monkeypatch):
    """`loss.item()` waits for the GPU: never with the bar off (stderr not a terminal), else every 50 steps."""
    reads = {"n": 0}
    item = torch.Tensor.item

    def counting_item(self):
        if sys._getframe(1).f_code.co_filename == finetune.__file__:
            reads["n"] += 1
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    for disable, expected in ((None, 1), (False, 2 + 1)):  # +1: the last epoch's mean loss, read once at the end
        reads["n"] = 0
        monkeypatch.setattr(finetune, "tqdm", lambda *a, **kw: tqdm(*a, **{**kw, "file": io.StringIO(),
                                                                            "disable": disable}))
        _trial(tiny_bert, rte_small, ["epochs=2"])  # 4 steps per epoch: one reading per epoch when shown
        assert reads["n"] == expected, disable


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning is for CUDA copies")
def test_batches_are_pinned_for_cuda(monkeypatch):
    pinned = []
    pin = torch.Tensor.pin_memory
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self) or pin(self))
    batch = to_device({"input_ids": torch.ones(2, 8, dtype=torch.long)}, torch.device("cuda"))
    assert len(pinned) == 1 and batch["input_ids"].is_cuda


def test_no_pinning_on_cpu():
    tensor = torch.ones(2, 8)
    assert to_device({"x": tensor}, torch.device("cpu"))["x"] is tensor


def _classifier(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2, hidden_dropout_prob=0.0,
                                                              attention_probs_dropout_prob=0.0)


def test_sparse_lookup_gradient_gives_the_dense_update(tiny_bert, rte_small):
    """The same AdamW steps as with PyTorch's dense embedding backward; the dense buffer is kept across steps,
    a second backward before the step adds into it, and only this batch's rows are non-zero."""
    train, _, pad_id = rte_small
    cfg = make_glue_config("sane", ["batch_size=4"])
    dense, sparse = _classifier(tiny_bert), _classifier(tiny_bert)
    assert finetune.sparse_lookup_gradient(sparse) and sparse.get_input_embeddings().sparse
    assert not finetune.sparse_lookup_gradient(sparse)  # once
    optimizers = [optimizer_and_schedule(m, cfg, 8, torch.device("cpu"))[0] for m in (dense, sparse)]
    buffers = []
    for step in range(3):
        batches = [collate(train, list(range(4 * step, 4 * step + 4)), pad_id, 1),
                   collate(train, list(range(4 * step + 4, 4 * step + 8)), pad_id, 1)]
        for model, optimizer in zip((dense, sparse), optimizers):
            for batch in batches[: 1 + (step == 2)]:  # step 3 accumulates two batches
                model(**batch).loss.backward()
            optimizer.step()
            if model is sparse:
                grad = sparse.get_input_embeddings().weight.grad
                assert grad.layout == torch.strided
                buffers.append(grad)
                touched = torch.cat([b["input_ids"].flatten() for b in batches[: 1 + (step == 2)]]).unique()
                assert set(grad.abs().sum(1).nonzero().flatten().tolist()) <= set(touched.tolist())
            optimizer.zero_grad(set_to_none=True)
    assert buffers[0] is buffers[1] is buffers[2]
    for (name, a), b in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_sparse_lookup_gradient_leaves_tied_embeddings_alone(tiny_bert):
    from transformers import AutoModelForMaskedLM

    mlm = AutoModelForMaskedLM.from_pretrained(tiny_bert)
    assert mlm.get_output_embeddings().weight is mlm.get_input_embeddings().weight
    assert not finetune.sparse_lookup_gradient(mlm) and not mlm.get_input_embeddings().sparse


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_crammed"])
def test_trials_on_cpu_use_the_sparse_lookup_gradient(name, rte_small, request):
    seen = {}
    _trial(request.getfixturevalue(name), rte_small, ["epochs=1"], finished=lambda model, result: seen.update(
        sparse=model.get_input_embeddings().sparse))
    assert seen["sparse"]
