"""`cram plan` measures real training steps on a prepared corpus and states what the budget buys."""

from __future__ import annotations

import re

from crammer.cli import main


def test_plan_on_a_prepared_tiny_corpus(pydoc_corpus, capsys):
    code = main(["plan", "--data", str(pydoc_corpus), "--budget", "1h", "--preset", "tiny", "--seconds", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "plan for preset 'tiny' on cpu, budget 1.00 h" in out
    tokens_per_s = float(re.search(r"measured throughput\s+([\d,]+) tokens/s", out).group(1).replace(",", ""))
    steps = int(re.search(r"timed (\d+) optimizer steps of one micro-batch \(fp32\)", out).group(1))
    assert steps >= 3 and tokens_per_s > 0  # (speed itself varies with machine load: benchmarks only)
    assert "model FLOPs util.     n/a" in out  # no accelerator peak on a CPU
    # The tiny preset: micro-batch 8, ramp to 32 sequences -> 4 accumulation steps.
    assert "32 sequences x 128 tokens = micro-batch 8 x 4 accumulation steps" in out
    assert "99.2k tokens" in out or re.search(r"prepared corpus\s+\S+ tokens -> [\d.e+]+ passes", out)
    assert "WARNING: the data runs out after" in out  # ~99k tokens cannot fill an hour
    assert "1xA6000, 24 h (cramming)" in out and "BERT-base (Devlin et al.)" in out
    assert "6 x N x D" in out and "154.8e12 FLOP/s x 0.42" in out


def test_plan_without_micro_batch_on_cpu_is_a_clear_error(pydoc_corpus, capsys):
    code = main(["plan", "--data", str(pydoc_corpus), "--preset", "crammed-bert", "--seconds", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("cram: error: batch.micro_batch must be set without a GPU") and err.count("\n") == 1


def test_plan_on_a_folder_that_is_not_a_corpus(tmp_path, capsys):
    assert main(["plan", "--data", str(tmp_path), "--preset", "tiny"]) == 2
    assert "not a prepared corpus" in capsys.readouterr().err


def test_plan_with_a_corpus_longer_than_the_model_positions_is_a_clear_error(pydoc_corpus, capsys):
    code = main(["plan", "--data", str(pydoc_corpus), "--preset", "tiny", "--seconds", "1",
                 "model.max_position_embeddings=64"])
    err = capsys.readouterr().err
    assert code == 2
    assert "seq_len=128 exceeds the max_position_embeddings=64 of the 'tiny' model" in err and err.count("\n") == 1


def test_plan_takes_the_crammed_bert_plus_recipe(pydoc_corpus, capsys):
    code = main(["plan", "--data", str(pydoc_corpus), "--budget", "1h", "--preset", "crammed-bert-plus", "--seconds",
                 "1", "batch.micro_batch=4", "model.hidden_size=64", "model.num_hidden_layers=2",
                 "model.num_attention_heads=2", "model.intermediate_size=256"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "plan for preset 'crammed-bert-plus' on cpu, budget 1.00 h" in out
