"""Named `cram run` presets: which preset each stage starts from (strings only, so importing is cheap)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunPreset:
    """Which preset each stage starts from, and the pretraining budget when --budget is not given."""

    data: str  # crammer.data.prepare.PRESETS
    pretrain: str  # crammer.train.config.PRESETS
    glue_protocol: str  # crammer.eval.config.PROTOCOLS
    glue_overrides: tuple[str, ...]  # GlueConfig `key=value`s on top of the protocol
    budget: str  # pretraining budget when --budget is not given


RUN_PRESETS: dict[str, RunPreset] = {
    # The cramming recipe: Wikipedia + BookCorpus from the hub, crammed BERT for 24 h, GLUE-sane.
    "crammed-bert": RunPreset("bookcorpus-wiki", "crammed-bert", "sane", (), budget="24h"),
    # The same with the recipe the study found better (crammer.train.config's `crammed-bert-plus`).
    "crammed-bert-plus": RunPreset("bookcorpus-wiki", "crammed-bert-plus", "sane", (), budget="24h"),
    # The whole chain on a CPU in a few minutes: offline smoke corpus, small model, GLUE subsets.
    # GLUE-sane hyper-parameters on 256 training / 200 evaluation examples per task, one trial, 3 epochs.
    "demo": RunPreset("smoke", "demo", "sane", ("trials=1", "epochs=3", "max_train_examples=256",
                                                "max_eval_examples=200"), budget="2m"),
    # Seconds-long chain for the tests.
    "tiny": RunPreset("smoke", "tiny", "sane", ("trials=1", "epochs=1", "max_train_examples=64",
                                                "max_eval_examples=64"), budget="20s"),
}
