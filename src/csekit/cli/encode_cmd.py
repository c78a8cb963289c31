"""``csekit encode MODEL --input FILE --output FILE.npy``: embed every row, streamed.

Rows are read and encoded ``--chunk-size`` at a time and written straight into a ``.npy``
opened with ``numpy.lib.format.open_memmap`` (a temporary sibling, renamed over ``--output``
at the end), so memory is bounded by the chunk, not by the corpus. Row i of the output is the
i-th row of the input; a bad row (empty, missing, not a string, invalid UTF-8) is an error
naming it, or, with ``--on-bad-line skip``, left out and counted.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from csekit.atomic import temp_name
from csekit.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

_COPY_ROWS = 1 << 16


def register(subparsers: argparse._SubParsersAction) -> None:
    from csekit.cli.eval_cmd import add_backend_arg, add_template_arg
    from csekit.data.tabular import ON_BAD_LINE
    from csekit.modeling.representation.pooling import POOLERS
    from csekit.precision import PRECISIONS

    p = subparsers.add_parser(
        "encode", help="embed sentences (text, JSONL, CSV/TSV, Parquet, datasets) into a .npy",
        description="Embed every row of --input with MODEL; row i of --output is row i of the "
                    "input. Streams: memory is bounded by --chunk-size, not by the corpus.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--input", required=True,
                   help="text file (one sentence per line, .gz allowed), JSONL, CSV/TSV, Parquet "
                        "or a datasets save_to_disk folder; a glob or comma-separated list")
    p.add_argument("--text-column", default=None,
                   help="column holding the text (default: the only string column, or the one "
                        "named text or sentence)")
    p.add_argument("--output", required=True, metavar="FILE.npy", help="float32 (N, d) matrix")
    p.add_argument("--on-bad-line", choices=ON_BAD_LINE, default="error",
                   help="empty / missing / non-string / invalid UTF-8 rows: stop naming the row "
                        "(default) or skip them and report how many")
    p.add_argument("--chunk-size", type=int, default=8192,
                   help="rows read and encoded at a time (bounds the memory)")
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


def _compact(tmp: Path, n: int, d: int) -> Path:
    """Copy the first n rows of the .npy ``tmp`` into a new .npy of exactly n rows."""
    import numpy as np

    src = np.load(tmp, mmap_mode="r")
    dst_path = tmp.with_name(tmp.name.replace(".tmp-", ".tmp2-"))
    dst = np.lib.format.open_memmap(dst_path, mode="w+", dtype=np.float32, shape=(n, d))
    for a in range(0, n, _COPY_ROWS):
        dst[a:a + _COPY_ROWS] = src[a:min(n, a + _COPY_ROWS)]
    dst.flush()
    del dst, src
    tmp.unlink()
    return dst_path


def _remove_stale_temps(out: Path) -> None:
    """Delete ``.<stem>.tmp*-<host>-<pid>-<random>.npy`` left by a killed encode of this host
    (csekit.atomic.writer_is_gone; another host's encode in progress is never touched)."""
    from csekit.atomic import writer_is_gone

    for p in out.parent.glob(f".{out.stem}.tmp*-*.npy"):
        tag = p.name[:-len(".npy")].split(".tmp", 1)[1].split("-", 1)[-1]
        if writer_is_gone(tag):
            p.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from csekit.cli.eval_cmd import default_device
    from csekit.data.memory import trim_heap
    from csekit.data.stream import RowStream
    from csekit.modeling.encoder import Encoder

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.chunk_size < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    out = Path(args.output)
    if out.suffix != ".npy":
        raise ConfigError(f"--output {out} must end in .npy")
    try:
        stream = RowStream(args.input, text_column=args.text_column, on_bad_line=args.on_bad_line)
    except DataError as err:
        if "not found" in str(err) or "no file matches" in str(err):
            raise DataError(f"--input {args.input} does not exist") from err
        raise
    total = stream.upper_bound()
    if total == 0:
        raise DataError(f"--input {args.input} is empty")
    device = default_device(args.device)
    enc = Encoder.from_pretrained(args.model, pooler=args.pooler,
                                  trust_remote_code=args.trust_remote_code,
                                  backend=args.backend, device=device,
                                  templates=[args.template] if args.template else None,
                                  instruction=args.instruction)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out)
    tmp = out.with_name(temp_name(out.stem) + ".npy")
    mm = None
    n = 0
    bar = tqdm(total=total, unit="sent", unit_scale=True, dynamic_ncols=True,
               disable=bool(os.environ.get("CI")), desc="encode")
    try:
        for chunk in stream.chunks(args.chunk_size):
            emb = enc.encode(chunk, batch_size=args.batch_size, max_seq_len=args.max_seq_len,
                             device=device, precision=args.precision,
                             normalize=True if args.normalize else None, show_progress=False,
                             stable_shapes=True)
            if mm is None:
                mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                               shape=(total, emb.shape[1]))
            mm[n:n + len(chunk)] = emb.numpy()
            n += len(chunk)
            # Written pages of a mapping stay resident (and in RSS) until unmapped: flush and
            # re-map after every chunk so memory is bounded by one chunk, not the output size.
            mm.flush()
            del mm, emb
            mm = np.lib.format.open_memmap(tmp, mode="r+")
            trim_heap()
            bar.update(len(chunk))
        bar.close()
        if mm is None:
            raise DataError(f"--input {args.input}: no row with text "
                            f"({stream.skipped} bad rows skipped)")
        d = mm.shape[1]
        mm.flush()
        del mm
        final = _compact(tmp, n, d) if n < total else tmp
        os.replace(final, out)
    except BaseException:
        bar.close()
        for p in (tmp, tmp.with_name(tmp.name.replace(".tmp-", ".tmp2-"))):
            p.unlink(missing_ok=True)
        raise
    logger.info("wrote %s: %d x %d", out, n, d)
    if stream.skipped:
        shown = "; ".join(w for w in stream.skipped_where[:5] if w)
        print(f"csekit: skipped {stream.skipped} bad rows (--on-bad-line skip): {shown}")
    print(f"{out}: {n} x {d} float32")
    return 0
