"""The planner's arithmetic and its reference runs (formulas stated in crammer.report.plan)."""

from __future__ import annotations

import pytest

from crammer.train.plan import Plan, format_plan, reference_runs


def _plan(**changes) -> Plan:
    values = dict(
        preset="tiny", device="cpu", budget_s=3600.0, tokens_per_s=1000.0, flops_per_token=2e6,
        num_parameters=1_000_000, corpus_tokens=1_800_000, seq_len=128, micro_batch=8, accumulation=4,
    )
    values.update(changes)
    return Plan(**values)


def test_reference_runs_follow_their_formulas():
    a6000, bert = reference_runs()
    assert a6000.tokens == pytest.approx(105_000 * 86_400)
    assert a6000.flops == pytest.approx(154.8e12 * 0.42 * 86_400)
    assert bert.tokens == 1_000_000 * 256 * 512
    assert bert.flops == pytest.approx(6 * 110e6 * 1_000_000 * 256 * 512)
    # The A6000 figure is self-consistent: 105k tokens/s of a ~110M BERT at 6N FLOPs/token is ~42%.
    assert 6 * 110e6 * a6000.tokens == pytest.approx(a6000.flops, rel=0.15)


def test_plan_arithmetic():
    plan = _plan()
    assert plan.tokens == 3_600_000
    assert plan.passes == pytest.approx(2.0)
    assert plan.flops == pytest.approx(3_600_000 * 2e6)
    assert plan.batch_size == 32
    assert plan.steps == pytest.approx(3_600_000 / (32 * 128))


def test_repeated_data_is_warned_about_single_pass_is_not():
    text = format_plan(_plan())
    assert "WARNING: the data runs out after 30.0 min of the 1.00 h budget" in text
    assert "2.00 passes" in text
    assert "micro-batch 8 x 4 accumulation steps" in text
    assert "1xA6000, 24 h" in text and "BERT-base" in text
    assert "WARNING" not in format_plan(_plan(corpus_tokens=10_000_000))
