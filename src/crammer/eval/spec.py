"""What a fine-tuning task is, whatever its source: the label kind, the label set and how it is scored.

A GLUE task (`tasks.GlueTask.spec`) and a user's own data (`cram finetune`) both become a `TaskSpec`, so one
trial runner, one metric function and one results writer serve both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from crammer.errors import CrammerError

TaskKind = Literal["classification", "regression", "multi-label", "token-classification"]
TASK_KINDS: tuple[str, ...] = ("classification", "regression", "multi-label", "token-classification")
# GLUE's metrics ("mcc", "accuracy", "f1", "correlation") and the ones of `cram finetune`'s task kinds.
MetricKind = Literal["mcc", "accuracy", "f1", "correlation", "classification", "multi-label", "entities"]
# The metric family of each task kind when the data is the user's own (metrics.compute_metrics).
KIND_METRICS: dict[str, str] = {"classification": "classification", "regression": "correlation",
                                "multi-label": "multi-label", "token-classification": "entities"}
# The metric that ranks trials (`--save-model` keeps the best) and comes first in the tables.
PRIMARY_METRICS: dict[str, str] = {"classification": "accuracy", "correlation": "pearson",
                                   "multi-label": "micro_f1", "entities": "entity_f1"}
# The metrics each family reports (`--metric` picks the one that ranks trials among them).
METRIC_NAMES: dict[str, tuple[str, ...]] = {"classification": ("accuracy", "macro_f1", "mcc"),
                                            "correlation": ("pearson", "spearman"),
                                            "multi-label": ("micro_f1", "macro_f1"),
                                            "entities": ("entity_f1", "token_accuracy")}
# Hugging Face's `config.problem_type` of each kind (token classification has none: its loss is per token).
PROBLEM_TYPES: dict[str, str | None] = {"classification": "single_label_classification", "regression": "regression",
                                        "multi-label": "multi_label_classification", "token-classification": None}


@dataclass(frozen=True)
class TaskSpec:
    """Labels are class (or tag) names; their index is what the model predicts. () for regression."""

    kind: TaskKind
    labels: tuple[str, ...]
    metric: MetricKind
    primary: tuple[str, ...]  # metric keys shown first (GLUE: the ones counted in the score)

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    @property
    def problem_type(self) -> str | None:
        return PROBLEM_TYPES[self.kind]

    @property
    def is_token_level(self) -> bool:
        return self.kind == "token-classification"


def spec_for(kind: str, labels: tuple[str, ...], primary: str | None = None) -> TaskSpec:
    """The spec of a user's task: the kind's metric family, its primary metric (`primary`, else the family's
    usual one) first."""
    metric = KIND_METRICS[kind]
    if primary is not None and primary not in METRIC_NAMES[metric]:
        raise CrammerError(f"--metric {primary}: {kind} is scored by {', '.join(METRIC_NAMES[metric])}")
    return TaskSpec(kind, labels, metric, (primary or PRIMARY_METRICS[metric],))  # type: ignore[arg-type]
