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
