"""`cram compare` / `crammer.lab.compare`: the table read back from the runs' own files, the verdict rule,
the refusal of runs validated on another corpus, the report."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from crammer.cli import main
from crammer.errors import CrammerError
from crammer.model import CrammedBertConfig, training_flops_per_token
from crammer.lab.compare import (
    COMPARE_HTML, COMPARE_JSON, COMPARE_MD, ONE_SEED, RULE, _default_name, compare, expand, verdict)
from crammer.report.report import mean_masked_fraction
from crammer.runfiles import read_metrics, training_rows, validation_rows
from crammer.train.config import make_pretrain_config
from crammer.train.loop import pretrain

TOKENS = 64 * 16 * 24  # 24 steps of 16 sequences


def _train(corpus: Path, run_dir: Path, overrides=(), tokens: int = TOKENS) -> Path:
    cfg = make_pretrain_config("tiny", ["batch.target=16", "eval.every_steps=6", *overrides], budget_tokens=tokens)
    pretrain(cfg, corpus, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def runs(corpus, other_corpus, tmp_path_factory) -> Path:
    """base/seed-{0,1} and lr/seed-{0,1} (optim.lr=5e-3), long (twice the budget), other (another corpus)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lab-runs")
    for seed in (0, 1):
        _train(corpus, root / "base" / f"seed-{seed}", [f"seed={seed}"])
        _train(corpus, root / "lr" / f"seed-{seed}", [f"seed={seed}", "optim.lr=5e-3"])
    _train(corpus, root / "long", tokens=2 * TOKENS)
    _train(other_corpus, root / "other")
    return root


def _members(root: Path) -> list[Path]:
    return [root / v / f"seed-{k}" for v in ("base", "lr") for k in (0, 1)]


def test_the_verdict_weighs_the_difference_by_the_seeds_spread():
    assert verdict([3.0, 3.1], [3.5, 3.6]) == ("better", pytest.approx(0.1))
    assert verdict([3.5, 3.6], [3.0, 3.1]) == ("worse", pytest.approx(0.1))
    assert verdict([3.0, 3.4], [3.2, 3.3])[0] == "within noise"  # d = -0.05, noise 0.4
    assert verdict([3.0, 3.01], [3.2, 3.6])[0] == "within noise"  # the baseline's spread counts too
    assert verdict([3.0], [3.5, 3.6]) == (ONE_SEED, None)
    assert verdict([3.0, 3.1], [3.5]) == (ONE_SEED, None)


def test_the_table_is_what_the_runs_metrics_say(runs, tmp_path):
    out = tmp_path / "report"
    result = compare(_members(runs), out=out)
    assert [r.variant for r in result.rows] == ["base", "lr"] and result.rows[0].verdict == "baseline"
    finals = {}
    for row in result.rows:
        for member in row.members:
            records = read_metrics(member["path"])
            last = validation_rows(records)[-1]
            summary = json.loads((Path(member["path"]) / "final" / "pretraining.json").read_text())
            assert last["val_loss"] == summary["validation"]["loss"] == member["val_loss"]
            assert member["val_accuracy"] == last["val_accuracy"]
            assert member["tokens_per_s"] == statistics.median(r["tokens_per_s"] for r in training_rows(records))
            assert (member["steps"], member["tokens"]) == (summary["steps"], summary["tokens"])
            config = CrammedBertConfig.from_pretrained(Path(member["path"]) / "final")
            assert member["flops_per_token"] == training_flops_per_token(config, 64, 0.25)  # 25% masked, 64 tokens
            finals.setdefault(row.variant, []).append(last["val_loss"])
        losses = finals[row.variant]
        assert (row.val_loss, row.val_loss_min, row.val_loss_max) == (statistics.median(losses), min(losses),
                                                                      max(losses))
        assert row.tokens_per_s == statistics.median(m["tokens_per_s"] for m in row.members)
        assert row.flops_per_token == row.members[0]["flops_per_token"]
    lr = result.row("lr")
    assert lr.delta_nats == pytest.approx(statistics.median(finals["lr"]) - statistics.median(finals["base"]))
    assert (lr.verdict, lr.noise_nats) == verdict(finals["lr"], finals["base"])
    assert lr.differs == ["optim.lr=0.005 (baseline 0.002)"] and result.rows[0].differs == []

    md, html = (out / COMPARE_MD).read_text(), (out / COMPARE_HTML).read_text()
    assert result.markdown_table() in md and RULE in md
    assert "![validation loss against elapsed (seconds)](plots/val_loss_time.png)" in md  # a short run in seconds
    assert html.count("data:image/png;base64,") == 2 and "plots/" not in html  # self-contained
    assert json.loads((out / COMPARE_JSON).read_text())["rows"] == json.loads(json.dumps([asdict(r) for r in result.rows]))


def test_flops_per_token_counts_the_average_masked_share():
    assert mean_masked_fraction({"fraction": 0.4, "schedule": "constant", "final_fraction": 0.15}) == 0.4
    assert mean_masked_fraction({"fraction": 0.4, "schedule": "linear", "final_fraction": 0.2}) == pytest.approx(0.3)
    assert mean_masked_fraction(None) == 0.25  # a config written before masking was recorded: the default


def test_the_baseline_can_be_any_run(runs):
    result = compare(_members(runs), baseline=runs / "lr" / "seed-1")
    assert [r.variant for r in result.rows] == ["lr", "base"]
    assert result.rows[1].delta_nats == pytest.approx(result.rows[1].val_loss - result.rows[0].val_loss)
    with pytest.raises(CrammerError, match="--baseline .*long: not one of the runs compared"):
        compare(_members(runs), baseline=runs / "long")


def test_runs_with_other_budgets_are_compared_and_the_report_says_so(runs, tmp_path):
    result = compare([runs / "base" / "seed-0", runs / "long"], out=tmp_path)
    assert [r.variant for r in result.rows] == ["base", "long"]
    assert result.rows[1].verdict == ONE_SEED and result.rows[1].tokens >= 2 * TOKENS > result.rows[0].tokens
    assert any("differ in budget" in note for note in result.notes)
    assert "differ in budget" in (tmp_path / COMPARE_MD).read_text()


def test_runs_on_another_corpus_are_refused_in_one_line(runs, tmp_path, capsys):
    assert main(["compare", str(runs / "base" / "seed-0"), str(runs / "other"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cram: error: runs validated on another validation set")
    assert f"{runs / 'other'}: corpus" in err and not (tmp_path / COMPARE_MD).exists()


def test_cram_compare_prints_the_table(runs, tmp_path, capsys):
    assert main(["compare", *map(str, _members(runs)), "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert compare(_members(runs)).markdown_table() in out and f"wrote {tmp_path / 'c' / COMPARE_MD}" in out
    assert main(["compare", str(runs / "nothing")]) == 2


def test_run_folders_are_named_as_variants(tmp_path):
    for folder in ("a/bert", "b/bert", "sw/base/seed-0", "sw/base/seed-1", "demo"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "demo" / "run.json").write_text("{}")  # a `cram run` folder: its pretraining is the run
    found = expand([tmp_path / "a/bert", tmp_path / "b/bert", tmp_path / "sw/base/seed-0", tmp_path / "sw/base/seed-1",
                    tmp_path / "demo"])
    assert [(str(run.relative_to(tmp_path)), _default_name(run) if name is None else name) for run, name in found] == [
        ("a/bert", "a/bert"), ("b/bert", "b/bert"), ("sw/base/seed-0", "base"), ("sw/base/seed-1", "base"),
        ("demo/pretrain", "demo")]
