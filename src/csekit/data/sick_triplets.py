"""A small offline NLI triplet file from SICK train (+ trial), for trying supervised training.

SICK pairs carry an entailment label (ENTAILMENT / NEUTRAL / CONTRADICTION) for sentence_A ->
sentence_B. A premise (sentence_A) with at least one entailed and one contradicted hypothesis
gives one triplet ``(premise, entailed, contradicted)`` per combination, the layout of SimCSE's
``nli_for_simcse.csv`` (sent0, sent1, hard_neg). SICK repeats some (A, B) pairs under other
pair IDs; a repeated hypothesis is used once, since identical rows in one batch would be each
other's in-batch negatives. SICK_train.txt gives 165 distinct triplets from 107 premises (185
combinations when the repeats are counted), SICK_trial.txt 2 more. The test split
(SICK_test_annotated.txt, SICK-R's evaluation pairs) is never read.

Caveats, to be said wherever results from it are shown: it is tiny (about 0.07% of
nli_for_simcse.csv's 275k rows) and it is SICK, i.e. the very domain (short image / video
captions rewritten by rules) of the SICK-R test set, so a gain on SICK-R is not a gain in
general; it is a smoke test of supervised training, not a replacement for the NLI data.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from csekit.atomic import atomic_write_text
from csekit.errors import ConfigError, DataError

SICK_SPLITS: dict[str, str] = {"train": "SICK_train.txt", "trial": "SICK_trial.txt"}
_NEEDED = ("sentence_A", "sentence_B", "entailment_judgment")


def _read_sick(path: Path) -> list[tuple[str, str, str]]:
    if not path.is_file():
        raise DataError(f"missing SICK file {path}; `csekit data download` fetches SentEval's")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if not reader.fieldnames or any(c not in reader.fieldnames for c in _NEEDED):
                raise DataError(f"{path}: expected a SICK header with {', '.join(_NEEDED)}")
            return [(r["sentence_A"].strip(), r["sentence_B"].strip(),
                     r["entailment_judgment"].strip()) for r in reader
                    if r["sentence_A"] and r["sentence_B"] and r["entailment_judgment"]]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot parse SICK ({err})") from err


def sick_triplets(sick_dir: str | os.PathLike[str],
                  splits: Sequence[str] = ("train", "trial")) -> list[tuple[str, str, str]]:
    """(premise, entailed, contradicted) triplets, every combination of a premise's distinct
    entailed and contradicted hypotheses, in file order (premises by first appearance,
    hypotheses in their order), splits concatenated; no triplet appears twice."""
    unknown = [s for s in splits if s not in SICK_SPLITS]
    if unknown or not splits:
        raise ConfigError(f"SICK split(s) {', '.join(unknown) or '(none)'}: choose from "
                          f"{', '.join(SICK_SPLITS)} (the test split is SICK-R's evaluation)")
    out: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str, str]] = set()  # across splits too
    for split in splits:
        entailed: dict[str, list[str]] = {}
        contradicted: dict[str, list[str]] = {}
        for a, b, label in _read_sick(Path(sick_dir) / SICK_SPLITS[split]):
            group = {"ENTAILMENT": entailed, "CONTRADICTION": contradicted}.get(label)
            if group is not None and b not in group.setdefault(a, []):
                group[a].append(b)
        for premise, positives in entailed.items():
            for pos in positives:
                for neg in contradicted.get(premise, []):
                    if (premise, pos, neg) not in seen:
                        seen.add((premise, pos, neg))
                        out.append((premise, pos, neg))
    return out


def write_triplets_csv(rows: Sequence[tuple[str, ...]], path: str | os.PathLike[str]) -> Path:
    """Write rows as a ``sent0,sent1,hard_neg`` CSV (atomic); its path."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["sent0", "sent1", "hard_neg"])
    writer.writerows(rows)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, buf.getvalue())
    return out


__all__ = ["SICK_SPLITS", "sick_triplets", "write_triplets_csv"]
