"""GLUE metrics against textbook formulas, and the GLUE score's bookkeeping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import rankdata

from crammer.eval.metrics import compute_metrics, glue_numbers, glue_score, mean_score
from crammer.eval.tasks import GLUE_SCORE_COLUMNS


def _counts(pred, gold):
    tp = np.sum((pred == 1) & (gold == 1)); tn = np.sum((pred == 0) & (gold == 0))  # noqa: E702
    fp = np.sum((pred == 1) & (gold == 0)); fn = np.sum((pred == 0) & (gold == 1))  # noqa: E702
    return tp, tn, fp, fn


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_match_the_formulas(seed):
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 2, 500)
    pred = np.where(rng.random(500) < 0.7, gold, 1 - gold)
    tp, tn, fp, fn = _counts(pred, gold)
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert compute_metrics("mcc", pred, gold)["mcc"] == pytest.approx(100 * mcc)
    out = compute_metrics("f1", pred.tolist(), gold.tolist())
    assert out["f1"] == pytest.approx(100 * f1) and out["accuracy"] == pytest.approx(100 * np.mean(pred == gold))


def test_multiclass_accuracy():
    assert compute_metrics("accuracy", [0, 1, 2, 2], [0, 1, 1, 2]) == {"accuracy": 75.0}


def test_correlations_match_the_formulas():
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 300)
    pred = gold + rng.normal(0, 1.5, 300)
    out = compute_metrics("correlation", pred, gold)
    assert out["pearson"] == pytest.approx(100 * np.corrcoef(pred, gold)[0, 1])
    assert out["spearman"] == pytest.approx(100 * np.corrcoef(rankdata(pred), rankdata(gold))[0, 1])
    assert compute_metrics("correlation", [2.5] * 10, gold[:10]) == {"pearson": 0.0, "spearman": 0.0}


def test_degenerate_predictions_score_like_glue():
    assert compute_metrics("mcc", [1, 1, 1, 1], [0, 1, 0, 1])["mcc"] == 0.0
    assert compute_metrics("f1", [0, 0, 0], [1, 0, 1]) == {"f1": 0.0, "accuracy": pytest.approx(100 / 3)}


def test_glue_score_is_the_mean_of_nine_numbers():
    medians = {"cola": {"mcc": 40.0}, "sst2": {"accuracy": 90.0}, "mrpc": {"f1": 85.0, "accuracy": 80.0},
               "stsb": {"pearson": 84.0, "spearman": 83.0}, "qqp": {"f1": 86.0, "accuracy": 89.0},
               "mnli": {"accuracy_matched": 80.0, "accuracy_mismatched": 81.0}, "qnli": {"accuracy": 88.0},
               "rte": {"accuracy": 60.0}, "wnli": {"accuracy": 56.0}}
    numbers = glue_numbers(medians)
    assert set(numbers) == set(GLUE_SCORE_COLUMNS) and len(GLUE_SCORE_COLUMNS) == 9  # WNLI is not counted
    assert numbers["MNLI-m"] == 80.0 and numbers["MNLI-mm"] == 81.0 and numbers["MRPC"] == 85.0
    assert glue_score(numbers) == pytest.approx((40 + 90 + 85 + 84 + 86 + 80 + 81 + 88 + 60) / 9)
    partial = glue_numbers({"rte": {"accuracy": 60.0}, "cola": {"mcc": 30.0}})
    assert glue_score(partial) is None and mean_score(partial) == 45.0
    assert mean_score({}) is None


def test_the_baseline_is_what_a_model_that_learned_nothing_scores():
    from crammer.eval.metrics import baseline_metrics

    assert baseline_metrics("mcc", [0, 1, 1, 1]) == {"mcc": 0.0}
    assert baseline_metrics("classification", [2, 0, 2, 2]) == pytest.approx(
        {"accuracy": 75.0, "macro_f1": 100 * (6 / 7) / 2, "mcc": 0.0})
    assert baseline_metrics("f1", [1, 1, 0]) == pytest.approx({"f1": 80.0, "accuracy": 100 * 2 / 3})
    assert baseline_metrics("correlation", [0.5, 3.0, 4.2]) == {"pearson": 0.0, "spearman": 0.0}
    assert baseline_metrics("multi-label", [[1, 0], [1, 0], [0, 1]]) == pytest.approx(
        {"micro_f1": 100 * 4 / 6, "macro_f1": 100 * 0.8 / 2})  # TP 2, FP 1, FN 1
    assert baseline_metrics("entities", [[0, 0, 1], [0, 2]], ["O", "B-LOC", "I-LOC"]) == pytest.approx(
        {"entity_f1": 0.0, "token_accuracy": 60.0})
