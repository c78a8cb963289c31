"""``csekit encode MODEL --input FILE --output FILE.npy``: embed one sentence per line."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from csekit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from csekit.cli.eval_cmd import add_backend_arg, add_template_arg
    from csekit.modeling.pooling import POOLERS
    from csekit.precision import PRECISIONS

    p = subparsers.add_parser(
        "encode", help="embed sentences (one per line) into a .npy matrix",
        description="Embed every line of --input with MODEL; row i of --output is line i.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--input", required=True, help="text file, one sentence per line (UTF-8)")
    p.add_argument("--output", required=True, metavar="FILE.npy", help="float32 (N, d) matrix")
    p.add_argument("--pooler", choices=POOLERS, default=None,
                   help="pooling (default: the saved model's own)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-seq-len", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    p.add_argument("--trust-remote-code", action="store_true")
    add_backend_arg(p)
    add_template_arg(p)
    p.set_defaults(func=run)


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file without their line ends (blank lines are kept: row i = line i)."""
    if not path.is_file():
        raise DataError(f"--input {path} does not exist")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8") from err
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise DataError(f"{path}:{line}: NUL byte in a text file")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln.removesuffix("\r") for ln in lines]
    if not lines:
        raise DataError(f"--input {path} is empty")
    return lines


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from csekit.cli.eval_cmd import default_device
    from csekit.modeling.encoder import Encoder

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.output)
    if out.suffix != ".npy":
        raise ConfigError(f"--output {out} must end in .npy")
    sentences = read_lines(Path(args.input))
    device = default_device(args.device)
    enc = Encoder.from_pretrained(args.model, pooler=args.pooler,
                                  trust_remote_code=args.trust_remote_code,
                                  backend=args.backend,
                                  templates=[args.template] if args.template else None)
    emb = enc.encode(sentences, batch_size=args.batch_size, max_seq_len=args.max_seq_len,
                     device=device, precision=args.precision,
                     normalize=True if args.normalize else None, show_progress=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.npy")
    np.save(tmp, emb.numpy().astype(np.float32))
    os.replace(tmp, out)
    logger.info("wrote %s: %d x %d", out, emb.shape[0], emb.shape[1])
    print(f"{out}: {emb.shape[0]} x {emb.shape[1]} float32")
    return 0
