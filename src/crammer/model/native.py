"""What every native Hugging Face folder (`bert`, `modernbert`) carries besides its weights: a tokenizer that
loads as a plain `BertTokenizerFast` on transformers 4.x and 5.x, and the model card of the folder it came from;
and what every export does first (load the crammer folder, check the output folder).

transformers 5 rebuilds a `BertTokenizerFast` from `vocab.txt` with BERT's own normalizer (clean text, optional
CJK splitting, optional lowercasing and accent stripping) and keeps only the post-processor of `tokenizer.json`;
transformers 4 reads `tokenizer.json` as is. So the settings written into `tokenizer_config.json` are those that
make BERT's normalizer do what the crammer tokenizer's normalizer does (NFD, lowercase, strip accents), and
`tokenizer_notes` names what it cannot do (e.g. `ascii_only`'s character filter).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from crammer.errors import CrammerError
from crammer.io import atomic_write_json, atomic_write_text
from crammer.model.configuration_crammed_bert import CrammedBertConfig
from crammer.model.modeling_crammed_bert import CrammedBertForMaskedLM, CrammedBertModel

# The steps of a `tokenizers` normalizer that BERT's normalizer reproduces, by their JSON type.
BERT_NORMALIZER_STEPS = ("NFD", "Lowercase", "StripAccents")


def bert_tokenizer_settings(tokenizer) -> tuple[dict, list[str]]:
    """(`BertTokenizerFast` keyword settings equivalent to the tokenizer's normalizer, the normalizer steps that
    BERT's normalizer cannot reproduce, which transformers 5 then drops)."""
    normalizer = json.loads(tokenizer.backend_tokenizer.to_str()).get("normalizer") or {}
    if normalizer.get("type") == "BertNormalizer":
        return ({"do_lower_case": bool(normalizer.get("lowercase", True)),
                 "strip_accents": normalizer.get("strip_accents"),
                 "tokenize_chinese_chars": bool(normalizer.get("handle_chinese_chars", True))}, [])
    steps = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer] if normalizer else []
    kinds = [step.get("type") for step in steps]
    notes = [f"normalizer step {kind}" for kind in kinds if kind not in BERT_NORMALIZER_STEPS]
    if "NFD" in kinds and "StripAccents" not in kinds:  # BERT's normalizer decomposes only to strip accents
        notes.append("normalizer step NFD without StripAccents")
    settings = {"do_lower_case": "Lowercase" in kinds, "strip_accents": "StripAccents" in kinds,
                "tokenize_chinese_chars": False}  # the crammer pre-tokenizer keeps CJK runs whole
    return settings, notes


def save_native_tokenizer(tokenizer, folder: str | Path, model_max_length: int,
                          model_input_names: tuple[str, ...]) -> list[str]:
    """Write `tokenizer.json`, `vocab.txt`, `special_tokens_map.json` and a `tokenizer_config.json` naming
    `BertTokenizerFast` into `folder`; return what the native tokenizer cannot reproduce (see module doc).
    `model_input_names` are what the model's forward takes (ModernBERT has no `token_type_ids`)."""
    folder = Path(folder)
    backend = tokenizer.backend_tokenizer
    model = json.loads(backend.to_str())["model"]
    if model.get("type") != "WordPiece":
        raise ValueError(f"a native BERT tokenizer needs a WordPiece vocabulary, got {model.get('type')}")
    tokenizer.save_pretrained(str(folder))
    vocab = backend.get_vocab(with_added_tokens=True)
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        raise ValueError("the tokenizer's ids are not 0..N-1, so they cannot be written as vocab.txt lines")
    atomic_write_text(folder / "vocab.txt", "".join(f"{token}\n" for token, _ in sorted(vocab.items(),
                                                                                        key=lambda kv: kv[1])))
    settings, notes = bert_tokenizer_settings(tokenizer)
    specials = {f"{kind}_token": str(getattr(tokenizer, f"{kind}_token"))
                for kind in ("unk", "sep", "pad", "cls", "mask") if getattr(tokenizer, f"{kind}_token") is not None}
    config = {"tokenizer_class": "BertTokenizerFast", **settings, **specials, "model_max_length": model_max_length,
              "clean_up_tokenization_spaces": False,
              "model_input_names": list(model_input_names)}
    atomic_write_json(folder / "tokenizer_config.json", config)
    atomic_write_json(folder / "special_tokens_map.json", specials)
    return notes


def copy_model_card(source: str | Path | None, folder: str | Path) -> None:
    """The source folder's model card (`README.md`), when it has one."""
    card = Path(source) / "README.md" if source is not None else None
    if card is not None and card.is_file():
        shutil.copyfile(card, Path(folder) / "README.md")


def export_source(source, tokenizer, what: str, check: Callable[[CrammedBertConfig, bool], None]):
    """(the model, its tokenizer, the folder or None) of what an export is given: a crammer model, or the folder of
    one (loaded by `load_crammer_folder`, its tokenizer read from it where none is given)."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        model = load_crammer_folder(folder, what, check)
        if tokenizer is None and any((folder / n).is_file() for n in ("tokenizer.json", "vocab.txt")):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder, config=model.config)  # config given: no remote code
        return model, tokenizer, folder
    if isinstance(source, (CrammedBertModel, CrammedBertForMaskedLM)):
        return source, tokenizer, None
    raise CrammerError(f"{what}: exports a CrammedBertModel or CrammedBertForMaskedLM (or a folder of one), got "
                       f"{type(source).__name__}")


def load_crammer_folder(source: str | os.PathLike, what: str, check: Callable[[CrammedBertConfig, bool], None]
                        ) -> CrammedBertModel | CrammedBertForMaskedLM:
    """A saved crammer folder as the class that saved it (an MLM, else the bare encoder), its config passed to
    `check(config, is_mlm)` before the weights are read; `what` names the export in a one-line error."""
    try:
        config = CrammedBertConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CrammerError(f"{what}: cannot load a crammer model from {source}: {reason}") from None
    cls = CrammedBertForMaskedLM if "CrammedBertForMaskedLM" in (config.architectures or []) else CrammedBertModel
    check(config, cls is CrammedBertForMaskedLM)
    return cls.from_pretrained(source, config=config, dtype=torch.float32)


def replaceable_output(what: str) -> Callable[[Path], None]:
    """The `atomic_dir` check of an export's output: it replaces an empty folder or a model folder (one with
    config.json), nothing else."""
    def check(path: Path) -> None:
        if not path.is_dir() or (any(path.iterdir()) and not (path / "config.json").is_file()):
            raise CrammerError(f"{what}: {path} exists and is not a model folder; choose another output")
    return check
