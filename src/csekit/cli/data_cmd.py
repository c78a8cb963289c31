"""``csekit data download | check | sick-triplets | cache``: fetch the evaluation data and
corpora; vet a training file; build a small offline NLI triplet file from SICK train + trial;
list and prune csekit's cache of corpus indexes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "data", help="download evaluation data and corpora; check a corpus; the index cache",
        description="Download SentEval STS/SICK and wiki1m; check a corpus; list and prune "
                    "the cache of corpus indexes.")
    from csekit.data.tabular import ON_BAD_LINE

    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")

    dl = sub.add_parser(
        "download", help="fetch SentEval STS/SICK files, SimCSE's wiki1m corpus, NLI triplets",
        description="Fetch SentEval's STS12-16, STS-B and SICK files (from SimCSE's senteval.tar) "
                    "and wiki1m_for_simcse.txt (and with --nli SimCSE's nli_for_simcse.csv), "
                    "verify checksums, resume partial downloads.")
    dl.add_argument("--dest", type=Path, default=None,
                    help="data folder to fill (default: $CSEKIT_DATA or ./data); "
                         "it can then be passed to `csekit eval --data-dir`")
    dl.add_argument("--what", default=None,
                    help="comma-separated items: senteval, wiki1m, nli (default: senteval,wiki1m)")
    dl.add_argument("--nli", action="store_true",
                    help="fetch SimCSE's nli_for_simcse.csv (supervised triplets sent0,sent1,"
                         "hard_neg); alone it fetches only that, with --what it adds it")
    dl.add_argument("--base-url", default=None,
                    help="download from this URL prefix instead of the Hugging Face hub "
                         "(also $CSEKIT_DOWNLOAD_BASE_URL)")
    dl.add_argument("--keep-archive", action="store_true", help="keep senteval.tar after extraction")
    dl.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    dl.set_defaults(func=_download)

    ck = sub.add_parser("check", help="index a training corpus and print its statistics",
                        description="Read a corpus (text or .gz, JSONL, CSV/TSV, Parquet, a "
                                    "datasets folder; a glob or comma-separated list) with the "
                                    "training rules and print what would be kept and the "
                                    "training mode it gives (unsupervised, or NLI pairs / "
                                    "triplets). The index is cached, so training starts "
                                    "without re-reading it.")
    ck.add_argument("file", help="corpus: file, folder, glob or comma-separated list")
    ck.add_argument("--text-column", default=None, metavar="NAME",
                    help="the text column of an unsupervised table (default: the only string "
                         "column, or the one named text or sentence)")
    ck.add_argument("--text-columns", default=None, metavar="A,B[,C]",
                    help="supervised table columns anchor,positive[,hard_negative] (default "
                         "sent0,sent1[,hard_neg] when present)")
    ck.add_argument("--dedup", action="store_true", help="drop repeated rows")
    ck.add_argument("--on-bad-line", choices=ON_BAD_LINE, default="error",
                    help="bad rows (invalid UTF-8, NUL, missing/empty/non-string text): stop "
                         "with an error naming the row (default) or skip and count")
    ck.add_argument("--batch-size", type=int, default=None,
                    help="also check the corpus fills at least one global batch of this size")
    ck.set_defaults(func=_check)

    st = sub.add_parser(
        "sick-triplets", help="build a tiny sent0,sent1,hard_neg CSV from SICK train + trial",
        description="Offline NLI triplets for trying supervised training: every premise of SICK "
                    "train (+ trial) with both an entailed and a contradicted hypothesis gives "
                    "one (premise, entailed, contradicted) row per combination (165 distinct from "
                    "train, 2 from trial). Tiny, and the very domain of the SICK-R test set: a smoke "
                    "test, not a replacement for nli_for_simcse.csv. The test split is never read.")
    st.add_argument("--data-dir", default=None,
                    help="SentEval folder (contains downstream/; default $CSEKIT_DATA)")
    st.add_argument("--out", type=Path, required=True, help="CSV to write (atomically)")
    st.add_argument("--splits", default="train,trial", help="SICK splits: train, trial")
    st.set_defaults(func=_sick_triplets)

    ca = sub.add_parser(
        "cache", help="list csekit's cached corpus indexes; --prune removes old ones",
        description="List the corpus indexes csekit keeps in $CSEKIT_CACHE/corpus-index "
                    "(default ~/.cache/csekit): size, last use, rows, source files. With "
                    "--prune, remove those unused for --older-than DAYS and/or the least "
                    "recently used until the rest fits in --max-size; a removed index is "
                    "rebuilt by its next use. Only csekit's own indexes, their lock files and "
                    "interrupted builds are ever removed. Without --prune, the rules only "
                    "mark what they would remove.")
    ca.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                    help="select indexes not used for DAYS days")
    ca.add_argument("--max-size", default=None, metavar="SIZE",
                    help="select least recently used indexes until the rest fits (e.g. 20GB)")
    ca.add_argument("--prune", action="store_true", help="remove what the rules select")
    ca.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ca.set_defaults(func=_cache)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _download(args: argparse.Namespace) -> int:
    from csekit.data.download import download

    what = args.what
    if args.nli:
        what = "nli" if what is None else f"{what},nli"
    paths = download(args.dest, what if what is not None else "senteval,wiki1m",
                     base_url=args.base_url,
                     keep_archive=args.keep_archive, timeout=args.timeout)
    for item, path in paths.items():
        print(f"{item}: {path}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from csekit.data.triplets import open_training_corpus

    corpus, mode = open_training_corpus(args.file, text_column=args.text_column,
                                        text_columns=args.text_columns, dedup=args.dedup,
                                        on_bad_line=args.on_bad_line)
    if args.batch_size is not None:
        corpus.check_batch_size(args.batch_size)
    report = {"file": str(args.file), "mode": mode, **corpus.describe()}
    if corpus.bad_line_numbers and len(corpus.sources) == 1 and "lines" in corpus.stats:
        report["first_bad_lines"] = corpus.bad_line_numbers
    if corpus.bad_rows:
        report["first_bad_rows"] = corpus.bad_rows
    print(json.dumps(report, indent=1))
    return 0


def _sick_triplets(args: argparse.Namespace) -> int:
    from csekit.data.sick_triplets import sick_triplets, write_triplets_csv
    from csekit.evaluation import resolve_data_dir

    splits = [x.strip() for x in args.splits.split(",") if x.strip()]
    rows = sick_triplets(resolve_data_dir(args.data_dir) / "SICK", splits)
    path = write_triplets_csv(rows, args.out)
    print(json.dumps({"file": str(path), "triplets": len(rows), "splits": splits}))
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _cache(args: argparse.Namespace) -> int:
    from csekit.data.cache_admin import list_cache, parse_size, prune_cache
    from csekit.data.index_cache import INDEX_DIR, cache_root
    from csekit.errors import ConfigError

    max_bytes = parse_size(args.max_size) if args.max_size is not None else None
    rules = args.older_than is not None or max_bytes is not None
    if args.prune and not rules:
        raise ConfigError("--prune needs --older-than DAYS and/or --max-size SIZE")
    entries = list_cache()
    chosen = {e.path for e in prune_cache(older_than_days=args.older_than, max_bytes=max_bytes,
                                          dry_run=not args.prune)} if rules else set()
    where = cache_root() / INDEX_DIR
    if args.json:
        print(json.dumps({"cache": str(where), "entries": [
            {**e.describe(), "selected": e.path in chosen,
             "removed": args.prune and e.path in chosen} for e in entries]}, indent=1))
        return 0
    total = sum(e.size for e in entries)
    print(f"{where}: {len(entries)} entries, {_human(total)}")
    for e in entries:
        d = e.describe()
        mark = ("removed " if args.prune else "would go") if e.path in chosen else "        "
        rows = "" if d["rows"] is None else f"{d['rows']} rows"
        src = ", ".join(d["sources"][:2]) + (" ..." if len(d["sources"]) > 2 else "")
        print(f"{mark} {d['key']}  {_human(e.size):>9}  used {d['last_used']}  {d['kind']}"
              f"  {rows}  {src}".rstrip())
    if chosen:
        freed = sum(e.size for e in entries if e.path in chosen)
        verb = "removed" if args.prune else "would remove (pass --prune)"
        print(f"csekit: {verb} {len(chosen)} entries, {_human(freed)}")
    return 0
