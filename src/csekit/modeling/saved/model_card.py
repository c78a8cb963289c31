"""The ``README.md`` model card of a saved csekit model, built from its ``csekit.json``.

``Encoder.save`` writes it next to the weights, so every folder csekit saves explains itself:
Hub metadata (library, tags, base model, datasets, a ``model-index`` with the STS results),
the objective and its hyper-parameters, the corpus and training settings, the STS table of the
final test (or the STS-B dev score while training is still running), how to load the model in
sentence-transformers and in csekit, the library versions and the papers to cite.

Only what the metadata holds is written; nothing is guessed. A base model or a dataset is put
into the Hub metadata only when it is a Hub id: ``model`` of the training config when it is not
a local path, or ``extra.base_model`` / ``extra.datasets`` of the training config (a recipe's
free-form ``extra:`` block) when given. STS numbers in ``model-index`` are Spearman of cosine
similarities on a 0-1 scale (as sentence-transformers' cards write them); the table shows
Spearman x 100 (as the papers do).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from csekit.objectives.citations import citations_for

CARD_FILE = "README.md"

_TASK_NAMES = {"STS12": "STS12", "STS13": "STS13", "STS14": "STS14", "STS15": "STS15",
               "STS16": "STS16", "STSBenchmark": "STS-B", "SICKRelatedness": "SICK-R"}
_OBJECTIVE_NAMES = {
    "simcse": "unsupervised SimCSE (Gao et al., 2021)",
    "focal": "Focal-InfoNCE (Hou and Li, 2023)",
    "clusterns": "ClusterNS (Deng et al., 2023)",
    "clusterns-focal": "ClusterNS with a Focal-InfoNCE core (csekit's combination of "
                       "Deng et al., 2023 and Hou and Li, 2023)",
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_id_or_none(name: Any) -> str | None:
    """``name`` if it looks like a Hub id and is not an existing local path."""
    if not isinstance(name, str) or not _HUB_ID.match(name) or name.startswith(".") \
            or os.path.exists(name):
        return None
    return name


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return f"`{v}`" if isinstance(v, str) else str(v)


def _sts_section(test: dict[str, Any] | None, dev: dict[str, Any] | None) -> list[str]:
    lines = ["## Evaluation", ""]
    if test and test.get("spearman"):
        sp = test["spearman"]
        n = test.get("n_pairs", {})
        names = [_TASK_NAMES.get(t, t) for t in sp] + ["avg"]
        lines += [
            ("STS test of this model, SentEval protocol as SimCSE uses it (STS12-16 in the "
             "\"all\" setting, STS-B and SICK-R test splits), Spearman x 100 of cosine "
             "similarities, computed by `csekit eval` at the end of training:"),
            "",
            "| " + " | ".join(names) + " |",
            "|" + "---|" * len(names),
            "| " + " | ".join(f"{v:.2f}" for v in sp.values()) + f" | {test['avg']:.2f} |",
        ]
        if n:
            lines.append("| " + " | ".join(str(n.get(t, "")) for t in sp) + " | pairs |")
        lines.append("")
    else:
        lines += [("No STS test results were recorded for this folder (the final test had not "
                   "run when it was saved, or training ran without `--data-dir`)."), ""]
    if dev and dev.get("stsb_spearman") is not None:
        lines += [(f"Selected as the best checkpoint on STS-B dev: Spearman x 100 = "
                   f"{dev['stsb_spearman']:.2f} at step {dev.get('step')}."), ""]
    return lines


def _eval_results(test: dict[str, Any] | None) -> list[Any]:
    from huggingface_hub import EvalResult

    if not test or not test.get("spearman"):
        return []
    out = []
    for task, value in test["spearman"].items():
        out.append(EvalResult(
            task_type="semantic-similarity", task_name="Semantic Similarity",
            dataset_type=task, dataset_name=f"{_TASK_NAMES.get(task, task)} (SentEval)",
            dataset_split="test", metric_type="spearman_cosine", metric_name="Spearman Cosine",
            metric_value=round(float(value) / 100.0, 6)))
    return out


def build_model_card(meta: dict[str, Any], *, model_name: str | None = None) -> str:
    """The Markdown card (with YAML front matter) for a folder whose csekit.json is ``meta``.

    ``model_name``: the name in the title and ``model-index`` (``csekit push`` passes the repo
    id); default: the output folder's name from the training config, else ``csekit-model``.
    """
    from huggingface_hub import ModelCardData

    cfg: dict[str, Any] = dict(meta.get("training_config") or {})
    extra: dict[str, Any] = dict(cfg.get("extra") or {})
    objective: dict[str, Any] = dict(meta.get("objective") or {})
    obj_name = str(objective.pop("name", cfg.get("objective", "")) or "")
    test = meta.get("test")
    dev = meta.get("dev")
    versions = dict(meta.get("versions") or {})
    if model_name is None:
        out = cfg.get("output_dir")
        model_name = Path(out).name if out else "csekit-model"

    base = hub_id_or_none(extra.get("base_model")) or hub_id_or_none(cfg.get("model"))
    datasets = extra.get("datasets")
    if isinstance(datasets, str):
        datasets = [datasets]
    datasets = [d for d in (datasets or []) if hub_id_or_none(d)] or None
    tags = ["sentence-transformers", "sentence-similarity", "feature-extraction", "csekit"]
    if obj_name:
        tags.append(f"csekit:{obj_name}")
    results = _eval_results(test)
    data = ModelCardData(
        library_name="sentence-transformers", pipeline_tag="sentence-similarity", tags=tags,
        base_model=base, datasets=datasets, model_name=model_name if results else None,
        eval_results=results or None)
    front = data.to_yaml()

    lines = ["---", front.rstrip(), "---", "", f"# {model_name}", ""]
    what = _OBJECTIVE_NAMES.get(obj_name)
    if what:
        lines += [f"A sentence encoder trained with csekit by {what}.", ""]
    else:
        lines += ["A sentence encoder saved by csekit.", ""]

    # --- training
    lines += ["## Training", ""]
    if cfg.get("model"):
        shown = base or f"the local model `{cfg['model']}`"
        lines.append(f"- Base model: {shown}")
    if cfg.get("train_file"):
        lines.append(f"- Corpus: `{Path(str(cfg['train_file'])).name}` (one sentence per line; "
                     "each sentence is encoded twice with different dropout masks to make its "
                     "positive pair)")
    if datasets:
        lines.append("- Datasets: " + ", ".join(datasets))
    settings = [("steps", meta.get("step")), ("global batch", cfg.get("batch_size")),
                ("learning rate", cfg.get("learning_rate")),
                ("max_seq_len", cfg.get("max_seq_len")), ("precision", cfg.get("precision")),
                ("seed", cfg.get("seed")), ("processes", meta.get("world_size"))]
    shown_settings = [f"{k} {_fmt(v)}" for k, v in settings if v is not None]
    if shown_settings:
        lines.append("- Settings: " + ", ".join(shown_settings))
    lines.append(f"- Pooling: `{meta.get('pooler')}` in training with MLP head mode "
                 f"`{meta.get('mlp')}`; this folder embeds with `{meta.get('eval_pooler')}`"
                 + (" followed by the Linear+Tanh head" if meta.get("head_at_eval") else "")
                 + (", L2-normalised" if meta.get("normalize") else "") + ".")
    if meta.get("instruction"):
        lines.append(f"- Instruction before every text (sentence-transformers' default prompt): "
                     f"`{meta['instruction']!r}`.")
    lora = meta.get("lora")
    if isinstance(lora, dict):
        lines.append(f"- Trained with LoRA (r {lora.get('r')}, alpha {lora.get('alpha')}, on "
                     f"{', '.join(lora.get('target_modules') or [])}); saved merged"
                     + (f", the adapter in `{lora['adapter']}/`" if lora.get("adapter") else "")
                     + ".")
    lines.append("")
    if objective or obj_name:
        lines += [f"Objective `{obj_name}` with these hyper-parameters:", "",
                  "| option | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in objective.items()]
        lines.append("")

    lines += _sts_section(test, dev)

    # --- usage
    lines += [
        "## Usage", "",
        "With sentence-transformers (the folder is a standard sentence-transformers model):", "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{model_name}")  # or the local folder',
        'embeddings = model.encode(["A man is playing a guitar.", "Someone plays music."])',
        "```", "",
        "With csekit:", "",
        "```python",
        "from csekit.modeling.encoder import Encoder",
        "",
        f'enc = Encoder.from_pretrained("{model_name}")',
        'embeddings = enc.encode(["A man is playing a guitar.", "Someone plays music."])',
        "```", "",
        "```bash",
        f"csekit eval {model_name} --data-dir path/to/senteval   # the 7 STS tasks above",
        "```", "",
    ]
    if versions:
        lines += ["## Versions", "",
                  ", ".join(f"{k} {v}" for k, v in sorted(versions.items())), ""]
    cites = citations_for(obj_name) if obj_name else ()
    if cites:
        lines += ["## Citation", ""]
        for c in cites:
            lines += ["```bibtex", c, "```", ""]
    return "\n".join(lines)


__all__ = ["CARD_FILE", "build_model_card", "hub_id_or_none"]
