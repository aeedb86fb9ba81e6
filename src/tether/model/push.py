"""Upload a run's ``model/`` (with its card) to the Hugging Face Hub.

``huggingface_hub``'s ``HfApi.create_repo`` (private unless asked otherwise; an existing repo
is reused) then ``upload_folder``. The token comes from the ``HF_TOKEN`` environment variable
only: never from the config, never written anywhere, and hidden from the one-line errors.
``HF_ENDPOINT`` points at another Hub (the tests run one on 127.0.0.1).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from tether.errors import ConfigError, ModelError

__all__ = ["model_dir_of", "push_model"]

log = logging.getLogger("tether")

_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def model_dir_of(path: str | Path) -> Path:
    """A run directory means its ``model/``; a model directory is itself."""
    given = Path(path).expanduser()
    for candidate in (given / "model", given):
        if (candidate / "config.json").is_file() or (candidate / "adapter_config.json").is_file():
            return candidate
    raise ConfigError(f"{given}: no model/ with config.json or adapter_config.json; pass a run "
                      "directory written by tether train (after it finished) or a model directory")


def push_model(path: str | Path, repo: str, *, private: bool = True) -> str:
    """Create ``repo`` if needed and upload the model folder; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not _REPO.match(repo):
        raise ConfigError(f"repo: '{repo}' is not a hub repo id; use org/name")
    folder = model_dir_of(path)
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ConfigError("HF_TOKEN: not set; export a Hugging Face write token as HF_TOKEN "
                          "(tether reads it from the environment only)")
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                                   commit_message="Upload model trained with tether")
    except (HfHubHTTPError, OSError, ValueError) as e:
        reason = str(e).replace(token, "***").splitlines()[0]
        raise ModelError(f"push: cannot upload {folder} to {repo} ({reason})") from None
    log.info("pushed %s to %s (%s)", folder, repo, "private" if private else "public")
    return str(commit.commit_url)
