"""`--init-from MODEL`: a new budgeted run whose model starts from MODEL's weights (domain-adaptive pretraining,
more hours on a finished run, a longer-sequence phase).

MODEL is a crammer folder (`final/`, a checkpoint), a Hugging Face BERT folder (converted by `from_hf_bert`), a
native `modernbert` folder (`from_hf_modernbert`) or a hub id of one (downloaded where online). The architecture
is MODEL's: the run's model overrides may change only what leaves every weight's shape and meaning alone
(`ADJUSTABLE`); positions extend to a longer corpus where their kind allows. The corpus must be tokenized with
MODEL's tokenizer (`cram data prepare --tokenizer MODEL`), compared on what gives a text its ids
(`tokenizer_difference`, the comparison `cram validate` makes). Everything else is a fresh run: its own budget,
schedule and optimizer state. On `--resume` the checkpoint's weights win.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Any

from torch import nn

from crammer.errors import CrammerError
from crammer.io import read_json
from crammer.model import CrammedBertConfig
from crammer.model.presets import CONFIG_DEFAULTS

# Model settings a continued run may change: dropouts, the classifier's pooling (fine-tuning only), the init
# scale of freshly made parts, and the positions' reach (checked against their kind in `model_config`).
ADJUSTABLE = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "classifier_pooler",
              "initializer_range", "max_position_embeddings", "rope_theta")
KINDS = {"crammed_bert": "crammer", "bert": "bert", "modernbert": "modernbert"}
WEIGHT_FILES = ("*.safetensors",)


@dataclasses.dataclass(frozen=True)
class StartingModel:
    """MODEL resolved to a local folder: its kind, its architecture as crammer's config, its weight files."""

    source: str  # as given: a path or a hub id
    folder: Path
    kind: str  # crammer | bert | modernbert
    config: CrammedBertConfig

    @classmethod
    def resolve(cls, source: str) -> "StartingModel":
        folder = _local_folder(source)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise CrammerError(f"--init-from {source}: not a model folder (no config.json)")
        model_type = read_json(config_file).get("model_type")
        kind = KINDS.get(model_type)
        if kind is None:
            raise CrammerError(f"--init-from {source}: model_type {model_type!r} cannot be continued (a crammer "
                               "folder, a Hugging Face `bert` or a `modernbert` folder can)")
        if not any(folder.glob("*.safetensors")):
            raise CrammerError(f"--init-from {source}: no *.safetensors weights (pickled weights are not loaded)")
        return cls(source, folder, kind, _architecture(folder, kind, source))

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 over the weight files, in name order: which weights a run continued from."""
        digest = hashlib.sha256()
        for path in sorted(self.folder.glob("*.safetensors")):
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
        return digest.hexdigest()

    def record(self) -> dict[str, Any]:
        """What final/pretraining.json, the checkpoints, the model card and the report say of the start."""
        return {"path": self.source, "kind": self.kind, "fingerprint": self.fingerprint}

    def model_config(self, settings: dict[str, Any], seq_len: int, setting: str) -> CrammedBertConfig:
        """MODEL's architecture with the run's model `settings` (`ADJUSTABLE` ones only) for sequences of `seq_len`
        (`setting` names where that length comes from): rotary and scaled sinusoidal positions extend to it (the
        saved config.json then records the new maximum), a learned table does not."""
        values = {key: getattr(self.config, key) for key in CONFIG_DEFAULTS}
        for key, value in settings.items():
            if key not in ADJUSTABLE and value != values[key]:
                raise CrammerError(f"model.{key}={value!r}: --init-from {self.source} fixes the architecture "
                                   f"({key}={values[key]!r} there; changing it would change a weight's shape or "
                                   f"meaning); only {', '.join(ADJUSTABLE)} may change")
        values.update(settings)
        learned = values["position_embedding"] == "learned"
        table = self.config.max_position_embeddings
        if learned and values["max_position_embeddings"] != table:
            raise CrammerError(f"model.max_position_embeddings={values['max_position_embeddings']}: --init-from "
                               f"{self.source} has a table of {table} learned positions, which cannot change")
        if seq_len > values["max_position_embeddings"]:
            if learned:
                raise CrammerError(f"{setting}={seq_len} exceeds the {table} learned positions of --init-from "
                                   f"{self.source} (a learned table does not extend); prepare the corpus with "
                                   f"--seq-len {table} or less")
            values["max_position_embeddings"] = seq_len
        return CrammedBertConfig(**values)

    def check_tokenizer(self, corpus_dir: Path) -> None:
        """The corpus's token ids must mean what they meant to MODEL: refuse another tokenizer, naming both."""
        from crammer.train.validation import tokenizer_difference

        mine = self.folder / "tokenizer.json"
        if not mine.is_file():
            raise CrammerError(f"--init-from {self.source}: no tokenizer.json, so {corpus_dir} cannot be checked "
                               "against its tokenizer; save the model's fast tokenizer beside it")
        differ = tokenizer_difference(mine, corpus_dir / "tokenizer.json")
        if differ:
            raise CrammerError(f"{corpus_dir}: its tokenizer is not the one of --init-from {self.source} ({differ} "
                               f"differs); prepare the corpus with `cram data prepare --tokenizer {self.source}`")

    def load_into(self, model: nn.Module) -> list[str]:
        """Copy MODEL's weights into `model` in place (its parameter objects stay, so an optimizer built over them
        still holds them, with fresh state); the names of the tensors MODEL had none for (left as initialised)."""
        from crammer.progress import no_transformers_bars

        with no_transformers_bars():
            source = self._source_model()
        state = source.state_dict()
        if not any(key.startswith("bert.") for key in state):  # a bare encoder: ours sits under `bert.`
            state = {f"bert.{k}": v for k, v in state.items() if not k.startswith("pooler.")}
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # a shape mismatch: the config checks should have refused it
            raise CrammerError(f"--init-from {self.source}: its weights do not fit the model "
                               f"({str(e).splitlines()[-1].strip()})") from None
        tied = set(getattr(model, "_tied_weights_keys", None) or ()) if model.config.tie_word_embeddings else set()
        fresh = [k for k in missing if k not in tied]
        if unexpected or any(not k.startswith(("head_transform.", "decoder.")) for k in fresh):
            raise CrammerError(f"--init-from {self.source}: its weights do not fit the model (missing "
                               f"{', '.join(fresh[:3]) or 'none'}; unexpected {', '.join(unexpected[:3]) or 'none'})")
        return fresh

    def _source_model(self) -> nn.Module:
        if self.kind == "bert":
            from crammer.model import from_hf_bert

            return from_hf_bert(self.folder)
        if self.kind == "modernbert":
            from crammer.model.modernbert import from_hf_modernbert

            return from_hf_modernbert(self.folder)
        from crammer.model.native import load_crammer_folder

        return load_crammer_folder(self.folder, f"--init-from {self.source}", lambda config, is_mlm: None)


def _local_folder(source: str) -> Path:
    """A local folder as given, or a hub id's snapshot (config, weights, tokenizer files only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise CrammerError(f"--init-from {source}: no such model folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "vocab.txt"]))
    except Exception as e:  # offline, unknown id, no access: one line
        raise CrammerError(f"--init-from {source}: not a local folder, and downloading it from the hub failed "
                           f"({type(e).__name__})") from None


def _architecture(folder: Path, kind: str, source: str) -> CrammedBertConfig:
    """MODEL's architecture as crammer's config (a Hugging Face one converted)."""
    try:
        if kind == "bert":
            from transformers import BertConfig

            from crammer.model import config_from_hf_bert

            return config_from_hf_bert(BertConfig.from_pretrained(folder))
        if kind == "modernbert":
            from transformers import ModernBertConfig

            from crammer.model.modernbert import config_from_hf_modernbert

            return config_from_hf_modernbert(ModernBertConfig.from_pretrained(folder), source)
        return CrammedBertConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CrammerError(f"--init-from {source}: cannot read its config.json ({reason})") from None


def describe_fresh(source: str, fresh: list[str]) -> str | None:
    """The stderr line saying which parts of the MLM start untrained (a bare encoder has no MLM head)."""
    if not fresh:
        return None
    parts = sorted({k.split(".")[0] if k.startswith("head_transform.") else k for k in fresh})
    return (f"cram: {source} has no MLM head weights ({', '.join(parts)}): the decoder is tied to its word "
            "embeddings; these start freshly initialised, so its first validation loss says little of the encoder")

