"""Corpus embeddings for retrieval, cached on disk and memory-mapped.

The embeddings of a list of texts under one model are computed once, streamed chunk by chunk
into a ``.npy`` (as ``csekit encode`` does), L2-normalised (scores are cosines), and kept:

- in csekit's cache (``$CSEKIT_CACHE`` or ``~/.cache/csekit``, the ``corpus-index/<key>/``
  folders that ``csekit data cache`` lists and prunes; one builder at a time under ``flock``),
  keyed by the model's identity and the texts' content; or
- in a folder the user names (``csekit search --index DIR``), whose ``meta.json`` records the
  same identity: an index built by another model, or for other texts, is refused.

Model identity (:func:`model_identity`): the resolved model folder (a hub id resolves to its
snapshot folder, which names the commit), the name, size and mtime (ns) of every file in it
(``checkpoints/`` and hidden entries left out), and the encoding options that change the vectors
(pooler, template, instruction, max length, precision). Weights are not hashed (a 14 GB model
would take minutes): rewriting a weight file changes its mtime, which is what is relied on.
Texts' content: SHA-256 of the texts (length-prefixed UTF-8), so a corpus edited in place, or
another file with the same lines, is recognised by what it holds, not by its path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from csekit.atomic import atomic_write_text, temp_name
from csekit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
INDEX_KIND = "csekit-embeddings"
INDEX_FORMAT = 1


def model_identity(model: str, *, options: dict[str, Any] | None = None,
                   revision: str | None = None) -> dict[str, Any]:
    """What identifies the vectors a model gives (see the module docstring). Raises
    ModelLoadError for a model that does not exist."""
    from csekit.modeling.loading.resolve import resolve_model_dir

    folder = resolve_model_dir(model, revision=revision).resolve()
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "checkpoints")
        for name in sorted(names):
            if name.startswith("."):
                continue
            p = Path(root) / name
            try:
                st = p.stat()
            except OSError:
                continue
            files.append([str(p.relative_to(folder)), st.st_size, st.st_mtime_ns])
    return {"model": model, "folder": str(folder), "files": files,
            "options": {k: v for k, v in sorted((options or {}).items())}}


def texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def encode_into(path: Path, texts: Sequence[str], encode: Callable[[list[str]], Any], *,
                chunk: int = 8192, progress: bool = True,
                prepare: Callable[[], Any] | None = None) -> tuple[int, int]:
    """``prepare()`` first (loading the model: its error comes before any progress bar), then
    stream ``encode(chunk_of_texts) -> (n, d)`` into the .npy ``path`` (L2-normalised),
    re-mapping after every chunk so memory stays bounded by one chunk."""
    from tqdm.auto import tqdm

    from csekit.data.memory import trim_heap

    if prepare is not None:
        prepare()
    mm = None
    n = len(texts)
    d = 0
    bar = tqdm(total=n, unit="sent", unit_scale=True, dynamic_ncols=True, desc="embed",
               disable=not progress or bool(os.environ.get("CI")))
    try:
        for a in range(0, n, chunk):
            emb = np.asarray(encode(list(texts[a:a + chunk])), dtype=np.float32)
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            emb = emb / np.maximum(norms, 1e-12)
            if mm is None:
                d = emb.shape[1]
                mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
            mm[a:a + len(emb)] = emb
            mm.flush()
            del mm, emb
            mm = np.lib.format.open_memmap(path, mode="r+")
            trim_heap()
            bar.update(min(chunk, n - a))
    finally:
        bar.close()
    if mm is not None:
        mm.flush()
        del mm
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
    return n, d


def cached_embeddings(texts: Sequence[str], identity: dict[str, Any],
                      encode: Callable[[list[str]], Any], *, chunk: int = 8192,
                      progress: bool = True, prepare: Callable[[], Any] | None = None,
                      ) -> np.ndarray:
    """The (len(texts), d) normalised embeddings, memory-mapped from csekit's cache; computed
    with ``encode`` on the first use only."""
    from csekit.data.index_cache import get_or_build

    if not texts:
        raise DataError("nothing to embed: no text")
    description = {"kind": INDEX_KIND, "format": INDEX_FORMAT, "identity": identity,
                   "texts": texts_digest(texts), "n": len(texts)}

    def build(tmp: Path) -> dict[str, Any]:
        logger.info("embedding %d texts with %s (cached for the next use)", len(texts),
                    identity["model"])
        n, d = encode_into(tmp / EMBEDDINGS_FILE, texts, encode, chunk=chunk, progress=progress,
                           prepare=prepare)
        return {"kind": INDEX_KIND, "n": n, "d": d}

    folder, _ = get_or_build(description, build)
    return np.load(folder / EMBEDDINGS_FILE, mmap_mode="r")


def folder_embeddings(folder: Path, texts: Sequence[str], identity: dict[str, Any],
                      encode: Callable[[list[str]], Any], *, rebuild: bool = False,
                      chunk: int = 8192, progress: bool = True,
                      prepare: Callable[[], Any] | None = None) -> tuple[np.ndarray, bool]:
    """Embeddings kept in a folder the user named: ``(array, built_now)``. An index there built
    by another model (or for other texts) is a ConfigError unless ``rebuild``; a folder that
    holds other things than a csekit index is never written into."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    digest = texts_digest(texts)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--index {folder} is a file; give a folder")
    meta = None
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"--index {folder}: unreadable meta.json ({err})") from err
        if meta.get("kind") != INDEX_KIND:
            raise ConfigError(f"--index {folder} is not a csekit embedding index (its "
                              "meta.json says otherwise); give an empty or new folder")
    elif folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"--index {folder} is not empty and holds no csekit index; give an "
                          "empty or new folder")
    if meta is not None and not rebuild:
        if not same_model(meta.get("identity", {}), identity):
            theirs = meta.get("identity", {})
            why = ("another model" if theirs.get("folder") != identity["folder"]
                   else "other weights or encoding options" if theirs != identity else "?")
            raise ConfigError(f"--index {folder} was built by {why} ({theirs.get('model')}, "
                              f"{theirs.get('options')}), not {identity['model']} "
                              f"{identity['options']}; pass --rebuild to replace it")
        if meta.get("texts") != digest:
            raise ConfigError(f"--index {folder} was built for other texts ({meta.get('n')} "
                              f"rows); pass --rebuild to replace it")
        arr = np.load(folder / meta["file"], mmap_mode="r")
        if arr.shape[0] != len(texts):
            raise DataError(f"--index {folder}: {meta['file']} has {arr.shape[0]} rows, "
                            f"expected {len(texts)}; pass --rebuild")
        return arr, False
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256((json.dumps(identity, sort_keys=True) + digest).encode()).hexdigest()
    name = f"embeddings-{key[:16]}.npy"
    tmp = folder / (temp_name(name) + ".npy")
    try:
        n, d = encode_into(tmp, texts, encode, chunk=chunk, progress=progress, prepare=prepare)
        os.replace(tmp, folder / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    old = meta.get("file") if meta else None
    atomic_write_text(meta_path, json.dumps({"kind": INDEX_KIND, "format": INDEX_FORMAT,
                                             "identity": identity, "texts": digest, "n": n,
                                             "d": d, "file": name}, indent=1) + "\n")
    if old and old != name and old.startswith("embeddings-") and old.endswith(".npy"):
        (folder / old).unlink(missing_ok=True)  # the replaced index's own file
    return np.load(folder / name, mmap_mode="r"), True


__all__ = ["EMBEDDINGS_FILE", "cached_embeddings", "encode_into", "folder_embeddings",
           "model_identity", "same_model", "texts_digest"]
