"""Any language (#27), end to end: a tiny model pretrained on Chinese or Japanese manual pages learns (its
validation loss and bits per character fall) and fine-tunes on a labelled set made from the same pages."""

from __future__ import annotations

import json
import math
import re

import pytest

from crammer.cli import main
from crammer.data import PackedCorpus
from crammer.data.config import CorpusConfig
from crammer.data.prepare import prepare
from crammer.train.loop import pretrain
from tests.data.test_language import pages, write_jsonl
from tests.train.conftest import tiny, validation


OPTIONS = re.compile(r"^\s*(\S+\s+)?(OPTIONS|选项|オプション)\s*$", re.MULTILINE)  # a section header


def _name_line(page: str) -> str:
    """The NAME line ("ls - 列出目录内容"), which says what the page is about without its synopsis."""
    return next((line for line in page.splitlines()[:8] if " - " in line), page[:80])


@pytest.mark.parametrize("language", ("ja", "zh"))
def test_a_tiny_model_learns_chinese_and_japanese_and_fine_tunes_on_them(shared_data, tmp_path, language, capsys):
    texts = pages(shared_data, language, 400)
    data = prepare(CorpusConfig(sources=(str(write_jsonl(tmp_path / "pages.jsonl", texts)),), out=str(tmp_path / "data"),
                                vocab_size=2000, seq_len=64, validation_sequences=64), progress=False)
    m = PackedCorpus(data).manifest
    assert m.text.normalization == "cased" and m.counts.documents_kept >= 0.9 * m.counts.documents_read
    final = pretrain(tiny(["eval.every_steps=10", "batch.target=8"], tokens=64 * 8 * 40), data, tmp_path / "run")
    rows = validation(tmp_path / "run")
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5
    # bits per character = nats per token x tokens per character / ln 2, the characters counted at prepare time
    per_char = m.validation_text_tokens / m.validation_characters
    assert 0.3 < per_char < 1.0  # about a token a character or two, not English's four
    for row in rows:
        assert row["val_bits_per_char"] == pytest.approx(row["val_loss"] * per_char / math.log(2))
    summary = json.loads((final / "pretraining.json").read_text())
    assert summary["validation"]["bits_per_char"] == pytest.approx(rows[-1]["val_bits_per_char"])

    # which kind of manual page it is: a command's, with an OPTIONS section (sections 1 and 8), or another
    labelled = [{"text": _name_line(t), "label": "options" if OPTIONS.search(t) else "none"} for t in texts]
    train, dev = write_jsonl_rows(tmp_path / "train.jsonl", labelled[:96]), write_jsonl_rows(tmp_path / "dev.jsonl",
                                                                                             labelled[96:160])
    capsys.readouterr()
    assert main(["finetune", "--model", str(final), "--train", str(train), "--eval", str(dev), "--trials", "1",
                 "--out", str(tmp_path / "finetune"), "epochs=1", "device=cpu"]) == 0
    results = json.loads((tmp_path / "finetune" / "results.json").read_text())
    assert results["task"]["labels"] == sorted({row["label"] for row in labelled[:96]})
    assert 0 <= results["tasks"]["classification"]["median"]["accuracy"] <= 100


def write_jsonl_rows(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
