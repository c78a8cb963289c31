"""``Encoder.save`` into a folder that holds other files (issue #28): the user's files stay, the
model's own entries are replaced, a failed or killed save leaves the previous model, and the
trainer's best-model commit (the same journal) finishes correctly after a kill.

The oracle for "the model" is a load of the folder: its embeddings must equal the saved
encoder's; for "the user's files", their bytes before and after.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import csekit.atomic as atomic_mod
from csekit.modeling.encoder import HEAD_FILE, Encoder
from csekit.modeling.saved.folder import MODEL_MANIFEST, SAVE_STAGING

SENTS = ["a man is playing a guitar .", "the cat sat on the mat", "stocks fell on monday"]


@pytest.fixture(scope="module")
def encoders(tiny_bert_dir: Path) -> dict[str, Encoder]:
    torch.manual_seed(1)
    with_head = Encoder.from_pretrained(str(tiny_bert_dir), pooler="cls", mlp="always")
    torch.manual_seed(2)
    plain = Encoder.from_pretrained(str(tiny_bert_dir), pooler="avg", mlp="none")
    with torch.no_grad():  # not the same weights as with_head
        next(plain.backbone.parameters()).add_(0.01)
    return {"head": with_head, "plain": plain}


def _same_model(folder: Path, enc: Encoder) -> None:
    torch.testing.assert_close(Encoder.from_pretrained(folder).encode(SENTS), enc.encode(SENTS))


def _user_files(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_bytes(b"my notes\n")
    (folder / "data").mkdir()
    (folder / "data" / "train.csv").write_bytes(b"a,b\n1,2\n")
    (folder / ".hidden").write_bytes(b"x")
    return {"notes.txt": b"my notes\n", "data/train.csv": b"a,b\n1,2\n", ".hidden": b"x"}


def _assert_kept(folder: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        assert (folder / rel).read_bytes() == data, rel


def test_save_keeps_the_users_files(encoders: dict[str, Encoder], tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    files = _user_files(folder)
    encoders["head"].save(folder, metadata={"round": 1})
    _assert_kept(folder, files)
    _same_model(folder, encoders["head"])
    assert (folder / HEAD_FILE).is_file()
    own = json.loads((folder / MODEL_MANIFEST).read_text())
    assert "notes.txt" not in own and "data" not in own and HEAD_FILE in own
    # a second save of another model: the previous model's head goes (the new one has none),
    # the user's files stay, no staging folder is left
    encoders["plain"].save(folder, metadata={"round": 2})
    _assert_kept(folder, files)
    _same_model(folder, encoders["plain"])
    assert not (folder / HEAD_FILE).exists()
    assert json.loads((folder / "csekit.json").read_text())["round"] == 2
    left = {p.name for p in folder.iterdir()} - set(json.loads(
        (folder / MODEL_MANIFEST).read_text())) - {MODEL_MANIFEST}
    assert left == {"notes.txt", "data", ".hidden"}


def test_save_into_a_folder_saved_before_the_manifest(encoders: dict[str, Encoder],
                                                      tmp_path: Path) -> None:
    """A csekit folder written by an older version (no manifest) plus a user file: the user
    file stays and the old head (a name only csekit writes) does not outlive its model."""
    folder = tmp_path / "old"
    encoders["head"].save(folder)
    (folder / MODEL_MANIFEST).unlink()
    (folder / "notes.txt").write_text("keep")
    encoders["plain"].save(folder)
    assert (folder / "notes.txt").read_text() == "keep"
    assert not (folder / HEAD_FILE).exists()
    _same_model(folder, encoders["plain"])


def test_failed_save_leaves_the_previous_model_and_the_users_files(
        encoders: dict[str, Encoder], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "mine"
    files = _user_files(folder)
    encoders["head"].save(folder)
    before = {p.name for p in folder.iterdir()}
    import csekit.modeling.saved.folder as folder_mod

    def boom(*a: object, **k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(folder_mod, "write_st_modules", boom)
    with pytest.raises(OSError):
        encoders["plain"].save(folder)
    assert {p.name for p in folder.iterdir()} == before  # no staging or temp left
    _assert_kept(folder, files)
    _same_model(folder, encoders["head"])


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """``os.replace`` in csekit.atomic raises (as a kill would stop it) after n calls."""
    real = os.replace
    calls = {"n": 0}

    def replace(a: object, b: object) -> None:
        calls["n"] += 1
        if calls["n"] > n:
            raise KeyboardInterrupt("killed mid-commit")
        real(a, b)

    monkeypatch.setattr(atomic_mod.os, "replace", replace)


@pytest.mark.parametrize("moved", [1, 4, 9])
def test_save_killed_while_moving_in_is_finished_by_the_next_save(
        encoders: dict[str, Encoder], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        moved: int) -> None:
    folder = tmp_path / "mine"
    files = _user_files(folder)
    encoders["head"].save(folder)
    with monkeypatch.context() as m:
        # the first os.replace renames the staging folder into place; then entries move
        _interrupt_after(m, 1 + moved)
        with pytest.raises(KeyboardInterrupt):
            encoders["plain"].save(folder, metadata={"round": 2})
    assert (folder / SAVE_STAGING).is_dir()  # the journal
    _assert_kept(folder, files)
    encoders["plain"].save(folder, metadata={"round": 3})
    _assert_kept(folder, files)
    _same_model(folder, encoders["plain"])
    assert not (folder / SAVE_STAGING).exists() and not (folder / HEAD_FILE).exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".old-")]


@pytest.mark.parametrize("moved", [1, 5])
def test_best_model_commit_killed_midway_is_finished_on_restart(
        encoders: dict[str, Encoder], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        moved: int) -> None:
    """The trainer's output folder: best model at the root next to the run's files. A kill
    while the new best model moves in; ``recover_best`` (the next start / --resume) must end
    with the complete new model, not delete the entries already moved (nor the run's files)."""
    from csekit.training.model_io import STAGING, commit_best, recover_best

    root = tmp_path / "run"
    root.mkdir()
    (root / "checkpoints" / "step-2").mkdir(parents=True)
    (root / "checkpoints" / "step-2" / "trainer_state.json").write_text("{}")
    (root / "metrics.jsonl").write_text('{"step": 1}\n')
    (root / "config.yaml").write_text("seed: 1\n")
    encoders["head"].save(root / STAGING)
    commit_best(root)
    _same_model(root, encoders["head"])
    encoders["plain"].save(root / STAGING)  # the next best model, complete in staging
    with monkeypatch.context() as m:
        _interrupt_after(m, moved)
        with pytest.raises(KeyboardInterrupt):
            commit_best(root)
    recover_best(root)
    _same_model(root, encoders["plain"])
    assert not (root / STAGING).exists() and not (root / HEAD_FILE).exists()
    assert (root / "checkpoints" / "step-2" / "trainer_state.json").is_file()
    assert (root / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert (root / "config.yaml").read_text() == "seed: 1\n"


def test_save_into_an_empty_or_model_only_folder_is_one_swap(
        encoders: dict[str, Encoder], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No other files: the whole-folder atomic swap, as before (merge_dir is not used)."""
    folder = tmp_path / "m"
    folder.mkdir()
    calls: list[object] = []
    real = atomic_mod.merge_dir
    monkeypatch.setattr("csekit.modeling.saved.folder.merge_dir",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    encoders["head"].save(folder)
    encoders["plain"].save(folder)
    assert calls == []
    _same_model(folder, encoders["plain"])
    assert not (folder / HEAD_FILE).exists()
