"""Run under torchrun by tests/test_distributed_errors.py (not a test module itself).

``python _rank0_fault_probe.py MODE -- CSEKIT-TRAIN-ARGS``: on rank 0 only, the dev evaluation
(MODE ``eval``: a RuntimeError, as a NaN check in a library would raise) or the best model's
write (MODE ``save``: ENOSPC from the file system) fails; then ``csekit train`` runs as usual
and this process exits with its exit code.
"""

from __future__ import annotations

import errno
import os
import sys


def main() -> int:
    mode, argv = sys.argv[1], sys.argv[3:]
    if os.environ.get("RANK") == "0":
        if mode == "eval":
            from csekit.training.model_io import BestModelKeeper

            def broken_eval(self, enc):  # type: ignore[no-untyped-def]
                raise RuntimeError("embeddings contain NaN")

            BestModelKeeper.evaluate_dev = broken_eval  # type: ignore[method-assign]
        else:
            from csekit.modeling.encoder import Encoder

            def full_disk(self, path, **kw):  # type: ignore[no-untyped-def]
                raise OSError(errno.ENOSPC, "No space left on device")

            Encoder.save = full_disk  # type: ignore[method-assign]
    from csekit.cli.main import main as csekit_main

    return csekit_main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
