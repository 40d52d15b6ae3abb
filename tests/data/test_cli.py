"""`cram data prepare` and `cram data inspect`: flags, presets, one-line errors, a light parser."""

from __future__ import annotations

import json
import subprocess
import sys

from crammer.cli import main
from tests.data.helpers import manifest


def test_cli_prepare_and_inspect(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["data", "prepare", "--source", "pydoc::max_docs=20", "--out", str(out), "--vocab-size", "600",
            "--seq-len", "32", "--order", "easy-first", "--dedup", "--seed", "3", "--filter-ratio", "0.4",
            "--workers", "2", "--validation-sequences", "10", "--quiet", "ascii_only=true", "shard_sequences=50"]
    assert main(argv) == 0
    m = manifest(out)
    cfg = m["config"]
    assert (cfg["order"], cfg["dedup"], cfg["seed"], cfg["ascii_only"], cfg["shard_sequences"]) == (
        "easy-first", True, 3, True, 50)
    assert m["counts"]["documents_read"] == 20 and len(m["shards"]) > 1
    assert m["validation_sequences"] >= 10 and m["validation_documents"] >= 1 and cfg["validation_sequences"] == 10
    assert "Replace" in json.dumps(m["normalizer"])  # ascii_only made it into the tokenizer
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "-n", "10"]) == 0
    shown = capsys.readouterr().out
    assert f"{m['num_sequences']} sequences x 32 tokens" in shown and "smoke corpus" in shown
    assert f"validation: {m['validation_sequences']} sequences from {m['validation_documents']} held-out" in shown
    assert "documents_read=20" in shown and "--- sequence 9 ---" in shown and "[SEP]" in shown


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "prepare", "--source", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cram: error: ") and err.count("\n") == 1 and "missing.jsonl" in err
    assert main(["data", "prepare", "--out", str(tmp_path / "o")]) == 2
    assert "--source" in capsys.readouterr().err
    assert main(["data", "prepare", "--preset", "smoke", "--out", str(tmp_path / "o"), "bogus=1"]) == 2
    assert "unknown config key 'bogus'" in capsys.readouterr().err
    assert main(["data", "inspect", str(tmp_path)]) == 2
    assert "not a prepared corpus" in capsys.readouterr().err


def test_smoke_preset_is_the_demo_corpus(tmp_path):
    out = tmp_path / "smoke"
    assert main(["data", "prepare", "--preset", "smoke", "--out", str(out), "--quiet", "--max-docs", "15"]) == 0
    m = manifest(out)
    assert m["sources"] == ["pydoc"] and m["config"]["vocab_size"] == 8192 and m["smoke_corpus"]


def test_the_parser_imports_no_pipeline():
    """`cram` builds every stage's parser on each call: `cram data` must not pay for tokenizers, tqdm or torch."""
    code = """
import sys, types
sys.modules["crammer.model"] = types.ModuleType("crammer.model")  # what `import crammer` registers is not ours
import crammer.data.cli, crammer.data.config
print(sorted(m for m in ("torch", "transformers", "tokenizers", "tqdm", "datasets", "pyarrow") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_inspect_verify_finds_a_token_id_out_of_the_vocabulary(tmp_path, capsys):
    """A damaged shard (or one of another tokenizer) holds ids the model's embedding has no row for: `--verify`
    reads every shard, training and validation, and names the first such id, its shard, sequence and position."""
    import numpy as np

    out = tmp_path / "data"
    assert main(["data", "prepare", "--source", "pydoc::max_docs=20", "--out", str(out), "--vocab-size", "600",
                 "--seq-len", "32", "--validation-sequences", "10", "--quiet", "shard_sequences=50"]) == 0
    m = manifest(out)
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "-n", "0", "--verify"]) == 0
    total = (m["num_sequences"] + m["validation_sequences"]) * 32
    shards = len(m["shards"]) + len(m["validation_shards"])
    assert f"verified: {total:,} token ids in {shards} shard(s), all in the vocabulary" in capsys.readouterr().out
    shard = out / m["validation_shards"][-1]["file"]
    blocks = np.load(shard)
    blocks[3, 7] = m["vocab_size"] + 5
    np.save(shard, blocks)
    assert main(["data", "inspect", str(out), "-n", "0", "--verify"]) == 2
    assert capsys.readouterr().err == (f"cram: error: {shard}: token id {m['vocab_size'] + 5} at sequence 3, position "
                                       f"7 is not in the vocabulary (ids 0-{m['vocab_size'] - 1}): a damaged shard, "
                                       "or one of another tokenizer\n")
