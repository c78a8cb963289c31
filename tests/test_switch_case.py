"""Switch-case positive augmentation (CARDS, Wang et al. 2022; csekit.data.switch_case).

Oracles: the definition (first letter of each chosen word flipped, nothing else changed), the
draw rate against its binomial bound, the layout of csekit's own views (the augmented batch
with no flip equals unsupervised training's batch, prompt templates included), and the
uninterrupted run for resume.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import assert_resume_exact, make_corpus

from csekit.data.switch_case import sentence_rng, switch_case, switch_case_pairs, tokenizer_is_cased
from csekit.errors import ConfigError
from csekit.training import TrainConfig, Trainer
from csekit.training.feed import BatchFeed

TEXT = "The  river Rhine flows\tnorth 42 times, 'quietly' through Basel and élan."


def test_every_chosen_word_flips_its_first_letter_only() -> None:
    out = switch_case(TEXT, 1.0, np.random.default_rng(0))
    assert out == "the  River rhine Flows\tNorth 42 Times, 'quietly' Through basel And Élan."
    assert switch_case(TEXT, 0.0, np.random.default_rng(0)) == TEXT
    # only first letters change; whitespace and length are kept
    assert len(out) == len(TEXT) and re.findall(r"\s+", out) == re.findall(r"\s+", TEXT)


def test_the_draw_rate_is_p_and_each_word_is_drawn_independently() -> None:
    words = ["alpha"] * 20000
    text = " ".join(words)
    for p in (0.05, 0.3):
        out = switch_case(text, p, np.random.default_rng(1)).split(" ")
        flipped = sum(w == "Alpha" for w in out)
        sd = (len(words) * p * (1 - p)) ** 0.5
        assert abs(flipped - p * len(words)) < 5 * sd
    # the draw is one uniform per word, in order (a brute-force replay of the definition)
    rng = np.random.default_rng(3)
    u = np.random.default_rng(3).random(len(TEXT.split()))
    expect = [w[0].swapcase() + w[1:] if x < 0.4 and w[0].swapcase() != w[0] else w
              for w, x in zip(TEXT.split(), u)]
    assert switch_case(TEXT, 0.4, rng).split() == expect


def test_draws_depend_on_position_and_text_not_on_sharding() -> None:
    sents = [f"Sentence Number {i} Of The Batch" for i in range(8)]
    whole = switch_case_pairs(sents, 0.5, seed=7, epoch=0, batch=3)
    halves = (switch_case_pairs(sents[:4], 0.5, seed=7, epoch=0, batch=3)
              + switch_case_pairs(sents[4:], 0.5, seed=7, epoch=0, batch=3))
    assert whole == halves and [a for a, _ in whole] == sents
    assert any(a != b for a, b in whole)
    other = switch_case_pairs(sents, 0.5, seed=7, epoch=0, batch=4)
    assert other != whole  # another batch position, other draws
    r1, r2 = sentence_rng(1, 2, 3, "x").random(4), sentence_rng(1, 2, 3, "x").random(4)
    assert np.array_equal(r1, r2)


def _feed(tokenizer, prompt, p: float, mode: str = "unsupervised") -> BatchFeed:
    cfg = TrainConfig.from_dict({"model": "m", "train_file": "c.txt", "switch_case": p,
                                 "supervision": mode, "max_seq_len": 16, "seed": 5})
    return BatchFeed(None, cfg, rank=0, world=1, tokenizer=tokenizer, prompt=prompt,
                     device=torch.device("cpu"))


@pytest.mark.parametrize("pooler", ["cls", "prompt"])
def test_views_layout_equals_unsupervised_training(families, pooler: str) -> None:
    from csekit.modeling.encoder import Encoder

    enc = Encoder.from_pretrained(str(families.build("roberta")), pooler=pooler, mlp="none")
    assert tokenizer_is_cased(enc.tokenizer)
    sents = ["The Cat sat on the Mat", "A short One", "Paris is a City in France ok"]
    plain = _feed(enc.tokenizer, enc.prompt, 0.0).local_inputs(sents, (0, 1))
    none = _feed(enc.tokenizer, enc.prompt, 1e-300).local_inputs(sents, (0, 1))  # no flip
    assert plain.keys() == none.keys()
    for k in plain:
        assert torch.equal(plain[k], none[k]), k
    aug = _feed(enc.tokenizer, enc.prompt, 1.0).local_inputs(sents, (0, 1))
    flipped = _feed(enc.tokenizer, enc.prompt, 0.0).local_inputs(
        [switch_case(s, 1.0, np.random.default_rng(0)) for s in sents], (0, 1))
    # rows 2i: the sentence as in plain training; rows 2i+1: its switched copy (in T2)
    width = min(aug["input_ids"].shape[1], plain["input_ids"].shape[1])
    ids, mask = aug["input_ids"], aug["attention_mask"]
    for i in range(len(sents)):
        for row, ref in ((2 * i, plain), (2 * i + 1, flipped)):
            n = int(mask[row].sum())
            assert n == int(ref["attention_mask"][row].sum())
            assert torch.equal(ids[row][mask[row].bool()], ref["input_ids"][row][
                ref["attention_mask"][row].bool()]), (i, row)
    assert width > 0 and not torch.equal(ids[0::2], ids[1::2])


def test_uncased_tokenizer_and_supervised_modes_are_refused(tiny_bert_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    assert not tokenizer_is_cased(tok)
    with pytest.raises(ConfigError, match="lowercases"):
        _feed(tok, None, 0.2)
    with pytest.raises(ConfigError, match="unsupervised"):
        _feed(tok, None, 0.2, mode="triplets")


@pytest.mark.parametrize("bad", ["1.5", "-0.1"])
def test_cli_rejects_a_probability_out_of_range(tmp_path: Path, tiny_bert_dir: Path,
                                                 bad: str, capsys) -> None:
    from csekit.cli.main import main

    corpus = make_corpus(tmp_path / "c.txt", n=64)
    code = main(["train", "--model", str(tiny_bert_dir), "--train-file", str(corpus),
                 "--output-dir", str(tmp_path / "o"), "--switch-case", bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "switch_case" in err[0]


def test_switch_case_run_resumes_exactly(families, tmp_path: Path) -> None:
    model = families.build("roberta")
    corpus = make_corpus(tmp_path / "c.txt", n=200)
    text = corpus.read_text().title()  # capitals to flip
    corpus.write_text(text)
    kw = {"model": str(model), "train_file": str(corpus), "batch_size": 16,
          "learning_rate": 5e-4, "max_steps": 6, "save_steps": 3, "eval_steps": 100,
          "logging_steps": 1, "progress": False, "pooler": "cls", "mlp": "train", "seed": 3,
          "switch_case": 0.5}
    def make(name: str, **extra: object) -> TrainConfig:
        return TrainConfig.from_dict({**kw, **extra, "output_dir": str(tmp_path / name)})

    ref, _ = assert_resume_exact(make, 3)
    plain = Trainer(make("p", switch_case=0.0)).train()
    assert ref.losses != pytest.approx(plain.losses, abs=1e-4)  # the views did change
