"""Find a model on disk (or in the Hugging Face cache / hub) and check it is complete.

Every failure is a one-line :class:`~csekit.errors.ModelLoadError` naming the path or id and
what to do. Offline (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``) a hub id that is not in
the local cache fails at once instead of retrying.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from csekit.errors import ModelLoadError, first_line

# Hub ids look like "name" or "org/name"; anything else is treated as a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")

WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHT_FILES: tuple[str, ...] = (
    "pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack",
)
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
    "tokenizer.model",
)
# Only what a csekit Encoder needs: never pickled weights, ONNX/OpenVINO exports, etc.
_HUB_PATTERNS: list[str] = [
    "*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "*/*.json", "*/*.safetensors",
]


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    return False


def looks_like_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "~"))


def resolve_model_dir(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """Return a local folder holding the model: the path itself, or a hub snapshot.

    Raises ModelLoadError when the path does not exist and the name is not a usable hub id.
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"model path {name} is a file; pass the model's folder")
    if not looks_like_hub_id(name):
        raise ModelLoadError(f"model folder {name} does not exist")
    offline = hub_offline() if local_files_only is None else local_files_only
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as err:  # pragma: no cover - huggingface_hub ships with transformers
        raise ModelLoadError(f"model folder {name} does not exist") from err
    try:
        snap = snapshot_download(
            name, revision=revision, allow_patterns=_HUB_PATTERNS, local_files_only=offline
        )
    except LocalEntryNotFoundError as err:
        if offline:
            raise ModelLoadError(
                f"model {name!r} is neither a local folder nor in the Hugging Face cache, and the "
                "hub is offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE); pass a local folder or go online"
            ) from err
        raise ModelLoadError(
            f"cannot download model {name!r} from the Hugging Face hub (no connection?); "
            "pass a local folder or set HF_HUB_OFFLINE=1 to use the cache"
        ) from err
    except Exception as err:  # RepositoryNotFoundError, HTTP errors, ...
        raise ModelLoadError(f"cannot get model {name!r} from the hub: {first_line(err)}") from err
    return Path(snap)


def check_transformer_dir(folder: Path, *, what: str) -> None:
    """Check that ``folder`` holds a config, safetensors weights and a tokenizer."""
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{what}: no config.json in {folder}; is this a Hugging Face model folder?")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        pickled = [f for f in PICKLE_WEIGHT_FILES if (folder / f).is_file()]
        if pickled:
            raise ModelLoadError(
                f"{what}: {folder} has only {pickled[0]}; csekit loads weights from safetensors only "
                "(convert it with transformers: model.save_pretrained(dir, safe_serialization=True))"
            )
        raise ModelLoadError(f"{what}: model weights (model.safetensors) missing in {folder}")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{what}: tokenizer files missing in {folder} (expected one of {', '.join(TOKENIZER_FILES)})"
        )
