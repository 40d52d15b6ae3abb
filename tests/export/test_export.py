"""`cram export`: native `modernbert` / `bert` folders that transformers loads with no crammer and no remote code,
outputs equal to crammer's; ONNX for every architecture, checked in ONNX Runtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoTokenizer

from crammer.cli import main
from crammer.export.verify import sample_batches
from crammer.model import CrammedBertForMaskedLM

# Run in a fresh interpreter where `import crammer` fails (as where it is not installed), outside the repository.
WITHOUT_CRAMMER = textwrap.dedent("""
    import importlib.abc, sys

    class NoCrammer(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "crammer" or name.startswith("crammer."):
                raise ImportError("crammer is not installed here")

    sys.meta_path.insert(0, NoCrammer())
""")

SENTENCE = "The Abbey's café (founded in 1302) is on the river; naïve visitors ask where the [MASK] is."
# Loads the native folder sys.argv[1] with no remote code; `worst` is its largest difference from crammer's outputs
# saved in sys.argv[2] (`reference_outputs`), on the real tokens of each row.
LOAD_AND_COMPARE = textwrap.dedent("""
    import json, torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    folder, reference = sys.argv[1], torch.load(sys.argv[2])
    mlm = AutoModelForMaskedLM.from_pretrained(folder).eval()  # no trust_remote_code
    tok = AutoTokenizer.from_pretrained(folder)
    worst = {"last_hidden_state": 0.0, "logits": 0.0}
    with torch.no_grad():
        for ids, mask, hidden, logits in reference:
            keep = mask.bool()
            out = mlm.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
            worst["last_hidden_state"] = max(worst["last_hidden_state"], (out - hidden)[keep].abs().max().item())
            out = mlm(input_ids=ids, attention_mask=mask).logits
            worst["logits"] = max(worst["logits"], (out - logits)[keep].abs().max().item())
""")
NATIVE_CHECK = WITHOUT_CRAMMER + f"SENTENCE = {SENTENCE!r}\n" + LOAD_AND_COMPARE + textwrap.dedent("""
    from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification, BertTokenizerFast,
                              pipeline)
    from sentence_transformers import SentenceTransformer

    fill = pipeline("fill-mask", model=folder)("the history of the [MASK] is long.")
    embedding = SentenceTransformer(folder, device="cpu").encode(["the history of the city"])
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=3)
    tagger = AutoModelForTokenClassification.from_pretrained(folder, num_labels=5)
    encoded = tok(["the history of the city", "a river"], padding=True, return_tensors="pt")
    with torch.no_grad():
        shapes = [list(classifier(**encoded).logits.shape), list(tagger(**encoded).logits.shape)]
    ids = {name: t(SENTENCE)["input_ids"] for name, t in (("auto", tok), ("bert", BertTokenizerFast.from_pretrained(folder)))}
    print(json.dumps({"worst": worst, "classes": [type(m).__name__ for m in (mlm, classifier, tagger)], "ids": ids,
                      "fill": len(fill), "embedding": list(embedding.shape), "shapes": shapes,
                      "crammer_loaded": any(name.startswith("crammer") for name in sys.modules)}))
""")


def run_without_crammer(script: str, *args: str, cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=cwd,
                         env={**env, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def reference_outputs(final: Path, path: Path) -> None:
    """crammer's last hidden state and logits on the check batches (lengths 8, 128, the maximum; padded or not)."""
    model = CrammedBertForMaskedLM.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final, config=model.config)
    rows = []
    with torch.no_grad():
        for _, ids, mask in sample_batches(tokenizer, [8, 128, model.config.max_position_embeddings]):
            rows.append((ids, mask, model.bert(ids, mask).last_hidden_state, model(ids, mask).logits))
    torch.save(rows, path)


def test_modernbert_shape_exports_to_a_native_folder_equal_to_crammer(modernbert_final, tmp_path, capsys):
    out = tmp_path / "native"
    assert main(["export", str(modernbert_final), "--to", "modernbert", "--out", str(out)]) == 0
    assert "no remote code" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "modernbert" and config["architectures"] == ["ModernBertForMaskedLM"]
    assert config["layer_types"] == ["full_attention"] * 2 and config["global_attn_every_n_layers"] == 1
    assert config["intermediate_size"] == 128 and config["norm_bias"] is False and config["norm_eps"] == 1e-5
    assert not config["sparse_prediction"] and "auto_map" not in config and not list(out.glob("*.py"))
    tokenizer = AutoTokenizer.from_pretrained(modernbert_final, config=CrammedBertForMaskedLM.config_class())
    assert (config["pad_token_id"], config["cls_token_id"], config["sep_token_id"]) == (
        tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "BertTokenizerFast"
    assert tokenizer_config["model_input_names"] == ["input_ids", "attention_mask"]  # ModernBERT has no segments
    vocab = (out / "vocab.txt").read_text().splitlines()
    assert len(vocab) == len(tokenizer) and vocab[tokenizer.mask_token_id] == "[MASK]"
    assert (out / "README.md").read_text() == (modernbert_final / "README.md").read_text()

    reference_outputs(modernbert_final, tmp_path / "reference.pt")
    result = run_without_crammer(NATIVE_CHECK, str(out), str(tmp_path / "reference.pt"), cwd=tmp_path)
    assert not result["crammer_loaded"]
    assert result["worst"]["last_hidden_state"] <= 1e-5 and result["worst"]["logits"] <= 1e-5, result["worst"]
    assert result["classes"] == ["ModernBertForMaskedLM", "ModernBertForSequenceClassification",
                                 "ModernBertForTokenClassification"]
    # AutoTokenizer of transformers 5 reads a modernbert folder's tokenizer.json as is (TokenizersBackend); the
    # folder also loads as a plain BertTokenizerFast from vocab.txt. Both tokenize as crammer does.
    assert result["ids"]["auto"] == result["ids"]["bert"] == tokenizer(SENTENCE)["input_ids"]
    assert result["fill"] == 5 and result["embedding"] == [1, 64]
    assert result["shapes"] == [[2, 3], [2, len(tokenizer("the history of the city")["input_ids"]), 5]]


def test_the_default_architecture_is_refused_naming_each_setting(crammed_final, tmp_path, capsys):
    out = tmp_path / "native"
    assert main(["export", str(crammed_final), "--to", "modernbert", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cram: error: export --to modernbert:")
    for setting in ("position_embedding='scaled_sinusoidal'", "first_layer_attn_norm=True",
                    "mlm_head_transform=False"):
        assert setting in err
    assert "norm_scheme" not in err and not out.exists()


@pytest.mark.parametrize("which", ["crammed", "modernbert"])
def test_onnx_export_matches_pytorch_in_onnx_runtime(which, crammed_final, modernbert_final, wiki_sample, tmp_path,
                                                     capsys):
    final = {"crammed": crammed_final, "modernbert": modernbert_final}[which]
    out = tmp_path / "onnx"
    assert main(["export", str(final), "--to", "onnx", "--out", str(out)]) == 0
    assert "ort.InferenceSession" in capsys.readouterr().out  # how to run it
    model = CrammedBertForMaskedLM.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)  # the tokenizer beside the ONNX files, without crammer's config
    assert tokenizer("the city")["input_ids"] == AutoTokenizer.from_pretrained(final, config=model.config)(
        "the city")["input_ids"]
    # Real text at a batch size and lengths the export never saw: the axes are dynamic.
    lines = [line for line in wiki_sample.read_text(encoding="utf-8").splitlines() if line.strip()][:5]
    encoded = tokenizer(lines, padding=True, truncation=True, max_length=60, return_tensors="np")
    feeds = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    ids, mask = (torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask"))
    with torch.no_grad():
        expected = {"last_hidden_state": model.bert(ids, mask).last_hidden_state, "logits": model(ids, mask).logits}
    for file, output in (("encoder.onnx", "last_hidden_state"), ("mlm.onnx", "logits")):
        session = ort.InferenceSession(str(out / file), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
        assert [o.name for o in session.get_outputs()] == [output]
        assert session.get_inputs()[0].shape == ["batch", "sequence"]
        (got,) = session.run([output], feeds)
        keep = feeds["attention_mask"].astype(bool)
        assert np.abs(got - expected[output].numpy())[keep].max() <= 1e-4


def test_bert_target_is_to_hf_bert_with_a_plain_bert_tokenizer(export_corpus, tmp_path, capsys):
    from tests.export.conftest import pretrained

    original = ["model.norm_scheme=post", "model.use_bias=true", "model.ffn_type=mlp",
                "model.position_embedding=learned", "model.type_vocab_size=2", "model.mlm_head_transform=true"]
    final = pretrained(export_corpus, tmp_path / "run", "crammed-bert", original)
    out = tmp_path / "bert"
    assert main(["export", str(final), "--to", "bert", "--out", str(out)]) == 0
    assert "last_hidden_state within" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["model_type"] == "bert"
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "BertTokenizerFast"
    script = WITHOUT_CRAMMER + textwrap.dedent("""
        import json
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(sys.argv[1])
        print(json.dumps({"class": type(tok).__name__, "ids": tok("the city", "a river")["input_ids"],
                          "types": tok("the city", "a river")["token_type_ids"]}))
    """)
    result = run_without_crammer(script, str(out), cwd=tmp_path)
    expected = AutoTokenizer.from_pretrained(final, config=CrammedBertForMaskedLM.config_class())("the city", "a river")
    assert result["class"] == "BertTokenizer" and result["ids"] == expected["input_ids"]
    assert result["types"] == expected["token_type_ids"]


def test_a_folder_without_a_config_is_a_one_line_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--to", "onnx", "--out", str(tmp_path / "o")]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_exported_native_folder_finetunes_with_cram_glue(modernbert_final, glue_dir, tmp_path):
    out = tmp_path / "native"
    assert main(["export", str(modernbert_final), "--to", "modernbert", "--out", str(out)]) == 0
    results = tmp_path / "glue"
    assert main(["glue", "--model", str(out), "--glue-dir", str(glue_dir), "--tasks", "rte", "--trials", "1",
                 "--max-train-examples", "16", "--max-eval-examples", "16", "--out", str(results), "epochs=1",
                 "max_length=64"]) == 0
    assert json.loads((results / "results.json").read_text())


def test_the_native_check_is_relative_to_the_size_of_trained_logits():
    """A trained model's logits reach tens, where float32 resolves ~2e-6: 1e-5 absolute would refuse a correct
    export (a continued MiniLM measured 1.25e-5), 1e-5 of the scale does not; small outputs stay absolute."""
    from crammer.export.verify import max_difference

    mask = torch.ones(1, 3)
    logits = torch.tensor([[[20.0, -3.0], [1.0, 2.0], [0.5, 0.1]]])
    assert max_difference(logits, logits + 1.25e-5, mask) > 1e-5
    assert max_difference(logits, logits + 1.25e-5, mask, relative=True) == pytest.approx(1.25e-5 / 20, rel=0.2)
    small = torch.full((1, 3, 2), 0.5)
    assert max_difference(small, small + 2e-5, mask, relative=True) == pytest.approx(2e-5, rel=1e-2)
