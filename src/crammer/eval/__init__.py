"""GLUE evaluation: fine-tune a model on each task for several seeds, report medians and the GLUE score.

Names are imported on first use (see crammer.lazy), so the configs load without torch.
"""

from crammer.lazy import lazy_exports

__all__ = ["ALL_TASKS", "PROTOCOLS", "TASKS", "GlueConfig", "evaluate_glue", "load_task", "make_glue_config"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "PROTOCOLS": "crammer.eval.config", "GlueConfig": "crammer.eval.config", "make_glue_config": "crammer.eval.config",
    "evaluate_glue": "crammer.eval.glue", "ALL_TASKS": "crammer.eval.tasks", "TASKS": "crammer.eval.tasks",
    "load_task": "crammer.eval.tasks",
})
