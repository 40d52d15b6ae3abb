"""Hugging Face integration: safetensors round trip, Auto classes, trust_remote_code, fill-mask pipeline."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    pipeline,
)

from crammer.model import (
    CrammedBertConfig,
    CrammedBertForMaskedLM,
    CrammedBertForSequenceClassification,
    CrammedBertModel,
    make_config,
)

VOCAB = 307


@pytest.fixture(scope="module")
def saved_mlm(tmp_path_factory) -> tuple[Path, CrammedBertForMaskedLM]:
    torch.manual_seed(0)
    model = CrammedBertForMaskedLM(make_config("tiny", VOCAB, ["position_embedding=rotary"])).eval()
    folder = tmp_path_factory.mktemp("crammed") / "model"
    model.save_pretrained(folder)
    return folder, model


def ids():
    return torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(4))


def test_save_writes_safetensors_config_and_code(saved_mlm):
    folder, _ = saved_mlm
    names = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_crammed_bert.py", "configuration_crammed_bert.py"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "crammed_bert" and config["architectures"] == ["CrammedBertForMaskedLM"]
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForPreTraining",
                                       "AutoModelForSequenceClassification", "AutoModelForTokenClassification",
                                       "AutoModelForQuestionAnswering", "AutoModelForMultipleChoice"}
    for name in ("modeling_crammed_bert.py", "configuration_crammed_bert.py"):
        tree = ast.parse((folder / name).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.level == 0}
        assert imported <= {"__future__", "torch", "transformers"}, (name, imported)


@pytest.mark.parametrize("arch", [[], ["norm_scheme=post", "use_bias=true", "ffn_type=mlp",
                                       "position_embedding=learned", "type_vocab_size=2",
                                       "mlm_head_transform=true"]])
def test_round_trip_is_bit_identical(tmp_path, arch):
    torch.manual_seed(1)
    model = CrammedBertForMaskedLM(make_config("tiny", VOCAB, arch)).eval()
    model.save_pretrained(tmp_path)
    loaded = CrammedBertForMaskedLM.from_pretrained(tmp_path).eval()
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert loaded.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    assert torch.equal(model(ids()).logits, loaded(ids()).logits)
    volatile = {"_name_or_path", "dtype"}
    strip = lambda config: {k: v for k, v in config.to_dict().items() if k not in volatile}  # noqa: E731
    assert strip(loaded.config) == strip(model.config)


def test_auto_classes_load_the_saved_folder(saved_mlm):
    folder, model = saved_mlm
    assert isinstance(AutoConfig.from_pretrained(folder), CrammedBertConfig)
    mlm = AutoModelForMaskedLM.from_pretrained(folder).eval()
    assert type(mlm) is CrammedBertForMaskedLM and torch.equal(mlm(ids()).logits, model(ids()).logits)
    encoder = AutoModel.from_pretrained(folder).eval()
    assert type(encoder) is CrammedBertModel
    torch.testing.assert_close(encoder(ids()).last_hidden_state, model.bert(ids()).last_hidden_state)
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    assert type(classifier) is CrammedBertForSequenceClassification and classifier.num_labels == 1
    assert torch.equal(classifier.bert.layers[1].ffn.up.weight, model.bert.layers[1].ffn.up.weight)


def test_trust_remote_code_loads_without_crammer(saved_mlm, tmp_path):
    folder, model = saved_mlm
    torch.save(model(ids()).logits, tmp_path / "expected.pt")
    torch.save(ids(), tmp_path / "ids.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification
        model = AutoModelForMaskedLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        module = type(model).__module__
        assert module.startswith("transformers_modules.") and module.endswith("modeling_crammed_bert"), module
        ids = torch.load({str(tmp_path / "ids.pt")!r}, weights_only=True)
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        assert torch.equal(model(ids).logits, expected)
        cls = AutoModelForSequenceClassification.from_pretrained({str(folder)!r}, trust_remote_code=True, num_labels=2)
        assert cls(ids).logits.shape == (2, 2)
        import transformers
        for auto, field, shape in (("AutoModelForTokenClassification", "logits", (2, 11, 2)),
                                   ("AutoModelForQuestionAnswering", "start_logits", (2, 11)),
                                   ("AutoModelForPreTraining", "logits", (2, 11, {VOCAB}))):
            head = getattr(transformers, auto).from_pretrained({str(folder)!r}, trust_remote_code=True)
            assert type(head).__module__ == module, (auto, type(head).__module__)
            assert getattr(head(ids), field).shape == shape, auto
        choice = transformers.AutoModelForMultipleChoice.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert choice(ids[None]).logits.shape == (1, 2)
        assert "crammer" not in sys.modules, "crammer was imported"
        print("REMOTE-OK", module)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-OK transformers_modules." in result.stdout


def test_fill_mask_pipeline_runs(tokenizer, tmp_path):
    torch.manual_seed(0)
    config = make_config("tiny", len(tokenizer), [f"pad_token_id={tokenizer.pad_token_id}"])
    model = CrammedBertForMaskedLM(config).eval()
    model.save_pretrained(tmp_path, tokenizer=tokenizer)  # one folder: weights, code and tokenizer
    assert {"model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in tmp_path.iterdir()}
    fill = pipeline("fill-mask", model=str(tmp_path), top_k=3)
    predictions = fill("the history of the [MASK] is long.")
    assert len(predictions) == 3
    assert all(p["token_str"] and 0 <= p["score"] <= 1 for p in predictions)
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)
    batch = fill(["a [MASK] city.", "the [MASK] river is in the north of the country."])
    assert len(batch) == 2 and all(len(row) == 3 for row in batch)
