"""`crammer.hub.card`: the model card of a real (tiny) pretraining run parses as a Hugging Face card and carries
the run's numbers, before GLUE and after it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from crammer.data.config import CorpusConfig
from crammer.data.manifest import Manifest
from crammer.data.prepare import prepare
from crammer.errors import CrammerError
from crammer.hub.card import (
    MARKER,
    ModelCardFacts,
    facts_from_run_files,
    hub_datasets,
    known_languages,
    render_model_card,
    set_card_repo_id,
    write_model_card,
)
from crammer.io import read_json
from crammer.train.config import make_pretrain_config
from crammer.units import human


@pytest.fixture(scope="module")
def run(wiki_sample: Path, tmp_path_factory) -> tuple[Path, Path]:
    """A prepared corpus (the Wikipedia sample, 64-token blocks) and a tiny pretraining run on it."""
    import torch

    from crammer.pipeline.pretrain import pretrain

    root = tmp_path_factory.mktemp("card-run")
    corpus = prepare(CorpusConfig(sources=(f"{wiki_sample}::max_docs=300",), out=str(root / "data"),
                                  vocab_size=1000, seq_len=64, filter_ratio=0.0), progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        final = pretrain(make_pretrain_config("tiny", ["logging.every_steps=1"], budget_tokens=64 * 8 * 12),
                         corpus, root / "pretrain")
    finally:
        torch.set_num_threads(threads)
    return final, corpus


def test_card_of_a_finished_run_parses_and_carries_its_numbers(run):
    final, corpus = run
    summary = read_json(final / "pretraining.json")
    facts = facts_from_run_files(final)
    path = write_model_card(final, facts)
    card = ModelCard.load(path)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "fill-mask"
    assert card.data.license == "apache-2.0" and "crammer" in card.data.tags
    text = card.text
    manifest = Manifest.read(corpus)
    assert f"| tokens seen | {summary['tokens']:,} (" in text
    assert f"| optimizer steps | {summary['steps']:,} |" in text
    assert f"| corpus tokens | {manifest.num_tokens:,} in {manifest.num_sequences:,} blocks of 64 |" in text
    assert f"{manifest.counts.documents_kept:,} kept of {manifest.counts.documents_read:,} read" in text
    assert f"| budget | {64 * 8 * 12:,} tokens (" in text
    assert f"| precision | {summary['precision']} |" in text and "| hardware | CPU |" in text  # recorded by pretraining
    assert "pretrained from scratch on a CPU within" in text and "one GPU" not in text  # before: "on one GPU"
    assert "tokens/s" in text and "| last training MLM loss |" in text
    assert "| corpus | `sample.txt::max_docs=300` |" in text  # a local source by its name, not its path
    if summary.get("validation"):
        assert f"| validation MLM loss | {summary['validation']['loss']:.4f}" in text
    assert "Not evaluated yet" in text and 'model_id = "path/to/this/folder"' in text
    assert f"| parameters | {human(summary['parameters'])} |" in text
    assert "2 layers × 128 hidden × 2 heads, GLU 512, pre-LayerNorm, scaled sinusoidal positions" in text


def test_card_after_glue_has_the_table_and_reference_rows(run, glue_dir, tmp_path):
    from crammer.eval import evaluate_glue, make_glue_config

    final, corpus = run
    config = make_glue_config("sane", [f"glue_dir={glue_dir}", "tasks=rte", "trials=1", "epochs=1",
                                       "max_train_examples=32", "max_eval_examples=32", "device=cpu", "pad_multiple=8"])
    results = evaluate_glue(str(final), config, tmp_path / "glue", log=lambda _: None)
    write_model_card(final, facts_from_run_files(final, corpus, tmp_path / "glue" / "results.json"))
    text = ModelCard.load(final / "README.md").text
    rte = results["glue_numbers"]["RTE"]
    assert "## GLUE (dev)" in text and "| model | CoLA |" in text
    row = next(line for line in text.splitlines() if line.startswith("| **this model** |"))
    assert f"| {rte:.1f} |" in row and row.endswith("| **–** |")  # one task: no GLUE score
    assert "| BERT-base, fully trained (reference) |" in text and "80.9" in text
    assert "**Subsets** of the tasks were used" in text and "Not every task ran" in text


def test_render_is_a_pure_function_of_the_facts():
    facts = {"title": "my model", "corpus_sources": ["hf:allenai/c4:en@train"], "datasets": ["allenai/c4"],
             "languages": ["en"], "license": "mit", "tokens_seen": 123456, "gpu": "NVIDIA H100 80GB HBM3",
             "world_size": 2, "tokens_per_s": 645000.4, "mfu": 0.412, "validation_loss": 1.98761}
    text = render_model_card(facts)
    assert text == render_model_card(ModelCardFacts(**{k: tuple(v) if isinstance(v, list) else v
                                                      for k, v in facts.items()}))
    card = ModelCard(text)
    assert card.data.datasets == ["allenai/c4"] and card.data.language == ["en"] and card.data.license == "mit"
    assert "| hardware | 2× NVIDIA H100 80GB HBM3 |" in text and "pretrained from scratch on 2 GPUs within" in text
    assert "| throughput (median) | 645,000 tokens/s, MFU 41.2% |" in text
    assert "| validation MLM loss | 1.9876 |" in text and "# my model" in text
    with pytest.raises(CrammerError, match="unknown key\\(s\\) tokens; known:"):
        render_model_card({"tokens": 5})


def test_datasets_and_languages_come_from_the_sources():
    sources = ("hf:wikimedia/wikipedia:20231101.en@train", "hf:rojagtap/bookcorpus@train", "data/*.txt")
    assert hub_datasets(sources) == ("wikimedia/wikipedia", "rojagtap/bookcorpus")
    assert known_languages(sources) == ("en",)
    assert known_languages(("hf:allenai/c4:de@train::max_docs=5",)) == ("de",)
    assert known_languages(("data/*.txt",)) == () and known_languages(("pydoc",)) == ("en",)
    text = render_model_card({"corpus_sources": ("data/*.txt",)})
    assert "language" not in ModelCard(text).data.to_dict()  # unknown: left out, not guessed


def test_push_points_the_card_at_the_repo(tmp_path):
    write_model_card(tmp_path, ModelCardFacts())
    assert set_card_repo_id(tmp_path, "me/tiny-bert")
    text = (tmp_path / "README.md").read_text()
    assert 'model_id = "me/tiny-bert"' in text and MARKER in text
    (tmp_path / "README.md").write_text("# my own card\n\nmodel_id = \"x\"\n")
    assert not set_card_repo_id(tmp_path, "me/other")  # not ours: untouched
    assert (tmp_path / "README.md").read_text() == "# my own card\n\nmodel_id = \"x\"\n"


def test_missing_run_files_are_clear_errors(tmp_path, run):
    final, _ = run
    with pytest.raises(CrammerError, match="no pretraining.json; not the final/ folder"):
        facts_from_run_files(tmp_path)
    with pytest.raises(CrammerError, match="no manifest.json; not a prepared corpus"):
        facts_from_run_files(final, corpus_dir=tmp_path)
    assert json.loads((final / "config.json").read_text())["model_type"] == "crammed_bert"


def test_the_card_says_one_gpu_only_for_a_one_gpu_run():
    assert "from scratch on one GPU within" in render_model_card({"gpu": "NVIDIA H100 80GB HBM3"})
    assert "from scratch on a CPU within" in render_model_card({"gpu": "CPU"})
