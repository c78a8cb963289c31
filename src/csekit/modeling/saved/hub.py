"""Upload a saved csekit model folder to the Hugging Face Hub (``csekit push``,
``csekit train --push-to-hub``).

One commit with ``huggingface_hub``: ``create_repo(exist_ok=True)`` then ``create_commit`` with
every model file of the folder. The run's working files that are no part of the model
(``checkpoints/``, ``tensorboard/``, the best model's staging folder, hidden and temporary
files) stay local; ``config.yaml``, ``results.json`` and ``metrics.jsonl`` go with the model so
that the repo documents its run. The model card is rendered again from ``csekit.json`` with the
repo id as the model's name, so the card's loading snippets name the repo.

Authentication is huggingface_hub's own (``HF_TOKEN`` or ``hf auth login``); the endpoint is
``HF_ENDPOINT`` or ``endpoint=``. Every failure is one line (:class:`HubError`, or
:class:`~csekit.errors.ConfigError` for a bad repo id or an offline setting).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from csekit.errors import ConfigError, CsekitError, ModelLoadError, first_line
from csekit.modeling.saved.model_card import CARD_FILE, build_model_card

logger = logging.getLogger(__name__)

# Entries at the root of a csekit output folder that are training state, not the model.
EXCLUDED_ENTRIES = frozenset({"checkpoints", "tensorboard", ".best-next"})


class HubError(CsekitError):
    """The Hub refused or could not be reached (one line; exit code 1)."""

    exit_code = 1


def check_push_target(repo_id: str) -> None:
    """ConfigError now, before any training, for a repo id or setting that cannot work."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(f"--push-to-hub {repo_id!r} is not a valid Hub repo id "
                          f"(use NAME or ORG/NAME): {str(err).splitlines()[0]}") from err
    if _offline():
        raise ConfigError("uploading to the Hub needs the network, but offline mode is on "
                          "(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE); unset it, or push later "
                          "with `csekit push DIR REPO`")


def _offline() -> bool:
    """huggingface_hub's own offline decision (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check()) if callable(check) else bool(getattr(constants, "HF_HUB_OFFLINE", False))


def model_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that belong in the Hub repo (relative paths, sorted)."""
    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not (rel_root == Path(".") and d in EXCLUDED_ENTRIES))
        for name in sorted(files):
            if name.startswith(".") or ".tmp-" in name:
                continue
            out.append(rel_root / name)
    return out


def push_folder(folder: str | os.PathLike[str], repo_id: str, *, private: bool = False,
                revision: str | None = None, commit_message: str | None = None,
                token: str | None = None, endpoint: str | None = None) -> str:
    """Upload the saved model in ``folder`` to ``repo_id``; returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    root = Path(folder)
    if not (root / "modules.json").is_file():
        raise ModelLoadError(f"{root} is not a saved model folder (no modules.json); give the "
                             "output folder of `csekit train` or a folder saved by Encoder.save")
    check_push_target(repo_id)
    files = model_files(root)
    ops = [CommitOperationAdd(path_in_repo=p.as_posix(), path_or_fileobj=str(root / p))
           for p in files if p.as_posix() != CARD_FILE]
    meta_file = root / "csekit.json"
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ModelLoadError(f"{meta_file} is not valid JSON: {err}") from err
        card = build_model_card(meta, model_name=repo_id).encode("utf-8")
        ops.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card))
    elif (root / CARD_FILE).is_file():
        ops.append(CommitOperationAdd(path_in_repo=CARD_FILE,
                                      path_or_fileobj=str(root / CARD_FILE)))
    api = HfApi(endpoint=endpoint, token=token)
    message = commit_message or "Upload a csekit model"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(repo_id, operations=ops, commit_message=message,
                                 revision=revision)
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        hint = " (no or wrong token: set HF_TOKEN or run `hf auth login`)" \
            if status in (401, 403) else ""
        raise HubError(f"the Hub refused the upload to {repo_id}: "
                       f"{first_line(err)}{hint}") from err
    except OSError as err:  # connection refused, DNS, timeouts (httpx errors are OSErrors too)
        raise HubError(f"cannot reach the Hub at {api.endpoint}: {err}") from err
    except Exception as err:
        if type(err).__module__.startswith(("httpx", "httpcore", "requests")):
            raise HubError(f"cannot reach the Hub at {api.endpoint}: {err}") from err
        raise
    logger.info("uploaded %d files of %s to %s", len(ops), root, info.commit_url)
    return str(info.commit_url)


__all__ = ["EXCLUDED_ENTRIES", "HubError", "check_push_target", "model_files", "push_folder"]
