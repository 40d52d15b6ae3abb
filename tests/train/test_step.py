import copy
import dataclasses

import pytest
import torch

from crammer.runtime import parameter_groups
from crammer.train.config import MaskingConfig
from crammer.train.masking import MLMCollator
from crammer.train.setup import build_training, model_config_for
from crammer.train.step import TrainStep
from tests.train.conftest import tiny

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
CPU = torch.device("cpu")


def batches(n, rows=4, seq_len=32, seed=0):
    collator = MLMCollator(MaskingConfig(), 500, SPECIAL)
    g = torch.Generator().manual_seed(seed)
    return [collator(torch.randint(5, 500, (rows, seq_len), generator=g), g) for _ in range(n)]


def setup(**optim):
    cfg = tiny()
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, **optim))
    training = build_training(cfg, model_config_for(cfg, 500, 32, "seq_len"), SPECIAL, CPU)
    return training.model, training.optimizer, cfg.optim


def test_weight_decay_skips_norms_and_biases():
    model, optimizer, _ = setup()
    decay, no_decay = parameter_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert optimizer.defaults["fused"] and optimizer.defaults["betas"] == (0.9, 0.98)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_repeated_steps_fit_a_fixed_batch():
    model, optimizer, cfg = setup()
    step = TrainStep(model, optimizer, cfg, "fp32", CPU)
    data = batches(1)
    losses = [step(data, 2e-3).loss.item() for _ in range(15)]
    assert losses[-1] < losses[0] - 1.0


def test_accumulating_two_half_batches_equals_one_full_batch():
    (a, opt_a, cfg), (b, opt_b, _) = setup(), setup()
    collator = MLMCollator(MaskingConfig(), 500, SPECIAL)
    tokens = torch.randint(5, 500, (8, 32), generator=torch.Generator().manual_seed(0))

    def share(first, rows):  # rows [first, first + rows) of the 8-row batch, masked as the whole batch would be
        return collator(tokens[first : first + rows], torch.Generator().manual_seed(1), first, 8)

    full, halves = share(0, 8), [share(0, 4), share(4, 4)]
    out_a = TrainStep(a, opt_a, cfg, "fp32", CPU)([full], 1e-3)
    out_b = TrainStep(b, opt_b, cfg, "fp32", CPU)(halves, 1e-3)
    assert out_a.loss.item() == pytest.approx(out_b.loss.item(), rel=1e-5)
    assert out_a.grad_norm.item() == pytest.approx(out_b.grad_norm.item(), rel=1e-4)
    # the updates agree too: the next step sees (almost) the same model
    next_a = TrainStep(a, opt_a, cfg, "fp32", CPU)([full], 1e-3).loss.item()
    next_b = TrainStep(b, opt_b, cfg, "fp32", CPU)(halves, 1e-3).loss.item()
    assert next_a == pytest.approx(next_b, rel=1e-4)


def _states(optimizer) -> list[dict]:
    """The per-parameter states of an optimizer, or of each optimizer of a Muon + AdamW pair."""
    state = optimizer.state_dict()
    return [state["state"]] if "state" in state else [part["state"] for part in state.values()]


@pytest.mark.parametrize("optim", [{"fused": True}, {"fused": False}, {"name": "muon"}])
def test_non_finite_step_is_skipped(optim):
    model, optimizer, cfg = setup(**optim)
    step = TrainStep(model, optimizer, cfg, "fp32", CPU)
    step(batches(1), 1e-3)  # a normal step first, so the optimizer has state to protect
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[7, 0] = float("nan")
    before = copy.deepcopy(model.state_dict())
    states_before = copy.deepcopy(_states(optimizer))
    out = step(batches(1, seed=1), 1e-3)
    assert out.nonfinite.item() and not torch.isfinite(out.loss)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], equal_nan=True)
    assert len(states_before) == (2 if optim.get("name") == "muon" else 1)
    for state, state_before in zip(_states(optimizer), states_before):
        assert state.keys() == state_before.keys() and state
        for key, value in state.items():
            for name, tensor in value.items():  # exp_avg, exp_avg_sq, step (AdamW); momentum_buffer (Muon)
                torch.testing.assert_close(tensor, state_before[key][name], equal_nan=True)


def test_muon_updates_the_block_matrices_and_adamw_the_rest_each_at_its_own_lr():
    model, optimizer, cfg = setup(name="muon", muon_lr=0.02, lr=1e-3)
    muon, adamw = optimizer.optimizers["muon"], optimizer.optimizers["adamw"]
    matrices = {id(p) for g in muon.param_groups for p in g["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in matrices}
    assert names and all(".layers." in n and model.get_parameter(n).ndim == 2 for n in names)
    assert "bert.embeddings.word_embeddings.weight" not in names  # embeddings (and the tied decoder): AdamW
    step = TrainStep(model, optimizer, cfg, "fp32", CPU)
    first = step(batches(1), 1e-3).loss.item()
    assert muon.param_groups[0]["lr"] == pytest.approx(0.02) and adamw.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert all(len(muon.state[p]) for g in muon.param_groups for p in g["params"])  # momentum buffers exist
    for _ in range(15):
        last = step(batches(1), 1e-3).loss.item()
    assert last < first - 0.5  # it learns the fixed batch


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_run_on_cpu(precision):
    model, optimizer, cfg = setup()
    step = TrainStep(model, optimizer, cfg, precision, CPU)
    assert (step.scaler is not None) == (precision == "fp16")
    data = batches(1)
    losses = [step(data, 2e-3).loss.item() for _ in range(6)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert "scaler" in step.state_dict()


@pytest.mark.slow
def test_compiled_model_trains_like_eager():
    (eager, opt_e, cfg), (compiled, opt_c, _) = setup(), setup()
    compiled.compile()
    data = batches(1)
    a = [TrainStep(eager, opt_e, cfg, "fp32", CPU)(data, 1e-3).loss.item() for _ in range(2)]
    b = [TrainStep(compiled, opt_c, cfg, "fp32", CPU)(data, 1e-3).loss.item() for _ in range(2)]
    assert a == pytest.approx(b, rel=1e-3)


def test_gradscaler_overflow_is_a_back_off_not_a_nonfinite_step():
    """fp16: a finite loss with overflowed gradients is GradScaler's normal back-off: it skips that
    update itself, and the loop's NaN guard must not count it."""
    model, optimizer, cfg = setup()
    step = TrainStep(model, optimizer, cfg, "fp16", CPU)
    step.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    before = copy.deepcopy(model.state_dict())
    out = step(batches(1), 1e-3)
    assert torch.isfinite(out.loss) and not torch.isfinite(out.grad_norm)
    assert not out.nonfinite.item()
    assert step.scaler.get_scale() == 2.0**39
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name])
    with torch.no_grad():  # a non-finite loss is still flagged under a scaler
        model.bert.embeddings.word_embeddings.weight[7, 0] = float("nan")
    out = step(batches(1, seed=1), 1e-3)
    assert out.nonfinite.item() and not torch.isfinite(out.loss)
