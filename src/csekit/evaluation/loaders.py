"""Readers for the SentEval data layout (a folder containing ``downstream/``).

Parsing follows SentEval exactly: sentences are whitespace-tokenised and re-joined with single
spaces (SentEval splits them and SimCSE's batcher joins them back); STS12-16 pairs whose gold
line is blank are skipped; STS-B takes columns 5, 6 (sentences) and 4 (score) of each
tab-separated line; SICK skips its header and takes columns 1, 2 and 3. Anything malformed is a
one-line :class:`~csekit.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

from csekit.errors import DataError
from csekit.evaluation.tasks import GOLD_RANGE, SICK_FILES, STS_YEARS, STSB_FILES

DATA_ENV = "CSEKIT_DATA"
HOW_TO_GET = ("get the data with `csekit data download --dest DIR` and pass --data-dir DIR "
              f"(or set ${DATA_ENV})")


@dataclass(frozen=True)
class StsPairs:
    """Sentence pairs with gold scores of one task (and split).

    ``subsets`` gives, per SentEval subset, the half-open range of pairs it occupies.
    """

    task: str
    sent1: tuple[str, ...]
    sent2: tuple[str, ...]
    gold: tuple[float, ...]
    subsets: tuple[tuple[str, int, int], ...]

    def __len__(self) -> int:
        return len(self.gold)


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """Return the ``downstream`` folder: ``data_dir/downstream``, or ``data_dir`` itself when it
    is that folder; ``None`` means ``$CSEKIT_DATA``."""
    if data_dir is None or str(data_dir) == "":
        env = os.environ.get(DATA_ENV)
        if not env:
            raise DataError(f"no STS data folder given: {HOW_TO_GET}")
        data_dir = env
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"STS data folder {root} does not exist; {HOW_TO_GET}")
    if (root / "downstream").is_dir():
        return root / "downstream"
    if (root / "STS").is_dir() or (root / "SICK").is_dir():
        return root
    raise DataError(f"{root} holds no SentEval data (no downstream/ folder); {HOW_TO_GET}")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"missing STS file {path}; {HOW_TO_GET}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8") from err


def _norm(sentence: str) -> str:
    return " ".join(sentence.split())


def _score(raw: str, path: Path, lineno: int, task: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"{path}:{lineno}: gold score {raw.strip()!r} is not a number") from None
    lo, hi = GOLD_RANGE[task]
    if not math.isfinite(value) or not lo <= value <= hi:
        raise DataError(f"{path}:{lineno}: gold score {value} is outside [{lo:g}, {hi:g}]")
    return value


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def load_sts_year(downstream: Path, task: str) -> StsPairs:
    """STS12-16: every subset of the year, blank gold lines skipped, concatenated."""
    folder, subsets = STS_YEARS[task]
    base = downstream / "STS" / folder
    if not base.is_dir():
        raise DataError(f"missing STS folder {base}; {HOW_TO_GET}")
    stamps = tuple(_stamp(p) for name in subsets
                   for p in (base / f"STS.input.{name}.txt", base / f"STS.gs.{name}.txt")
                   if p.is_file())
    return _load_sts_year_cached(str(base), task, stamps)


@functools.lru_cache(maxsize=32)
def _load_sts_year_cached(base_s: str, task: str, _stamps: tuple) -> StsPairs:
    base = Path(base_s)
    s1: list[str] = []
    s2: list[str] = []
    gold: list[float] = []
    ranges: list[tuple[str, int, int]] = []
    for name in STS_YEARS[task][1]:
        inp, gs = base / f"STS.input.{name}.txt", base / f"STS.gs.{name}.txt"
        # SentEval splits both files with str.splitlines(); so do we, to count lines alike.
        in_lines = _read_text(inp).splitlines()
        gs_lines = _read_text(gs).splitlines()
        if len(in_lines) != len(gs_lines):
            raise DataError(f"{inp}: {len(in_lines)} lines but {gs.name} has {len(gs_lines)}; "
                            "input and gold files must have one line per pair")
        start = len(gold)
        for lineno, (line, raw) in enumerate(zip(in_lines, gs_lines), start=1):
            cols = line.split("\t")
            if len(cols) != 2:
                raise DataError(f"{inp}:{lineno}: expected 2 tab-separated sentences, "
                                f"found {len(cols)} column(s)")
            if raw.strip() == "":
                continue
            gold.append(_score(raw, gs, lineno, task))
            s1.append(_norm(cols[0]))
            s2.append(_norm(cols[1]))
        ranges.append((name, start, len(gold)))
    return StsPairs(task, tuple(s1), tuple(s2), tuple(gold), tuple(ranges))


def load_split_file(downstream: Path, task: str, split: str) -> StsPairs:
    """STS-B (``sts-{split}.csv``) or SICK-R (``SICK_{train,trial,test_annotated}.txt``)."""
    if task == "STSBenchmark":
        path = downstream / "STS" / "STSBenchmark" / STSB_FILES[split]
    else:
        path = downstream / "SICK" / SICK_FILES[split]
    if not path.is_file():
        raise DataError(f"missing STS file {path}; {HOW_TO_GET}")
    return _load_split_cached(str(path), task, _stamp(path))


@functools.lru_cache(maxsize=32)
def _load_split_cached(path_s: str, task: str, _stamp_: tuple) -> StsPairs:
    path = Path(path_s)
    text = _read_text(path)
    # SentEval iterates the file in text mode (universal newlines) and strips each line.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    sick = task == "SICKRelatedness"
    a, b, score, need = (1, 2, 3, 4) if sick else (5, 6, 4, 7)
    s1: list[str] = []
    s2: list[str] = []
    gold: list[float] = []
    for lineno, line in enumerate(lines, start=1):
        if sick and lineno == 1:
            continue  # header
        if line.strip() == "":
            continue
        cols = line.strip().split("\t")
        if len(cols) < need:
            raise DataError(f"{path}:{lineno}: expected at least {need} tab-separated columns, "
                            f"found {len(cols)}")
        gold.append(_score(cols[score], path, lineno, task))
        s1.append(_norm(cols[a]))
        s2.append(_norm(cols[b]))
    if not gold:
        raise DataError(f"{path}: no sentence pairs")
    return StsPairs(task, tuple(s1), tuple(s2), tuple(gold), ((path.name, 0, len(gold)),))


def load_task(downstream: Path, task: str, split: str) -> StsPairs:
    """Pairs of ``task`` for ``split`` (test for STS12-16, which have only test data)."""
    if task in STS_YEARS:
        if split != "test":
            from csekit.errors import ConfigError

            raise ConfigError(f"{task} has only a test split; use --split test or tasks "
                              "STSBenchmark,SICKRelatedness for dev")
        return load_sts_year(downstream, task)
    return load_split_file(downstream, task, split)
