"""The STS tasks as SentEval (and SimCSE's evaluation) define them."""

from __future__ import annotations

TASKS: list[str] = ["STS12", "STS13", "STS14", "STS15", "STS16", "STSBenchmark", "SICKRelatedness"]
DEV_TASKS: list[str] = ["STSBenchmark", "SICKRelatedness"]

# STS12-16: the English test subsets SentEval reads per year (STS13 has no SMT subset: licence).
STS_YEARS: dict[str, tuple[str, list[str]]] = {
    "STS12": ("STS12-en-test", ["MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN",
                                "surprise.SMTnews"]),
    "STS13": ("STS13-en-test", ["FNWN", "headlines", "OnWN"]),
    "STS14": ("STS14-en-test", ["deft-forum", "deft-news", "headlines", "images", "OnWN",
                                "tweet-news"]),
    "STS15": ("STS15-en-test", ["answers-forums", "answers-students", "belief", "headlines",
                                "images"]),
    "STS16": ("STS16-en-test", ["answer-answer", "headlines", "plagiarism", "postediting",
                                "question-question"]),
}

# Split -> file for the two tasks with train/dev/test files.
STSB_FILES: dict[str, str] = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}
SICK_FILES: dict[str, str] = {"train": "SICK_train.txt", "dev": "SICK_trial.txt",
                              "test": "SICK_test_annotated.txt"}

# Gold score ranges; a score outside is a malformed file, not a number to average.
GOLD_RANGE: dict[str, tuple[float, float]] = {
    **{t: (0.0, 5.0) for t in STS_YEARS}, "STSBenchmark": (0.0, 5.0),
    "SICKRelatedness": (1.0, 5.0),
}


def canonical_task(name: str) -> str:
    """Accept SentEval's names case-insensitively plus the common short forms."""
    aliases = {t.lower(): t for t in TASKS}
    aliases.update({"stsb": "STSBenchmark", "sts-b": "STSBenchmark", "sickr": "SICKRelatedness",
                    "sick-r": "SICKRelatedness", "sick": "SICKRelatedness"})
    key = name.strip().lower()
    if key not in aliases:
        from csekit.errors import ConfigError

        raise ConfigError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return aliases[key]
