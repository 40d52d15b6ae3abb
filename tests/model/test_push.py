"""`cram push` (crammer.hub.push): every failure that can be known locally comes at once, as one line, exit 2,
before any request. The upload itself needs the Hub and a token, so it is not tested here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from crammer.cli import main
from crammer.hub.card import ModelCardFacts, write_model_card
from tests.conftest import REPO_ROOT


def push(capsys, *args: str) -> tuple[int, str]:
    code = main(["push", *args])
    return code, capsys.readouterr().err


def test_offline_fails_at_once(tiny_folder, capsys):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # as in every test and in CI
    code, err = push(capsys, str(tiny_folder), "--repo-id", "someone/tiny")
    assert code == 2 and err == "cram: error: cram push: offline mode is on (HF_HUB_OFFLINE=1); nothing was uploaded\n"


def test_without_a_token_fails_before_any_request(tiny_folder, tmp_path):
    """Online, no token anywhere, and a Hub endpoint that refuses connections: the token check must come first."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE")}
    env.update(HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    result = subprocess.run([sys.executable, "-m", "crammer", "push", str(tiny_folder), "--repo-id", "someone/tiny"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "cram: error: cram push: no Hugging Face token (run `hf auth login` or set HF_TOKEN); nothing was uploaded"]


def test_a_folder_that_is_no_model_is_refused(tmp_path, capsys):
    code, err = push(capsys, str(tmp_path / "nowhere"), "--repo-id", "a/b")
    assert code == 2 and err == f"cram: error: cram push: {tmp_path / 'nowhere'} is not a folder\n"
    write_model_card(tmp_path, ModelCardFacts())
    code, err = push(capsys, str(tmp_path), "--repo-id", "a/b")
    assert code == 2 and "is not a saved model (no config.json or model.safetensors)" in err


def test_a_bad_repo_id_is_refused(tiny_folder, capsys):
    code, err = push(capsys, str(tiny_folder), "--repo-id", "a/b/c")
    assert code == 2 and err.startswith("cram: error: cram push: --repo-id 'a/b/c' is not a Hub repository id")
    assert err.count("\n") == 1


def test_push_help_needs_no_torch():
    code = ("from crammer.cli import main\ntry:\n    main(['push', '--help'])\n"
            "except SystemExit as e:\n    assert e.code == 0\n")
    out = subprocess.run([sys.executable, "-c", code + "import sys; print(' '.join(sys.modules))"],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "--repo-id" in out.stdout and not {"torch", "transformers", "huggingface_hub"} & loaded


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_each_missing_file_is_named(tiny_folder, tmp_path, capsys, missing):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_folder, folder)
    (folder / missing).unlink()
    code, err = push(capsys, str(folder), "--repo-id", "a/b")
    assert code == 2 and err.endswith(f"is not a saved model (no {missing})\n")
