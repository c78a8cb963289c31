"""Run under torchrun by tests/test_host_reads.py (not a test module itself).

``python _deferred_stop_probe.py OUT -- CSEKIT-TRAIN-ARGS``: the updates' numbers are read the
way a GPU run reads them (deferred, csekit.training.step.READ_EVERY_UPDATE emptied), and rank
1 alone receives a stop request (as SIGTERM would set it) during its 3rd update. Writes
``OUT/rank<r>.json`` with the step it stopped after and its result.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def main() -> int:
    out, argv = Path(sys.argv[1]), sys.argv[3:]
    rank = int(os.environ["RANK"])
    from csekit.training import step as step_mod

    step_mod.READ_EVERY_UPDATE.clear()
    if rank == 1:
        real_run = step_mod.UpdateStep.run
        calls = [0]

        def run(self, data, state):  # type: ignore[no-untyped-def]
            calls[0] += 1
            if calls[0] == 3 and self.stop is not None:
                self.stop._handle(signal.SIGTERM, None)  # a SIGTERM to this process only
            return real_run(self, data, state)

        step_mod.UpdateStep.run = run  # type: ignore[method-assign]
    from csekit.cli.main import build_parser
    from csekit.cli.train_cmd import config_from_args
    from csekit.training import Trainer

    args = build_parser().parse_args(["train", *argv])
    t = Trainer(config_from_args(args))
    res = t.train()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"steps": res.steps, "stopped": res.stopped, "exit_code": res.exit_code,
         "deferred": t.stepper.deferred, "losses": len(res.losses)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
