"""`cram push`: upload a model folder to the Hugging Face Hub in one commit.

Everything that can be known locally is checked before the first request (the folder, the repo id, offline
mode, the token), so those failures upload nothing; the upload itself is a single commit, which the Hub either
records whole or not at all.
"""

from __future__ import annotations

import sys
from pathlib import Path

from crammer.errors import CrammerError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
# Never uploaded: hidden entries, among them the `.NAME.<random>.tmp` staging of an atomic write.
IGNORE_PATTERNS = [".*", "**/.*"]


def check_model_folder(folder: Path) -> None:
    """A Hugging Face model folder: config.json and safetensors weights."""
    if not folder.is_dir():
        raise CrammerError(f"cram push: {folder} is not a folder")
    missing = [name for name in ("config.json",) if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        missing.append("model.safetensors")
    if missing:
        raise CrammerError(f"cram push: {folder} is not a saved model (no {' or '.join(missing)})")


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a failed request raises: the Hub's HTTP errors and the transport's (connection refused, timeout)."""
    from huggingface_hub import errors

    found: list[type[BaseException]] = [errors.HfHubHTTPError, OSError, ValueError]
    if isinstance(getattr(errors, "HTTPError", None), type):
        found.append(errors.HTTPError)
    for transport in ("httpx2", "httpx", "requests"):
        module = sys.modules.get(transport)
        for name in ("HTTPError", "TransportError", "RequestException"):
            if module is not None and isinstance(getattr(module, name, None), type):
                found.append(getattr(module, name))
    return tuple(found)


def push_folder(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
                message: str | None = None, log=print) -> str:
    """Create `repo_id` if needed (private if asked), then upload `folder` as one commit on `revision` (a branch,
    created if missing; default main). Returns the commit's URL. The token comes from `huggingface_hub.get_token`:
    HF_TOKEN, or the file `hf auth login` writes."""
    import huggingface_hub
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    folder = Path(folder)
    check_model_folder(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise CrammerError(f"cram push: --repo-id {repo_id!r} is not a Hub repository id (NAME or OWNER/NAME): "
                           f"{str(e).splitlines()[0]}") from None
    if constants.HF_HUB_OFFLINE:
        raise CrammerError("cram push: offline mode is on (HF_HUB_OFFLINE=1); nothing was uploaded")
    token = huggingface_hub.get_token()
    if not token:
        raise CrammerError("cram push: no Hugging Face token (run `hf auth login` or set HF_TOKEN); "
                           "nothing was uploaded")
    from crammer.hub.card import CARD_FILE, set_card_repo_id

    if set_card_repo_id(folder, repo_id):
        log(f"cram push: the model card's load snippet now names {repo_id}")
    elif not (folder / CARD_FILE).is_file():
        log(f"cram push: {folder} has no model card ({CARD_FILE}); uploading without one")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                   commit_message=message or f"Upload {folder.name} with crammer",
                                   ignore_patterns=IGNORE_PATTERNS)
    except _network_errors() as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CrammerError(f"cram push: uploading {folder} to {repo_id} failed, nothing was committed: "
                           f"{reason}") from None
    return str(getattr(commit, "commit_url", commit))
