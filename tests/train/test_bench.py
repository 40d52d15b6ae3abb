"""`cram bench` on CPU: the table, the HF comparison, profiling, step timing and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from crammer.cli import main
from crammer.errors import CrammerError
from crammer.model import make_config, training_flops_per_token
from crammer.train.bench import choose_compile_mode, hf_bert_baseline, time_steps

TINY = ["bench", "--preset", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--seq-len", "32",
        "--vocab-size", "512"]


def table_rows(out: str) -> list[list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| model ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_bench_sweeps_micro_batches_and_compares_with_hf(capsys):
    assert main([*TINY, "--micro-batch", "4,8", "--peak-tflops", "1"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert [(r[0], r[1]) for r in rows] == [("crammer tiny (none)", "4"), ("crammer tiny (none)", "8"),
                                            ("HF BertForMaskedLM (none)", "4")]
    flops = training_flops_per_token(make_config("tiny", vocab_size=512), 32, masked_fraction=0.25)
    for row in rows:
        tokens_per_s, step_ms, mfu = float(row[4].replace(",", "")), float(row[5]), float(row[6].rstrip("%"))
        assert tokens_per_s > 0 and step_ms > 0 and mfu > 0
        if row[0].startswith("crammer"):  # MFU = tokens/s x FLOPs/token / peak (1 TFLOP/s here)
            assert float(row[3]) == pytest.approx(flops / 1e9, abs=5e-4)
            assert mfu == pytest.approx(100 * tokens_per_s * flops / 1e12, abs=0.051)
    assert "seq_len 32" in out and "ratio (crammer / HF): tokens/s" in out


def test_bench_takes_the_crammed_bert_plus_recipe_and_counts_its_flops(capsys):
    """The study's preset at a tiny size: Muon, the ModernBERT block, 40% of positions through the MLM head."""
    size = ["model.hidden_size=64", "model.num_hidden_layers=2", "model.num_attention_heads=2",
            "model.intermediate_size=256"]
    assert main(["bench", "--preset", "crammed-bert-plus", "--device", "cpu", "--steps", "2", "--warmup", "1",
                 "--seq-len", "32", "--vocab-size", "512", "--micro-batch", "4", "--compare", "none", *size]) == 0
    (row,) = table_rows(capsys.readouterr().out)
    config = make_config("modernbert", 512, [s.removeprefix("model.") for s in size])
    assert row[0] == "crammer crammed-bert-plus (none)" and config.mlm_head_transform
    assert float(row[3]) == pytest.approx(training_flops_per_token(config, 32, 0.4) / 1e9, abs=5e-4)
    assert float(row[4].replace(",", "")) > 0


def test_profile_writes_a_trace_and_the_costliest_operators(tmp_path, capsys):
    assert main([*TINY, "--micro-batch", "4", "--compare", "none", "--profile", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    trace = tmp_path / "crammer-tiny-none-mb4.json"
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("name") == "aten::mm" for e in events)  # the model's matmuls were recorded
    assert f"trace: {trace}" in out and "Self CPU" in out and "aten::mm" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == [trace.name]  # no temporary files left


def test_hf_baseline_has_our_shape_and_pays_for_every_position():
    config = make_config("tiny", vocab_size=512)
    model, flops = hf_bert_baseline(config, seq_len=32, device=torch.device("cpu"))
    hf = model.config
    assert (hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.intermediate_size, hf.vocab_size) == (
        config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size, 512)
    assert hf.hidden_dropout_prob == 0 and model.config._attn_implementation == "sdpa"
    assert flops > training_flops_per_token(config, 32, masked_fraction=0.25)


def test_time_steps_reports_warmup_and_median():
    calls = []

    def step(group):
        calls.append(len(group))
        return torch.tensor(1.0)

    warm, median = time_steps(step, ["a", "b", "c"], accumulate=2, warmup=3, steps=5, device=torch.device("cpu"))
    assert calls == [2] * 8 and warm >= 0 and median >= 0
    with pytest.raises(CrammerError, match="non-finite loss"):
        time_steps(lambda g: torch.tensor(float("nan")), ["a"], 1, 1, 1, torch.device("cpu"))


@pytest.mark.parametrize("args, message", [
    (["--micro-batch", "big"], "--micro-batch must be 'auto' or numbers"),
    (["--micro-batch", "0"], "--micro-batch values must be positive"),
    (["--seq-len", "4096", "--micro-batch", "2"], "--seq-len=4096 exceeds the max_position_embeddings=128"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--warmup", "0"], "--warmup must be at least 1"),
    (["--accumulate", "0"], "--accumulate must be at least 1"),
    (["--device", "gpu0"], "--device='gpu0' is not a torch device"),
])
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    assert main([*TINY, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    assert main(["bench", "--preset", "tiny", "--device", "cuda"]) == 2
    assert "--device=cuda but CUDA is not available" in capsys.readouterr().err


def test_compile_setting_of_the_preset_is_honoured(capsys):
    """Without --compile the bench follows the recipe's `compile` key, like `cram pretrain` does."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert choose_compile_mode(None, True, cpu) == "default" and choose_compile_mode(None, None, cpu) == "none"
    assert choose_compile_mode(None, None, gpu) == "default" and choose_compile_mode(None, False, gpu) == "none"
    assert choose_compile_mode("max-autotune", False, cpu) == "max-autotune"
    assert main([*TINY, "--micro-batch", "2", "--compare", "none"]) == 0
    assert "crammer tiny (none)" in capsys.readouterr().out  # on CPU the unset key means: no compile
