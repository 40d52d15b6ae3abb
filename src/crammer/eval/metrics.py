"""Fine-tuning metrics (scikit-learn, scipy, seqeval) and the GLUE score, all on the 0-100 scale GLUE tables use."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from crammer.eval.spec import MetricKind
from crammer.eval.tasks import GLUE_SCORE_COLUMNS, TASKS


def compute_metrics(kind: MetricKind, predictions: Sequence, labels: Sequence,
                    names: Sequence[str] = ()) -> dict[str, float]:
    """Metric values x 100 for class predictions (regression outputs for `correlation`, 0/1 rows of every
    label for `multi-label`, per-word tag indices for `entities`, whose tag `names` say the entities)."""
    if kind == "entities":
        return _entity_metrics(predictions, labels, names)
    pred, gold = np.asarray(predictions), np.asarray(labels)
    if kind == "multi-label":
        return {"micro_f1": 100 * float(f1_score(gold, pred, average="micro", zero_division=0.0)),
                "macro_f1": 100 * float(f1_score(gold, pred, average="macro", zero_division=0.0))}
    if kind == "correlation":
        if np.ptp(pred) == 0 or np.ptp(gold) == 0:  # constant output: correlation undefined, score it 0
            return {"pearson": 0.0, "spearman": 0.0}
        return {"pearson": 100 * float(pearsonr(pred, gold)[0]), "spearman": 100 * float(spearmanr(pred, gold)[0])}
    pred, gold = pred.astype(np.int64), gold.astype(np.int64)
    accuracy = 100 * float(accuracy_score(gold, pred))
    if kind == "accuracy":
        return {"accuracy": accuracy}
    if kind == "f1":
        return {"f1": 100 * float(f1_score(gold, pred, zero_division=0.0)), "accuracy": accuracy}
    if kind == "mcc":
        return {"mcc": 100 * float(matthews_corrcoef(gold, pred))}
    if kind == "classification":
        return {"accuracy": accuracy, "macro_f1": 100 * float(f1_score(gold, pred, average="macro", zero_division=0.0)),
                "mcc": 100 * float(matthews_corrcoef(gold, pred))}
    raise ValueError(f"unknown metric kind {kind!r}")


def baseline_metrics(kind: MetricKind, labels: Sequence, names: Sequence[str] = ()) -> dict[str, float]:
    """What a model that learned nothing scores on these labels: the majority class for every example (per label
    for multi-label, per word for tagging), chance for a correlation (0). A trial's numbers mean something only
    above it: on CoLA the majority class alone has 69% accuracy (and MCC 0)."""
    if kind == "correlation":
        return {"pearson": 0.0, "spearman": 0.0}
    if kind == "entities":
        tags = np.bincount([t for row in labels for t in row], minlength=len(names))
        return compute_metrics(kind, [[int(tags.argmax())] * len(row) for row in labels], labels, names)
    gold = np.asarray(labels)
    if kind == "multi-label":
        majority = (2 * gold.sum(axis=0) > len(gold)).astype(np.int64)
        return compute_metrics(kind, np.broadcast_to(majority, gold.shape), gold)
    majority = int(np.bincount(gold.astype(np.int64)).argmax())
    return compute_metrics(kind, [majority] * len(gold), gold)


def _entity_metrics(predictions: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                    names: Sequence[str]) -> dict[str, float]:
    """Entity-level F1 as CoNLL's `conlleval` counts it (seqeval's default mode: B-/I- tags, a stray I- opens
    an entity), and the share of words tagged right. A tag without a prefix (`PER`) is read as `I-PER`, so
    a run of one such tag is one entity (the IO scheme)."""
    from seqeval.metrics import f1_score as entity_f1

    scheme = [n if n == "O" or n[:2] in ("B-", "I-", "E-", "S-") else f"I-{n}" for n in names]
    pred = [[scheme[t] for t in row] for row in predictions]
    gold = [[scheme[t] for t in row] for row in labels]
    words = sum(len(row) for row in gold)
    right = sum(p == g for prow, grow in zip(pred, gold) for p, g in zip(prow, grow))
    return {"entity_f1": 100 * float(entity_f1(gold, pred, zero_division=0)),
            "token_accuracy": 100 * right / words if words else 0.0}


def glue_numbers(task_medians: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per-task median metrics -> the GLUE table's columns (MNLI-m and MNLI-mm separately)."""
    out = {}
    for name, medians in task_medians.items():
        for column, key in TASKS[name].glue_numbers:
            if key in medians:
                out[column] = medians[key]
    return out


def glue_score(numbers: Mapping[str, float]) -> float | None:
    """Mean of the 9 numbers of the cramming paper; None unless all of them are there."""
    if not all(col in numbers for col in GLUE_SCORE_COLUMNS):
        return None
    return float(np.mean([numbers[col] for col in GLUE_SCORE_COLUMNS]))


def mean_score(numbers: Mapping[str, float]) -> float | None:
    """Mean over whichever GLUE columns were run (for partial evaluations)."""
    values = [v for col, v in numbers.items() if col in GLUE_SCORE_COLUMNS and not math.isnan(v)]
    return float(np.mean(values)) if values else None
