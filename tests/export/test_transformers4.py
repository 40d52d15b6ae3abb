"""Native folders (`--to modernbert`, `--to bert`) on transformers 4.x: the model and its tokenizer load with no
crammer and no remote code, and compute what crammer computes.

transformers 4 cannot share a virtual environment with crammer (which needs 5), so `make install` puts
transformers 4.57 with its own huggingface_hub and tokenizers in `VENV/transformers4` (`pip install --target`);
the check runs in a subprocess with that folder first on its path, torch and the rest from the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crammer.cli import main
from tests.export.test_export import LOAD_AND_COMPARE, SENTENCE, WITHOUT_CRAMMER, reference_outputs

TRANSFORMERS4 = Path(os.environ.get("CRAMMER_TRANSFORMERS4", Path(sys.prefix) / "transformers4"))

CHECK = WITHOUT_CRAMMER + f"SENTENCE = {SENTENCE!r}\n" + LOAD_AND_COMPARE + textwrap.dedent("""
    import transformers
    from transformers import AutoModelForSequenceClassification

    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    print(json.dumps({"version": transformers.__version__, "worst": worst, "tokenizer": type(tok).__name__,
                      "ids": tok(SENTENCE)["input_ids"], "classes": [type(m).__name__ for m in (mlm, classifier)],
                      "crammer_loaded": any(name.startswith("crammer") for name in sys.modules)}))
""")


def run_on_transformers4(folder: Path, reference: Path, cwd: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(TRANSFORMERS4), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", CHECK, str(folder), str(reference)], capture_output=True, text=True,
                         cwd=cwd, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def transformers4() -> Path:
    if not (TRANSFORMERS4 / "transformers").is_dir():
        pytest.skip(f"no transformers 4 at {TRANSFORMERS4} (`make install` puts it there)")
    return TRANSFORMERS4


@pytest.mark.parametrize("target", ["modernbert", "bert"])
def test_native_folder_loads_and_matches_on_transformers_4(target, transformers4, modernbert_final,
                                                          export_corpus, tmp_path):
    from tests.export.conftest import pretrained
    from transformers import AutoTokenizer

    if target == "modernbert":
        final = modernbert_final
    else:
        final = pretrained(export_corpus, tmp_path / "run", "crammed-bert", [
            "model.norm_scheme=post", "model.use_bias=true", "model.ffn_type=mlp", "model.position_embedding=learned",
            "model.type_vocab_size=2", "model.mlm_head_transform=true"])
    out = tmp_path / target
    assert main(["export", str(final), "--to", target, "--out", str(out)]) == 0
    reference_outputs(final, tmp_path / "reference.pt")
    result = run_on_transformers4(out, tmp_path / "reference.pt", tmp_path)
    assert result["version"].startswith("4.") and not result["crammer_loaded"]
    assert result["tokenizer"] == "BertTokenizerFast"
    assert result["ids"] == AutoTokenizer.from_pretrained(out)(SENTENCE)["input_ids"]
    assert result["worst"]["last_hidden_state"] <= 1e-5 and result["worst"]["logits"] <= 1e-5, result["worst"]
    prefix = "ModernBert" if target == "modernbert" else "Bert"
    assert result["classes"] == [f"{prefix}ForMaskedLM", f"{prefix}ForSequenceClassification"]
