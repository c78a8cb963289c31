"""``csekit push DIR REPO``: upload a saved model folder to the Hugging Face Hub.

The folder is the output of ``csekit train`` (or any folder written by ``Encoder.save``); only
the model's files, the run's record and the model card go (an allow-list,
:mod:`csekit.modeling.saved.hub`), and the list is printed before anything is sent;
``--dry-run`` prints it and stops. The token is huggingface_hub's (``HF_TOKEN`` or
``hf auth login``), the endpoint ``HF_ENDPOINT``.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "push", help="upload a saved model folder to the Hugging Face Hub",
        description="Upload the model in DIR to the Hub repo REPO in one commit (the repo is "
                    "created if needed). Only the model's own files (those its save listed), "
                    "the run's config.yaml / results.json / metrics.jsonl and the model card "
                    "are uploaded, never a symbolic link's target; local paths in the configs "
                    "are written as ./NAME. The list is printed first. The model card is "
                    "rendered with REPO as the model's name. "
                    "Token: HF_TOKEN or `hf auth login`; endpoint: HF_ENDPOINT.")
    p.add_argument("folder", metavar="DIR", help="a model folder saved by csekit")
    p.add_argument("repo", metavar="REPO", help="Hub repo id, NAME or ORG/NAME")
    p.add_argument("--dry-run", action="store_true",
                   help="print the files that would be uploaded and stop (no network)")
    add_hub_options(p)
    p.set_defaults(func=run_push)


def add_hub_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hub-private", action="store_true", default=False,
                   help="create the repo as private (an existing repo keeps its visibility)")
    p.add_argument("--hub-revision", metavar="BRANCH", default=None,
                   help="branch to commit to (default: main)")
    p.add_argument("--hub-message", metavar="TEXT", default=None, help="commit message")


def describe_plan(plan: list[Any], repo: str) -> str:
    """The upload list as printed: one file a line with its size (and what was rewritten)."""
    total = sum(f.size for f in plan)
    lines = [f"csekit: {len(plan)} files for {repo} ({_size(total)}):"]
    for f in plan:
        lines.append(f"  {f.path_in_repo}  {_size(f.size)}" + (f"  ({f.note})" if f.note else ""))
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def push(folder: str, repo: str, args: argparse.Namespace) -> str | None:
    """Print the upload list, then upload (nothing after the list with ``--dry-run``)."""
    from csekit.modeling.saved.hub import check_repo_id, push_folder, upload_plan

    dry = bool(getattr(args, "dry_run", False))
    check_repo_id(repo)
    plan = upload_plan(folder, repo)
    print(describe_plan(plan, repo), flush=True)
    if dry:
        print("csekit: dry run: nothing uploaded", flush=True)
        return None
    url = push_folder(folder, repo, private=args.hub_private, revision=args.hub_revision,
                      commit_message=args.hub_message, plan=plan)
    print(f"csekit: uploaded {folder} to {repo}: {url}", flush=True)
    return url


def run_push(args: argparse.Namespace) -> int:
    push(args.folder, args.repo, args)
    return 0
