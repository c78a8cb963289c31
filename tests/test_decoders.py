"""Decoder LLMs as encoders: ``last`` pooling (EOS appended, left and right padding), an
instruction in front of every sentence, PromptEOL, and the bad combinations (one line, exit 2).

Oracles: brute-force loops over rows for last-token pooling; each sentence run alone through
the backbone, unpadded, for the batched encoder (left- and right-padding tokenizers); the
tokenizer called on the joined string for the instruction; the template rows built piece by
piece and run through the backbone for PromptEOL; sentence-transformers loading the saved folder.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from csekit.cli.main import main
from csekit.errors import ConfigError
from csekit.modeling.encoder import Encoder
from csekit.modeling.representation.last_token import last_token
from csekit.modeling.representation.prompt import PROMPTEOL_TEMPLATES

sys.path.insert(0, str(Path(__file__).parent))
from test_backbones import SENTS, assert_st_equal
from test_train import make_corpus
from test_train_cli import is_one_line_error

INSTRUCTION = "Instruct: Retrieve semantically similar text.\nQuery: "


def test_last_token_against_a_loop() -> None:
    torch.manual_seed(0)
    h = torch.randn(6, 7, 5, dtype=torch.float64)
    lengths = [7, 1, 4, 3, 6, 2]
    for side in ("right", "left"):
        mask = torch.zeros(6, 7, dtype=torch.long)
        for i, n in enumerate(lengths):
            if side == "right":
                mask[i, :n] = 1
            else:
                mask[i, 7 - n:] = 1
        want = torch.stack([h[i, max(j for j in range(7) if mask[i, j])] for i in range(6)])
        assert torch.equal(last_token(h, mask), want)


def _alone(enc: Encoder, sentence: str) -> torch.Tensor:
    """The sentence run alone (no padding) through the backbone; the pooled state."""
    ids = enc.tokenizer([sentence], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        h = enc.backbone(input_ids=ids).last_hidden_state[0]
    return h[-1] if enc.pooler == "last" else h.mean(0)


@pytest.mark.parametrize("family,pooler", [("qwen3", "last"), ("llama", "last"),
                                           ("gemma3_text", "avg")])
def test_batched_encoding_equals_each_sentence_alone(families, family: str, pooler: str) -> None:
    """Qwen's tokenizer pads on the left, Llama's on the right: the same embeddings as the
    unpadded sentence alone, in ``encode`` and in the training forward (eval mode)."""
    enc = Encoder.from_pretrained(families.build(family), pooler=pooler)
    sents = SENTS + ["a b c d e f g h i j k l m n o p q"]
    want = torch.stack([_alone(enc, s) for s in sents])
    torch.testing.assert_close(enc.encode(sents, batch_size=16), want, rtol=0, atol=2e-5)
    batch = enc.tokenizer(sents, padding=True, return_tensors="pt")
    side = enc.tokenizer.padding_side
    assert side == ("left" if family == "qwen3" else "right")
    assert (batch["attention_mask"][:, 0 if side == "left" else -1] == 0).any()  # padded
    with torch.no_grad():
        torch.testing.assert_close(enc(**batch), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_last_pooling_appends_eos(families, family: str, tmp_path: Path) -> None:
    """Every row ends with the EOS token, also when truncated; the saved tokenizer appends it
    (sentence-transformers then pools the same token)."""
    enc = Encoder.from_pretrained(families.build(family), pooler="last")
    eos = enc.tokenizer.eos_token_id
    rows = enc.tokenizer(SENTS, truncation=True, max_length=5)["input_ids"]
    assert all(r[-1] == eos and len(r) <= 5 for r in rows)
    assert max(map(len, rows)) == 5  # (the long ones were cut, the EOS kept)
    if family == "llama":  # its own BOS stays first
        assert all(r[0] == enc.tokenizer.bos_token_id for r in rows)
    enc.save(tmp_path / "m")
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert [r[-1] for r in again(SENTS)["input_ids"]] == [eos] * len(SENTS)
    assert json.loads((tmp_path / "m" / "1_Pooling" / "config.json").read_text())[
        "pooling_mode_lasttoken"]
    assert_st_equal(tmp_path / "m")


def test_instruction_is_text_before_every_sentence(families, tmp_path: Path) -> None:
    """encode(s) with the instruction == encode(instruction + s) without it; training batches
    carry it too; the saved folder names it as sentence-transformers' default prompt, so both
    libraries embed the same, and csekit reads it back."""
    d = families.build("qwen3")
    enc = Encoder.from_pretrained(d, pooler="last", instruction=INSTRUCTION)
    plain = Encoder.from_pretrained(d, pooler="last")
    torch.testing.assert_close(enc.encode(SENTS), plain.encode([INSTRUCTION + s for s in SENTS]),
                               rtol=0, atol=1e-6)
    from csekit.training.supervised import tokenize_batch

    batch = tokenize_batch(enc.tokenizer, SENTS, "unsupervised", 64)
    want = plain.tokenizer([INSTRUCTION + s for s in SENTS], padding=True,
                           return_tensors="pt")["input_ids"]
    assert torch.equal(batch["input_ids"][0::2], want)
    enc.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config_sentence_transformers.json").read_text())
    assert cfg["prompts"][cfg["default_prompt_name"]] == INSTRUCTION
    assert "Instruction before every text" in (tmp_path / "m" / "README.md").read_text()
    assert Encoder.from_pretrained(tmp_path / "m").tokenizer.instruction == INSTRUCTION
    assert_st_equal(tmp_path / "m")
    # "" switches a saved instruction off
    off = Encoder.from_pretrained(tmp_path / "m", instruction="")
    torch.testing.assert_close(off.encode(SENTS), plain.encode(SENTS), rtol=0, atol=1e-6)


def test_prompteol_pools_the_templates_last_token(families, tmp_path: Path) -> None:
    """PromptEOL: the state of the template's last token (``:"``), rows built from the
    template's pieces around the sentence (with the evaluation '.'); the saved folder embeds
    the same in sentence-transformers (csekit's prompt module, trust_remote_code)."""
    enc = Encoder.from_pretrained(families.build("qwen3"), pooler="prompteol")
    assert enc.prompt is not None and enc.prompt.templates == PROMPTEOL_TEMPLATES
    assert not enc.prompt.denoise  # PromptEOL does not denoise
    tok = enc.tokenizer
    before, after = PROMPTEOL_TEMPLATES[0].split("[X]")

    def piece(text: str) -> list[int]:
        return tok([text], add_special_tokens=False)["input_ids"][0]

    want = []
    for s in SENTS:
        s = s if s[-1] in ".?\"'" else s + "."
        row = piece(before) + piece(s) + piece(after)
        assert piece(after)[-1] == row[-1]
        with torch.no_grad():
            want.append(enc.backbone(input_ids=torch.tensor([row])).last_hidden_state[0, -1])
    torch.testing.assert_close(enc.encode(SENTS), torch.stack(want), rtol=0, atol=2e-5)
    enc.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "csekit.json").read_text())["pooler"] == "prompteol"
    assert Encoder.from_pretrained(tmp_path / "m").pooler == "prompteol"
    assert_st_equal(tmp_path / "m", trust_remote_code=True)


def test_prompteol_trains(families, tmp_path: Path) -> None:
    from csekit.training import TrainConfig, Trainer

    corpus = make_corpus(tmp_path / "c.txt", n=16)
    cfg = TrainConfig.from_dict({
        "model": str(families.build("llama")), "train_file": str(corpus),
        "output_dir": str(tmp_path / "o"), "pooler": "prompteol", "mlp": "none",
        "batch_size": 8, "max_steps": 2, "dropout": 0.1, "learning_rate": 1e-3,
        "progress": False, "final_test": False})
    assert Trainer(cfg).train().steps == 2


def _bad_cases(families, tiny_bert_dir: Path, tmp_path: Path,
               senteval_dir: Path) -> list[tuple[str, list[str], str]]:
    corpus = make_corpus(tmp_path / "c.txt", n=16)
    qwen = str(families.build("qwen3"))
    base = ["--train-file", str(corpus), "--batch-size", "8", "--max-steps", "1",
            "--no-progress", "--dropout", "0.1"]

    def run(model: str, *flags: str) -> list[str]:
        return ["train", "--model", model, *base, "--output-dir", str(tmp_path / "o"), *flags]

    return [
        ("cls on a decoder", run(qwen), "first token"),
        ("cls_before_pooler on a decoder", run(qwen, "--pooler", "cls_before_pooler"),
         "causal decoder"),
        ("last without an EOS token", run(str(tiny_bert_dir), "--pooler", "last"), "EOS token"),
        ("a mask template on a decoder", run(qwen, "--pooler", "prompt"), "prompteol"),
        ("instruction with a prompt pooler",
         run(qwen, "--pooler", "prompteol", "--instruction", "x: "), "template"),
        ("bidirectional without the switch", run(qwen, "--pooler", "last", "--bidirectional"),
         "no switch"),
        ("eval: last without an EOS token",
         ["eval", str(tiny_bert_dir), "--pooler", "last", "--data-dir", str(senteval_dir)],
         "EOS token"),
        ("eval: cls on a decoder",
         ["eval", qwen, "--pooler", "cls", "--data-dir", str(senteval_dir)], "first token"),
    ]


def test_bad_combinations_exit_2_one_line(families, tiny_bert_dir: Path, tmp_path: Path,
                                          senteval_dir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    failures = []
    for name, argv, needle in _bad_cases(families, tiny_bert_dir, tmp_path, senteval_dir):
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err
        if not is_one_line_error(rc, err, needle):
            failures.append(f"{name}: rc={rc} err={err[-300:]!r}")
    assert not failures, "\n".join(failures)


def test_api_errors_are_config_errors(families, tiny_bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="EOS token"):
        Encoder.from_pretrained(tiny_bert_dir, pooler="last")
    with pytest.raises(ConfigError, match="first token"):
        Encoder.from_pretrained(families.build("llama"), pooler="cls", mlp="train")


def test_instruction_on_an_encoder_with_the_native_backend(tiny_bert_dir: Path,
                                                          tmp_path: Path) -> None:
    """A saved instruction also reaches csekit's native BERT tokenizer (`csekit eval`'s auto
    backend on the CPU) and sentence-transformers."""
    enc = Encoder.from_pretrained(tiny_bert_dir, pooler="avg", mlp="none",
                                  instruction="query : ")
    enc.save(tmp_path / "m")
    native = Encoder.from_pretrained(tmp_path / "m", backend="native")
    assert native.backend == "native" and native.tokenizer.instruction == "query : "
    torch.testing.assert_close(native.encode(SENTS), enc.encode(SENTS), rtol=0, atol=2e-5)
    plain = Encoder.from_pretrained(tiny_bert_dir, pooler="avg", mlp="none")
    torch.testing.assert_close(enc.encode(SENTS), plain.encode(["query : " + s for s in SENTS]),
                               rtol=0, atol=1e-6)
    assert_st_equal(tmp_path / "m")
