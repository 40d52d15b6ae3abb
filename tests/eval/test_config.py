"""The protocol presets and their overrides."""

from __future__ import annotations

import dataclasses

import pytest

from crammer.errors import CrammerError
from crammer.eval.config import GlueConfig, make_finetune_config, make_glue_config
from crammer.eval.tasks import ALL_TASKS


def test_sane_and_full_presets():
    sane = make_glue_config("sane")
    assert (sane.lr, sane.batch_size, sane.epochs, sane.schedule, sane.warmup_fraction, sane.weight_decay,
            sane.max_length, sane.dropout, sane.trials) == (4e-5, 16, 5, "cosine", 0.1, 0.0, 128, 0.1, 5)
    assert sane.tasks == ALL_TASKS and sane.glue_dir is None
    assert (sane.adam_betas, sane.adam_eps) == ((0.9, 0.98), 1e-6)  # cramming's optim/adam.yaml
    full = make_glue_config("full")
    assert (full.lr, full.batch_size, full.epochs, full.schedule, full.warmup_fraction, full.weight_decay) == (
        2e-5, 32, 10, "linear", 0.06, 0.1)
    assert (full.adam_betas, full.adam_eps) == ((0.9, 0.999), 1e-8)
    with pytest.raises(CrammerError, match="unknown GLUE protocol 'fast'"):
        make_glue_config("fast")


def test_overrides_are_typed_and_checked():
    cfg = make_glue_config("sane", ["lr=3e-5", "tasks=rte,cola", "max_train_examples=100", "glue_dir=/data/glue",
                                    "compile=true", "precision=fp32"])
    assert cfg.lr == 3e-5 and cfg.tasks == ("rte", "cola") and cfg.max_train_examples == 100
    assert cfg.glue_dir == "/data/glue" and cfg.compile is True and cfg.precision == "fp32"
    assert make_glue_config("sane", ["tasks=all"]).tasks == ALL_TASKS
    for bad, message in [("lr=fast", "expected a number"), ("schedule=step", "not one of cosine, linear"),
                         ("learning_rate=1", "unknown config key"), ("trials=0", "trials must be >= 1"),
                         ("tasks=rte,xnli", "unknown GLUE task 'xnli'"), ("warmup_fraction=1.5", "warmup_fraction"),
                         ("max_eval_examples=-1", "max_train_examples / max_eval_examples")]:
        with pytest.raises(CrammerError, match=message):
            make_glue_config("sane", [bad])


@pytest.mark.parametrize("bad, message", [
    ("lr=0", "lr must be a positive number, got 0.0"), ("lr=-1e-5", "lr must be a positive number"),
    ("lr=nan", "lr must be a positive number"), ("weight_decay=-0.1", "weight_decay must be >= 0"),
    ("batch_size=0", "batch_size must be >= 1"), ("epochs=0", "epochs must be >= 1"),
    ("warmup_fraction=-0.1", r"warmup_fraction must be in \[0, 1\)"), ("dropout=1", r"dropout must be in \[0, 1\)"),
    ("dropout=-0.1", "dropout must be in"), ("seed=-1", "seed must be in 0.."), ("max_length=0", "max_length"),
    ("adam_betas=0.9", "adam_betas: expected 2 comma-separated values"), ("adam_betas=0.9,1", "adam_betas must be two"),
    ("adam_eps=0", "adam_eps must be a positive number"), ("pad_multiple=0", "pad_multiple must be >= 1"),
])
def test_nonsense_values_are_refused_up_front(bad, message):
    with pytest.raises(CrammerError, match=message):
        make_glue_config("full", [bad])


def test_a_config_built_in_code_is_checked_too():
    """`cram run` validates its GLUE settings by building the config: no check may wait for the run."""
    with pytest.raises(CrammerError, match="lr must be a positive number"):
        GlueConfig(lr=-1.0)
    with pytest.raises(CrammerError, match="glue config: schedule='step' is not one of cosine, linear"):
        GlueConfig(schedule="step")
    with pytest.raises(CrammerError, match="glue config: precision='fp16' is not one of auto, bf16, fp32"):
        GlueConfig(precision="fp16")


def test_protocol_is_not_an_override():
    """`protocol=full` would relabel the results as `full` while keeping the `sane` hyper-parameters."""
    with pytest.raises(CrammerError,
                       match="protocol is not an override.*`cram glue` and `cram finetune` pick the preset with --protocol"):
        make_glue_config("sane", ["protocol=full"])
    assert make_glue_config("full").protocol == "full"


def test_compile_defaults_to_auto():
    assert make_glue_config("sane").compile is None  # on for CUDA, off on CPU (as pretraining decides)
    assert make_glue_config("sane", ["compile=false"]).compile is False


def test_trial_key_tracks_the_recipe_only():
    base = make_glue_config("sane")
    key = base.trial_key("m")
    for same in (["trials=2"], ["tasks=rte"], ["device=cpu"], ["glue_dir=/x"], ["compile=true"], ["pad_multiple=16"]):
        assert make_glue_config("sane", same).trial_key("m") == key
    for other in (["lr=1e-5"], ["epochs=3"], ["seed=7"], ["max_train_examples=10"], ["bucket_batches=1"],
                  ["skip_malformed_rows=true"], ["adam_betas=0.9,0.999"], ["adam_eps=1e-8"]):
        assert make_glue_config("sane", other).trial_key("m") != key
    assert base.trial_key("other-model") != key
    assert base.trial_key("m", data="sha256:1") != base.trial_key("m", data="sha256:2") != key


def test_finetune_config_shares_the_protocols():
    """`cram finetune` has GLUE's protocols without GLUE's task list; its errors name it."""
    for name in ("sane", "full"):
        tuned, glue = make_finetune_config(name), make_glue_config(name)
        assert all(getattr(tuned, f.name) == getattr(glue, f.name) for f in dataclasses.fields(tuned))
        assert tuned.trial_key("m") == glue.trial_key("m")
    with pytest.raises(CrammerError, match="unknown config key 'tasks'"):
        make_finetune_config("sane", ["tasks=rte"])
    with pytest.raises(CrammerError, match="^finetune config: lr must be a positive number"):
        make_finetune_config("sane", ["lr=0"])
