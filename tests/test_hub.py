"""Hub upload (``csekit push``, ``csekit train --push-to-hub``) against a local fake Hub.

The real Hub is unreachable here. ``tests/hub_server.py`` answers the requests huggingface_hub
makes for ``create_repo`` and ``create_commit`` (its docstring lists what is and is not
exercised). The test checks what arrived: the files and their bytes, what stayed local, the
re-rendered card, the visibility, the token, and that nothing else was requested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from csekit.modeling.encoder import Encoder
from csekit.modeling.saved.hub import model_files, push_folder

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import FakeHub
from test_train import make_corpus

TOKEN = "hf_test_token_123"
# huggingface_hub (2.x) asks for this list when it builds its user agent in a fresh process
# (utils/_detect_agent.py); it is no part of the upload, and a 404 is harmless to it
INCIDENTAL = {("GET", "/api/agent-harnesses")}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def hub():
    h = FakeHub(token=TOKEN).start()
    yield h
    h.stop()


@pytest.fixture()
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """huggingface_hub in online mode for this test (conftest forces offline mode)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token is read
    monkeypatch.setenv("HF_TOKEN", TOKEN)


@pytest.fixture(scope="module")
def saved_run(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like a csekit output dir: the model plus the run's own files."""
    out = tmp_path_factory.mktemp("hub") / "run"
    enc = Encoder.from_pretrained(str(tiny_bert_dir), pooler="cls", mlp="train")
    enc.save(out, metadata={"training_config": {"model": str(tiny_bert_dir),
                                                "objective": "simcse", "output_dir": str(out)},
                            "objective": {"name": "simcse", "temperature": 0.05}})
    (out / "checkpoints" / "step-5").mkdir(parents=True)
    (out / "checkpoints" / "step-5" / "optimizer.pt").write_bytes(b"x" * 100)
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events").write_bytes(b"y")
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "config.yaml").write_text(f"model: {tiny_bert_dir}\noutput_dir: {out}\n"
                                     f"train_file: {out.parent / 'corpus.txt'}\nseed: 3\n")
    return out


def test_push_folder_uploads_the_model_files(saved_run: Path, hub: FakeHub, online) -> None:
    url = push_folder(saved_run, "me/tiny-simcse", private=True, endpoint=hub.url,
                      commit_message="first")
    assert url.startswith(f"{hub.url}/me/tiny-simcse/commit/")
    assert hub.unknown == []
    assert [r for r in hub.requests] == [("POST", "/api/repos/create"),
                                         ("POST", "/api/validate-yaml"),
                                         ("POST", "/api/models/me/tiny-simcse/preupload/main"),
                                         ("POST", "/api/models/me/tiny-simcse/commit/main")]
    repo = hub.repos["me/tiny-simcse"]
    assert repo["private"] is True
    files = repo["files"]
    expected = {p.as_posix() for p in model_files(saved_run)}
    assert set(files) == expected
    assert {"modules.json", "model.safetensors", "csekit.json", "README.md", "metrics.jsonl",
            "csekit_head.safetensors", "tokenizer.json"} <= expected
    assert not any(p.startswith(("checkpoints", "tensorboard", ".")) for p in files)
    for p, data in files.items():
        if p not in ("README.md", "csekit.json", "config.yaml"):  # (those: local paths as names)
            assert data == (saved_run / p).read_bytes(), p
    card = files["README.md"].decode()
    assert "# me/tiny-simcse" in card and 'SentenceTransformer("me/tiny-simcse")' in card
    assert hub.commits[0]["summary"] == "first" and hub.validated == 1

    # a second push to the same repo: create_repo answers 409, exist_ok accepts it
    push_folder(saved_run, "me/tiny-simcse", endpoint=hub.url)
    assert len(hub.commits) == 2 and hub.unknown == []


def test_push_errors_are_one_line(saved_run: Path, hub: FakeHub, online,
                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from csekit.errors import ConfigError, ModelLoadError
    from csekit.modeling.saved.hub import HubError

    monkeypatch.setenv("HF_TOKEN", "wrong")
    with pytest.raises(HubError, match="refused.*401.*HF_TOKEN"):
        push_folder(saved_run, "me/x", endpoint=hub.url)
    with pytest.raises(ConfigError, match="not a valid Hub repo id"):
        push_folder(saved_run, "a/b/c", endpoint=hub.url)
    with pytest.raises(ModelLoadError, match="not a saved model folder"):
        push_folder(tmp_path, "me/x", endpoint=hub.url)
    with pytest.raises(HubError, match="cannot reach"):
        push_folder(saved_run, "me/x", endpoint="http://127.0.0.1:9")  # nothing listens there
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="offline mode"):
        push_folder(saved_run, "me/x", endpoint=hub.url)


def _cli_env(hub: FakeHub, tmp_path: Path, token: str = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=token, HF_HOME=str(tmp_path / "hf-home"),
               PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    return env


def test_cli_push(saved_run: Path, hub: FakeHub, tmp_path: Path) -> None:
    """The whole command in a fresh process: endpoint and token from the environment."""
    cmd = [sys.executable, "-m", "csekit", "push", str(saved_run), "org/cli-model",
           "--hub-message", "from the cli"]
    p = subprocess.run(cmd, env=_cli_env(hub, tmp_path), capture_output=True, text=True,
                       check=False, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"{hub.url}/org/cli-model/commit/" in p.stdout
    assert hub.commits[-1]["summary"] == "from the cli" and set(hub.unknown) <= INCIDENTAL
    assert hub.repos["org/cli-model"]["files"]["model.safetensors"] == \
        (saved_run / "model.safetensors").read_bytes()


def test_cli_push_errors(saved_run: Path, hub: FakeHub, online, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from huggingface_hub import constants

    from csekit.cli.main import main

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", "bad")
    assert main(["push", str(saved_run), "org/x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("csekit: error: the Hub refused")
    assert main(["push", str(tmp_path), "org/x"]) == 2
    assert "not a saved model folder" in capsys.readouterr().err
    corpus = make_corpus(tmp_path / "corpus.txt", n=20)
    # --push-to-hub is checked before anything is loaded or written
    assert main(["train", "--train-file", str(corpus), "--output-dir", str(tmp_path / "r"),
                 "--push-to-hub", "not/a/valid/id"]) == 2
    assert "not a valid Hub repo id" in capsys.readouterr().err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["train", "--train-file", str(corpus), "--output-dir", str(tmp_path / "r"),
                 "--push-to-hub", "me/ok"]) == 2
    assert "offline mode" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_train_push_to_hub(tiny_bert_dir: Path, hub: FakeHub, tmp_path: Path) -> None:
    """A real (tiny) `csekit train --push-to-hub` in a fresh process (two subprocess runs of
    csekit train cost about a minute on a loaded 2-core machine: slow)."""
    corpus = make_corpus(tmp_path / "corpus.txt", n=40)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "csekit", "train", "--model", str(tiny_bert_dir),
           "--train-file", str(corpus), "--output-dir", str(out), "--batch-size", "8",
           "--max-steps", "2", "--no-progress", "--push-to-hub", "me/trained"]
    p = subprocess.run(cmd, env=_cli_env(hub, tmp_path), capture_output=True, text=True,
                       check=False, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    files = hub.repos["me/trained"]["files"]
    assert files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert "config.yaml" in files and not any(f.startswith("checkpoints") for f in files)
    assert "# me/trained" in files["README.md"].decode()
    assert set(hub.unknown) <= INCIDENTAL


# ---------------------------------------------------------------------- what goes (issue #28)
def test_only_the_model_and_its_record_are_uploaded(saved_run: Path, tmp_path: Path) -> None:
    """An allow-list: a symlink to a system file, a nested old run's checkpoints, a user's
    notes and hidden files stay local; the model's files (its manifest), the run's record and
    the card go."""
    from csekit.modeling.saved.folder import MODEL_MANIFEST
    from csekit.modeling.saved.hub import upload_plan

    run = tmp_path / "run"
    import shutil

    shutil.copytree(saved_run, run, symlinks=True)
    (run / "passwd").symlink_to("/etc/passwd")
    (run / "old-run" / "checkpoints" / "step-5").mkdir(parents=True)
    (run / "old-run" / "checkpoints" / "step-5" / "optimizer.pt").write_bytes(b"o")
    (run / "old-run" / "model.safetensors").write_bytes(b"w")
    (run / "notes.txt").write_text("mine")
    listed = {p.as_posix() for p in model_files(run)}
    model_own = set(json.loads((run / MODEL_MANIFEST).read_text()))
    record = {"config.yaml", "metrics.jsonl"}
    expected_top = model_own | record
    assert {p.split("/")[0] for p in listed} == expected_top
    assert not any(p.startswith(("old-run", "passwd", "notes", "checkpoints", "tensorboard"))
                   for p in listed)
    plan = {f.path_in_repo for f in upload_plan(run, "me/x")}
    assert plan == listed | {"README.md"}


def test_a_symlink_among_the_model_files_stops_the_upload(saved_run: Path,
                                                          tmp_path: Path) -> None:
    import shutil

    from csekit.errors import ConfigError

    for target in ("tokenizer.json", "1_Pooling/config.json"):
        run = tmp_path / target.replace("/", "_")
        shutil.copytree(saved_run, run, symlinks=True)
        link = run / target
        assert link.is_file()
        link.unlink()
        link.symlink_to("/etc/hostname")
        with pytest.raises(ConfigError, match="symbolic link.*never uploads a link's target"):
            model_files(run)
    run = tmp_path / "dirlink"
    shutil.copytree(saved_run, run, symlinks=True)
    shutil.rmtree(run / "1_Pooling")
    (run / "1_Pooling").symlink_to(saved_run / "1_Pooling", target_is_directory=True)
    with pytest.raises(ConfigError, match="symbolic link"):
        model_files(run)


def test_uploaded_configs_hold_no_local_path(saved_run: Path, hub: FakeHub, online,
                                            tiny_bert_dir: Path) -> None:
    """config.yaml and csekit.json's training config name local paths as ./NAME; no uploaded
    byte holds the machine's folders (the oracle: the absolute paths' text)."""
    import yaml

    push_folder(saved_run, "me/paths", endpoint=hub.url)
    files = hub.repos["me/paths"]["files"]
    for secret in (str(saved_run.parent), str(tiny_bert_dir.parent)):
        for name, data in files.items():
            assert secret.encode() not in data, (name, secret)
    cfg = yaml.safe_load(files["config.yaml"])
    assert cfg == {"model": f"./{tiny_bert_dir.name}", "output_dir": "./run",
                   "train_file": "./corpus.txt", "seed": 3}
    meta = json.loads(files["csekit.json"])
    assert meta["training_config"] == {"model": f"./{tiny_bert_dir.name}",
                                       "objective": "simcse", "output_dir": "./run"}
    local = json.loads((saved_run / "csekit.json").read_text())
    assert {k: v for k, v in meta.items() if k != "training_config"} == \
        {k: v for k, v in local.items() if k != "training_config"}
    assert (saved_run / "config.yaml").read_text().startswith(f"model: {tiny_bert_dir}")


def test_local_name_keeps_hub_ids() -> None:
    from csekit.modeling.saved.hub import local_name

    assert local_name("bert-base-uncased") == "bert-base-uncased"
    assert local_name("princeton-nlp/unsup-simcse-bert-base-uncased") == \
        "princeton-nlp/unsup-simcse-bert-base-uncased"
    assert local_name("/data/wiki1m.txt,/data/more/*.txt") == "./wiki1m.txt,./*.txt"
    assert local_name("../shared/models/bert-mini") == "./bert-mini"
    assert local_name("~/runs/x") == "./x"
    assert local_name(None) is None


def test_cli_push_prints_the_list_first_and_dry_run_stops(saved_run: Path, hub: FakeHub,
                                                          tmp_path: Path) -> None:
    from csekit.modeling.saved.hub import upload_plan

    names = [f.path_in_repo for f in upload_plan(saved_run, "org/dry")]
    env = _cli_env(hub, tmp_path)
    env.pop("HF_ENDPOINT")
    env["HF_HUB_OFFLINE"] = "1"  # a dry run needs no network
    p = subprocess.run([sys.executable, "-m", "csekit", "push", str(saved_run), "org/dry",
                        "--dry-run"], env=env, capture_output=True, text=True, check=False,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert out[0].startswith(f"csekit: {len(names)} files for org/dry (")
    assert [line.split()[0] for line in out[1:-1]] == names
    assert out[-1] == "csekit: dry run: nothing uploaded"
    assert hub.requests == []
    p = subprocess.run([sys.executable, "-m", "csekit", "push", str(saved_run), "org/wet"],
                       env=_cli_env(hub, tmp_path), capture_output=True, text=True,
                       check=False, timeout=300)
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert [line.split()[0] for line in out[1:1 + len(names)]] == names
    assert out[-1].startswith("csekit: uploaded") and set(hub.repos["org/wet"]["files"]) == \
        set(names)
