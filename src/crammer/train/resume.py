"""What a resumed run must share with the run it continues: the recipe (`pretrain_config.json`), the
tokenizer and block length of its corpus, and a global micro-batch this job's ranks can split."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from crammer.config import changed_keys, config_defaults, config_hash, to_dict, with_defaults
from crammer.data import PackedCorpus
from crammer.errors import CrammerError
from crammer.io import atomic_write_json, read_json
from crammer.runfiles import CONFIG_FILE, FINAL_DIR
from crammer.train.checkpoint import file_digest, latest_checkpoint, list_checkpoints
from crammer.train.config import PretrainConfig

# False: a new run; True or "auto": continue from the newest checkpoint, or start (with a note) where there is none
# yet. "auto" is the spelling for a job that torchrun may restart; plain --resume has always meant the same.
Resume = bool | Literal["auto"]

# Sections that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = {"checkpoint", "logging", "data", "eval"}


def check_same_recipe(run_dir: Path, cfg: PretrainConfig) -> None:
    """--resume may change only RESUMABLE_CHANGES: anything else would make a different run. A setting that a
    later version added, at its default, is no change."""
    config_path = Path(run_dir) / CONFIG_FILE
    if not config_path.is_file():
        return
    saved = with_defaults(read_json(config_path), config_defaults(PretrainConfig))
    sections = {key.split(".")[0] for key in changed_keys(saved, to_dict(cfg))}
    changed = sorted(sections - RESUMABLE_CHANGES - {"config_hash"})
    if changed:
        raise CrammerError(f"{config_path}: --resume with a different config ({', '.join(changed)}); "
                           "use the original settings or a new --out")


def claim_run_dir(run_dir: Path, cfg: PretrainConfig, resume: Resume, is_main: bool) -> bool:
    """Write the run's config; whether there are checkpoints to resume from."""
    checkpoints = list_checkpoints(run_dir)
    if not resume:
        if latest_checkpoint(run_dir) or (run_dir / FINAL_DIR).exists():
            raise CrammerError(f"{run_dir} already holds a run; pass --resume or choose another --out")
    else:
        check_same_recipe(run_dir, cfg)
    if is_main:
        atomic_write_json(run_dir / CONFIG_FILE, {**to_dict(cfg), "config_hash": config_hash(cfg)})
    if resume and not checkpoints and is_main:
        print(f"cram: no checkpoint in {run_dir}; starting from scratch", file=sys.stderr)
    return bool(resume) and bool(checkpoints)


def corpus_record(corpus: PackedCorpus) -> dict[str, Any]:
    """What a checkpoint remembers of the corpus it was trained on."""
    return {"path": str(corpus.path), "recipe": corpus.manifest.config_hash, "seq_len": corpus.seq_len,
            "tokenizer_sha256": file_digest(corpus.path / "tokenizer.json")}


def corpora_after_resume(corpus: PackedCorpus, record: dict[str, Any], checkpoint: Path, saved: dict[str, Any],
                         is_main: bool) -> list[dict[str, Any]]:
    """The corpora the run trained on, in order, once it continues on `corpus` (whose `corpus_record` is `record`).
    Token ids must keep their meaning: the tokenizer and the block length must be the checkpoint's. Another corpus
    with the same tokenizer is allowed, and recorded."""
    before = saved.get("corpus")
    corpora = saved.get("corpora", [{"from_step": 0, **record}])
    if before is None:  # a checkpoint from before corpora were recorded: nothing to compare
        return corpora
    for key, what in (("tokenizer_sha256", "tokenizer"), ("seq_len", "sequence length")):
        if before[key] != record[key]:
            raise CrammerError(f"{corpus.path}: its {what} differs from the one {checkpoint} was trained "
                               f"with ({before['path']}); resume on a corpus prepared with the same tokenizer "
                               "(--tokenizer) and --seq-len, or start a new run")
    if before["recipe"] != record["recipe"] or before["path"] != record["path"]:
        corpora = [*corpora, {"from_step": saved["step"], **record}]
        if is_main:
            print(f"cram: resuming on another corpus with the same tokenizer: {corpus.path} "
                  f"(from step {saved['step']}; was {before['path']})", file=sys.stderr)
    return corpora


def rescaled_micro_batch(checkpoint: Path, saved: dict[str, Any], world_size: int) -> int:
    """The checkpoint's global micro-batch split over this job's ranks (so the data stream continues)."""
    if saved["world_size"] * saved["micro_batch"] % world_size:
        raise CrammerError(f"{checkpoint}: global micro-batch {saved['world_size']}x{saved['micro_batch']} "
                           f"cannot be split over {world_size} ranks")
    return saved["world_size"] * saved["micro_batch"] // world_size
