"""`cram export MODEL_DIR --to modernbert|bert|onnx --out OUT`: write, then check against the crammer model."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from crammer.errors import CrammerError
from crammer.export.verify import check_lengths, max_difference, sample_batches
from crammer.model import CrammedBertConfig, CrammedBertForMaskedLM, CrammedBertModel, to_hf_bert
from crammer.model.modernbert import check_modernbert_expressible, to_hf_modernbert
from crammer.model.native import bert_tokenizer_settings

NATIVE_TOLERANCE = 1e-5  # of the outputs' scale where that is above 1 (see verify.max_difference)
EXPORTABLE = {"CrammedBertForMaskedLM": CrammedBertForMaskedLM, "CrammedBertModel": CrammedBertModel}


def read_config(model_dir: Path) -> CrammedBertConfig:
    if not (model_dir / "config.json").is_file():
        raise CrammerError(f"export: {model_dir} has no config.json; give a crammer model folder (e.g. RUN_DIR/final)")
    try:
        return CrammedBertConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise CrammerError(f"export: {model_dir}/config.json is not a crammer model config: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None


def load_model(model_dir: Path, config: CrammedBertConfig) -> tuple[CrammedBertModel | CrammedBertForMaskedLM, object]:
    """The crammer model of a folder (an MLM or a bare encoder) in float32, with its tokenizer."""
    from transformers import AutoTokenizer

    architecture = (config.architectures or ["CrammedBertModel"])[0]
    if architecture not in EXPORTABLE:
        raise CrammerError(f"export: {model_dir} holds a {architecture}; export the pretrained MLM (or encoder) "
                           "folder, e.g. RUN_DIR/final")
    if not (model_dir / "tokenizer.json").is_file():
        raise CrammerError(f"export: {model_dir} has no tokenizer.json; an export carries the model's tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, config=config)  # config given: no remote code asked for
    model = EXPORTABLE[architecture].from_pretrained(model_dir, config=config, dtype=torch.float32).eval()
    return model, tokenizer


@torch.no_grad()
def compare_native(ours: CrammedBertModel | CrammedBertForMaskedLM, out: Path, tokenizer) -> dict[str, float]:
    """{output: largest difference} between our model and the native folder at `out` loaded by transformers' own
    classes, on the sample batches (lengths 8, 128 and the maximum, with and without padding)."""
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    mlm = isinstance(ours, CrammedBertForMaskedLM)
    native = (AutoModelForMaskedLM if mlm else AutoModel).from_pretrained(out, dtype=torch.float32).eval()
    if not type(native).__module__.startswith("transformers.models."):
        raise CrammerError(f"export: {out} did not load as a native transformers model ({type(native).__name__})")
    encoder, native_encoder = (ours.bert, native.base_model) if mlm else (ours, native)
    worst = {"last_hidden_state": 0.0, **({"logits": 0.0} if mlm else {})}
    for _, ids, mask in sample_batches(tokenizer, check_lengths(ours.config.max_position_embeddings)):
        pairs = [("last_hidden_state", encoder(ids, mask).last_hidden_state,
                  native_encoder(input_ids=ids, attention_mask=mask).last_hidden_state)]
        if mlm:
            pairs.append(("logits", ours(ids, mask).logits, native(input_ids=ids, attention_mask=mask).logits))
        for name, a, b in pairs:
            worst[name] = max(worst[name], max_difference(a, b, mask, relative=True))
    reloaded = AutoTokenizer.from_pretrained(out)
    if reloaded(SAMPLE_CHECK)["input_ids"] != tokenizer(SAMPLE_CHECK)["input_ids"]:
        raise CrammerError(f"export: the tokenizer written to {out} tokenizes differently from the model's")
    return worst


SAMPLE_CHECK = "The Abbey's café, founded in 1302, was re-opened; naïve visitors asked: where's the [MASK]?"


def export(model_dir: str | Path, target: str, out: str | Path) -> str:
    """Export and check; return what to tell the user (the checks' figures, how to load the result)."""
    model_dir, out = Path(model_dir), Path(out)
    config = read_config(model_dir)
    if target == "modernbert":  # refuse before loading any weights
        check_modernbert_expressible(config)
    model, tokenizer = load_model(model_dir, config)
    if target == "onnx":
        from crammer.export.onnx import TOLERANCE, export_onnx

        worst = export_onnx(model, tokenizer, out)
        checks = ", ".join(f"{file} {diff:.1e}" for file, diff in worst.items())
        run_file = "mlm.onnx" if "mlm.onnx" in worst else "encoder.onnx"
        output = "logits" if run_file == "mlm.onnx" else "last_hidden_state"
        return (f"cram export: wrote {out} ({', '.join(worst)}, tokenizer); ONNX Runtime matches PyTorch within "
                f"{TOLERANCE:g} (largest difference: {checks}). Run it:\n"
                f"  import onnxruntime as ort; from transformers import AutoTokenizer\n"
                f"  tok = AutoTokenizer.from_pretrained({str(out)!r})\n"
                f"  session = ort.InferenceSession({str(out / run_file)!r})\n"
                f"  enc = tok(['Paris is the [MASK] of France.'], return_tensors='np')\n"
                f"  {output}, = session.run(['{output}'], {{'input_ids': enc['input_ids'], "
                f"'attention_mask': enc['attention_mask']}})")
    # From the folder, so that its model card comes along.
    if target == "modernbert":
        _, notes = to_hf_modernbert(model_dir, out)
    else:
        to_hf_bert(model_dir, out)
        notes = bert_tokenizer_settings(tokenizer)[1]
    try:
        worst = compare_native(model, out, tokenizer)
    except CrammerError:
        shutil.rmtree(out, ignore_errors=True)
        raise
    bad = {name: diff for name, diff in worst.items() if not diff <= NATIVE_TOLERANCE}
    if bad:
        shutil.rmtree(out, ignore_errors=True)
        raise CrammerError(f"export --to {target}: the native model's " + ", ".join(
            f"{k} differs by {v:.2e}" for k, v in bad.items()) + f" > {NATIVE_TOLERANCE:g}; {out} removed")
    lengths = ", ".join(map(str, check_lengths(model.config.max_position_embeddings)))
    message = (f"cram export: wrote {out} (model_type {target}, no remote code); "
               + ", ".join(f"{k} within {v:.1e}" for k, v in worst.items())
               + f" of crammer's (relative to the outputs' scale) at lengths {lengths}, with and without padding.\n"
               f"  from transformers import AutoModelForMaskedLM, AutoTokenizer\n"
               f"  model = AutoModelForMaskedLM.from_pretrained({str(out)!r})")
    if notes:
        message += ("\n  note: the BertTokenizerFast of transformers 5 cannot reproduce the tokenizer's "
                    + ", ".join(notes) + " (transformers 4 and tokenizer.json readers do)")
    return message
