"""`cram sweep` / `crammer.lab.sweep`: variants x seeds as ordinary run folders, resumed after a kill -9
without re-running finished members, a table equal to the members' own metrics, refusals of a changed sweep."""

from __future__ import annotations

import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crammer.cli import main
from crammer.config import changed_keys
from crammer.errors import CrammerError
from crammer.lab.compare import COMPARE_JSON, COMPARE_MD
from crammer.lab.sweep import Budget, Member, parse_variant, read_variants_file
from tests.conftest import REPO_ROOT
from crammer.model import make_config
from crammer.runfiles import read_metrics, training_rows, validation_rows

TOKENS = 64 * 16 * 120  # ~130 optimizer steps of the tiny preset at batch.target=16


def test_a_variant_is_a_name_and_pretraining_settings(tmp_path):
    v = parse_variant("lr-low:optim.lr=5e-4, optim.betas=0.9,0.95 ,preset=demo", "tiny")
    assert (v.name, v.preset, v.overrides) == ("lr-low", "demo", ("optim.lr=5e-4", "optim.betas=0.9,0.95"))
    assert parse_variant("base", "tiny").overrides == ()
    for bad, message in (("no good:optim.lr=1", "its name must be"), ("x:optim.lr", "expected key=value")):
        with pytest.raises(CrammerError, match=message):
            parse_variant(bad, "tiny")
    (tmp_path / "variants.txt").write_text("# the baseline first\nbase\n\n  wide:model.hidden_size=256\n")
    assert read_variants_file(tmp_path / "variants.txt") == ["base", "wide:model.hidden_size=256"]


@pytest.mark.parametrize("study, preset, common", [
    ("tiny", "tiny", ["batch.target=8", "eval.sequences=512"]),
    ("small", "tiny", ["model=small", "batch.target=8", "eval.sequences=512"]),
    ("crammed-bert", "crammed-bert", []),
])
def test_the_committed_recipe_studies_build_with_the_paper_first_and_the_combination_last(study, preset, common):
    """benchmarks/recipes/*.txt as BENCHMARKS.md runs them: every variant's config builds; the first is the paper's
    recipe at that size, the last the three changes the crammed-bert-plus preset adopts."""
    from crammer.lab.sweep import Budget, check_variants
    from crammer.train.config import make_pretrain_config

    lines = read_variants_file(REPO_ROOT / "benchmarks" / "recipes" / f"{study}.txt")
    variants = [parse_variant(line, preset) for line in lines]
    variants = [type(v)(v.name, v.preset, (*common, *v.overrides)) for v in variants]
    check_variants(variants, Budget(tokens=3_072_000))
    first, last = (make_pretrain_config(v.preset, v.overrides, budget_tokens=1) for v in (variants[0], variants[-1]))
    assert variants[0].name == "paper" and variants[0].overrides == tuple(common)
    assert (last.optim.name, last.masking.fraction, first.optim.name, first.masking.fraction) == ("muon", 0.4,
                                                                                                  "adamw", 0.25)
    plus = make_pretrain_config("crammed-bert-plus", budget_tokens=1)
    ours, theirs = make_config(last.model, 100, last.model_settings), make_config(plus.model, 100)
    for key in ("position_embedding", "type_vocab_size", "first_layer_attn_norm", "mlm_head_transform", "norm_bias",
                "layer_norm_eps", "norm_scheme", "ffn_type", "use_bias", "rope_theta"):
        assert getattr(ours, key) == getattr(theirs, key), key


def test_a_rerun_with_fewer_variants_keeps_the_others_in_the_record_and_the_order(tmp_path):
    from crammer.lab.sweep import _claim

    def record(*names):
        return {"command": [], "budget": {"tokens": 10}, "corpus": {"recipe": "r"}, "order": list(names),
                "variants": {n: {"preset": "tiny", "overrides": [f"seed-free={n}"]} for n in names}}

    _claim(tmp_path, record("paper", "muon", "combo"))
    merged = _claim(tmp_path, record("paper", "wsd"))  # a variant added later, run on its own
    assert merged["order"] == ["paper", "wsd", "muon", "combo"] and set(merged["variants"]) == {
        "paper", "wsd", "muon", "combo"}
    assert json.loads((tmp_path / "sweep.json").read_text()) == merged
    assert _claim(tmp_path, record("paper", "muon", "wsd", "combo"))["order"] == ["paper", "muon", "wsd", "combo"]


def test_a_member_is_a_cram_pretrain_command(tmp_path):
    member = Member(parse_variant("lr:optim.lr=5e-4", "tiny"), 1, tmp_path / "lr" / "seed-1")
    cmd = member.command(Path("/data"), Budget(seconds=100.0))
    assert cmd[:3] == [sys.executable, "-m", "crammer"] and "--resume" not in cmd
    assert cmd[3:] == ["pretrain", "--data", "/data", "--out", str(member.run_dir), "--preset", "tiny", "--budget",
                       "100", "seed=1", "checkpoint.every_seconds=20", "optim.lr=5e-4"]  # a fifth of the budget
    assert "checkpoint.every_seconds=60" in member.command(Path("/data"), Budget(tokens=10**9))
    member.run_dir.mkdir(parents=True)
    (member.run_dir / "pretrain_config.json").write_text("{}")  # started: it continues
    assert "--resume" in member.command(Path("/data"), Budget(tokens=10))
    own = Member(parse_variant("c:checkpoint.every_steps=5", "tiny"), 0, tmp_path / "c")
    assert not any(a.startswith("checkpoint.every_seconds") for a in own.command(Path("/data"), Budget(tokens=10)))


def _sweep_command(corpus: Path, out: Path, lr: str = "4e-3") -> list[str]:
    return [sys.executable, "-m", "crammer", "sweep", "--data", str(corpus), "--out", str(out), "--preset", "tiny",
            "--budget-tokens", str(TOKENS), "--seeds", "2", "--parallel", "1", "--variant", "base",
            "--variant", f"lr:optim.lr={lr}", "batch.target=16", "eval.every_steps=10", "checkpoint.every_steps=10"]


def _wait_then_kill(process: subprocess.Popen, out: Path) -> None:
    """kill -9 the sweep and its members once the first member finished and the second has a checkpoint."""
    first, second = out / "base" / "seed-0", out / "lr" / "seed-0"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the sweep ended (status {process.returncode}) before it could be killed mid-run")
        if ((first / "final" / "pretraining.json").is_file() and any((second / "checkpoints").glob("step-*"))
                and not (second / "final").exists()):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.05)
    pytest.fail("the sweep never reached its second member's first checkpoint")


@pytest.mark.slow
def test_a_sweep_resumes_after_kill_9_and_its_table_is_the_members_metrics(corpus, tmp_path, capsys):
    out = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(_sweep_command(corpus, out), env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_then_kill(process, out)
    kept = out / "base" / "seed-0" / "final" / "model.safetensors"
    mtime = kept.stat().st_mtime_ns
    resumed_from = max(int(p.name[5:]) for p in (out / "lr" / "seed-0" / "checkpoints").glob("step-*"))

    again = subprocess.run(_sweep_command(corpus, out), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "sweep: base/seed-0: finished before, kept" in again.stderr
    assert "sweep: lr/seed-0: resuming from its newest checkpoint" in again.stderr
    assert kept.stat().st_mtime_ns == mtime  # the finished member was not run again
    steps = [r["step"] for r in training_rows(read_metrics(out / "lr" / "seed-0"))]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] > resumed_from  # one run, continued

    # The table is the members' own numbers, and the seed is their only difference.
    rows = json.loads((out / COMPARE_JSON).read_text())["rows"]
    assert [r["variant"] for r in rows] == ["base", "lr"] and again.stdout.startswith("| variant | seeds |")
    masks = set()
    for row in rows:
        assert row["overrides"] == ["preset=tiny", "batch.target=16", "eval.every_steps=10",
                                    "checkpoint.every_steps=10", *(["optim.lr=4e-3"] if row["variant"] == "lr" else [])]
        for member in row["members"]:
            run = Path(member["path"])
            records = read_metrics(run)
            summary = json.loads((run / "final" / "pretraining.json").read_text())
            assert member["val_loss"] == validation_rows(records)[-1]["val_loss"] == summary["validation"]["loss"]
            assert member["tokens_per_s"] == statistics.median(r["tokens_per_s"] for r in training_rows(records))
            assert member["tokens"] == summary["tokens"] >= TOKENS
            first = validation_rows(records)[0]
            masks.add((first["val_sequences"], summary["validation"]["sequences"], summary["validation"]["masked_tokens"]))
        assert row["val_loss"] == statistics.median(m["val_loss"] for m in row["members"])
        configs = [json.loads((out / row["variant"] / f"seed-{k}" / "pretrain_config.json").read_text()) for k in (0, 1)]
        assert changed_keys(*configs) == ["config_hash", "seed"]
    assert len(masks) == 1  # every member validated on the same sequences and masked positions

    # `cram compare` on the same folders gives the same table.
    members = [row["members"][k]["path"] for row in rows for k in (0, 1)]
    assert main(["compare", *members, "--out", str(tmp_path / "again")]) == 0
    by_folder = json.loads((tmp_path / "again" / COMPARE_JSON).read_text())["rows"]
    assert [{**r, "overrides": None} for r in rows] == by_folder  # given by folder: no sweep definitions
    assert main(["compare", str(out), "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / COMPARE_JSON).read_text())
    assert whole["rows"] == rows
    # Its reproducibility section gives the sweep's own command, then this comparison's.
    recorded = json.loads((out / "sweep.json").read_text())["command"]
    assert whole["sweep_commands"] == [recorded] and recorded[:2] == ["cram", "sweep"]
    assert json.loads((out / COMPARE_JSON).read_text())["sweep_commands"] == []  # the sweep's own report
    assert shlex.join(recorded) in (tmp_path / "whole" / COMPARE_MD).read_text()

    # A changed definition of an existing variant is refused in one line, before anything runs.
    capsys.readouterr()
    assert main(_sweep_command(corpus, out, lr="3e-3")[3:]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "variant 'lr' was preset=tiny," in err and "optim.lr=3e-3; give" in err
    changed_budget = _sweep_command(corpus, out)[3:]
    changed_budget[changed_budget.index("--budget-tokens") + 1] = "9999"
    assert main(changed_budget) == 2
    assert "this sweep ran with another budget: {'tokens': " in capsys.readouterr().err


def test_a_failing_member_is_named_and_the_others_are_reported_with_glue(corpus, glue_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "--data", str(corpus), "--out", str(out), "--preset", "tiny", "--budget-tokens", "4096",
                 "--glue", "rte", "--glue-dir", str(glue_dir), "--variant", "base",
                 "--variant", "short:model.max_position_embeddings=32", "batch.target=16", "glue.trials=1",
                 "glue.epochs=1", "glue.max_train_examples=32", "glue.max_eval_examples=32"])
    err = capsys.readouterr().err
    assert code == 2 and "cram: error: sweep members failed: short/seed-0 (exit status 2" in err
    assert "max_position_embeddings" in (out / "short" / "seed-0.log").read_text()
    report = (out / COMPARE_MD).read_text()
    assert "| base | 1 |" in report and "| short |" not in report
    glue = json.loads((out / "base" / "seed-0" / "glue" / "results.json").read_text())
    assert glue["config"]["max_train_examples"] == 32 and list(glue["tasks"]) == ["rte"]
    rte = glue["glue_numbers"]["RTE"]
    assert f"| variant (GLUE dev) | RTE | mean |\n|---|---|---|\n| base | {rte:.1f} | {rte:.1f} |" in report


def test_on_gpus_each_member_gets_one_of_its_own_and_no_more_run_at_once(corpus, tmp_path):
    """Three members, `--parallel 3`, two GPUs: two at a time, each with CUDA_VISIBLE_DEVICES set to a GPU no
    other running member holds (the members here are real runs; on this CPU-only machine they ignore the id)."""
    from crammer.lab.sweep import run_members

    members = [Member(parse_variant(f"v{k}", "tiny"), 0, tmp_path / f"v{k}" / "seed-0") for k in range(3)]
    lines: list[str] = []
    failed = run_members(members, corpus, Budget(tokens=64 * 8 * 4), parallel=3, log=lines.append,
                         gpus=["0", "1"])
    assert not failed and all(m.finished for m in members)
    assert lines[0] == "sweep: 2 GPU(s): running 2 at a time, one a GPU"
    starts = [line for line in lines if ": starting" in line]
    assert starts[:2] == ["sweep: v0/seed-0: starting on GPU 0", "sweep: v1/seed-0: starting on GPU 1"]
    assert starts[2] in ("sweep: v2/seed-0: starting on GPU 0", "sweep: v2/seed-0: starting on GPU 1")
    first_done = next(i for i, line in enumerate(lines) if ": finished" in line)
    assert lines.index(starts[2]) > first_done  # the third waited for a GPU to be free
