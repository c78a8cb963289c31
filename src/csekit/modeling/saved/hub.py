"""Upload a saved csekit model folder to the Hugging Face Hub (``csekit push``,
``csekit train --push-to-hub``).

One commit with ``huggingface_hub``: ``create_repo(exist_ok=True)`` then ``create_commit`` with
the files of :func:`upload_plan`, an allow-list:

- the model's own entries: those ``Encoder.save`` lists in ``.csekit-model-files.json``, or, in
  a folder without that manifest, the files a model is made of (``config.json``, weights,
  tokenizer files, the sentence-transformers files and the module folders ``modules.json``
  names, csekit's own files); nothing else of the folder, at any depth (a nested
  ``old-run/checkpoints/`` is never looked at);
- the run's record when present: ``config.yaml``, ``results.json``, ``metrics.jsonl``;
- the model card, rendered again from ``csekit.json`` with the repo id as the model's name.

A symbolic link among those files stops the upload with one line (a link's target is never
read). ``config.yaml`` and the training config inside ``csekit.json`` name local paths (model,
corpus, output and data folders) by their last component as ``./NAME``: the Hub copy holds no
absolute path of the machine it came from (the local files are not changed).

Authentication is huggingface_hub's own (``HF_TOKEN`` or ``hf auth login``); the endpoint is
``HF_ENDPOINT`` or ``endpoint=``. Every failure is one line (:class:`HubError`, or
:class:`~csekit.errors.ConfigError` for a bad repo id, an offline setting or a symbolic link).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from csekit.errors import ConfigError, CsekitError, ModelLoadError, first_line
from csekit.modeling.saved.folder import CSEKIT_META, MODEL_MANIFEST, model_entries
from csekit.modeling.saved.model_card import CARD_FILE, build_model_card

logger = logging.getLogger(__name__)

# The run's record that goes with the model (config.yaml with local paths as names).
RUN_RECORD = ("config.yaml", "results.json", "metrics.jsonl")
# Top-level files a model is made of, for a folder without csekit's manifest.
MODEL_FILE_PATTERNS = (
    "config.json", "generation_config.json", "*.safetensors", "tokenizer*.json",
    "tokenizer.model", "vocab.*", "merges.txt", "special_tokens_map.json", "added_tokens.json",
    "spiece.model", "sentencepiece.bpe.model", "modules.json",
    "config_sentence_transformers.json", "sentence_bert_config.json", "csekit*.json",
    "csekit_prompt.py", CARD_FILE)
# Training options that name local paths (csekit.training.config.TrainConfig).
PATH_OPTIONS = ("model", "train_file", "output_dir", "data_dir")


@dataclass(frozen=True)
class UploadFile:
    """One file of an upload: ``source`` is the local file, or the bytes to upload instead
    (the re-rendered card, a config with local paths as names); ``note`` says which."""

    path_in_repo: str
    source: Path | bytes
    note: str = ""

    @property
    def size(self) -> int:
        return len(self.source) if isinstance(self.source, bytes) else self.source.stat().st_size


class HubError(CsekitError):
    """The Hub refused or could not be reached (one line; exit code 1)."""

    exit_code = 1


def check_repo_id(repo_id: str) -> None:
    """ConfigError for a string that is not a Hub repo id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(f"--push-to-hub {repo_id!r} is not a valid Hub repo id "
                          f"(use NAME or ORG/NAME): {str(err).splitlines()[0]}") from err


def check_push_target(repo_id: str) -> None:
    """ConfigError now, before any training, for a repo id or setting that cannot work."""
    check_repo_id(repo_id)
    if _offline():
        raise ConfigError("uploading to the Hub needs the network, but offline mode is on "
                          "(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE); unset it, or push later "
                          "with `csekit push DIR REPO`")


def _offline() -> bool:
    """huggingface_hub's own offline decision (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)."""
    from huggingface_hub import constants

    check = getattr(constants, "is_offline_mode", None)
    return bool(check()) if callable(check) else bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _refuse_link(path: Path, root: Path) -> None:
    if path.is_symlink():
        raise ConfigError(f"{path} is a symbolic link (to {os.readlink(path)}): csekit never "
                          f"uploads a link's target; put the file itself into {root}")


def _top_level_model_entries(root: Path) -> list[str]:
    """The model's own top-level entries: the manifest's, else by name (see the module)."""
    listed = model_entries(root)
    if listed is not None:
        return [n for n in listed if (root / n).exists() or (root / n).is_symlink()]
    names = [p.name for p in root.iterdir()
             if any(fnmatch.fnmatchcase(p.name, pat) for pat in MODEL_FILE_PATTERNS)]
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
        names += [str(m["path"]) for m in modules
                  if m.get("path") and "/" not in str(m["path"]) and (root / m["path"]).is_dir()]
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return sorted(set(names))


def model_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The files of ``folder`` that make the model and its record (relative paths, sorted):
    the allow-list of the module docstring. Raises ConfigError (one line) for a symbolic link
    among them."""
    root = Path(folder)
    out: list[Path] = []
    for name in _top_level_model_entries(root) + [n for n in RUN_RECORD if (root / n).exists()
                                                  or (root / n).is_symlink()]:
        path = root / name
        _refuse_link(path, root)
        if name.startswith(".") or name == MODEL_MANIFEST:
            continue
        if path.is_file():
            out.append(Path(name))
            continue
        for dirpath, dirnames, filenames in os.walk(path):  # never follows links
            here = Path(dirpath)
            for d in dirnames:
                _refuse_link(here / d, root)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                 and d != "checkpoints")
            for f in sorted(filenames):
                _refuse_link(here / f, root)
                if not f.startswith(".") and ".tmp-" not in f:
                    out.append((here / f).relative_to(root))
    return sorted(set(out))


def local_name(value: Any) -> Any:
    """A local path as ``./NAME`` (its last component); a Hub id or anything else as given.
    Comma-separated lists (``train_file``) are mapped part by part."""
    if not isinstance(value, str) or not value:
        return value
    parts = []
    for part in value.split(","):
        text = part.strip()
        p = Path(text)
        local = p.is_absolute() or text.startswith(("~", ".")) or ".." in p.parts \
            or os.path.exists(text) or "\\" in text
        parts.append(f"./{p.name or 'folder'}" if local and text else text)
    return ",".join(parts)


def shareable_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A training config with its local paths (:data:`PATH_OPTIONS`) as ``./NAME``."""
    return {k: local_name(v) if k in PATH_OPTIONS else v for k, v in cfg.items()}


def upload_plan(folder: str | os.PathLike[str], repo_id: str) -> list[UploadFile]:
    """What :func:`push_folder` uploads from ``folder`` to ``repo_id``, in order."""
    root = Path(folder)
    if not (root / "modules.json").is_file():
        raise ModelLoadError(f"{root} is not a saved model folder (no modules.json); give the "
                             "output folder of `csekit train` or a folder saved by Encoder.save")
    meta: dict[str, Any] | None = None
    if (root / CSEKIT_META).is_file():
        try:
            meta = json.loads((root / CSEKIT_META).read_text(encoding="utf-8"))
        except ValueError as err:
            raise ModelLoadError(f"{root / CSEKIT_META} is not valid JSON: {err}") from err
        if isinstance(meta.get("training_config"), dict):
            meta = {**meta, "training_config": shareable_config(meta["training_config"])}
    plan: list[UploadFile] = []
    for rel in model_files(root):
        name = rel.as_posix()
        if name == CARD_FILE and meta is not None:
            continue  # rendered below
        if name == CSEKIT_META and meta is not None:
            plan.append(UploadFile(name, (json.dumps(meta, indent=2, default=str) + "\n")
                                   .encode("utf-8"), "local paths as names"))
        elif name == "config.yaml":
            plan.append(UploadFile(name, _shareable_yaml(root / name), "local paths as names"))
        else:
            plan.append(UploadFile(name, root / rel))
    if meta is not None:
        card = build_model_card(json.loads(json.dumps(meta, default=str)), model_name=repo_id)
        plan.append(UploadFile(CARD_FILE, card.encode("utf-8"), f"model card for {repo_id}"))
    return plan


def _shareable_yaml(path: Path) -> bytes:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not valid YAML; fix or remove it before the upload") \
            from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a csekit run config; remove it before the upload")
    return yaml.safe_dump(shareable_config(data), sort_keys=False).encode("utf-8")


def push_folder(folder: str | os.PathLike[str], repo_id: str, *, private: bool = False,
                revision: str | None = None, commit_message: str | None = None,
                token: str | None = None, endpoint: str | None = None,
                plan: list[UploadFile] | None = None) -> str:
    """Upload the saved model in ``folder`` to ``repo_id`` (the files of :func:`upload_plan`,
    or ``plan`` when given); returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    root = Path(folder)
    if plan is None:
        plan = upload_plan(root, repo_id)
    check_push_target(repo_id)
    ops = [CommitOperationAdd(path_in_repo=f.path_in_repo,
                              path_or_fileobj=f.source if isinstance(f.source, bytes)
                              else str(f.source)) for f in plan]
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


__all__ = ["MODEL_FILE_PATTERNS", "PATH_OPTIONS", "RUN_RECORD", "HubError", "UploadFile",
           "check_push_target", "check_repo_id", "local_name", "model_files", "push_folder", "shareable_config",
           "upload_plan"]
