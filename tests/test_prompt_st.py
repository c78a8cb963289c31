"""A saved prompt model embeds the same in the installed sentence-transformers as in csekit
(its custom module csekit_prompt.py, loaded with trust_remote_code=True), and says in its
metadata which template it needs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from csekit.modeling.encoder import Encoder
from csekit.modeling.representation.prompt import PromptConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_prompt import SENTS, sts_sentences, tiny_roberta_dirs  # noqa: F401

st = pytest.importorskip("sentence_transformers")


def _roundtrip(enc: Encoder, path: Path, sents: list[str]) -> None:
    enc.save(path)
    meta = json.loads((path / "csekit.json").read_text())
    assert meta["pooler"] == "prompt" and meta["prompt"]["templates"] == list(enc.prompt.templates)
    assert json.loads((path / "csekit_prompt.json").read_text())["template"] == enc.prompt.templates[0]
    with pytest.raises(ValueError, match="trust_remote_code"):
        st.SentenceTransformer(str(path), device="cpu")
    model = st.SentenceTransformer(str(path), device="cpu", trust_remote_code=True)
    ours = enc.encode(sents)
    theirs = torch.from_numpy(model.encode(sents, batch_size=7, convert_to_numpy=True))
    torch.testing.assert_close(theirs, ours, rtol=0, atol=2e-5)
    again = Encoder.from_pretrained(path)  # and csekit reads its own folder back
    assert again.prompt is not None and again.prompt.templates == enc.prompt.templates
    torch.testing.assert_close(again.encode(sents), ours, rtol=0, atol=1e-6)
    native = Encoder.from_pretrained(path, backend="auto")  # what `csekit eval` loads
    torch.testing.assert_close(native.encode(sents), ours, rtol=0, atol=2e-5)


@pytest.mark.parametrize("mlp,eval_denoise", [("train", False), ("always", False),
                                              ("train", True)])
def test_bert_prompt_model_in_sentence_transformers(tiny_bert_dir: Path, senteval_dir: Path,
                                                    tmp_path: Path, mlp: str,
                                                    eval_denoise: bool) -> None:
    enc = Encoder.from_pretrained(tiny_bert_dir, pooler="prompt", mlp=mlp,
                                  prompt=PromptConfig(eval_denoise=eval_denoise))
    if enc.head is not None:
        torch.manual_seed(0)
        enc.head.dense.reset_parameters()
    _roundtrip(enc, tmp_path / "m", SENTS + sts_sentences(senteval_dir, 60))


def test_roberta_prompt_model_in_sentence_transformers(tiny_roberta_dirs: dict,  # noqa: F811
                                                       senteval_dir: Path, tmp_path: Path) -> None:
    enc = Encoder.from_pretrained(tiny_roberta_dirs[True], pooler="prompt",
                                  prompt=PromptConfig(eval_denoise=True))
    _roundtrip(enc, tmp_path / "r", SENTS + sts_sentences(senteval_dir, 40))


_REVISION_SCRIPT = r'''
import os, sys
from pathlib import Path
import torch
from sentence_transformers import SentenceTransformer
from csekit.modeling.encoder import Encoder
from csekit.modeling.representation.prompt import PromptConfig

tiny, hub = sys.argv[1], Path(sys.argv[2])
sents = ["a man is playing a guitar", "the cat sat on the mat", "stocks fell on monday"]
revs = {"a" * 40: 'This sentence : "[X]" means [MASK] .', "b" * 40: 'The sentence "[X]" is [MASK] .'}
ours = {}
for cache in (hub, hub.parent / "elsewhere"):
    repo = cache / "models--me--prompt"
    for rev, template in revs.items():
        enc = Encoder.from_pretrained(tiny, pooler="prompt", mlp="none",
                                      prompt=PromptConfig(templates=(template,)))
        enc.save(repo / "snapshots" / rev)
        ours[rev] = enc.encode(sents)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "refs" / "v2").write_text("b" * 40)
assert not torch.allclose(ours["a" * 40], ours["b" * 40], atol=1e-3)
for cache, runs in ((None, ((None, "a" * 40), ("v2", "b" * 40))),  # the default cache
                    (str(hub.parent / "elsewhere"), (("v2", "b" * 40),))):  # cache_folder=
    for revision, rev in runs:
        m = SentenceTransformer("me/prompt", revision=revision, cache_folder=cache,
                                trust_remote_code=True, local_files_only=True, device="cpu")
        assert m[0].prompt_config["template"] == revs[rev], (cache, revision)
        got = torch.from_numpy(m.encode(sents, convert_to_numpy=True))
        torch.testing.assert_close(got, ours[rev], rtol=0, atol=2e-5)
print("ok")
'''


@pytest.mark.slow
def test_hub_revision_reaches_the_prompt_config(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """A prompt model loaded from the Hub at a pinned revision reads its template config
    (csekit_prompt.json) from that revision, and from the cache folder sentence-transformers
    was given (issue #28). The Hub is an offline cache here: refs/main and refs/v2 pointing
    at two snapshots with different templates, read with local_files_only. In a fresh process
    with its own HF_HOME (the default cache, and the remote-code module cache). Slow (a fresh
    process loading sentence-transformers and 3 models, about a minute on the loaded 2-core
    machine); test_prompt_module_downloads_with_the_loading_settings covers the same in
    process."""
    import os
    import subprocess

    home = tmp_path / "hf-home"
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1")
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_MODULES_CACHE", None)
    p = subprocess.run([sys.executable, "-c", _REVISION_SCRIPT, str(tiny_bert_dir),
                        str(home / "hub")], env=env, capture_output=True, text=True,
                       check=False, timeout=600)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stderr[-3000:]


def test_prompt_module_downloads_with_the_loading_settings(tiny_bert_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The module reads csekit_prompt.json with the revision, token, cache folder and
    local_files_only that sentence-transformers 6 hands a Transformer module (the keyword
    arguments of ``Transformer.load`` -> ``__init__``, read from its source: ``config_kwargs``
    and ``model_kwargs`` carry them), not from the default branch."""
    import huggingface_hub

    from csekit.modeling.saved import st_prompt_module as mod

    folder = tmp_path / "m"
    Encoder.from_pretrained(tiny_bert_dir, pooler="prompt", mlp="none").save(folder)
    calls: list[dict] = []

    def fake_download(repo_id: str, filename: str, **kw: object) -> str:
        calls.append({"repo_id": repo_id, "filename": filename, **kw})
        return str(folder / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    hub = {"subfolder": "", "token": "t", "cache_dir": "/c", "revision": "v2",
           "local_files_only": True, "trust_remote_code": True}
    init_kwargs = {"model_name_or_path": "me/prompt", "config_kwargs": dict(hub),
                   "model_kwargs": dict(hub), "processor_kwargs": dict(hub)}
    got = mod._read_config("me/prompt", mod._hub_kwargs(init_kwargs))
    assert got == json.loads((folder / "csekit_prompt.json").read_text())
    assert calls == [{"repo_id": "me/prompt", "filename": "csekit_prompt.json",
                      "subfolder": None, "token": "t", "cache_dir": "/c", "revision": "v2",
                      "local_files_only": True}]
