"""GLUE evaluation: fine-tune a model on each task for several seeds, report medians and the GLUE score."""

from crammer.eval.config import PROTOCOLS, GlueConfig, make_glue_config
from crammer.eval.glue import evaluate_glue
from crammer.eval.tasks import ALL_TASKS, TASKS, load_task

__all__ = ["ALL_TASKS", "PROTOCOLS", "TASKS", "GlueConfig", "evaluate_glue", "load_task", "make_glue_config"]
