"""The recipe lab: equal-budget experiments (`sweep`: every variant x seed an ordinary `cram pretrain` run) and
their comparison (`compare`: the table as data, with a verdict that weighs each difference by the seeds'
spread, and a report with the validation curves overlaid). Sits on top, beside `pipeline`: nothing below
imports it."""

from crammer.lazy import lazy_exports

__all__ = ["Budget", "Comparison", "Variant", "compare", "parse_variant", "sweep", "verdict"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "Budget": "crammer.lab.sweep", "Variant": "crammer.lab.sweep", "parse_variant": "crammer.lab.sweep",
    "sweep": "crammer.lab.sweep", "Comparison": "crammer.lab.compare", "compare": "crammer.lab.compare",
    "verdict": "crammer.lab.compare"})
