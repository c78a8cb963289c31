"""Smoke test of benchmarks/train_throughput.py: both timed training paths run on a tiny BERT.

No timing is asserted (the machine is shared); what is checked is that each worker runs the
requested number of optimiser steps, records one time per timed step and the padded lengths,
that ClusterNS really clusters during the timed steps, and the FLOPs formula on a known shape.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    spec = importlib.util.spec_from_file_location(
        "benchmarks.train_throughput", REPO_ROOT / "benchmarks" / "train_throughput.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    words = ["the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "around", "in",
             "the", "park", "near", "river"]
    lines = [" ".join(words[i % 7: i % 7 + 3 + i % 5]) + f" number {i}" for i in range(12)]
    p = tmp_path_factory.mktemp("bench") / "sample.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def _spec(model: Path, sample: Path, config: str, tmp: Path) -> dict:
    return {"model": str(model), "train_file": str(sample), "batch_size": 4, "seq_len": 16,
            "steps": 2, "warmup": 1, "threads": None, "precision": "fp32", "device": "cpu",
            "config": config, "workdir": str(tmp)}


# The variants differ from "simcse" only in the TrainConfig they build, which
# test_variant_configs checks without training; that ClusterNS with kmeans_start_cosine 1.0
# starts at its first step is tests/test_objectives.py::test_start_threshold_extremes.
_TWIN = ("a Trainer run per variant (minutes on a loaded machine); covered in process by "
         "test_variant_configs + test_objectives.py::test_start_threshold_extremes")


@pytest.mark.parametrize("config", [
    "simcse",
    pytest.param("clusterns-focal", marks=pytest.mark.slow(reason=_TWIN)),
    pytest.param("simcse-hf", marks=pytest.mark.slow(reason=_TWIN))])
def test_csekit_worker_runs_trainer_steps(tiny_bert_dir: Path, sample: Path, tmp_path: Path,
                                          config: str) -> None:
    out = _bench().run_csekit(_spec(tiny_bert_dir, sample, config, tmp_path))
    assert len(out["step_times"]) == 2 and all(t > 0 for t in out["step_times"])
    assert out["step_s"] == pytest.approx(sum(out["step_times"]) / 2)  # (t(3) - t(1)) / 2
    assert len(out["pad_lens"]) == 3 and all(2 <= n <= 16 for n in out["pad_lens"])
    # the forwards actually run: all 2B rows, none wider than the batch, no more than planned
    for groups, width, real in zip(out["groups"], out["pad_lens"], out["real_tokens"],
                                   strict=True):
        assert sum(r for r, _ in groups) == 8 and max(n for _, n in groups) == width
        assert real <= sum(r * n for r, n in groups) <= 8 * width
    # csekit's CPU defaults (lean forward, 4 sub-batches) against the transformers forward
    assert out["length_subbatches"] == (1 if config == "simcse-hf" else 4)
    assert out["lean_forward"] is (config != "simcse-hf")
    assert len(out["losses"]) == 3
    assert out["clustering_started"] is True
    assert out["objective_ms"] > 0 and out["peak_rss_mb"] >= 1
    assert out["fused_adamw"] is True  # the Trainer's own optimiser, as the peer's


def test_variant_configs(tiny_bert_dir: Path, sample: Path, tmp_path: Path) -> None:
    """Each csekit configuration's TrainConfig: the variant's forward and pooling options, and
    ClusterNS forced to cluster from the first step with at most 128 clusters."""
    bench = _bench()
    cfg = {name: bench.csekit_config(_spec(tiny_bert_dir, sample, name, tmp_path))
           for name in bench.CONFIGS if name != "st-mnrl"}
    for name, c in cfg.items():
        c.validate(world_size=1)
        assert c.batch_size == 4 and c.max_seq_len == 16 and c.max_steps == 3
        assert c.save_steps > c.max_steps and c.data_dir is None
    assert (cfg["simcse"].pooler, cfg["simcse"].mlp) == ("cls", "train")
    assert (cfg["simcse-mean"].pooler, cfg["simcse-mean"].mlp) == ("avg", "none")
    assert cfg["simcse-mean"].objective == "simcse"
    assert (cfg["simcse-hf"].lean_forward, cfg["simcse-hf"].length_subbatches) == (False, 1)
    assert (cfg["simcse-lean-sub"].lean_forward, cfg["simcse-lean-sub"].length_subbatches) \
        == (True, 4)
    assert cfg["simcse-compile"].compile is True
    for name in ("clusterns", "clusterns-focal"):
        assert cfg[name].objective == name
        assert cfg[name].kmeans_start_cosine == 1.0 and cfg[name].n_clusters == 4
    assert cfg["simcse"].lean_forward is None  # the device's default (the table)
    assert bench.pooler_of("simcse-mean") == bench.pooler_of("st-mnrl") == "mean, none"


def test_st_worker_runs_trainer_steps(tiny_bert_dir: Path, sample: Path, tmp_path: Path) -> None:
    pytest.importorskip("datasets", reason="SentenceTransformerTrainer needs `datasets`")
    out = _bench().run_st(_spec(tiny_bert_dir, sample, "st-mnrl", tmp_path))
    assert len(out["step_times"]) == 2 and all(t > 0 for t in out["step_times"])
    assert len(out["pad_lens"]) == 3 and all(2 <= n <= 16 for n in out["pad_lens"])
    assert all([r for r, _ in g] == [4, 4] for g in out["groups"])  # two forwards of B rows


def test_step_flops_bert_base() -> None:
    bench = _bench()
    # BERT-base: 12 layers of 7,087,872 parameters (Q, K, V, O, FFN, two LayerNorms).
    shape = {"layers": 12, "hidden": 768, "intermediate": 3072,
             "non_embedding_params": 12 * 7_087_872}
    b, length = 64, 32
    dense = 6 * 12 * 7_087_872 * (2 * b * length)
    attention = 12 * 768 * sum(4 * length * length * 3 for _ in range(2 * b))  # per layer loop
    assert bench.step_flops(shape, b, length) == pytest.approx(dense + attention, rel=1e-12)
    # groups: the sum over the forwards actually run
    g = [(100, 20), (28, 32)]
    want = (6 * 12 * 7_087_872 * (100 * 20 + 28 * 32)
            + 12 * 768 * 12 * (100 * 20**2 + 28 * 32**2))
    assert bench.group_flops(shape, g) == pytest.approx(want, rel=1e-12)
    # the lean [CLS] forward: 11 full layers; the last one projects keys and values for every
    # token and runs everything else for one token per row, one query against n keys
    per_layer, kv = 7_087_872, 2 * (768 * 768 + 768)
    want_cls = (6 * 11 * per_layer * (100 * 20 + 28 * 32)
                + 12 * 768 * 11 * (100 * 20**2 + 28 * 32**2)
                + 6 * kv * (100 * 20 + 28 * 32) + 6 * (per_layer - kv) * 128
                + 12 * 768 * (100 * 20 + 28 * 32))
    assert bench.group_flops(shape, g, cls_only_last=True) == pytest.approx(want_cls, rel=1e-12)


def test_judge_on_medians() -> None:
    bench = _bench()
    runs = {"st-mnrl@fp32": [{"step_s": 3.0}, {"step_s": 2.0}, {"step_s": 3.3}],
            "simcse@fp32": [{"step_s": 2.0}, {"step_s": 1.0}, {"step_s": 2.0}],
            "clusterns@fp32": [{"step_s": 2.02}, {"step_s": 1.1}, {"step_s": 2.04}]}
    summary = {k: {"step_s_median": sorted(r["step_s"] for r in v)[1]} for k, v in runs.items()}
    t = bench.judge(runs, summary, ["fp32"], ["st-mnrl", "simcse", "clusterns"])["fp32"]
    assert t["speedup_rounds"] == pytest.approx([1.5, 2.0, 1.65])
    assert t["speedup_median_of_rounds"] == pytest.approx(1.65)
    assert t["speedup_of_medians"] == pytest.approx(3.0 / 2.0)
    assert t["speedup_met"] is True
    c = t["clusterns"]
    assert c["step_overhead_median_of_rounds"] == pytest.approx(0.02)
    assert c["met"] is True


def test_model_shape_counts_the_encoder_layers(tiny_bert_dir: Path) -> None:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_bert_dir))
    counted = sum(p.numel() for p in model.encoder.parameters())
    assert _bench().model_shape(str(tiny_bert_dir))["non_embedding_params"] == counted


def test_gpu_check_forward_part_on_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_check.py's training-forward part (issue #28: what decides the CUDA
    defaults of the lean forward and the sub-batches) runs on a tiny model on the CPU: the four
    arms, equal in float64 at dropout 0 (embeddings and every gradient, on a real 4-way split),
    a step time per arm and batch, and the decision fields."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from benchmarks._offline_assets import pseudo_words, save_bert
    from benchmarks.gpu_check import FORWARD_ARMS, forward_part, markdown

    model = save_bert(tmp_path / "m", words=pseudo_words(500, seed=1), hidden_size=32,
                      num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=64)
    out = forward_part(model, "cpu", [4], rounds=1, warmup=1, precisions=("fp64",))
    assert out["equality_subbatches"] > 1
    for arm in list(FORWARD_ARMS)[1:]:
        assert out["equality"]["fp64"][arm]["equal"], (arm, out["equality"]["fp64"][arm])
    assert set(out["by_batch"]["4"]["step_ms_median"]) == set(FORWARD_ARMS)
    assert out["by_batch"]["4"]["speedup_vs_hf"]["hf"] == 1.0
    assert set(out["decision"]) == {"lean_forward_on_cuda", "length_subbatches_on_cuda", "rule"}
    text = markdown({"machine": {"torch": "x", "cuda": None, "transformers": "x",
                                 "accelerate": "x", "sentence_transformers": "x",
                                 "loadavg": (0, 0, 0)}, "date": "d", "total_s": 1.0,
                     "forward": out})
    assert "lean forward on CUDA" in text and "| lean-sub |" in text


def _harness() -> ModuleType:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import benchmarks._harness as harness

    return harness


def test_harness_rounds_rotate_and_ratios_pair_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every job runs once per round, the order rotated by one each round (A/B/C, B/C/A, ...),
    and the median ratio pairs the runs of the same round."""
    h = _harness()
    ran: list[tuple[str, int]] = []

    def run(job: str, rnd: int) -> dict:
        ran.append((job, rnd))
        return {"step_s": {"a": 1.0, "b": 2.0, "c": 4.0}[job] * (rnd + 1)}

    probes: list[int] = []  # the torch.mm probe (seconds on a loaded machine) is counted
    monkeypatch.setattr(h, "quick_gflops", lambda: float(probes.append(1) or 100.0))
    runs, schedule = h.interleaved_rounds(["a", "b", "c"], 3, run)
    assert len(probes) == 9
    assert ran == [("a", 0), ("b", 0), ("c", 0), ("b", 1), ("c", 1), ("a", 1),
                   ("c", 2), ("a", 2), ("b", 2)]
    assert [r["round"] for r in runs["b"]] == [1, 2, 3]
    assert all(r["mm_gflops_before"] > 0 and len(r["loadavg_before"]) == 3
               for v in runs.values() for r in v)
    assert [row["job"] for row in schedule] == [j for j, _ in ran]
    # round r scales every job by r + 1: the per-round ratio is constant, the medians of
    # unpaired runs would not be
    med, ratios = h.median_ratio(runs["b"], runs["a"])
    assert ratios == [2.0, 2.0, 2.0] and med == 2.0


def test_harness_quiet_judgement() -> None:
    h = _harness()
    assert h.is_quiet([0.5, 0, 0], [2.4, 0, 0], threads=2, cores=2)  # after: own threads
    assert not h.is_quiet([1.5, 0, 0], [0.1, 0, 0], threads=2, cores=2)
    assert not h.is_quiet([0.2, 0, 0], [3.5, 0, 0], threads=2, cores=2)
    assert h.quiet_note([0.2, 0, 0], [3.5, 0, 0], 2, 2) is not None
    assert h.quiet_note([0.2, 0, 0], [2.0, 0, 0], 2, 2) is None


def test_harness_worker_in_a_fresh_process_reports_its_own_peak_rss(tmp_path: Path) -> None:
    """run_spec starts a fresh interpreter, passes the spec, reads the reply line; the reply's
    peak RSS is the child's own (it grows with what the child allocates, and does not carry
    the parent's)."""
    h = _harness()
    script = tmp_path / "w.py"
    script.write_text(
        "import json, sys\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "from benchmarks._harness import worker_reply\n"
        "spec = json.loads(sys.argv[2])\n"
        "block = bytearray(spec['mb'] * 2**20)\n"
        "worker_reply({'echo': spec['mb'], 'len': len(block)})\n", encoding="utf-8")
    small = h.run_spec(script, {"mb": 1}, timeout=120)
    big = h.run_spec(script, {"mb": 300}, timeout=120)
    assert small["echo"] == 1 and big["len"] == 300 * 2**20
    assert big["process_peak_rss_mb"] - small["process_peak_rss_mb"] > 250
    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit('no reply')\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="no reply"):
        h.run_spec(bad, {}, timeout=120)


def _module(name: str, path: Path) -> ModuleType:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gradcache_benchmark_worker_runs_cached_steps(tiny_bert_dir: Path, sample: Path,
                                                      tmp_path: Path) -> None:
    bench = _module("benchmarks.gradcache_memory", REPO_ROOT / "benchmarks" / "gradcache_memory.py")
    spec = {"model": str(tiny_bert_dir), "train_file": str(sample), "batch": 4, "mini": 2,
            "precision": "fp32", "steps": 2, "warmup": 1, "device": "cpu", "seed": 0,
            "workdir": str(tmp_path)}
    out = bench.run_arm(spec)
    assert len(out["step_times"]) == 2 and all(t > 0 for t in out["step_times"])
    assert len(out["losses"]) == 3 and out["peak_rss_mb"] >= 1
    cfg = (tmp_path / "out" / "config.yaml").read_text()
    assert "mini_batch_size: 2" in cfg  # the cached arm really ran cached


def test_activation_memory_parameter_counts_match_the_architectures() -> None:
    """scripts/activation_memory.py's parameter formula == transformers' models (meta device:
    no weights are allocated)."""
    import torch
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    table = _module("activation_memory", REPO_ROOT / "scripts" / "activation_memory.py")
    large = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
             "intermediate_size": 4096}
    with torch.device("meta"):
        models = {"bert-base": BertModel(BertConfig()),
                  "bert-large": BertModel(BertConfig(**large)),
                  "roberta-large": RobertaModel(RobertaConfig(vocab_size=50265,
                                                              max_position_embeddings=514,
                                                              type_vocab_size=1, **large))}
    for name, model in models.items():
        assert table.parameters(name) == sum(p.numel() for p in model.parameters()), name
    # caching keeps one mini-batch: the table's cached column does not grow with the batch
    # beyond the embeddings and their gradient
    small = table.activation_bytes("bert-base", 64, 32)
    assert table.activation_bytes("bert-base", 2048, 32) == pytest.approx(32 * small)


def test_pooler_ab_runs_its_three_arms(tiny_bert_dir: Path, capsys: pytest.CaptureFixture[str],
                                       ) -> None:
    """benchmarks/pooler_ab.py on a tiny BERT: the [CLS] arm trims the last layer, the other two
    do not (asserted inside), every arm is timed, and the FLOPs ratio of a full last layer over
    a trimmed one is above 1."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import pooler_ab

    assert pooler_ab.main(["--model", str(tiny_bert_dir), "--batch-size", "4", "--seq-len",
                           "16", "--threads", "1", "--rounds", "2", "--warmup", "1",
                           "--no-write"]) == 0
    out = capsys.readouterr().out
    rows = [x for x in out.splitlines() if x.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ["cls", "cls-full", "mean"]
    ratio = float(out.split("over the trimmed one: ")[1].split(" ")[0])
    assert ratio > 1.0
