import dataclasses

import pytest

from crammer.errors import CrammerError
from crammer.train.config import BatchConfig, ScheduleConfig, make_pretrain_config
from crammer.train.schedules import accumulation_steps, lr_multiplier


@pytest.mark.parametrize("kind", ["triangle", "one-cycle", "linear", "wsd"])
def test_every_lr_schedule_is_exactly_zero_at_the_deadline(kind):
    f = lr_multiplier(ScheduleConfig(lr=kind))
    assert f(1.0) == 0.0 and f(1.5) == 0.0
    assert max(f(i / 1000) for i in range(1001)) == pytest.approx(1.0, abs=1e-3)
    assert all(0.0 <= f(i / 100) <= 1.0 for i in range(101))


def test_triangle_is_the_cramming_schedule():
    f = lr_multiplier(ScheduleConfig())  # the defaults: triangle, 25% start, peak at 75%
    assert f(0.0) == pytest.approx(0.25)
    assert f(0.375) == pytest.approx(0.625)
    assert f(0.75) == pytest.approx(1.0)
    assert f(0.875) == pytest.approx(0.5)
    assert f(0.999) == pytest.approx(0.004)


def test_one_cycle_linear_and_wsd_shapes():
    one_cycle = lr_multiplier(ScheduleConfig(lr="one-cycle", peak=0.3, initial=0.1))
    assert one_cycle(0.0) == pytest.approx(0.1) and one_cycle(0.3) == pytest.approx(1.0)
    assert one_cycle(0.65) == pytest.approx(0.5)  # cosine half-way down
    linear = lr_multiplier(ScheduleConfig(lr="linear", peak=0.1))
    assert linear(0.0) == 0.0 and linear(0.05) == pytest.approx(0.5) and linear(0.55) == pytest.approx(0.5)
    wsd = lr_multiplier(ScheduleConfig(lr="wsd", peak=0.1, decay=0.2))
    assert wsd(0.05) == pytest.approx(0.5)
    assert wsd(0.2) == wsd(0.79) == 1.0
    assert wsd(0.9) == pytest.approx(0.5)


def test_batch_ramp_reaches_target_at_the_ramp_fraction():
    cfg = BatchConfig(micro_batch=128, target=8192, ramp=0.6)
    steps = [accumulation_steps(i / 1000, cfg, 128) for i in range(1001)]
    assert steps[0] == 1
    assert steps == sorted(steps)
    assert steps[600] == 64 and steps[599] < 64 and steps[1000] == 64
    # two ranks: half the micro-batches for the same global batch
    assert accumulation_steps(1.0, cfg, 128, world_size=2) == 32
    assert accumulation_steps(0.3, dataclasses.replace(cfg, ramp=0.0), 128) == 64


def test_config_overrides_presets_and_budgets():
    cfg = make_pretrain_config("tiny", ["optim.lr=5e-4", "model.num_hidden_layers=3", "schedule.lr=wsd"],
                               budget_seconds=90)
    assert cfg.optim.lr == 5e-4 and cfg.schedule.lr == "wsd" and cfg.model == "tiny"
    assert cfg.model_overrides == ("num_hidden_layers=3",)
    assert cfg.budget_seconds == 90 and cfg.budget_tokens is None
    assert make_pretrain_config("tiny", budget_tokens=1000).budget_seconds is None
    paper = make_pretrain_config()
    assert paper.budget_seconds == 24 * 3600 and paper.optim.betas == (0.9, 0.98) and paper.optim.eps == 1e-12
    assert paper.batch.target == 8192 and paper.batch.ramp == 0.6 and paper.masking.fraction == 0.25
    with pytest.raises(CrammerError, match="optim.lrr"):
        make_pretrain_config("tiny", ["optim.lrr=1"])
    with pytest.raises(CrammerError, match="batch.ramp"):
        make_pretrain_config("tiny", ["batch.ramp=1.5"])
    with pytest.raises(CrammerError, match="pretrain preset"):
        make_pretrain_config("huge")


@pytest.mark.parametrize("override", ["optim.betas=0.9,1.0", "optim.betas=-0.1,0.98", "optim.eps=0",
                                      "optim.eps=-1e-8", "optim.weight_decay=-0.01"])
def test_bad_optimizer_settings_are_one_line_errors_before_torch_sees_them(override, capsys):
    from crammer.cli import main

    key = override.split("=")[0]
    with pytest.raises(CrammerError, match=f"pretrain config {key}=.* is out of range"):
        make_pretrain_config("tiny", [override])
    assert main(["pretrain", "--data", "unused", "--out", "unused", "--preset", "tiny", override]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_boundary_optimizer_settings_are_accepted():
    cfg = make_pretrain_config("tiny", ["optim.betas=0,0.999", "optim.weight_decay=0", "optim.eps=1e-30"])
    assert cfg.optim.betas == (0.0, 0.999) and cfg.optim.weight_decay == 0.0


def test_wsd_can_decay_as_one_minus_sqrt():
    linear = lr_multiplier(ScheduleConfig(lr="wsd", peak=0.1, decay=0.4))
    sqrt = lr_multiplier(ScheduleConfig(lr="wsd", peak=0.1, decay=0.4, decay_shape="sqrt"))
    assert sqrt(0.05) == linear(0.05) == pytest.approx(0.5) and sqrt(0.6) == linear(0.6) == 1.0
    assert sqrt(0.7) == pytest.approx(1 - 0.25 ** 0.5) and linear(0.7) == pytest.approx(0.75)  # a quarter into decay
    assert sqrt(0.99) < linear(0.99) and sqrt(1.0) == linear(1.0) == 0.0
    with pytest.raises(CrammerError, match="schedule.decay_shape"):
        make_pretrain_config("tiny", ["schedule.decay_shape=cosine"], budget_tokens=1000)


def test_wsd_decay_starts_cleanly_where_rounding_puts_progress_at_its_edge():
    """1 - 0.7 is 0.30000000000000004 in floats: the decay's own progress must not go below 0 (a math domain
    error in the 1-sqrt shape, met by a real run)."""
    sqrt = lr_multiplier(ScheduleConfig(lr="wsd", peak=0.1, decay=0.3, decay_shape="sqrt"))
    for p in (0.7, 0.7 + 1e-12, 0.69999999999):
        assert sqrt(p) == pytest.approx(1.0, abs=1e-5)  # sqrt is steep at 0: 1e-12 into the decay is 2e-6
