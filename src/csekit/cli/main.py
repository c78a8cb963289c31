"""Entry point of the ``csekit`` console script.

Each sub-command lives in its own module exposing ``register(subparsers)`` (adds its parser and
sets ``func``). User errors (:class:`csekit.errors.CsekitError`) become one line on stderr and
exit code 2; logging is configured here and nowhere else.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys

from csekit import __version__
from csekit.errors import CsekitError, first_line

SUBCOMMANDS = ("train", "eval", "encode", "data", "push", "mine", "search")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csekit",
        description="Unsupervised contrastive training and STS evaluation of sentence encoders.",
    )
    parser.add_argument("--version", action="version", version=f"csekit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"csekit.cli.{name}_cmd")
        module.register(sub)
    return parser


def _configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    # Only csekit's own INFO messages; third-party libraries stay at WARNING.
    for noisy in ("transformers", "accelerate", "sentence_transformers", "urllib3", "filelock",
                  "httpx", "httpx2", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR if not verbose else logging.INFO)


def close_progress_bars() -> None:
    """Close every open tqdm bar (each ends its line), so that what is printed next starts a
    line of its own instead of landing after the bar's carriage return."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        with contextlib.suppress(Exception):  # a half-built bar must not hide the error
            bar.close()


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed sub-command; a :class:`CsekitError` becomes one stderr line and its exit
    code (2 for user errors), Ctrl-C outside training becomes exit 130. Open progress bars
    are closed first, so the line is a line of its own in a terminal and in a log."""
    try:
        rc = args.func(args)
    except CsekitError as err:
        close_progress_bars()
        print(f"csekit: error: {first_line(err)}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        close_progress_bars()
        print("csekit: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives a positional list only the words before the first option; a command that
    # takes free words (csekit search's queries) sets `free_words` and gets the later ones too
    if extra and (not hasattr(args, "free_words") or any(w.startswith("-") for w in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if hasattr(args, "free_words"):
        args.free_words = list(args.free_words) + extra
    _configure_logging(args.verbose, args.quiet)
    return run_command(args)


def run() -> None:  # pragma: no cover - console script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
