"""Fine-tuning and scoring: GLUE (medians over seeds, the GLUE score) and the user's own data (`cram finetune`).

Names are imported on first use (see crammer.lazy), so the configs load without torch.
"""

from crammer.lazy import lazy_exports

__all__ = ["ALL_TASKS", "PROTOCOLS", "TASKS", "DataSpec", "FinetuneConfig", "GlueConfig", "TaskSpec",
           "evaluate_finetune", "evaluate_glue", "load_task", "make_finetune_config", "make_glue_config"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "PROTOCOLS": "crammer.eval.config", "GlueConfig": "crammer.eval.config", "make_glue_config": "crammer.eval.config",
    "evaluate_glue": "crammer.eval.glue", "ALL_TASKS": "crammer.eval.tasks", "TASKS": "crammer.eval.tasks",
    "load_task": "crammer.eval.tasks", "FinetuneConfig": "crammer.eval.config",
    "make_finetune_config": "crammer.eval.config", "evaluate_finetune": "crammer.eval.custom",
    "DataSpec": "crammer.eval.userdata", "TaskSpec": "crammer.eval.spec",
})
