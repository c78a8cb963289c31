"""``csekit push DIR REPO``: upload a saved model folder to the Hugging Face Hub.

The folder is the output of ``csekit train`` (or any folder written by ``Encoder.save``); the
run's checkpoints and TensorBoard logs stay local (:mod:`csekit.modeling.saved.hub`). The token is
huggingface_hub's (``HF_TOKEN`` or ``hf auth login``), the endpoint ``HF_ENDPOINT``.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "push", help="upload a saved model folder to the Hugging Face Hub",
        description="Upload the model in DIR to the Hub repo REPO in one commit (the repo is "
                    "created if needed). Checkpoints and TensorBoard logs are not uploaded; "
                    "the model card is rendered with REPO as the model's name. "
                    "Token: HF_TOKEN or `hf auth login`; endpoint: HF_ENDPOINT.")
    p.add_argument("folder", metavar="DIR", help="a model folder saved by csekit")
    p.add_argument("repo", metavar="REPO", help="Hub repo id, NAME or ORG/NAME")
    add_hub_options(p)
    p.set_defaults(func=run_push)


def add_hub_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hub-private", action="store_true", default=False,
                   help="create the repo as private (an existing repo keeps its visibility)")
    p.add_argument("--hub-revision", metavar="BRANCH", default=None,
                   help="branch to commit to (default: main)")
    p.add_argument("--hub-message", metavar="TEXT", default=None, help="commit message")


def push(folder: str, repo: str, args: argparse.Namespace) -> str:
    from csekit.modeling.saved.hub import push_folder

    url = push_folder(folder, repo, private=args.hub_private, revision=args.hub_revision,
                      commit_message=args.hub_message)
    print(f"csekit: uploaded {folder} to {repo}: {url}", flush=True)
    return url


def run_push(args: argparse.Namespace) -> int:
    push(args.folder, args.repo, args)
    return 0
